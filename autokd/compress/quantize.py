"""Quantization-aware training (QAT) by fake quantization, with hand-written wrapper modules.

Why hand-written: torch provides the fake-quant *ops* (``torch.fake_quantize_per_channel_affine`` /
``torch.fake_quantize_per_tensor_affine``, whose backward is the straight-through estimator), but its module-level
QAT (``torch.ao.quantization``: observers, ``prepare_qat``, qconfigs) is deprecated, and the flow that replaces it
(PT2E, in torchao) rewrites an exported graph for a backend, not the eager modules our training loop, pruning and
FLOP counting work on. Two small wrappers give exactly what the search needs: any bit width from 2 to 8, on any
device, in the ordinary training loop.

Scheme (the usual one of Jacob et al. 2018 / Krishnamoorthi 2018):

* weights: symmetric, per output channel, ``scale = max|w| / (2^(b-1) - 1)``, integers in
  ``[-2^(b-1), 2^(b-1) - 1]``; recomputed from the current weights at every forward, so there is no state;
* input activations: asymmetric affine per tensor, integers in ``[0, 2^b - 1]``, range from a running min/max
  (EMA, momentum 0.1) updated in training and frozen in eval;
* gradients: straight-through (the ops pass the gradient inside the clamping range).

The wrappers subclass ``nn.Conv2d`` / ``nn.Linear`` and call the same ``conv2d`` / ``linear`` ops, so FLOP counting,
``isinstance`` checks and ``state_dict`` keys of the weights keep working; the activation range adds two buffers.
The first conv and the classifier stay at 8 bits by default, as is standard: they are the layers most sensitive to
quantization and a small share of the cost. Because the activation state is per tensor, a quantized model can still
be pruned (torch-pruning sees ordinary convs).

Known limit (measured by ``bench/compress.py`` on digits): 2-bit *activations* with min/max ranges leave four
levels mostly to outliers, so W2A2 stays near chance (and BatchNorm over channels that collapse to a constant can
blow up the gradients), while 2-bit weights with 8-bit activations recover well. Learned ranges are the known
remedy: ``quantizer="lsq"`` below rescues them in part.

``quantizer="lsq"``: learned step sizes, in :mod:`autokd.compress.lsq` (with why NNI's quantizers are not used).
"""

from __future__ import annotations

import contextlib
import copy
import numbers
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

QUANT_BITS = (2, 3, 4, 5, 6, 7, 8, 32)
QUANTIZERS = ("minmax", "lsq")
ACT_MOMENTUM = 0.1


