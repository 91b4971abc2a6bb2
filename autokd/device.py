"""Where trials run: ``--device auto | cpu | cuda | cuda:N``, and the settings that make a device reproducible.

KD twins must differ only by KD. On the CPU, kernels are deterministic for a fixed thread count. On CUDA, cuDNN
may pick kernels by timing (``cudnn.benchmark``) and some kernels accumulate with atomics, so two identical runs
can differ in the last bits and then drift apart over an epoch: :func:`make_deterministic` turns that off.
"""

from __future__ import annotations

import os
import re

import torch

from autokd.errors import AutokdError, Problem

# cuBLAS reads this when a handle is created (the first matmul on a device); ":4096:8" is the workspace setting
# NVIDIA documents for reproducible results (https://docs.nvidia.com/cuda/cublas/#results-reproducibility).
CUBLAS_WORKSPACE = ":4096:8"
_CUDA = re.compile(r"cuda(?::(\d+))?")


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA device 0 when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; anything else,
    or a CUDA device this machine lacks, is an :class:`AutokdError` located at ``--device``."""
    text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = _CUDA.fullmatch(text)
    if match is None:
        raise AutokdError(Problem(f"unknown device {device!r} (valid: auto, cpu, cuda, cuda:N)", file="--device"))
    if not torch.cuda.is_available():
        raise AutokdError(Problem("CUDA is not available on this machine (use --device cpu or auto)",
                                  file="--device"))
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise AutokdError(Problem(f"no CUDA device {index}: this machine has {count} (valid: cuda:0"
                                  f"{f'..cuda:{count - 1}' if count > 1 else ''})", file="--device"))
    return torch.device("cuda", index)


def make_deterministic(device: torch.device) -> None:
    """Deterministic kernels for training on ``device`` (CUDA; the CPU needs nothing).

    - ``CUBLAS_WORKSPACE_CONFIG`` (unless the user set it), before the first cuBLAS call of the process;
    - cuDNN: no benchmarking (it picks kernels by timing), deterministic algorithms only;
    - ``torch.use_deterministic_algorithms(True, warn_only=True)``: every op that has a deterministic kernel uses
      it; an op without one warns (once, visibly) instead of failing the search. autokd's own models avoid the
      known one (adaptive average pooling's backward, see :class:`autokd.models.layers.GlobalAvgPool`).
    """
    if torch.device(device).type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = torch.device(device)
    torch.cuda.set_device(device.index if device.index is not None else torch.cuda.current_device())
