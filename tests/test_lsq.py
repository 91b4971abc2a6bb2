"""Learned step size quantization (``compress.quantizer: lsq``, Esser et al. 2020): the layers, their integer grids,
their costs, saving and rebuilding, and a search with the quantizer searched."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autokd.compress import LsqConv2d, LsqLinear, QuantConv2d, layer_bits, layer_quantizers, prune_model, quantize_model
from autokd.measure import cost_metrics
from autokd.models.saved import architecture, layer_table, model_bytes, read_model
from autokd.train import Optim, fit

from test_prune import SHAPE, example, tiny, toy_data  # noqa: E402  (tests/ is on sys.path)


def lsq_model(bits=4, act_bits=4, arch="depthwise"):
    return quantize_model(tiny(arch), bits=bits, act_bits=act_bits, quantizer="lsq")


def test_every_layer_is_an_lsq_wrapper_with_first_and_last_at_8_bits():
    model = lsq_model(2, 2)
    quantized = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(isinstance(m, (LsqConv2d, LsqLinear)) for m in quantized)
    assert all(isinstance(m, QuantConv2d) for m in quantized if isinstance(m, nn.Conv2d))  # the existing wrapper
    bits = layer_bits(model)
    first = next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))
    assert bits[first] == (8, 8) and bits["classifier"] == (8, 8)
    assert {b for name, b in bits.items() if name not in (first, "classifier")} == {(2, 2)}
    assert set(layer_quantizers(model).values()) == {"lsq"}


def test_costs_are_those_of_the_bit_widths_whatever_the_quantizer():
    for bits, act in ((4, 4), (2, 2), (8, 8)):
        minmax = quantize_model(tiny(), bits=bits, act_bits=act)
        lsq = lsq_model(bits, act)
        assert cost_metrics(lsq, SHAPE) == cost_metrics(minmax, SHAPE)  # step sizes are scales, not weights


def test_weight_grid_is_the_forward_and_the_step_starts_at_the_paper_value():
    layer = lsq_model(4).features[1].block[0][0]
    qp = layer.weight_qparams()
    assert (qp.qmin, qp.qmax, qp.axis) == (-8, 7, None) and qp.scale.dim() == 0 and int(qp.zero_point) == 0
    assert float(qp.scale) == pytest.approx(float(2 * layer.weight.detach().abs().mean() / math.sqrt(7)), rel=1e-6)
    wq = layer.quantized_weight().detach()
    ref = torch.fake_quantize_per_tensor_affine(layer.weight.detach(), qp.scale, qp.zero_point, qp.qmin, qp.qmax)
    assert torch.allclose(wq, ref, atol=1e-6)
    assert len(torch.unique(wq)) <= 16


@pytest.mark.parametrize("signed", [False, True])
def test_input_grid_follows_the_first_training_batch(signed):
    layer = quantize_model(nn.Conv2d(3, 4, 3), bits=4, act_bits=4, keep_first_last=False, quantizer="lsq")
    assert layer.input_qparams() is None  # no step before a training batch
    x = torch.randn(8, 3, 6, 6)
    x = x if signed else x.relu()
    layer.train()(x)
    qp = layer.input_qparams()
    assert (qp.qmin, qp.qmax) == ((-8, 7) if signed else (0, 15))
    assert float(qp.scale) == pytest.approx(float(2 * x.abs().mean() / math.sqrt(qp.qmax)), rel=1e-5)
    layer.eval()
    xq = layer.quantize_input(x)
    ref = torch.fake_quantize_per_tensor_affine(x, qp.scale, qp.zero_point, qp.qmin, qp.qmax)
    assert torch.allclose(xq, ref, atol=1e-6)


def test_step_sizes_are_learned_with_scaled_gradients():
    layer = quantize_model(nn.Linear(16, 4), bits=4, act_bits=4, keep_first_last=False, quantizer="lsq")
    x = torch.randn(32, 16)
    layer.train()(x).square().sum().backward()
    assert layer.w_step.grad is not None and float(layer.w_step.grad.abs()) > 0
    assert layer.a_step.grad is not None and float(layer.a_step.grad.abs()) > 0
    # the gradient scale 1/sqrt(N qmax): the same layer with the scale undone has a larger step gradient
    g = 1 / math.sqrt(layer.weight.numel() * 7)
    w_grad = float(layer.w_step.grad)
    from autokd.compress import lsq as qz

    layer.zero_grad()
    orig = qz._grad_scale
    qz._grad_scale = lambda s, _g: s
    try:
        layer(x).square().sum().backward()
    finally:
        qz._grad_scale = orig
    assert w_grad == pytest.approx(g * float(layer.w_step.grad), rel=1e-4)


def test_the_step_gradient_scale_leaves_the_forward_bit_for_bit():
    # The forward is exactly x (the exported |w_step| / |a_step| is the step the layer trained with), the gradient
    # exactly g; the textbook (x - x g).detach() + x g was 1 ulp off in 0.4% of random steps.
    from autokd.compress.lsq import _grad_scale, _round_pass

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, generator=gen) * torch.exp(4 * torch.randn(100_000, generator=gen))
    x = torch.cat([x, torch.tensor([0.0, -0.0, 1e-8, -1e-8, 3.0e38])]).requires_grad_()
    for g in (1 / math.sqrt(7 * 9), 1 / math.sqrt(255 * 12_345), 0.1, 1e-4):
        x.grad = None
        y = _grad_scale(x, g)
        assert torch.equal(y.detach().view(torch.int32), x.detach().view(torch.int32))  # bitwise, -0.0 included
        y.backward(torch.ones_like(y))
        assert torch.equal(x.grad, torch.full_like(x, g))
    # the straight-through rounding: round(x) bit for bit (round(-0.3) is -0.0), identity gradient
    v = (torch.rand(100_000, generator=gen) * 600 - 300).requires_grad_()
    r = _round_pass(v)
    assert torch.equal(r.detach().view(torch.int32), v.detach().round().view(torch.int32))
    r.backward(torch.ones_like(r))
    assert torch.equal(v.grad, torch.ones_like(v))


def test_the_forward_uses_exactly_the_reported_step():
    layer = quantize_model(nn.Linear(16, 8), bits=4, act_bits=4, keep_first_last=False, quantizer="lsq")
    gen = torch.Generator().manual_seed(1)
    for _ in range(300):
        with torch.no_grad():
            layer.w_step.copy_(torch.rand((), generator=gen) * 0.2 + 1e-3)
        qp = layer.weight_qparams()
        ref = (layer.weight.detach() / qp.scale).clamp(qp.qmin, qp.qmax).round() * qp.scale
        assert torch.equal(layer.quantized_weight().detach(), ref)


def test_qat_trains_the_steps_and_the_model():
    x, y = toy_data(n=128)
    model = lsq_model(4, 4)
    steps = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("_step")}
    losses = fit(model, x, y, Optim(epochs=2, lr=0.05), seed=0)
    assert all(math.isfinite(v) for v in losses)
    moved = [n for n, p in model.named_parameters() if n.endswith("_step") and not torch.equal(p, steps[n])]
    assert len(moved) > len(steps) // 2


@pytest.mark.parametrize("arch", ["depthwise", "resnet"])
def test_an_lsq_model_rebuilds_exactly_and_records_its_quantizer(arch):
    x, y = toy_data(n=64)
    model = lsq_model(2, 2, arch)
    fit(model, x, y, Optim(epochs=1, lr=0.05), seed=0)
    model = prune_model(model, ratio=0.5, example_input=example())  # per-tensor steps: prunable after QAT
    model.eval()
    family = "resnet" if arch == "resnet" else "mobilenetv2"
    from test_prune import ARCHS

    arch_args = ARCHS[arch][1]
    table = layer_table(model)
    assert {row.get("quantizer") for row in table.values() if "w_bits" in row} == {"lsq"}
    blob = model_bytes(model, arch=architecture(model, family=family, arch=arch_args, num_classes=10,
                                                in_channels=1), record={})
    rebuilt, _ = read_model(blob)
    assert layer_quantizers(rebuilt) == layer_quantizers(model)
    assert layer_bits(rebuilt) == layer_bits(model)
    batch = torch.randn(4, *SHAPE)
    assert torch.equal(rebuilt(batch), model(batch))
    for a, b in zip(rebuilt.modules(), model.modules()):
        if isinstance(a, LsqConv2d):
            assert torch.equal(a.input_qparams().scale, b.input_qparams().scale)


def test_an_old_table_without_quantizer_rebuilds_minmax():
    x, y = toy_data(n=64)
    model = quantize_model(tiny(), bits=4)
    fit(model, x, y, Optim(epochs=1, lr=0.05), seed=0)
    model.eval()
    arch = architecture(model, family="mobilenetv2", arch=dict(width_mult=0.5, stages="small", conv="depthwise"),
                        num_classes=10, in_channels=1)
    for row in arch["layers"].values():
        row.pop("quantizer", None)  # as written before quantizers were a choice
    rebuilt, _ = read_model(model_bytes(model, arch=arch, record={}))
    assert set(layer_quantizers(rebuilt).values()) == {"minmax"}
    batch = torch.randn(4, *SHAPE)
    assert torch.equal(rebuilt(batch), model(batch))


def test_rewrapping_with_another_quantizer_drops_the_old_state():
    model = quantize_model(tiny(), bits=4)
    quantize_model(model, bits=4, quantizer="lsq")
    keys = model.state_dict().keys()
    assert not any(k.endswith(("act_min", "act_max")) for k in keys)
    assert any(k.endswith("w_step") for k in keys)
    quantize_model(model, bits=4)
    assert not any(k.endswith(("w_step", "a_step", "a_signed")) for k in model.state_dict())
    with pytest.raises(ValueError, match="quantizer"):
        quantize_model(model, bits=4, quantizer="nni-lsq")


def test_the_quantizer_is_searchable_and_left_out_of_old_hashes():
    from autokd.space import Choices, dimensions, space_from_dict, space_hash

    base = {"version": 1, "name": "h", "compress": {"bits": 4}}
    plain = space_from_dict(base)
    explicit = space_from_dict({**base, "compress": {"bits": 4, "quantizer": "minmax"}})
    assert space_hash(plain) == space_hash(explicit)
    assert space_hash(space_from_dict({**base, "compress": {"bits": 4, "quantizer": "lsq"}})) != space_hash(plain)
    searched = space_from_dict({**base, "compress": {"bits": 4, "quantizer": {"choices": ["minmax", "lsq"]}}})
    assert isinstance(searched.compress.quantizer, Choices)
    assert [d.path for d in dimensions(searched)] == ["compress.quantizer"]


def test_a_searched_quantizer_is_a_technique_factor_of_the_kd_report():
    from autokd.report.kd_gain import kd_analysis
    from autokd.report.levels import factor_levels

    trials = []
    for i in range(12):
        params = {"compress.quantizer": ["minmax", "lsq"][i % 2], "compress.bits": 4}
        for j, kd in enumerate((True, False)):
            acc = 0.8 + 0.01 * (i % 3) + (0.02 if kd else 0.0)
            trials.append({"number": 2 * i + j, "state": "COMPLETE", "params": {**params, "distill.kd": kd},
                           "metrics": {"val_accuracy": acc, "test_accuracy": acc, "flops": 1e6},
                           "settings": {"train": {"seed": i}, "distill": {"kd": kd, "temperature": 4.0}},
                           "twin_of": None if j == 0 else 2 * i, "retry_of": None, "duplicate_of": None,
                           "fail_reason": None})
    kd = kd_analysis(trials)
    assert "compress.quantizer" in [f["factor"] for f in kd["factors"]]
    levels = factor_levels("compress.quantizer", ["minmax", "lsq", "lsq"])
    assert levels.binning is None and set(levels.order) == {"minmax", "lsq"}


def test_a_search_with_the_lsq_quantizer_completes(cli, space_file, tiny_space, tmp_path, monkeypatch):
    import optuna

    monkeypatch.chdir(tmp_path)
    tiny_space.update(model={"family": "mobilenetv2", "width_mult": 0.25}, distill={"kd": False},
                      compress={"bits": 4, "act_bits": 4, "quantizer": {"choices": ["minmax", "lsq"]},
                                "finetune_epochs": 1})
    url = f"sqlite:///{tmp_path}/x.db"
    res = cli("search", space_file(tiny_space), "--set", "search.n_trials=2", "--set", "train.epochs=1",
              "--set", "search.startup_trials=2", "--storage", url, "--device", "cpu")
    assert res.code == 0, res.out + res.err
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2 and all("compress.quantizer" in t.params for t in done)
    assert all(t.values[1] > 0 for t in done)


@pytest.mark.parametrize("bits", [8, 4])
def test_an_lsq_model_exports_like_a_minmax_one(bits):
    from autokd.export.graph import prepare

    x, y = toy_data(n=64)
    model = quantize_model(tiny(), bits=bits, quantizer="lsq")
    fit(model, x, y, Optim(epochs=1, lr=0.05), seed=0)
    model.eval()
    stand_in, plans = prepare(model, "onnx")
    assert len(plans) == len(layer_quantizers(model))
    with torch.no_grad():
        assert torch.allclose(stand_in(x[:8]), model(x[:8]), atol=1e-5)