def _check_bits(name: str, bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or int(bits) not in QUANT_BITS:
        raise ValueError(f"{name} must be one of {', '.join(map(str, QUANT_BITS))}, got {bits!r}")
    return int(bits)


class QParams(NamedTuple):
    """An integer grid: ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``, ``x ~ (q - zero_point) * scale``.

    ``scale`` and ``zero_point`` (int32) are 0-d for a per-tensor grid, 1-d along ``axis`` for a per-channel one."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int
    axis: int | None = None


class _FakeQuant:
    """Fake quantization shared by the conv and linear wrappers (a mixin; the state is set by ``_init_quant``)."""

    quantizer = "minmax"
    #: parameters and buffers this quantizer adds to the layer (removed when the layer is re-wrapped by another one)
    _QUANT_STATE: tuple[str, ...] = ("act_min", "act_max", "act_ready")
    w_bits: int
    a_bits: int
    act_min: torch.Tensor
    act_max: torch.Tensor
    act_ready: torch.Tensor

    def _init_quant(self, w_bits: int, a_bits: int) -> None:
        device = self.weight.device
        self.w_bits, self.a_bits = w_bits, a_bits
        # Buffers (not parameters): they follow .to(device) and state_dict, and the optimizer never sees them.
        self.register_buffer("act_min", torch.zeros((), device=device))
        self.register_buffer("act_max", torch.zeros((), device=device))
        self.register_buffer("act_ready", torch.zeros((), dtype=torch.bool, device=device))
        self._calibrated = False

    def set_bits(self, w_bits: int, a_bits: int) -> None:
        """Change the bit widths (e.g. weights and activations apart); 32 turns that quantizer off."""
        self.w_bits, self.a_bits = _check_bits("w_bits", w_bits), _check_bits("a_bits", a_bits)

    def weight_qparams(self) -> QParams | None:
        """The integer grid of the weight the forward uses: symmetric, per output channel (axis 0); ``None`` at
        32 bits. ``quantized_weight()`` is ``fake_quantize_per_channel_affine(weight, *these)``; an exporter
        writes the same numbers (ONNX QuantizeLinear/DequantizeLinear, or the dequantized weight)."""
        if self.w_bits >= 32:
            return None
        w = self.weight
        qmax = 2 ** (self.w_bits - 1) - 1
        # amax over every dim but the output channel, without flatten(1): that would copy a channels_last weight
        amax = w.detach().abs().amax(dim=tuple(range(1, w.dim()))).float()
        scale = (amax / qmax).clamp_min(torch.finfo(torch.float32).tiny)  # an all-zero channel stays zero
        zero_point = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
        return QParams(scale, zero_point, -qmax - 1, qmax, axis=0)

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weight the forward uses: at most ``2^w_bits`` distinct values per output channel."""
        qp = self.weight_qparams()
        if qp is None:
            return self.weight
        w = self.weight
        wq = torch.fake_quantize_per_channel_affine(w.float(), qp.scale, qp.zero_point, 0, qp.qmin, qp.qmax)
        return wq.to(w.dtype)

    def input_qparams(self) -> QParams | None:
        """The integer grid of the input in eval mode: asymmetric affine per tensor, ``[0, 2^a_bits - 1]``, from
        the frozen running range; ``None`` at 32 bits or before any training batch set a range."""
        if self.a_bits >= 32 or not self._calibrated:
            return None
        return self._input_grid(self.act_min, self.act_max)

    def _input_grid(self, lo: torch.Tensor, hi: torch.Tensor) -> QParams:
        qmax = 2 ** self.a_bits - 1
        lo = lo.clamp(max=0.0)  # the range must contain 0 so that zero (padding, ReLU) is exact
        hi = hi.clamp(min=0.0)
        scale = ((hi - lo) / qmax).clamp_min(1e-8)
        zero_point = (-lo / scale).round().clamp(0, qmax).to(torch.int32)
        return QParams(scale, zero_point, 0, qmax)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.a_bits >= 32:
            return x
        if self.training or not self._calibrated:
            with torch.no_grad():
                lo, hi = (t.float() for t in _dense_view(x.detach()).aminmax())
            if self.training:
                with torch.no_grad():
                    if self._calibrated:
                        self.act_min.lerp_(lo, ACT_MOMENTUM)
                        self.act_max.lerp_(hi, ACT_MOMENTUM)
                    else:
                        self.act_min.copy_(lo)
                        self.act_max.copy_(hi)
                        self.act_ready.fill_(True)
                        self._calibrated = True
        if self._calibrated:
            lo, hi = self.act_min, self.act_max
        # (else: evaluated before any training batch: quantize with this batch's own range, store nothing)
        qp = self._input_grid(lo, hi)
        xq = fake_quantize_per_tensor(x.float(), qp.scale, qp.zero_point, qp.qmin, qp.qmax)
        return xq.to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # The Python flag mirrors the buffer so that a forward never has to read a (GPU) tensor to branch.
        self._calibrated = bool(self.act_ready)

    def extra_repr(self) -> str:
        extra = "" if self.quantizer == "minmax" else f", quantizer={self.quantizer}"
        return f"{super().extra_repr()}, w_bits={self.w_bits}, a_bits={self.a_bits}{extra}"


class _FakeQuantPerTensor(torch.autograd.Function):
    """``torch.fake_quantize_per_tensor_affine`` (same values, same straight-through gradient), as plain
    vectorized tensor ops, for the CPU.

    Why by hand: torch's CPU kernel of that op (its cachemask variant, which training runs) is slow on one thread:
    forward and backward of one 64x108x8x8 activation take 3.6 ms on one core, these tensor ops 0.7 ms. A whole
    4-bit MobileNetV2 trial of the demo on one thread (what each of ``--workers 2`` gets on 2 cores) takes 0.94x
    the time with the op; on two threads the difference is within noise. The arithmetic is the op's
    own: ``q = round_half_even(x * (1 / scale)) + zero_point``, the gradient passes where ``qmin <= q <= qmax``,
    the value is ``(clamp(q, qmin, qmax) - zero_point) * scale`` (``tests/test_quantize.py`` checks equality with
    the op, values and gradients, ties included). On CUDA torch's fused kernel is used: one launch instead of nine.

    The mask is not stored as a bool tensor: on the CPU a float comparison into bool (``clamped == q``, 0.2 ms for
    a 64x96x8x8 tensor) and a float-times-bool product in the backward (0.3 ms) each cost 6-10x an ordinary
    elementwise pass. The backward instead reads ``q`` itself through ``hardtanh_backward`` (one vectorized pass:
    the gradient where ``lo < q < hi``): ``q`` holds integers, so ``qmin - 1/2 < q < qmax + 1/2`` is exactly
    ``qmin <= q <= qmax``; a NaN ``q`` is stored as ``qmin - 1`` (outside: no gradient, and it clamps to ``qmin``,
    the op's value for NaN). Forward and backward together: 0.5-0.6x the time of the bool mask on 1 and 2 threads;
    whole QAT trials of the demo (4 and 8 bits): 0.96x on 1 and on 2 threads, weights bitwise unchanged. One
    difference, on a gradient that is already NaN or infinite only: where the mask is off, the op's ``grad * 0``
    is NaN, this one is 0.
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        zp = zero_point.to(x.dtype)
        q = (x * (1.0 / scale)).round_().add_(zp).nan_to_num_(nan=qmin - 1)  # NaN: outside the range
        ctx.bounds = (qmin - 0.5, qmax + 0.5)
        ctx.save_for_backward(q)
        return q.clamp(qmin, qmax).sub_(zp).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (q,) = ctx.saved_tensors
        # hardtanh_backward: grad where lo < q < hi, else 0 (torch.where or grad * mask are several times slower)
        return torch.ops.aten.hardtanh_backward(grad, q, *ctx.bounds), None, None, None, None


def fake_quantize_per_tensor(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int,
                             qmax: int) -> torch.Tensor:
    """``torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)``; on the CPU computed by
    :class:`_FakeQuantPerTensor` (same values and gradient; 3x faster per op than torch's on one thread, see
    there)."""
    if x.device.type == "cpu":
        return _FakeQuantPerTensor.apply(x, scale, zero_point, qmin, qmax)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)


def _dense_view(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself, or, for a channels_last (NHWC) activation, the NHWC view of it, which is contiguous: aminmax
    copies a non-contiguous tensor first, a whole extra pass over the activation at every quantized layer."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1)
    return x


@contextlib.contextmanager
def _fp32(x: torch.Tensor):
    """A fake-quantized layer computes in fp32 even under autocast (``train.precision: bf16``): its input and
    weight lie on a quantization grid that bf16's 8-bit mantissa would round off, so the layer would no longer
    compute what the integer model computes. Yields ``x`` as fp32 with autocast off; a no-op without autocast."""
    kind = x.device.type
    if not torch.is_autocast_enabled(kind):
        yield x
        return
    with torch.autocast(kind, enabled=False):
        yield x.float()


class QuantConv2d(_FakeQuant, nn.Conv2d):
    """``nn.Conv2d`` whose forward uses a fake-quantized weight and input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _fp32(x) as x:
            return self._conv_forward(self.quantize_input(x), self.quantized_weight(), self.bias)


