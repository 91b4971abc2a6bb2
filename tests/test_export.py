"""The export's parts on models built here: the stand-ins compute the eval forward, ONNX holds Q/DQ exactly for the
8-bit grids, onnxruntime and TorchScript agree with torch, the sidecar's metrics, and the checks' arithmetic."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from autokd.compress import prune_model, quantize_model
from autokd.compress.quantize import _FakeQuant
from autokd.export import formats, graph, sidecar, verify
from autokd.models.registry import build_model


def _model(*, bits: int = 32, prune: float = 0.0, keep_first_last: bool = True, act_bits: int | None = None,
           quantizer: str | None = None) -> nn.Module:
    """A small MobileNetV2 (8x8 inputs), pruned and/or quantized, its ranges set by a few training batches."""
    torch.manual_seed(0)
    model = build_model("mobilenetv2", num_classes=10, in_channels=1, width_mult=0.25)
    x = torch.randn(32, 1, 8, 8)
    if prune:
        model = prune_model(model, ratio=prune, method="l1", example_input=x[:1])
    if bits != 32:
        kw = {} if quantizer is None else {"quantizer": quantizer}
        model = quantize_model(model, bits=bits, act_bits=act_bits, keep_first_last=keep_first_last, **kw)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 1, 8, 8))
    return model.eval()


def _ops(data: bytes) -> list[str]:
    return [n.op_type for n in onnx.load_from_string(data).graph.node]


def _ort(data: bytes, x: torch.Tensor) -> np.ndarray:
    return verify.onnx_session(data, threads=1).run(None, {"input": x.numpy()})[0]


X = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("target", graph.TARGETS)
@pytest.mark.parametrize("bits, keep", [(8, True), (4, True), (4, False), (2, True)])
def test_stand_ins_compute_the_eval_forward(target, bits, keep):
    model = _model(bits=bits, keep_first_last=keep)
    module, plans = graph.prepare(model, target)
    assert not any(isinstance(m, _FakeQuant) for m in module.modules())
    assert len(plans) == sum(isinstance(m, _FakeQuant) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(module(X), model(X), atol=1e-5, rtol=1e-5)
    assert graph.is_simulated(plans) == (bits < 8)
    assert any(isinstance(m, _FakeQuant) for m in model.modules())  # the trial model itself is left as it was


def test_eight_bit_onnx_holds_int8_weights_and_qdq_pairs_and_matches_torch():
    model = _model(bits=8)
    module, plans = graph.prepare(model, "onnx")
    data = formats.onnx_bytes(module, X[:1])
    ops = _ops(data)
    n = len(plans)
    assert all(p.weights == "int8" and p.activations == "uint8" for p in plans)
    assert ops.count("QuantizeLinear") == n  # one per activation
    assert ops.count("DequantizeLinear") == 2 * n  # one per activation, one per weight
    assert formats.onnx_summary(data)["integer_weights"] == {"int8": n}
    with torch.no_grad():
        want = model(X).numpy()
    got = _ort(data, X)
    agree, diff = verify.compare(want, got)
    assert agree >= verify.MIN_AGREEMENT
    # Measured: ~1e-8 (1e-7 of the largest logit) over 5 x 256 random images: onnxruntime's Q/DQ rounds as
    # torch's fake-quant does. One activation whose rounding tie fell the other way would cost ~1e-2 relative
    # and fail here, which is meant: that would be a real disagreement to look at.
    assert diff < 1e-4 * np.abs(want).max()


def test_below_8_bits_onnx_has_no_qdq_except_the_8_bit_first_and_last_layers():
    mixed = _model(bits=4)  # first conv and classifier kept at 8 bits
    module, plans = graph.prepare(mixed, "onnx")
    eight = [p for p in plans if p.w_bits == 8]
    assert len(eight) == 2 and all(p.activations == "uint8" for p in eight)
    assert all(p.weights == "dequantized" and p.activations == "round_clip" and p.simulated
               for p in plans if p.w_bits == 4)
    data = formats.onnx_bytes(module, X[:1])
    assert _ops(data).count("QuantizeLinear") == 2
    np.testing.assert_allclose(_ort(data, X), mixed(X).detach().numpy(), atol=1e-3, rtol=1e-3)

    low = _model(bits=4, keep_first_last=False)
    data = formats.onnx_bytes(graph.prepare(low, "onnx")[0], X[:1])
    ops = _ops(data)
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops and "Round" in ops
    assert formats.onnx_summary(data)["integer_initializers"] == {}
    np.testing.assert_allclose(_ort(data, X), low(X).detach().numpy(), atol=1e-3, rtol=1e-3)


def test_4_bit_weights_take_at_most_16_values_per_channel():
    model = _model(bits=4, keep_first_last=False)
    module, _ = graph.prepare(model, "onnx")
    for m in module.modules():
        if isinstance(m, graph.ExportLayer):
            w = m.layer.weight.flatten(1)
            assert max(len(torch.unique(row)) for row in w) <= 16


def test_float_and_pruned_onnx_match_torch_with_the_pruned_shapes():
    for model in (_model(), _model(prune=0.5)):
        module, plans = graph.prepare(model, "onnx")
        assert plans == []
        data = formats.onnx_bytes(module, X[:1])
        assert not {"QuantizeLinear", "DequantizeLinear", "Round"} & set(_ops(data))
        np.testing.assert_allclose(_ort(data, X), model(X).detach().numpy(), atol=1e-4, rtol=1e-4)
    pruned = _model(prune=0.5)
    full = _model()
    arch = sidecar.rebuild_info(pruned, {"model": {"family": "mobilenetv2", "width_mult": 0.25}}, num_classes=10,
                                in_channels=1)
    outs = {n: row["out"] for n, row in arch["layers"].items() if row["type"] == "conv2d"}
    full_outs = {n: m.out_channels for n, m in full.named_modules() if isinstance(m, nn.Conv2d)}
    assert outs.keys() == full_outs.keys() and sum(outs.values()) < sum(full_outs.values())


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_of_a_4_bit_model_is_the_eval_forward():
    model = _model(bits=4)
    module, _ = graph.prepare(model, "torchscript")
    data = formats.torchscript_bytes(module, X[:1], extra={"autokd.json": "{}"})
    loaded = torch.jit.load(io.BytesIO(data))
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), model(X), atol=1e-5, rtol=1e-5)


def test_lsq_layers_export_through_their_grids():
    from autokd.compress import QUANTIZERS

    if "lsq" not in QUANTIZERS:
        pytest.skip("this autokd has no LSQ quantizer")
    for bits, qdq in ((8, True), (4, False)):
        model = _model(bits=bits, quantizer="lsq", keep_first_last=False)
        module, plans = graph.prepare(model, "onnx")
        data = formats.onnx_bytes(module, X[:1])
        assert ("DequantizeLinear" in _ops(data)) == qdq and graph.is_simulated(plans) == (not qdq)
        with torch.no_grad():
            want = model(X)
            torch.testing.assert_close(module(X), want, atol=1e-5, rtol=1e-5)
        agree, diff = verify.compare(want.numpy(), _ort(data, X))
        assert agree >= verify.MIN_AGREEMENT and diff < 1e-4 * want.abs().max().item()  # measured: <= 1e-7


def test_a_quantized_layer_without_a_range_is_refused():
    torch.manual_seed(0)
    model = quantize_model(build_model("mobilenetv2", num_classes=10, in_channels=1, width_mult=0.25), bits=8)
    with pytest.raises(graph.ExportError, match="has no range yet"):
        graph.prepare(model.eval(), "onnx")


def test_sidecar_metrics_give_repeat_0_beside_the_mean():
    attrs = {"metrics": {"test_accuracy": 0.5, "repeats": [{"test_accuracy": 0.6}, {"test_accuracy": 0.4}]},
             "model_repeat": 0}
    m = sidecar.metrics_of(attrs)
    assert m == {"metrics": {"test_accuracy": 0.5}, "repeats": 2, "model_repeat": 0,
                 "model_metrics": {"test_accuracy": 0.6},
                 "repeat_metrics": [{"test_accuracy": 0.6}, {"test_accuracy": 0.4}]}
    old = sidecar.metrics_of({"metrics": {"test_accuracy": 0.7}})  # a trial recorded before repeats
    assert old["repeats"] == 1 and old["model_metrics"] == {"test_accuracy": 0.7}
    assert '"x": null' in sidecar.dumps({"x": float("nan")})
    assert sidecar.clean([{"a": (float("inf"), 1.0), 2: float("-inf")}]) == [{"a": [None, 1.0], "2": None}]


def _raw_digits_test_split(spec):
    """The raw test images of the digits dataset (values 0..16), split as autokd.data splits them."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    _, test = train_test_split(np.arange(len(d.target)), test_size=spec.test_fraction, random_state=spec.split_seed,
                               stratify=d.target)
    return d.images[test][:, None]


