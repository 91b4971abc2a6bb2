"""Export-friendly stand-ins for fake-quantized layers: the eval forward, in ops an exporter writes.

The eval forward of a quantized layer (:class:`autokd.compress.quantize._FakeQuant`, or any layer implementing the
same two methods) is ``conv/linear(fake_quant(x, input_qparams()), fake_quant(weight, weight_qparams()))``. Only
those two integer grids (``QParams``) and the bit widths are read here, so any quantizer that reports its grids
(min/max ranges, LSQ) exports the same way.

Per target:

* ``onnx``: a weight on a full 8-bit grid (``[-128, 127]`` or ``[0, 255]``) is stored as its integers (an
  int8/uint8 initializer) followed by ``DequantizeLinear`` -- the weight half of ONNX's QDQ format, as
  onnxruntime's own quantizer writes it; an activation on a full 8-bit grid becomes a ``QuantizeLinear`` /
  ``DequantizeLinear`` pair (``torch.fake_quantize_per_tensor_affine``, which the exporter maps to exactly that).
  Below 8 bits ONNX's Q/DQ would saturate to the full int8 range, not to the layer's grid, so the weight is stored
  as its dequantized float values and the activation as float ``Round``/``Clip`` arithmetic: the model is
  *simulated* (it computes what the quantized model computes, in float).
* ``torchscript``: the weight is stored dequantized (computed once) and the activation keeps torch's fake-quant
  op, which takes any grid: exactly the eval forward, whatever the bit width.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autokd.compress.quantize import QParams, _FakeQuant

TARGETS = ("onnx", "torchscript")
INT_GRIDS = {(-128, 127): torch.int8, (0, 255): torch.uint8}  # the grids ONNX's Q/DQ represent exactly


class ExportError(ValueError):
    """A model that cannot be written as asked (e.g. a quantized layer that never saw a batch)."""


@dataclass(frozen=True)
class LayerPlan:
    """How one quantized layer is written: ``weights`` in {"float", "int8", "uint8", "dequantized", "fake_quant"},
    ``activations`` in {"float", "int8", "uint8", "round_clip", "fake_quant"} (int8/uint8: real ONNX Q/DQ;
    dequantized: the grid's values as float constants; round_clip: float arithmetic; fake_quant: torch's op, or
    in a state_dict the rebuilt layer's own forward)."""

    name: str
    w_bits: int
    a_bits: int
    weights: str
    activations: str
    off_grid: bool = False  # a grid that is neither ONNX's int8 [-128, 127] nor uint8 [0, 255] (any below 8 bits)

    @property
    def simulated(self) -> bool:
        """Below 8 bits, or on a grid ONNX's Q/DQ cannot hold: no integer runtime computes it as such."""
        return self.w_bits < 8 or self.a_bits < 8 or self.off_grid

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "simulated": self.simulated}


def _grid_key(qp: QParams) -> tuple[int, int]:
    return int(qp.qmin), int(qp.qmax)


def _shape_along(t: torch.Tensor, dim: int, axis: int) -> torch.Tensor:
    shape = [1] * dim
    shape[axis] = -1
    return t.reshape(shape)


def dequantized_weight(weight: torch.Tensor, qp: QParams | None) -> torch.Tensor:
    """The weight the eval forward uses: ``fake_quant(weight, qp)`` (the weight itself without a grid)."""
    w = weight.detach().float()
    if qp is None:
        return w.clone()
    scale, zp = qp.scale.detach().float(), qp.zero_point.detach().to(torch.int32)
    if qp.axis is None:
        return torch.fake_quantize_per_tensor_affine(w, scale.reshape(()), zp.reshape(()), qp.qmin, qp.qmax)
    return torch.fake_quantize_per_channel_affine(w, scale, zp, qp.axis, qp.qmin, qp.qmax)


