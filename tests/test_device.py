"""``--device``: auto / cpu / cuda / cuda:N, located errors, and the deterministic CUDA settings."""

from __future__ import annotations

import pytest
import torch

from autokd.device import CUBLAS_WORKSPACE, make_deterministic, resolve_device
from autokd.errors import AutokdError


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda:-1", "cuda 0", ""])
def test_unknown_devices_name_the_valid_ones(bad):
    with pytest.raises(AutokdError) as err:
        resolve_device(bad)
    assert "--device" in str(err.value) and "cuda:N" in str(err.value)


def test_cuda_absent(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0"):
        with pytest.raises(AutokdError, match="--device: CUDA is not available"):
            resolve_device(name)


def test_cuda_index_checked_against_the_devices_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("CUDA:1") == torch.device("cuda", 1)
    with pytest.raises(AutokdError, match=r"no CUDA device 2: this machine has 2 \(valid: cuda:0..cuda:1\)"):
        resolve_device("cuda:2")


def test_deterministic_settings_only_for_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on, warn_only=False: calls.append((on, warn_only)))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    make_deterministic(torch.device("cpu"))
    assert calls == [] and torch.backends.cudnn.benchmark
    make_deterministic(torch.device("cuda", 1))
    assert calls == [(True, True), ("set_device", 1)]
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    import os
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own setting wins
    make_deterministic(torch.device("cuda", 0))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_search_with_a_missing_device_is_one_located_line(cli, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = cli("search", "spaces/mobilenet.yaml", "--device", "cuda:1")
    assert res.code == 2 and "Traceback" not in res.err
    assert res.err_lines == ["error: --device: CUDA is not available on this machine (use --device cpu or auto)"]


def test_auto_and_plain_cuda_set_an_indexed_device(monkeypatch):
    """torch.cuda.set_device refuses a device without an index: 'auto' and 'cuda' must not hand it one."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on, warn_only=False: None)
    set_to = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: set_to.append(d))
    assert resolve_device("auto") == torch.device("cuda", 0)
    for dev in (resolve_device("auto"), torch.device("cuda")):
        make_deterministic(dev)
    assert set_to == [0, 0]
