"""NNI as an optional pruning backend: NNI 3.0's pruners score the channels, torch-pruning removes them.

The NNI criteria must give the architecture the native ones give at the same ratio (pruning is uniform per group),
their scores must be summed over torch-pruning's coupled groups, and a missing NNI must be one clear line."""

from __future__ import annotations

import sys

import pytest
import torch
import torch_pruning as tp
from torch import nn

from autokd.compress import NNI_PRUNE_METHODS, prune_model
from autokd.compress.prune import GroupScoreImportance
from autokd.measure import count_params, flops

from test_prune import ARCHS, SHAPE, example, tiny, toy_data  # noqa: E402  (tests/ is on sys.path)


def needs_nni():
    return pytest.importorskip("nni", reason='NNI is the optional backend (pip install "autokd[nni]"; CI installs '
                                             "the dev extra, which has it)")


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("method", NNI_PRUNE_METHODS)
def test_nni_criteria_give_the_native_architecture(arch, method):
    needs_nni()
    calibration = toy_data(n=96)  # used by nni-taylor only (two backward passes of 64 and 32 images)
    for ratio in (0.3, 0.5):
        native = prune_model(tiny(arch), ratio=ratio, method="l1", example_input=example())
        pruned = prune_model(tiny(arch), ratio=ratio, method=method, example_input=example(),
                             calibration=calibration)
        assert flops(pruned, SHAPE) == pytest.approx(flops(native, SHAPE), rel=0.02)
        assert count_params(pruned) == pytest.approx(count_params(native), rel=0.02)
        assert pruned(torch.randn(2, *SHAPE)).shape == (2, 10)
        # no NNI wrapper is left behind
        assert not any("_nni_wrapper" in name for name, _ in pruned.named_modules())


@pytest.mark.parametrize("where", ["first", "last"])
def test_nni_scores_decide_which_channels_stay(where):
    needs_nni()
    model = tiny("resnet")
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():  # by far the largest filter (first or last, so ties broken by position cannot pass)
        first.weight[0 if where == "first" else -1].fill_(50.0)
    prune_model(model, ratio=0.5, method="nni-l1", example_input=example())
    assert float(first.weight.detach().abs().max()) == 50.0


@pytest.mark.parametrize("method", ["nni-l1", "nni-l2", "nni-taylor"])
def test_dead_channels_of_a_depthwise_residual_group_go_and_the_function_stays(method):
    # One coupled group through a depthwise conv and a residual add; half its channels are dead in every layer, so
    # their summed score is 0 (norms, and Taylor's w * dL/dw) and removing them leaves the function unchanged.
    needs_nni()
    from test_prune import dead_channel_model

    model = dead_channel_model()
    x = torch.randn(4, *SHAPE)
    before = model(x)
    prune_model(model, ratio=0.5, method=method, example_input=example(), calibration=toy_data(n=32))
    assert model.stem[0].out_channels == model.dw[0].groups == model.pw[0].out_channels == 4
    assert torch.allclose(model(x), before, atol=1e-6)


def test_nni_taylor_scores_are_nni_s_taylor_sums_and_leave_the_weights():
    needs_nni()
    from autokd.compress.prune import nni_channel_scores

    import torch.nn.functional as F

    model = tiny("resnet").eval()
    x, y = toy_data(n=64)  # one backward pass
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    scores = nni_channel_scores(model, "nni-taylor", (x, y))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert not any("_nni_wrapper" in name for name, _ in model.named_modules())
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    for conv, score in scores.items():
        by_hand = (conv.weight.detach() * conv.weight.grad).pow(2).sum((1, 2, 3))
        assert torch.allclose(score / score.sum(), by_hand / by_hand.sum(), rtol=1e-4, atol=1e-7)


def test_nni_fpgm_prunes_a_trainable_model():
    needs_nni()
    from autokd.train import Optim, fit

    x, y = toy_data(n=64)
    model = prune_model(tiny("depthwise"), ratio=0.5, method="nni-fpgm", example_input=example())
    losses = fit(model, x, y, Optim(epochs=1, lr=0.05), seed=0)
    assert all(torch.isfinite(torch.tensor(losses)))


