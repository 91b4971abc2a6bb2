"""The three file formats, as bytes: ONNX, TorchScript and a plain ``state_dict``.

ONNX is written by torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``). Why not the
default (dynamo) exporter of torch 2.14: it needs ``onnxscript``, one more package in the ``export`` extra, and it
does not run an ``autograd.Function``'s ``symbolic``, which is how an integer weight becomes an int8 initializer
followed by ``DequantizeLinear``. The TorchScript-based exporter maps ``torch.fake_quantize_per_tensor_affine`` on
the grids (0, 255) / (-128, 127) to a ``QuantizeLinear``/``DequantizeLinear`` pair and runs the ``symbolic``.
torch marks it deprecated (a warning, silenced here); the day it is removed, :mod:`autokd.export.graph`'s stand-ins
are what a ``custom_translation_table`` of the dynamo exporter would map.

``dynamo=False`` is passed only where ``torch.onnx.export`` has that keyword (:func:`_legacy_exporter`): it
appeared with the dynamo exporter's entry through ``torch.onnx.export`` (torch 2.4/2.5, default ``False``) and
defaults to ``True`` since torch 2.9; a torch without it has only the TorchScript-based exporter behind that
function, so leaving it out asks for the same thing, and the ``export`` extra needs no torch floor of its own.
"""

from __future__ import annotations

import functools
import inspect
import io
import warnings
from collections import Counter
from typing import Any

import torch
from torch import nn

FORMATS = ("onnx", "torchscript", "state_dict")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "state_dict": ".state_dict.pt"}
OPSET = 17  # >= 13: per-channel DequantizeLinear (axis)
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@functools.lru_cache(maxsize=1)
def _legacy_exporter() -> dict[str, Any]:
    """The keywords that select the TorchScript-based exporter: ``{"dynamo": False}`` where ``torch.onnx.export``
    takes ``dynamo``, else none (an older torch, which has no other exporter behind that function)."""
    try:
        params = inspect.signature(torch.onnx.export).parameters
    except (TypeError, ValueError):  # not introspectable: assume a current torch
        return {"dynamo": False}
    return {"dynamo": False} if "dynamo" in params else {}


def onnx_bytes(module: nn.Module, example: torch.Tensor) -> bytes:
    """``module`` (from :func:`autokd.export.graph.prepare` with target "onnx") as an ONNX model with a dynamic
    batch dimension: input ``input`` (N, C, H, W) float32, output ``logits`` (N, classes)."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice and tracer warnings
        torch.onnx.export(module, (example,), buf, **_legacy_exporter(), opset_version=OPSET, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return buf.getvalue()


def torchscript_bytes(module: nn.Module, example: torch.Tensor, *, extra: dict[str, str] | None = None) -> bytes:
    """``module`` (from :func:`autokd.export.graph.prepare` with target "torchscript") traced with ``example`` and
    saved by ``torch.jit.save``; ``extra`` are files stored inside the archive (``_extra_files``)."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice and tracer warnings
        traced = torch.jit.trace(module, example, check_trace=False)
        torch.jit.save(traced, buf, _extra_files=dict(extra or {}))
    return buf.getvalue()


def state_dict_bytes(model: nn.Module) -> bytes:
    """The model's ``state_dict`` (CPU tensors only: loadable with ``torch.load(..., weights_only=True)``)."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


def onnx_summary(data: bytes) -> dict[str, Any]:
    """What an ONNX model holds, once ``onnx.checker`` passed it: op counts, opset, how many initializers are
    int8/uint8 and how many of those are weights (needs ``onnx``)."""
    import onnx

    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)  # a malformed graph fails here, not in someone's runtime
    ops = Counter(n.op_type for n in model.graph.node)
    int_types = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8"}
    ints = [i for i in model.graph.initializer if i.data_type in int_types]
    weights = Counter(int_types[i.data_type] for i in ints if len(i.dims) >= 2)  # not the zero points (1-d)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)
    return {"opset": opset, "ops": dict(sorted(ops.items())),
            "integer_initializers": dict(Counter(int_types[i.data_type] for i in ints)),
            "integer_weights": dict(weights)}