class QuantLinear(_FakeQuant, nn.Linear):
    """``nn.Linear`` whose forward uses a fake-quantized weight and input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _fp32(x) as x:
            return F.linear(self.quantize_input(x), self.quantized_weight(), self.bias)


# The LSQ wrappers subclass the two above (imported here, once they exist: the package imports this module first).
from autokd.compress.lsq import LsqConv2d, LsqLinear  # noqa: E402


# Exact types only: a subclass of Conv2d / Linear may have its own forward (or, like MultiheadAttention's
# out_proj, never be called), and wrapping it would silently change what it computes. Those stay float (32 bits).
_WRAPPABLE = (nn.Conv2d, nn.Linear, QuantConv2d, QuantLinear, LsqConv2d, LsqLinear)
_CLASSES = {("minmax", True): QuantConv2d, ("minmax", False): QuantLinear,
            ("lsq", True): LsqConv2d, ("lsq", False): LsqLinear}


def _check_quantizer(quantizer) -> str:
    if quantizer not in QUANTIZERS:
        raise ValueError(f"quantizer must be one of {', '.join(QUANTIZERS)}, got {quantizer!r}")
    return quantizer


def wrap_layer(module: nn.Module, w_bits: int, a_bits: int, quantizer: str = "minmax") -> nn.Module:
    """A wrapper sharing ``module``'s parameters (same tensors, same device) and attributes.

    A layer already wrapped by the same quantizer only changes its bit widths; by another one, it is re-wrapped
    (that quantizer's state dropped)."""
    quantizer = _check_quantizer(quantizer)
    if isinstance(module, _FakeQuant) and module.quantizer == quantizer:
        module.set_bits(w_bits, a_bits)
        return module
    cls = _CLASSES[quantizer, isinstance(module, nn.Conv2d)]
    q = cls.__new__(cls)
    # Copy the attribute dict (hyper-parameters, _parameters, hooks...), with fresh containers, so that the wrapper
    # is the same layer with another forward; the parameters are the very same tensors.
    q.__dict__.update({k: copy.copy(v) if isinstance(v, (dict, set, list)) else v
                       for k, v in module.__dict__.items()})
    if isinstance(module, _FakeQuant):  # another quantizer's steps or ranges mean nothing to this one
        for name in module._QUANT_STATE:
            q._parameters.pop(name, None)
            q._buffers.pop(name, None)
    q._init_quant(w_bits, a_bits)
    return q


def _first_last(model: nn.Module) -> set[int]:
    """ids of the first conv/linear (first in ``modules()``) and of the classifier's conv/linear layers."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        return set()
    out = {id(layers[0])}
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Module):
        out |= {id(m) for m in head.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    else:
        out.add(id(layers[-1]))
    return out


MIN_DEFAULT_ACT_BITS = 4


def default_act_bits(bits: int) -> int:
    """Activation bits when not given: ``bits``, but at least 4.

    Min/max-ranged activations below 4 bits collapse: measured on digits (seeds 0/1), W2A2 reached 17% (and
    diverged once) while W2A4 reached 76% and W2A8 85%, so a 2-bit search point means 2-bit weights. The same
    default holds for ``lsq``: its W2A2 (59%) is far above min/max's (20%) but 27 points below its W2A4 (86%)
    (``bench/compress.py``, 3 seeds).
    """
    return bits if bits >= 32 else max(bits, MIN_DEFAULT_ACT_BITS)


def quantize_model(model: nn.Module, *, bits: int, act_bits: int | None = None, keep_first_last: bool = True,
                   first_last_bits: int = 8, quantizer: str = "minmax") -> nn.Module:
    """Replace every ``nn.Conv2d`` / ``nn.Linear`` of ``model`` in place by a fake-quantizing wrapper; return it.

    Weights of each layer use ``bits`` and input activations ``act_bits`` (default: :func:`default_act_bits`);
    with ``keep_first_last`` the first conv and the classifier use ``first_last_bits`` for both instead.
    ``bits == 32`` returns the model untouched (no wrappers, so no overhead). Quantizing an already quantized model
    changes the bit widths of its wrappers (or re-wraps them for another ``quantizer``). Train the model
    afterwards (QAT); new layers start with no activation range and take it from the first training batch.
    ``quantizer`` is ``"minmax"`` (ranges from running min/max) or ``"lsq"`` (learned step sizes, see
    :class:`LsqConv2d`); the first conv and the classifier use the same quantizer at ``first_last_bits``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    bits = _check_bits("bits", bits)
    act_bits = default_act_bits(bits) if act_bits is None else _check_bits("act_bits", act_bits)
    first_last_bits = _check_bits("first_last_bits", first_last_bits)
    quantizer = _check_quantizer(quantizer)
    if not isinstance(keep_first_last, bool):
        raise ValueError(f"keep_first_last must be true or false, got {keep_first_last!r}")
    if bits == 32:
        return model
    special = _first_last(model) if keep_first_last else set()
    done: dict[int, nn.Module] = {}  # a layer used at two places is wrapped once

    def bits_of(m: nn.Module) -> tuple[int, int]:
        return (first_last_bits, first_last_bits) if id(m) in special else (bits, act_bits)

    if type(model) in _WRAPPABLE:
        return wrap_layer(model, *bits_of(model), quantizer)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in _WRAPPABLE:
                if id(child) not in done:
                    done[id(child)] = wrap_layer(child, *bits_of(child), quantizer)
                setattr(parent, name, done[id(child)])
    return model


def layer_bits(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Leaf module name -> (weight bits, activation bits) of every Conv2d / Linear; (32, 32) when not quantized."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, _FakeQuant):
            out[name] = (m.w_bits, m.a_bits)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            out[name] = (32, 32)
    return out


def layer_quantizers(model: nn.Module) -> dict[str, str]:
    """Leaf module name -> quantizer (``"minmax"`` / ``"lsq"``) of every fake-quantized layer."""
    return {name: m.quantizer for name, m in model.named_modules() if isinstance(m, _FakeQuant)}


def quantizer_parameters(model: nn.Module) -> set[int]:
    """ids of the quantizers' own parameters (LSQ step sizes): scales, not weights, so not counted in a model's
    parameters or size (as min/max ranges and per-channel scales are not)."""
    return {id(getattr(m, name)) for m in model.modules() if isinstance(m, _FakeQuant)
            for name in m._QUANT_STATE if isinstance(getattr(m, name, None), nn.Parameter)}
