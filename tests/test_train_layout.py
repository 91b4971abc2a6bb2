"""Training speed settings that must not change what is trained: channels_last during training only, bf16
autocast only on CUDA, fake-quantized layers in fp32 under autocast, global pooling as a mean."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from autokd.compress import quantize_model
from autokd.models.layers import GlobalAvgPool
from autokd.train import Optim, fit, mixed_precision, training_memory_format


def _convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8,
                         padding=1), GlobalAvgPool(), nn.Flatten(), nn.Linear(8, 4))


def test_fit_trains_in_channels_last_and_hands_back_the_default_layout():
    model = _convnet()
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 4, (32,))
    seen = []

    def on_epoch(epoch, epochs, loss):
        w = model[0].weight
        seen.append(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous())

    assert training_memory_format("cpu") == torch.channels_last
    fit(model, x, y, Optim(epochs=2, lr=0.05, batch_size=8), seed=0, on_epoch=on_epoch)
    assert seen == [True, True]
    assert all(p.is_contiguous() for p in model.parameters())  # evaluated and saved as a rebuilt model is


def test_channels_last_trains_the_same_model_to_float_rounding():
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 4, (32,))
    a, b = _convnet(), _convnet()
    fit(a, x, y, Optim(epochs=1, lr=0.01, batch_size=8), seed=0)
    import autokd.train as train
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "training_memory_format", lambda device: torch.contiguous_format)
        fit(b, x, y, Optim(epochs=1, lr=0.01, batch_size=8), seed=0)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_global_avg_pool_is_adaptive_avg_pool():
    x = torch.randn(4, 6, 5, 7)
    torch.testing.assert_close(GlobalAvgPool()(x), nn.AdaptiveAvgPool2d(1)(x))


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_bf16_autocast_only_on_cuda():
    assert isinstance(mixed_precision("bf16", "cpu"), contextlib.nullcontext)
    assert isinstance(mixed_precision("fp32", "cuda"), contextlib.nullcontext)
    assert isinstance(mixed_precision("bf16", "cuda"), torch.autocast)
    with pytest.raises(ValueError, match="valid: fp32, bf16"):
        mixed_precision("fp16", "cpu")
    assert Optim.from_train(type("T", (), dict(epochs=1, lr=0.1, optimizer="sgd", weight_decay=0, momentum=0,
                                                schedule="cosine", label_smoothing=0, batch_size=8, grad_clip=None,
                                                precision="bf16"))()).precision == "bf16"


def test_fake_quantized_layers_stay_fp32_under_autocast():
    """Under autocast a quantized layer still computes exactly its fp32 result on the quantization grid (bf16's
    8-bit mantissa would round the grid off); float layers around it run in bf16. Checked with the CPU's autocast,
    the same mechanism as CUDA's."""
    model = quantize_model(_convnet(), bits=4, act_bits=4, keep_first_last=False).eval()
    x = torch.randn(4, 3, 8, 8)
    model.train()
    model(x)  # calibrate the activation ranges
    model.eval()
    conv = model[0]
    want = conv(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = conv(x)
        plain = nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert plain.dtype == torch.bfloat16  # autocast was on around it


def test_quantized_layers_do_not_copy_channels_last_activations():
    """Activation ranges read a channels_last activation through its NHWC view (no copy), with the same result
    as from the same values laid out NCHW."""
    from torch.profiler import ProfilerActivity, profile

    act = torch.randn(8, 8, 8, 8)
    seen = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        layer = quantize_model(_convnet(), bits=4, act_bits=4, keep_first_last=False)[3].train()
        laid_out = act.contiguous(memory_format=fmt)
        with profile(activities=[ProfilerActivity.CPU]) as prof, torch.no_grad():
            out = layer.quantize_input(laid_out)
        seen[fmt] = (float(layer.act_min), float(layer.act_max), out.contiguous())
        copies = {e.name for e in prof.events()} & {"aten::contiguous", "aten::clone"}
        assert not copies, (fmt, copies)
    (lo1, hi1, out1), (lo2, hi2, out2) = seen.values()
    assert (lo1, hi1) == (lo2, hi2) == (float(act.min()), float(act.max()))
    assert torch.equal(out1, out2)
