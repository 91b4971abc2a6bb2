"""Checking a written model on the spot: agreement with the PyTorch model on the test split, and latency.

Agreement is the share of test images whose predicted class (argmax of the logits) is the same as the PyTorch
trial model's; :data:`MIN_AGREEMENT` is the bar. Latency is per image at batch 1 on this machine: ``warmup`` runs
first, then the median of ``runs`` (at least :data:`MIN_RUNS`) timed runs, on ``threads`` intra-op threads
(onnxruntime for ONNX, torch for TorchScript and state_dict).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

MIN_AGREEMENT = 0.995
MIN_RUNS = 50
BATCH = 256  # images per call when predicting the test split


@dataclass(frozen=True)
class Check:
    """The verdict on one written model."""

    runtime: str  # "onnxruntime 1.x" / "torch 2.x (torchscript)" / "torch 2.x (rebuilt from the sidecar)"
    images: int
    agreement: float  # share of test images with the same predicted class
    max_abs_diff: float  # largest logit difference
    latency_ms: float  # median per image, batch 1
    runs: int
    threads: int

    @property
    def passed(self) -> bool:
        return self.agreement >= MIN_AGREEMENT

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "min_agreement": MIN_AGREEMENT, "passed": self.passed, "batch": 1,
                "split": "test"}


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def torch_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> np.ndarray:
    """Logits of ``model`` over ``x`` in batches, as float32 numpy (no gradients)."""
    if isinstance(model, nn.Module):
        model.eval()
    with torch.no_grad():
        outs = [model(x[i:i + BATCH]).float() for i in range(0, len(x), BATCH)]
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), dtype=np.float32)


def compare(reference: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
    """(agreement of the argmax, largest absolute logit difference)."""
    if reference.shape != logits.shape:
        raise ValueError(f"the exported model gives logits of shape {logits.shape}, PyTorch {reference.shape}")
    if len(reference) == 0:
        return float("nan"), float("nan")
    agree = float(np.mean(reference.argmax(1) == logits.argmax(1)))
    return agree, float(np.max(np.abs(reference - logits)))


def median_latency_ms(run_one: Callable[[], Any], *, runs: int, warmup: int = 10) -> float:
    """Median wall time of ``run_one()`` in milliseconds over ``runs`` timed calls after ``warmup`` calls."""
    if runs < MIN_RUNS:
        raise ValueError(f"runs must be at least {MIN_RUNS}, got {runs}")
    for _ in range(warmup):
        run_one()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run_one()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def check_torch(model: Callable[[torch.Tensor], torch.Tensor], reference: np.ndarray, x: torch.Tensor, *,
                runtime: str, runs: int, threads: int) -> Check:
    """Agreement and batch-1 latency of a torch callable (a TorchScript module, or a rebuilt ``nn.Module``)."""
    with torch_threads(threads):
        agree, diff = compare(reference, torch_logits(model, x))
        one = x[:1]

        def run_one() -> None:
            with torch.no_grad():
                model(one)

        latency = median_latency_ms(run_one, runs=runs)
    return Check(runtime, len(x), agree, diff, latency, runs, threads)


def onnx_session(data: bytes, *, threads: int) -> Any:
    """An onnxruntime CPU session of an ONNX model, on ``threads`` intra-op threads (one inter-op thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: no warnings on the terminal
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def check_onnx(data: bytes, reference: np.ndarray, x: torch.Tensor, *, runs: int, threads: int) -> Check:
    """Agreement and batch-1 latency of an ONNX model run by onnxruntime."""
    import onnxruntime as ort

    session = onnx_session(data, threads=threads)
    name = session.get_inputs()[0].name
    xs = x.detach().float().cpu().numpy()
    outs = [session.run(None, {name: xs[i:i + BATCH]})[0] for i in range(0, len(xs), BATCH)]
    logits = np.concatenate(outs) if outs else np.zeros((0, 0), dtype=np.float32)
    agree, diff = compare(reference, logits)
    one = {name: np.ascontiguousarray(xs[:1])}
    latency = median_latency_ms(lambda: session.run(None, one), runs=runs)
    return Check(f"onnxruntime {ort.__version__}", len(xs), agree, diff, latency, runs, threads)
