"""Tests for autokd.compress.quantize: the fake-quant wrappers quantize what the forward uses, keep the first and
last layers at 8 bits, leave 32-bit models alone, and a quantized model still trains (QAT)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autokd.compress import QUANT_BITS, QuantConv2d, QuantLinear, layer_bits, prune_model, quantize_model
from autokd.models import build_model
from autokd.train import Optim, fit, predict

SHAPE = (1, 16, 16)


def tiny(conv: str = "standard", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mobilenetv2", num_classes=10, in_channels=1, width_mult=0.5, stages="small", conv=conv)


def toy_data(n: int = 192, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable 10-class task: a fixed random prototype per class plus noise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(10, *SHAPE, generator=g)
    y = torch.arange(n) % 10
    return protos[y] + 0.5 * torch.randn(n, *SHAPE, generator=g), y


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}


def max_distinct_per_channel(w: torch.Tensor) -> int:
    return max(len(torch.unique(row)) for row in w.detach().flatten(1))


@pytest.fixture(scope="module")
def qat4():
    """A 4-bit model after two epochs of QAT (shared by the read-only tests below)."""
    x, y = toy_data()
    model = quantize_model(tiny(), bits=4)
    losses = fit(model, x, y, Optim(epochs=2, lr=0.05, batch_size=32), seed=0)
    return model, losses


# ----------------------------------------------------------------------------------------------------------------
# What gets quantized


def test_every_conv_and_linear_is_wrapped_with_first_and_last_at_8_bits():
    model = tiny()
    n_layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    quantize_model(model, bits=4)
    bits = layer_bits(model)
    assert len(bits) == len(quantized_layers(model)) == n_layers
    first = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    assert bits[first] == (8, 8)
    assert bits["classifier"] == (8, 8)
    assert {b for n, b in bits.items() if n not in (first, "classifier")} == {(4, 4)}
    assert isinstance(model.classifier, nn.Linear) and isinstance(model.features[0][0], nn.Conv2d)


def test_keep_first_last_false_quantizes_all_layers_alike():
    model = quantize_model(tiny(), bits=3, act_bits=3, keep_first_last=False)
    assert set(layer_bits(model).values()) == {(3, 3)}


@pytest.mark.parametrize("bits, expected", [(2, (2, 4)), (3, (3, 4)), (4, (4, 4)), (8, (8, 8))])
def test_activation_bits_default_to_bits_but_at_least_four(bits, expected):
    model = quantize_model(tiny(), bits=bits, keep_first_last=False)
    assert set(layer_bits(model).values()) == {expected}


def test_unquantized_model_reports_32_bits():
    assert set(layer_bits(tiny()).values()) == {(32, 32)}


def test_bits_32_leaves_the_model_untouched():
    model = tiny()
    x = torch.randn(4, *SHAPE)
    types = [type(m) for m in model.modules()]
    before = predict(model, x)
    assert quantize_model(model, bits=32) is model
    assert [type(m) for m in model.modules()] == types
    assert torch.equal(predict(model, x), before)


def test_wrappers_share_parameters_and_keep_state_dict_keys():
    model = tiny()
    params = {n: p for n, p in model.named_parameters()}
    keys = set(model.state_dict())
    quantize_model(model, bits=4)
    assert all(p is params[n] for n, p in model.named_parameters())
    new = set(model.state_dict()) - keys
    assert keys <= set(model.state_dict())
    assert new and all(k.rsplit(".", 1)[1] in ("act_min", "act_max", "act_ready") for k in new)


# ----------------------------------------------------------------------------------------------------------------
# What the forward computes


def test_effective_weights_have_at_most_16_values_per_channel_after_4_bit_qat(qat4):
    model, _ = qat4
    bits = layer_bits(model)
    rich = 0
    for name, layer in quantized_layers(model).items():
        w_bits = bits[name][0]
        assert max_distinct_per_channel(layer.quantized_weight()) <= 2 ** w_bits
        rich += max_distinct_per_channel(layer.weight) > 16 and w_bits == 4
        # Symmetric: the integer grid is scale * [-(2^(b-1)), 2^(b-1) - 1] per output channel.
        wq = layer.quantized_weight().detach().flatten(1)
        scale = layer.weight.detach().abs().flatten(1).amax(1, keepdim=True) / (2 ** (w_bits - 1) - 1)
        q = wq / scale
        assert torch.allclose(q, q.round(), atol=1e-3)
        assert q.round().min() >= -(2 ** (w_bits - 1)) and q.round().max() <= 2 ** (w_bits - 1) - 1
    assert rich > 0  # the float weights do have more than 16 values, so the bound above means something


def test_forward_uses_quantized_weights_and_inputs(qat4):
    model, _ = qat4
    layer = model.features[2].block[0][0]  # a 4-bit 1x1 conv
    assert isinstance(layer, QuantConv2d) and layer.a_bits == 4
    x = torch.rand(2, layer.in_channels, 4, 4) * 6
    layer.eval()
    xq = layer.quantize_input(x)
    assert len(torch.unique(xq)) <= 16 < len(torch.unique(x))
    expected = F.conv2d(xq, layer.quantized_weight(), layer.bias, layer.stride, layer.padding)
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert not torch.allclose(layer(x), F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding),
                              atol=1e-3)


def _on_grid(x: torch.Tensor, qp) -> torch.Tensor:
    """Quantize-dequantize written out from the grid alone (what an exporter's Q/DQ pair computes)."""
    shape = [1] * x.dim()
    if qp.axis is not None:
        shape[qp.axis] = -1
    scale, zp = qp.scale.reshape(shape), qp.zero_point.reshape(shape).float()
    return (torch.clamp(torch.round(x / scale) + zp, qp.qmin, qp.qmax) - zp) * scale


def test_qparams_describe_exactly_what_the_eval_forward_computes(qat4):
    model, _ = qat4
    model.eval()
    for name, layer in quantized_layers(model).items():
        wq, aq = layer.weight_qparams(), layer.input_qparams()
        assert wq.axis == 0 and wq.scale.shape == (layer.weight.shape[0],), name
        assert (wq.qmin, wq.qmax) == (-2 ** (layer.w_bits - 1), 2 ** (layer.w_bits - 1) - 1)
        assert aq.axis is None and aq.scale.dim() == 0 and (aq.qmin, aq.qmax) == (0, 2 ** layer.a_bits - 1)
        assert torch.allclose(_on_grid(layer.weight.detach(), wq), layer.quantized_weight(), atol=1e-6), name
        x = torch.randn(3, *((layer.in_channels, 4, 4) if isinstance(layer, QuantConv2d) else (layer.in_features,)))
        assert torch.allclose(_on_grid(x, aq), layer.quantize_input(x), atol=1e-6), name


def test_qparams_are_none_where_nothing_is_quantized():
    layer = quantize_model(tiny(), bits=4).features[2].block[0][0]
    assert layer.input_qparams() is None  # no training batch has set a range yet
    layer.set_bits(32, 32)
    assert layer.weight_qparams() is None and layer.input_qparams() is None


def test_activation_range_is_an_ema_in_training_and_frozen_in_eval():
    layer = quantize_model(nn.Sequential(nn.Linear(4, 3)), bits=8, keep_first_last=False)[0]
    layer.train()
    layer(torch.full((2, 4), 1.0) * torch.tensor([0.0, 1.0]).view(2, 1))  # first batch: range [0, 1]
    assert (layer.act_min.item(), layer.act_max.item()) == (0.0, 1.0)
    layer(torch.tensor([[-2.0, 0.0, 0.0, 11.0]]))  # later batches move it by momentum 0.1
    assert layer.act_min.item() == pytest.approx(-0.2) and layer.act_max.item() == pytest.approx(2.0)
    layer.eval()
    layer(torch.full((1, 4), 100.0))
    assert layer.act_min.item() == pytest.approx(-0.2) and layer.act_max.item() == pytest.approx(2.0)
    # Inputs beyond the frozen range are clamped to it.
    assert layer.quantize_input(torch.full((1, 4), 100.0)).max().item() == pytest.approx(2.0, abs=0.02)


def test_gradients_flow_straight_through(qat4):
    model = copy.deepcopy(qat4[0])
    x, y = toy_data(32)
    F.cross_entropy(model(x), y).backward()
    for layer in quantized_layers(model).values():
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_model_trains(bits):
    x, y = toy_data()
    model = quantize_model(tiny(), bits=bits)
    losses = fit(model, x, y, Optim(epochs=4, lr=0.05, batch_size=32), seed=0)
    assert losses[-1] < 0.8 * losses[0]


def test_2_bit_qat_recovers_a_trained_model():
    # At 2 bits, weights with a max|w| scale are ternary (about half round to 0) and min/max activation ranges
    # leave 4 levels mostly to outliers: quantizing costs most of the accuracy, and training from scratch is
    # slow. The pipeline fine-tunes a trained float model instead, and that must lower the loss.
    x, y = toy_data()
    model = tiny()
    fit(model, x, y, Optim(epochs=3, lr=0.05, batch_size=32), seed=0)
    quantize_model(model, bits=2)
    losses = fit(model, x, y, Optim(epochs=4, lr=0.02, batch_size=32), seed=1)
    assert losses[-1] < losses[0] - 0.1


def test_8_bit_stays_close_to_float_and_2_bit_does_not():
    x, y = toy_data(64)
    float_model = tiny()
    fit(float_model, x, y, Optim(epochs=2, lr=0.05, batch_size=32), seed=0)
    ref = predict(float_model, x)

    def rel_err(bits: int) -> float:
        model = quantize_model(copy.deepcopy(float_model), bits=bits, keep_first_last=False)
        model.train()
        with torch.no_grad():  # calibrate the activation ranges without changing weights or BN statistics
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
            model(x)
        model.eval()
        return float((predict(model, x) - ref).norm() / ref.norm())

    assert rel_err(8) < 0.05 < rel_err(2)


# ----------------------------------------------------------------------------------------------------------------
# Contract


def test_state_dict_round_trip_gives_identical_outputs(qat4):
    model, _ = qat4
    fresh = quantize_model(tiny(seed=1), bits=4)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(4, *SHAPE)
    assert torch.equal(predict(fresh, x), predict(model, x))


def test_requantizing_changes_bit_widths():
    model = quantize_model(tiny(), bits=4)
    layers = quantized_layers(model)
    quantize_model(model, bits=6)
    assert quantized_layers(model).keys() == layers.keys()
    assert all(m is layers[n] for n, m in quantized_layers(model).items())  # not wrapped twice
    assert {b for b in layer_bits(model).values()} == {(6, 6), (8, 8)}


def test_pruning_a_quantized_model_keeps_it_working():
    model = quantize_model(tiny("depthwise"), bits=4)
    prune_model(model, ratio=0.5, example_input=torch.randn(1, *SHAPE))
    assert len(quantized_layers(model)) == len(layer_bits(model))
    assert model(torch.randn(2, *SHAPE)).shape == (2, 10)


def test_quant_state_follows_dtype_and_device_moves():
    # Buffers (not plain attributes) hold the activation range, so .to() / .double() move them with the weights.
    model = quantize_model(tiny(), bits=4).to(torch.float64)
    layer = model.features[0][0]
    assert layer.act_min.dtype == torch.float64 and layer.weight.dtype == torch.float64
    assert model(torch.randn(2, *SHAPE, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("kwargs", [dict(bits=1), dict(bits=16), dict(bits=True), dict(bits=4.0),
                                    dict(bits=4, first_last_bits=9), dict(bits=4, keep_first_last="yes")])
def test_invalid_arguments_are_rejected(kwargs):
    model = tiny()
    with pytest.raises(ValueError):
        quantize_model(model, **kwargs)
    assert not quantized_layers(model)


def test_quant_bits_constant():
    assert QUANT_BITS == (2, 3, 4, 5, 6, 7, 8, 32)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_cpu_fake_quant_equals_torchs_op_values_and_gradients(layout):
    """autokd's CPU fake quantization (faster) computes exactly torch.fake_quantize_per_tensor_affine: values
    (round half to even at exact ties included), the straight-through gradient, NaN and infinities."""
    from autokd.compress.quantize import fake_quantize_per_tensor

    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        scale = torch.rand((), generator=gen) * 0.2 + 1e-3
        zp = torch.randint(0, 16, (), generator=gen, dtype=torch.int32)
        x = torch.randn(16, 8, 5, 5, generator=gen) * 2
        x.view(-1)[:50] = (torch.arange(-25, 25).float() + 0.5) * scale  # exact ties
        x.view(-1)[50:53] = torch.tensor([float("nan"), float("inf"), -float("inf")])
        x = x.contiguous(memory_format=layout)
        a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        want = torch.fake_quantize_per_tensor_affine(a, scale, zp, 0, 15)
        got = fake_quantize_per_tensor(b, scale, zp, 0, 15)
        grad = torch.randn(want.shape, generator=gen)
        want.backward(grad)
        got.backward(grad)
        assert torch.equal(want, got)  # NaN included: the op maps it to qmin
        assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("zero_point", [0, 5, 15])
def test_cpu_fake_quant_gradient_edges_equal_torchs_op(zero_point):
    """The CPU fake quantization's backward reads the unclamped integer q (no bool mask): the gradient passes at
    exactly q = qmin and q = qmax and stops one step outside, as torch's op does; values agree there too."""
    from autokd.compress.quantize import fake_quantize_per_tensor

    scale, zp = torch.tensor(0.25), torch.tensor(zero_point, dtype=torch.int32)
    # every integer q from qmin - 3 to qmax + 3, each at its centre and just inside both rounding edges
    q = torch.arange(-3 - zero_point, 19 - zero_point).float()
    x = torch.cat([q, q - 0.49, q + 0.49]) * scale
    x = torch.cat([x, -x, torch.tensor([1e30, -1e30, 0.0, -0.0])]).reshape(1, -1, 1, 1)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    want = torch.fake_quantize_per_tensor_affine(a, scale, zp, 0, 15)
    got = fake_quantize_per_tensor(b, scale, zp, 0, 15)
    grad = torch.linspace(-2, 3, x.numel()).reshape(x.shape)
    want.backward(grad)
    got.backward(grad)
    assert torch.equal(want, got) and torch.equal(torch.signbit(want), torch.signbit(got))
    assert torch.equal(a.grad, b.grad)
    assert 0 < int((b.grad != 0).sum()) < x.numel()  # both sides of the range were reached
