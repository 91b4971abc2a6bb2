"""Layers the families share."""

from __future__ import annotations

import torch
from torch import nn


class GlobalAvgPool(nn.Module):
    """The mean over height and width, (N, C, H, W) -> (N, C, 1, 1): what ``nn.AdaptiveAvgPool2d(1)`` computes.

    Written as a mean because the backward of ``adaptive_avg_pool2d`` on CUDA has no deterministic kernel
    (``torch.use_deterministic_algorithms`` refuses it), and KD twins must differ only by KD; a mean's backward is
    a broadcast, deterministic everywhere. No parameters: saved models are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)
