"""The one training loop: seeded, in-memory batches, SGD or AdamW, cosine or one-cycle, optional label smoothing,
and a KD term when the teacher's logits are given (Hinton's by default; any logit method of :mod:`autokd.distill`).

Teacher logits are precomputed per training image (see :mod:`autokd.teacher`), so a KD step costs the same as a
plain step plus one small loss: the teacher never runs inside this loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autokd.distill import FeatureDistiller, logit_loss

EpochCallback = Callable[[int, int, float], None]  # (epoch done, epochs, mean loss)


def stream_seed(seed: int, repeat: int, phase: str, replicate: int = 0) -> int:
    """The seed of one random stream of a trial: (``train.seed``, repeat, phase[, replicate]) hashed to 63 bits.

    Phases are ``init``, ``train``, ``prune`` and ``finetune``. Hashing (rather than ``seed + repeat``) keeps every
    (repeat, phase) stream apart: the old ``seed + 1`` for the fine-tune phase would collide with repeat 1's
    ``seed + 1``. A KD trial and its KD-off twin share every stream, repeat by repeat. A design replicate r > 0
    (:data:`autokd.sampling.REPLICATE_ATTR`) has streams of its own; replicate 0 keeps the streams every trial had
    before designs existed.
    """
    tail = f":r{int(replicate)}" if replicate else ""
    digest = hashlib.sha256(f"autokd-stream:{int(seed)}:{int(repeat)}:{phase}{tail}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class Distillation:
    """What the KD term needs: for a logit method the teacher's logits for every training image (same order as
    ``x``): (N, K), or (V, N, K) for a view pool; for a feature method the :class:`FeatureDistiller` that runs the
    teacher on each batch (``logits`` is then not read)."""

    logits: torch.Tensor | None
    temperature: float
    alpha: float
    method: str = "hinton"  # a method of autokd.distill.LOGIT_METHODS or FEATURE_METHODS
    settings: dict[str, Any] = field(default_factory=dict)  # the method's own settings (over its defaults)
    features: FeatureDistiller | None = None


@dataclass(frozen=True)
class Optim:
    """Optimizer and schedule settings of one training phase."""

    epochs: int
    lr: float
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    batch_size: int = 64
    grad_clip: float | None = 5.0
    precision: str = "fp32"  # "bf16": forward and loss under CUDA autocast (ignored on the CPU)

    @classmethod
    def from_train(cls, train, *, epochs: int | None = None, lr: float | None = None) -> Optim:
        """From a resolved ``TrainSpec`` (epochs / lr overridable for a phase)."""
        return cls(epochs=train.epochs if epochs is None else epochs, lr=train.lr if lr is None else lr,
                   optimizer=train.optimizer, weight_decay=train.weight_decay, momentum=train.momentum,
                   schedule=train.schedule, label_smoothing=train.label_smoothing, batch_size=train.batch_size,
                   grad_clip=train.grad_clip, precision=getattr(train, "precision", "fp32"))


def make_optimizer(model: nn.Module, opt: Optim, extra: list[nn.Parameter] | None = None) -> torch.optim.Optimizer:
    """The phase's optimizer over ``model``'s trainable parameters (and ``extra`` ones after them: a KD
    method's regressors, trained with the student)."""
    params = [p for p in model.parameters() if p.requires_grad] + list(extra or [])
    if opt.optimizer == "sgd":
        # Nesterov needs momentum > 0 (torch refuses it otherwise): momentum 0 trains plain SGD.
        return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay,
                               nesterov=opt.momentum > 0)
    if opt.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay)
    raise ValueError(f"unknown optimizer {opt.optimizer!r} (valid: sgd, adamw)")


def make_schedule(optimizer: torch.optim.Optimizer, opt: Optim, steps: int):
    if opt.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    if opt.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=opt.lr, total_steps=steps)
    raise ValueError(f"unknown schedule {opt.schedule!r} (valid: cosine, onecycle)")