def integer_weight(weight: torch.Tensor, qp: QParams) -> torch.Tensor:
    """The weight's integers on its grid (``clamp(round(w / scale) + zp)``), as int8/uint8."""
    w = weight.detach().float()
    scale, zp = qp.scale.detach().float(), qp.zero_point.detach().float()
    if qp.axis is not None:
        scale, zp = _shape_along(scale, w.dim(), qp.axis), _shape_along(zp, w.dim(), qp.axis)
    # the fake-quant ops multiply by the reciprocal: the same integers as the forward's
    q = torch.round(w * (1.0 / scale)) + zp
    return q.clamp(qp.qmin, qp.qmax).to(INT_GRIDS[_grid_key(qp)])


class _Dequantize(torch.autograd.Function):
    """int8/uint8 tensor -> float, written as ONNX ``DequantizeLinear`` (per tensor, or per channel on axis 0)."""

    @staticmethod
    def forward(ctx, q, scale, zero_point, per_channel: bool):  # noqa: D102
        if per_channel:
            scale, zero_point = _shape_along(scale, q.dim(), 0), _shape_along(zero_point, q.dim(), 0)
        return (q.float() - zero_point.float()) * scale

    @staticmethod
    def symbolic(g, q, scale, zero_point, per_channel: bool):  # noqa: D102
        if per_channel:
            return g.op("DequantizeLinear", q, scale, zero_point, axis_i=0)
        return g.op("DequantizeLinear", q, scale, zero_point)


class IntWeight(nn.Module):
    """A weight stored as its integers with its grid's scale and zero point; ``forward()`` dequantizes it."""

    def __init__(self, weight: torch.Tensor, qp: QParams):
        super().__init__()
        if qp.axis not in (None, 0):
            raise ExportError(f"weight grid along axis {qp.axis}: only per tensor or per output channel export")
        q = integer_weight(weight, qp)
        self.per_channel = qp.axis is not None
        self.register_buffer("q", q)
        self.register_buffer("scale", qp.scale.detach().float().clone())
        self.register_buffer("zero_point", qp.zero_point.detach().to(q.dtype).clone())

    def forward(self) -> torch.Tensor:
        return _Dequantize.apply(self.q, self.scale, self.zero_point, self.per_channel)


class ActQuant(nn.Module):
    """The input quantizer of a layer: ``mode`` "real" (torch's fake-quant op: ONNX Q/DQ at 8 bits, TorchScript's
    op at any width) or "round_clip" (the same arithmetic as float ops: ``Mul``, ``Round``, ``Add``, ``Clip``)."""

    def __init__(self, qp: QParams, mode: str):
        super().__init__()
        if qp.axis is not None:
            raise ExportError("activation grids per channel are not exported")
        self.mode, self.qmin, self.qmax = mode, int(qp.qmin), int(qp.qmax)
        scale = qp.scale.detach().float().reshape(())
        self.register_buffer("scale", scale.clone())
        self.register_buffer("inv_scale", 1.0 / scale)  # the op multiplies by the float32 reciprocal
        self.register_buffer("zero_point", qp.zero_point.detach().to(torch.int32).reshape(()).clone())
        self.register_buffer("zp_float", self.zero_point.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "real":
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.qmin, self.qmax)
        q = torch.clamp(torch.round(x * self.inv_scale) + self.zp_float, self.qmin, self.qmax)
        return (q - self.zp_float) * self.scale


class ExportLayer(nn.Module):
    """A quantized conv/linear as the exporter should see it: input quantizer, then the layer with a fixed weight
    (a float parameter) or an :class:`IntWeight`."""

    def __init__(self, layer: nn.Module, act: ActQuant | None, int_weight: IntWeight | None):
        super().__init__()
        self.layer, self.act, self.int_weight = layer, act, int_weight
        self.is_conv = isinstance(layer, nn.Conv2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            x = self.act(x)
        if self.int_weight is None:
            return self.layer(x)
        w = self.int_weight()
        if self.is_conv:
            return self.layer._conv_forward(x, w, self.layer.bias)
        return F.linear(x, w, self.layer.bias)


def _plain_copy(m: nn.Module, weight: torch.Tensor | None) -> nn.Module:
    """A plain ``nn.Conv2d``/``nn.Linear`` with ``m``'s hyper-parameters and bias, and ``weight`` (None: the
    weight is supplied at forward time)."""
    if isinstance(m, nn.Conv2d):
        out = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                        dilation=m.dilation, groups=m.groups, bias=m.bias is not None, padding_mode=m.padding_mode)
    else:
        out = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    with torch.no_grad():
        if m.bias is not None:
            out.bias.copy_(m.bias.detach().float())
        if weight is None:
            del out.weight
            out.register_parameter("weight", None)
        else:
            out.weight.copy_(weight)
    return out.requires_grad_(False)


