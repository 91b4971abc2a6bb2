"""Tests for the cost model in autokd.measure: BitOps and storage size follow the bit widths of each layer, and
FLOPs / parameters follow pruning."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autokd.compress import layer_bits, prune_model, quantize_model
from autokd.measure import bitops, cost_metrics, count_params, flops, layer_flops, size_bytes
from autokd.models import build_model

SHAPE = (1, 16, 16)


def tiny(conv: str = "depthwise") -> nn.Module:
    torch.manual_seed(0)
    return build_model("mobilenetv2", num_classes=10, in_channels=1, width_mult=0.5, stages="small", conv=conv)


def macs(model: nn.Module) -> dict[str, int]:
    """MACs of each Conv2d / Linear, computed from the layer shapes (independently of FlopCounterMode)."""
    out, sizes = {}, {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: sizes.__setitem__(n, o.shape))
             for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *SHAPE))
    for h in hooks:
        h.remove()
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = math.prod(sizes[name]) * (m.in_channels // m.groups) * math.prod(m.kernel_size)
        elif isinstance(m, nn.Linear):
            out[name] = math.prod(sizes[name]) * m.in_features
    return out


def test_float_bitops_are_macs_times_32_by_32():
    model = tiny()
    expected = sum(macs(model).values()) * 32 * 32
    assert bitops(model, SHAPE) == expected
    assert flops(model, SHAPE) == 2 * sum(macs(model).values())  # what the BitOps are derived from


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_uniform_quantization_divides_bitops_by_the_bit_ratio(bits):
    model = tiny()
    full = bitops(model, SHAPE)
    quantize_model(model, bits=bits, act_bits=bits, keep_first_last=False)
    assert bitops(model, SHAPE) * (32 // bits) ** 2 == full
    assert flops(model, SHAPE) * 32 * 32 == 2 * full  # the wrappers still count as the same convs


def test_first_and_last_layers_are_counted_at_8_by_8():
    model = tiny("standard")
    per_layer = macs(model)
    quantize_model(model, bits=4)
    first, last = next(iter(per_layer)), "classifier"
    expected = sum(v * (8 * 8 if n in (first, last) else 4 * 4) for n, v in per_layer.items())
    assert bitops(model, SHAPE) == expected
    # ... so the ratio to float is above 1/64, but not by much: the first and last layers are cheap.
    ratio = bitops(model, SHAPE) / (sum(per_layer.values()) * 1024)
    assert 1 / 64 < ratio < 1.2 / 64


def test_bitops_follow_layer_bits_per_layer():
    model = quantize_model(tiny(), bits=6)
    _, per_leaf = layer_flops(model, SHAPE)
    bits = layer_bits(model)
    assert bitops(model, SHAPE) == sum(per_leaf[n] // 2 * w * a for n, (w, a) in bits.items())


def test_size_bytes_counts_quantized_weights_at_their_bits():
    model = tiny()
    assert size_bytes(model) == 4 * count_params(model)
    weights = {n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    quantize_model(model, bits=4)
    first = next(iter(weights))
    low = sum(v * (8 if n in (first, "classifier") else 4) for n, v in weights.items())
    rest = count_params(model) - sum(weights.values())  # BN, biases: 32 bits
    assert size_bytes(model) == math.ceil((low + 32 * rest) / 8)
    assert size_bytes(model) < 4 * count_params(model) / 4  # at least 4x smaller than float


def test_size_bytes_rounds_up_to_whole_bytes():
    model = quantize_model(nn.Sequential(nn.Conv2d(1, 1, 3, bias=False)), bits=3, keep_first_last=False)
    assert size_bytes(model) == math.ceil(9 * 3 / 8) == 4


def test_shared_parameters_are_counted_once():
    layer = nn.Linear(4, 4)
    model = nn.Sequential(layer, nn.ReLU(), layer)
    assert size_bytes(model) == 4 * (16 + 4)


def test_cost_metrics_combines_pruning_and_quantization():
    dense = cost_metrics(tiny(), SHAPE)
    assert set(dense) == {"flops", "bitops", "size_bytes", "params"}
    assert all(isinstance(v, float) for v in dense.values())
    model = prune_model(tiny(), ratio=0.5, example_input=torch.randn(1, *SHAPE))
    pruned = cost_metrics(model, SHAPE)
    quantize_model(model, bits=4)
    both = cost_metrics(model, SHAPE)
    assert both["flops"] == pruned["flops"] <= 0.45 * dense["flops"]
    assert both["params"] == pruned["params"] == count_params(model)
    assert both["bitops"] < pruned["bitops"] / 50
    assert both["size_bytes"] < pruned["size_bytes"] / 4
    assert dense["bitops"] == bitops(tiny(), SHAPE) and dense["size_bytes"] == size_bytes(tiny())


def test_measuring_does_not_change_the_model():
    model = quantize_model(tiny(), bits=4)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cost_metrics(model, SHAPE)
    assert model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_mixed_weight_and_activation_bits():
    model = quantize_model(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 16 * 16, 10)),
                           bits=4, keep_first_last=False)
    model[0].set_bits(2, 8)  # weights at 2 bits, inputs at 8
    conv_macs, fc_macs = 16 * 16 * 4 * 9, 4 * 16 * 16 * 10
    assert layer_bits(model) == {"0": (2, 8), "2": (4, 4)}
    assert bitops(model, SHAPE) == conv_macs * 2 * 8 + fc_macs * 4 * 4
    assert size_bytes(model) == math.ceil((36 * 2 + 4 * 32 + 4 * 16 * 16 * 10 * 4 + 10 * 32) / 8)