def mixed_precision(precision: str, device: torch.device | str):
    """The context a training step's forward and loss run in: bf16 autocast for ``precision == "bf16"`` on CUDA,
    else nothing (fp32). bf16 needs no loss scaling (fp32's exponent range). The fake-quant ops cast their inputs
    to fp32 themselves (see :mod:`autokd.compress.quantize`), so quantization grids stay exact; autocast keeps
    softmax / log-softmax / losses in fp32. The CPU trains in fp32: bf16 there is slower on most CPUs."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"unknown precision {precision!r} (valid: fp32, bf16)")
    if precision == "bf16" and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def training_memory_format(device: torch.device | str) -> torch.memory_format:
    """The layout convolutions train fastest in on ``device``.

    CPU: ``channels_last`` (NHWC). Measured on 2 cores, one SGD step of the demo's MobileNetV2 students at 16 px,
    batch 64: 0.54-0.86x the time of NCHW for depthwise convolutions, 0.88-1.02x for standard ones (never
    measurably slower). CUDA: ``channels_last`` as well, the layout cuDNN's tensor-core kernels take without a
    transpose; ``bench/gpu.py`` times both layouts where a GPU is at hand. The layout is only how tensors are laid
    out in memory: the model computes the same function (to float rounding).
    """
    return torch.channels_last


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: Optim, *, seed: int,
        distill: Distillation | None = None, on_epoch: EpochCallback | None = None) -> list[float]:
    """Train ``model`` in place on in-memory tensors; returns the mean loss of each epoch.

    ``x`` is (N, C, H, W), or a view pool (V, N, C, H, W) from :func:`autokd.data.augment_pool`, in which case each
    epoch shows every image once, in one of its V views drawn from ``seed``. ``seed`` fixes the data order and the
    views, so a KD trial and its KD-off twin see the same batches.
    """
    if opt.epochs < 1:
        return []
    if distill is not None and distill.features is None:
        if distill.logits is None:
            raise ValueError(f"KD method {distill.method!r} needs the teacher's logits")
        if distill.logits.shape[:-1] != x.shape[:-3]:
            raise ValueError(f"teacher logits {tuple(distill.logits.shape)} do not match the training images "
                             f"{tuple(x.shape)}")
    gen = torch.Generator().manual_seed(seed)
    # Parameters are put in the fast layout for training and back to the default one afterwards, so the model
    # evaluated, measured and saved is laid out exactly as one rebuilt from its saved weights.
    model.to(memory_format=training_memory_format(x.device))
    try:
        return _epochs(model, x, y, opt, gen=gen, distill=distill, on_epoch=on_epoch)
    finally:
        model.to(memory_format=torch.contiguous_format)


def _epochs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: Optim, *, gen: torch.Generator,
            distill: Distillation | None, on_epoch: EpochCallback | None) -> list[float]:
    n, pool = len(y), x.dim() == 5
    steps_per_epoch = max(1, math.ceil(n / opt.batch_size))
    extra = distill.features.parameters() if distill is not None and distill.features is not None else []
    optimizer = make_optimizer(model, opt, extra)
    clipped = list(model.parameters()) + extra
    schedule = make_schedule(optimizer, opt, opt.epochs * steps_per_epoch)
    losses = []
    model.train()
    autocast = mixed_precision(opt.precision, x.device)
    kd = None
    if distill is not None and distill.features is None:
        kd = logit_loss(distill.method, temperature=distill.temperature, alpha=distill.alpha,
                        label_smoothing=opt.label_smoothing, settings=distill.settings)
    for epoch in range(opt.epochs):
        order = torch.randperm(n, generator=gen).to(x.device)
        view = torch.randint(x.shape[0], (n,), generator=gen).to(x.device) if pool else None
        total = torch.zeros((), device=x.device)
        for i in range(steps_per_epoch):
            idx = order[i * opt.batch_size:(i + 1) * opt.batch_size]
            if len(idx) < 2 and n >= 2:  # BatchNorm needs two samples; skip a lone straggler
                continue
            at = (view[idx], idx) if pool else idx
            with autocast:
                if distill is not None and distill.features is not None:  # the teacher sees the same views
                    _, loss = distill.features.step(model, x[at], y[idx])
                else:
                    out = model(x[at])
                    if kd is None:
                        loss = F.cross_entropy(out, y[idx], label_smoothing=opt.label_smoothing)
                    else:
                        loss = kd(out, distill.logits[at], y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if opt.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(clipped, opt.grad_clip)
            optimizer.step()
            schedule.step()
            total += loss.detach() * len(idx)
        losses.append(float(total) / n)
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"training diverged (loss {losses[-1]}) in epoch {epoch + 1}; lower train.lr")
        if on_epoch is not None:
            on_epoch(epoch + 1, opt.epochs, losses[-1])
    return losses


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """Logits of ``model`` in eval mode, batched."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]) if len(x) else \
        torch.empty(0)
    model.train(was_training)
    return out