def export_layer(name: str, m: nn.Module, target: str) -> tuple[nn.Module, LayerPlan]:
    """The stand-in of one quantized layer ``m`` for ``target``, and how it is written."""
    w_qp, a_qp = m.weight_qparams(), m.input_qparams()
    if a_qp is None and m.a_bits < 32:
        raise ExportError(f"layer {name} quantizes its input to {m.a_bits} bits but has no range yet "
                          "(it never saw a training batch)")
    int_weight, weights = None, "float"
    if w_qp is not None:
        if target == "onnx" and _grid_key(w_qp) in INT_GRIDS:
            int_weight = IntWeight(m.weight, w_qp)
            weights = "int8" if int_weight.q.dtype == torch.int8 else "uint8"
        else:
            weights = "dequantized"
    layer = _plain_copy(m, None if int_weight is not None else dequantized_weight(m.weight, w_qp))
    act, activations = None, "float"
    if a_qp is not None:
        if target == "torchscript":
            act, activations = ActQuant(a_qp, "real"), "fake_quant"
        elif _grid_key(a_qp) in INT_GRIDS:
            act = ActQuant(a_qp, "real")
            activations = "int8" if a_qp.qmin < 0 else "uint8"
        else:
            act, activations = ActQuant(a_qp, "round_clip"), "round_clip"
    off_grid = any(qp is not None and _grid_key(qp) not in INT_GRIDS for qp in (w_qp, a_qp))
    plan = LayerPlan(name, int(m.w_bits), int(m.a_bits), weights, activations, off_grid)
    return ExportLayer(layer, act, int_weight).eval(), plan


def prepare(model: nn.Module, target: str) -> tuple[nn.Module, list[LayerPlan]]:
    """A copy of ``model`` (eval mode, on the CPU, no gradients) whose quantized layers are replaced by their
    export stand-ins for ``target`` ("onnx" or "torchscript"), and the plan of every quantized layer."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    out = copy.deepcopy(model).cpu().eval().requires_grad_(False)
    plans: list[LayerPlan] = []
    done: dict[int, nn.Module] = {}  # a layer used at two places is replaced once
    for name, m in list(out.named_modules()):
        if isinstance(m, _FakeQuant) and id(m) not in done:
            done[id(m)], plan = export_layer(name, m, target)
            plans.append(plan)
    if isinstance(out, _FakeQuant):
        return done[id(out)], plans
    for parent in list(out.modules()):
        for child_name, child in list(parent.named_children()):
            if id(child) in done:
                setattr(parent, child_name, done[id(child)])
    return out, plans


def is_simulated(plans: list[LayerPlan]) -> bool:
    """Whether any quantized layer is below 8 bits (its grid simulated in float arithmetic)."""
    return any(p.simulated for p in plans)


def layer_plans(model: nn.Module) -> list[LayerPlan]:
    """The quantized layers of ``model`` as the trained model computes them (weights and inputs fake-quantized at
    each forward): what a ``state_dict`` export rebuilds."""
    plans = []
    for name, m in model.named_modules():
        if isinstance(m, _FakeQuant):
            w_qp, a_qp = m.weight_qparams(), m.input_qparams()
            off_grid = any(qp is not None and _grid_key(qp) not in INT_GRIDS for qp in (w_qp, a_qp))
            plans.append(LayerPlan(name, int(m.w_bits), int(m.a_bits), "float" if w_qp is None else "fake_quant",
                                   "float" if a_qp is None else "fake_quant", off_grid))
    return plans
