"""What a trial is judged by: accuracy, FLOPs (torch's FlopCounterMode), parameters.

FLOPs are the raw count FlopCounterMode reports (2 × multiply-accumulates) for one image (batch 1) in eval mode,
measured on the model as it is, so a pruned model is measured after its channels are gone.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autokd.train import predict


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy as a fraction in [0, 1]."""
    if len(y) == 0:
        return float("nan")
    return float((predict(model, x).argmax(1) == y).float().mean())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def layer_flops(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, dict[str, int]]:
    """(total FLOPs, FLOPs per leaf module name) for one input of ``input_shape`` (C, H, W), eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros((1, *input_shape), device=device))
    model.train(was_training)
    per_module = counter.get_flop_counts()
    leaves = {name for name, m in model.named_modules() if not list(m.children())}
    per_leaf = {}
    for name, counts in per_module.items():
        # FlopCounterMode names modules by the root's class ("MobileNetV2.features.0.0"); keep leaves only.
        short = name.partition(".")[2]
        if short in leaves:
            per_leaf[short] = int(sum(counts.values()))
    return int(counter.get_total_flops()), per_leaf


def flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    return layer_flops(model, input_shape)[0]
