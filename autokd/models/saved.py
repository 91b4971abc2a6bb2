"""Trained trial models as data, not code: a ``state_dict`` plus what rebuilds the module.

A pruned and quantized student no longer has the shapes its family builds, so the file records, beside the
weights, every conv/linear/batch-norm layer's channel counts after pruning and every quantized layer's bit widths
and quantizer (``minmax`` or ``lsq``).
:func:`rebuild` builds the family's model from the resolved settings, gives each recorded layer its saved shape and
bits, and loads the weights strictly. Files are read with ``torch.load(weights_only=True)``: nothing in them is
unpickled as code, so a model from a shared artifact store is as safe to load as a tensor.

Why by hand: ``torch.save(model)`` pickles code (unsafe from a shared store, and tied to autokd's class layout);
``torch.export``/TorchScript capture the forward but not a trainable module. The layer table is small and exact.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autokd.compress.quantize import _FakeQuant, wrap_layer
from autokd.models.registry import build_model

SAVED_FORMAT = 2  # 1: a pickled module (autokd 0.1 before the artifact store)


class LegacyModelFile(ValueError):
    """A trial model written by an older autokd as a pickled module (loadable only with ``trust_pickle``)."""


def layer_table(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Shape (and bit widths) of every conv, linear and batch-norm layer, by its dotted name."""
    table: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            row = {"type": "conv2d", "in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            row = {"type": "linear", "in": m.in_features, "out": m.out_features}
        elif isinstance(m, nn.BatchNorm2d):
            row = {"type": "batchnorm2d", "features": m.num_features}
        else:
            continue
        if isinstance(m, _FakeQuant):
            row["w_bits"], row["a_bits"] = m.w_bits, m.a_bits
            row["quantizer"] = m.quantizer
        table[name] = row
    return table


def _resized(m: nn.Module, row: dict[str, Any]) -> nn.Module:
    """A fresh layer like ``m`` with the recorded shape (hyper-parameters other than channel counts kept)."""
    if row["type"] == "conv2d":
        return nn.Conv2d(row["in"], row["out"], m.kernel_size, stride=m.stride, padding=m.padding,
                         dilation=m.dilation, groups=row["groups"], bias=m.bias is not None,
                         padding_mode=m.padding_mode)
    if row["type"] == "linear":
        return nn.Linear(row["in"], row["out"], bias=m.bias is not None)
    return nn.BatchNorm2d(row["features"], eps=m.eps, momentum=m.momentum, affine=m.affine,
                          track_running_stats=m.track_running_stats)


def rebuild(arch: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """The module that ``arch`` (from :func:`architecture`) describes, with ``state_dict`` loaded, in eval mode."""
    model = build_model(arch["family"], num_classes=arch["num_classes"], in_channels=arch["in_channels"],
                        **arch["arch"])
    modules = dict(model.named_modules())
    for name, row in arch["layers"].items():
        if name not in modules:
            raise ValueError(f"layer {name!r} of the saved model does not exist in a {arch['family']} model")
        layer = _resized(modules[name], row)
        if "w_bits" in row:
            # files written before quantizers were a choice hold min/max layers and no "quantizer"
            layer = wrap_layer(layer, row["w_bits"], row["a_bits"], row.get("quantizer", "minmax"))
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, layer)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def architecture(model: nn.Module, *, family: str, arch: dict[str, Any], num_classes: int,
                 in_channels: int) -> dict[str, Any]:
    """What rebuilds ``model``: its family and architecture arguments, and the layer table after compression."""
    return {"family": family, "arch": dict(arch), "num_classes": num_classes, "in_channels": in_channels,
            "layers": layer_table(model)}


def model_bytes(model: nn.Module, *, arch: dict[str, Any], record: dict[str, Any]) -> bytes:
    """The saved form of a model: ``{"format", "architecture", "state_dict", **record}`` as torch.save bytes.

    ``record`` holds plain data only (numbers, strings, lists, dicts): it is read back with weights_only."""
    buf = io.BytesIO()
    torch.save({"format": SAVED_FORMAT, "architecture": arch,
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **record}, buf)
    return buf.getvalue()


def read_model(source: str | Path | bytes, *, trust_pickle: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """``(model in eval mode, record)`` from a saved model (file path or bytes).

    Read with ``weights_only=True``. A file of the old format (a pickled module) raises :class:`LegacyModelFile`
    unless ``trust_pickle`` (only for files you or your own search wrote)."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    try:
        blob = torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as exc:  # an old pickled module is refused by the weights-only unpickler
        if not trust_pickle:
            raise LegacyModelFile(f"not a weights-only autokd model file ({type(exc).__name__}); a trial model "
                                  "saved by autokd 0.1 holds a pickled module: load it with "
                                  "load_trial_model(path, trust_pickle=True) if you trust the file") from None
        if isinstance(handle, io.BytesIO):
            handle.seek(0)
        blob = torch.load(handle, map_location="cpu", weights_only=False)
        if not isinstance(blob, dict) or not isinstance(blob.get("model"), nn.Module):
            raise ValueError("not an autokd model file") from None
        model = blob.pop("model")
        return model.eval(), blob
    if not isinstance(blob, dict) or blob.get("format") != SAVED_FORMAT:
        raise ValueError(f"not an autokd model file of format {SAVED_FORMAT}")
    model = rebuild(blob.pop("architecture"), blob.pop("state_dict"))
    return model, blob