class _Residual(nn.Module):
    """y = b(a(x)) + a(x): the outputs of a and b are one coupled group."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 1, bias=False)
        self.b = nn.Conv2d(4, 4, 1, bias=False)

    def forward(self, x):
        h = self.a(x)
        return self.b(h) + h


def test_group_scores_are_summed_over_the_coupled_layers():
    model = _Residual()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 1, 4, 4))
    group = graph.get_pruning_group(model.a, tp.prune_conv_out_channels, idxs=list(range(4)))
    scores = {model.a: torch.tensor([1.0, 0.0, 0.0, 0.0]), model.b: torch.tensor([0.0, 0.5, 0.0, 2.0])}
    assert GroupScoreImportance(scores)(group).tolist() == [1.0, 0.5, 0.0, 2.0]
    # a layer without a score adds nothing
    assert GroupScoreImportance({model.b: scores[model.b]})(group).tolist() == [0.0, 0.5, 0.0, 2.0]


def test_without_nni_the_error_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "nni" or m.startswith("nni.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nni", None)  # import nni -> ImportError
    with pytest.raises(ImportError, match=r'pip install "autokd\[nni\]"'):
        prune_model(tiny(), ratio=0.5, method="nni-fpgm", example_input=example())


def _nni_import_fails(monkeypatch, exc: Exception) -> list[str]:
    """Make importing NNI's modules raise ``exc`` (as an install broken by its dependencies would); returns the
    names whose import was tried."""
    import importlib

    real, tried = importlib.import_module, []

    def fake(name, package=None):
        if name == "nni" or name.startswith("nni."):
            tried.append(name)
            raise exc
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", fake)
    return tried


def _nni_not_installed(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nni" else real(name, *a))


def _one_nni_line(res) -> str:
    assert res.code == 2
    lines = [line for line in res.err.splitlines() if "nni" in line.lower()]
    assert len(lines) == 1, res.err
    assert "compress.prune_method" in lines[0] and "space.yaml:" in lines[0]  # located: file, line and field
    return lines[0]


def test_validate_refuses_an_nni_method_without_nni(cli, space_file, tiny_space, monkeypatch):
    _nni_not_installed(monkeypatch)
    tiny_space["compress"] = {"prune_ratio": 0.5, "prune_method": "nni-fpgm"}
    line = _one_nni_line(cli("validate", space_file(tiny_space)))
    assert "not installed" in line and 'pip install "autokd[nni]"' in line


@pytest.mark.parametrize("exc", [TypeError("check_type() got an unexpected keyword argument 'argname'\nmore"),
                                 ImportError("cannot import name 'TypeCheckError' from 'typeguard'")])
def test_validate_refuses_an_nni_that_is_installed_but_does_not_import(cli, space_file, tiny_space, monkeypatch,
                                                                       exc):
    # find_spec alone would pass this: the check must import what the pruning code imports, and say what failed.
    needs_nni()
    tried = _nni_import_fails(monkeypatch, exc)
    tiny_space["compress"] = {"prune_ratio": 0.5, "prune_method": "nni-l1"}
    line = _one_nni_line(cli("validate", space_file(tiny_space)))
    assert tried and tried[0] == "nni.compression.pruning"
    detail = " ".join(str(exc).split())
    assert f"nni is installed but does not import: {type(exc).__name__}: {detail}" in line


def test_the_backend_check_imports_nothing_without_an_nni_method(tiny_space, monkeypatch):
    from autokd.space import space_from_dict
    from autokd.space.checks import check_backends

    tried = _nni_import_fails(monkeypatch, TypeError("broken"))
    for method in ("l1", "taylor"):
        assert check_backends(space_from_dict({**tiny_space, "compress": {"prune_method": method}})) == []
    assert tried == []


def test_the_backend_check_passes_a_working_nni(tiny_space):
    needs_nni()
    from autokd.space import space_from_dict
    from autokd.space.checks import check_backends, nni_problem

    assert nni_problem() is None
    assert check_backends(space_from_dict({**tiny_space, "compress": {"prune_method": "nni-fpgm"}})) == []


def test_a_broken_nni_fails_pruning_with_an_import_error_that_says_so(monkeypatch):
    import builtins

    real = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "nni.compression.pruning":
            raise TypeError("check_type() got an unexpected keyword argument 'argname'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(ImportError, match="'nni-l1'.*installed but does not import: TypeError: check_type"):
        prune_model(tiny(), ratio=0.5, method="nni-l1", example_input=example())


def test_a_search_with_nni_fpgm_completes(cli, space_file, tiny_space, tmp_path, monkeypatch):
    needs_nni()
    import optuna

    monkeypatch.chdir(tmp_path)
    tiny_space.update(model={"family": "mobilenetv2", "width_mult": 0.25}, distill={"kd": False},
                      compress={"prune_ratio": {"choices": [0.25, 0.5]}, "prune_method": "nni-fpgm",
                                "finetune_epochs": 1})
    url = f"sqlite:///{tmp_path}/x.db"
    res = cli("search", space_file(tiny_space), "--set", "search.n_trials=2", "--set", "train.epochs=1",
              "--storage", url, "--device", "cpu")
    assert res.code == 0, res.out + res.err
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