def apply_recipe(pre: dict, raw: np.ndarray) -> torch.Tensor:
    """The sidecar's ``input.preprocessing`` applied to raw images, reading only the sidecar's fields."""
    import torch.nn.functional as F

    x = torch.as_tensor(np.asarray(raw), dtype=torch.float32) / pre["pixel_max"]
    if pre["resize"] is not None:
        r = pre["resize"]
        assert r["function"] == "torch.nn.functional.interpolate"
        x = F.interpolate(x, size=tuple(r["to"]), mode=r["mode"], align_corners=r["align_corners"],
                          antialias=r["antialias"])
    mean = torch.tensor(pre["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(pre["std"], dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize("size", [None, 8, 16, 6])  # native, the same, upsampled, downsampled
def test_the_sidecar_input_recipe_turns_raw_digits_into_test_x(size):
    import json

    from autokd.data import load_dataset
    from autokd.space.schema import DatasetSpec

    spec = DatasetSpec(name="digits", image_size=size)
    data = load_dataset(spec)
    section = sidecar.input_section(tuple(data.test_x.shape[1:]), data.preprocessing(), spec.model_dump())
    pre = json.loads(sidecar.dumps(section))["preprocessing"]  # as a reader of the file sees it
    assert pre["pixel_max"] == 16.0 and len(pre["mean"]) == len(pre["std"]) == 1
    assert tuple(pre["mean"]) == data.mean and tuple(pre["std"]) == data.std
    resized = size not in (None, 8)
    assert (pre["resize"] is not None) == resized
    if resized:
        assert pre["resize"]["from"] == [8, 8] and pre["resize"]["to"] == [size, size]
        assert pre["resize"]["call"] == (f"torch.nn.functional.interpolate(x, size=({size}, {size}), "
                                         "mode='bilinear', align_corners=False, antialias=False)")
        assert "mode='bilinear', align_corners=False, antialias=False" in pre["formula"]
    assert pre["formula"].startswith("x = (") and "raw / 16" in pre["formula"]
    torch.testing.assert_close(apply_recipe(pre, _raw_digits_test_split(spec)), data.test_x, atol=1e-6, rtol=0)
    # a hand-built Splits knows no recipe: the sidecar says so (null), it does not guess
    assert sidecar.input_section((1, 8, 8), None)["preprocessing"] is None


def test_agreement_and_latency_arithmetic():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    got = ref.copy()
    got[3] = [2.0, 1.0]
    assert verify.compare(ref, got) == (0.75, 2.0)
    with pytest.raises(ValueError, match="shape"):
        verify.compare(ref, ref[:, :1])
    calls = []
    ms = verify.median_latency_ms(lambda: calls.append(1), runs=50, warmup=5)
    assert len(calls) == 55 and 0 <= ms < 10
    with pytest.raises(ValueError, match="at least 50"):
        verify.median_latency_ms(lambda: None, runs=10)


def test_onnx_export_is_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        formats.onnx_bytes(graph.prepare(_model(bits=8), "onnx")[0], X[:1])


def test_trial_numbers_are_listed_as_ranges():
    from autokd.export.trials import _ranges

    assert _ranges([10, 0, 1, 2, 3, 5, 7, 8]) == "0-3, 5, 7-8, 10"
    assert _ranges([]) == "none" and _ranges([4]) == "4"
