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
    """Parameters of the model, not counting the quantizers' own (LSQ step sizes, scales like min/max ranges)."""
    from autokd.compress.quantize import quantizer_parameters

    scales = quantizer_parameters(model)
    return sum(p.numel() for p in model.parameters() if id(p) not in scales)


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


def _bitops_of(model: nn.Module, per_leaf: dict[str, int]) -> int:
    from autokd.compress.quantize import layer_bits

    # MACs = FlopCounterMode FLOPs / 2; a layer never run in the forward costs nothing.
    return sum(per_leaf.get(name, 0) // 2 * w * a for name, (w, a) in layer_bits(model).items())


def bitops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """BitOps of one input (Σ over Conv2d / Linear layers of MACs × weight bits × activation bits).

    The usual cost of mixed-precision networks (as in HAQ / DNAS papers): FLOPs alone cannot tell a 4-bit model
    from a 32-bit one. Unquantized layers count 32 × 32; other ops (BatchNorm, adds, pooling) are left out, as
    FlopCounterMode leaves them out of FLOPs.
    """
    return _bitops_of(model, layer_flops(model, input_shape)[1])


def size_bytes(model: nn.Module) -> int:
    """Storage of the parameters: quantized layers' weights at their weight bits, everything else at 32 bits.

    Biases, BatchNorm and unquantized weights are counted at 32 bits (they stay float in integer inference);
    per-channel scales, the activation ranges (buffers) and LSQ's learned step sizes are not counted.
    """
    from autokd.compress.quantize import layer_bits, quantizer_parameters

    modules = dict(model.named_modules())
    low_bit = {id(modules[name].weight): w for name, (w, _) in layer_bits(model).items()}
    scales = quantizer_parameters(model)
    total_bits = sum(p.numel() * low_bit.get(id(p), 32) for p in model.parameters() if id(p) not in scales)
    return -(-total_bits // 8)


def cost_metrics(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """``{"flops", "bitops", "size_bytes", "params"}`` of ``model`` for one input of ``input_shape`` (C, H, W)."""
    total, per_leaf = layer_flops(model, input_shape)
    return {"flops": float(total), "bitops": float(_bitops_of(model, per_leaf)),
            "size_bytes": float(size_bytes(model)), "params": float(count_params(model))}
