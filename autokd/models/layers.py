"""Layers the families share."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GlobalAvgPool(nn.Module):
    """The mean over height and width, (N, C, H, W) -> (N, C, 1, 1): what ``nn.AdaptiveAvgPool2d(1)`` computes.

    Written as a mean because the backward of ``adaptive_avg_pool2d`` on CUDA has no deterministic kernel
    (``torch.use_deterministic_algorithms`` refuses it), and KD twins must differ only by KD; a mean's backward is
    a broadcast, deterministic everywhere. No parameters: saved models are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


class _ReLU6InPlace(torch.autograd.Function):
    """``relu6_`` whose backward reads the output: ``0 < y < 6`` where ``y = clamp(x, 0, 6)`` is exactly
    ``0 < x < 6``, so nothing else has to be kept."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.mark_dirty(x)
        y = x.clamp_(0.0, 6.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, y, 0.0, 6.0)


class ReLU6(nn.ReLU6):
    """``nn.ReLU6`` (a subclass: same repr, no state, ``isinstance`` checks hold) that trains faster in place.

    Why: autograd's in-place ``relu6_`` first copies its input (``hardtanh_``'s backward reads the input), a whole
    extra pass and allocation per activation, at every training step. :class:`_ReLU6InPlace` clamps in place and
    keeps the output instead: the same values and the same gradient, bitwise (``tests/test_models.py``). It is used
    only where autograd records (a non-leaf input with ``requires_grad``); evaluation, tracing, scripting and export
    run the library op.
    """

    def __init__(self) -> None:
        super().__init__(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # first and alone: TorchScript compiles every branch of a condition it shares
            return F.relu6(x, inplace=self.inplace)
        return self._train_forward(x)

    @torch.jit.unused
    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.requires_grad and torch.is_grad_enabled() and not x.is_leaf and x._base is None
                and not torch.jit.is_tracing()):
            return _ReLU6InPlace.apply(x)
        return F.relu6(x, inplace=self.inplace)
