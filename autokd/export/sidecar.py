"""The JSON sidecar written beside every exported model: what it is, how well it did, and what rebuilds it.

Keys: ``autokd_sidecar`` (format version), ``format``, ``file`` (the model's file name, beside the sidecar),
``study``, ``trial``, ``params``, ``settings``, ``values`` (the objective values), ``metrics`` (the mean over the
trial's repeats), ``repeats`` (how many), ``model_repeat`` (whose weights the file holds: repeat 0),
``model_metrics`` (that repeat's own metrics), ``repeat_metrics`` (each repeat's), ``architecture`` (family,
architecture arguments, classes, input channels and ``layers``: every conv/linear/batch-norm's channel counts
after pruning, with ``w_bits``/``a_bits`` for quantized layers -- :func:`autokd.models.saved.rebuild` takes it with
the state_dict), ``input`` (name, shape, dtype, and ``preprocessing``: how raw images become the input -- see
:func:`input_section`), ``quantization`` (``simulated`` and, per quantized
layer, how its weights and input activations are written), ``simulated``, ``onnx`` (op counts, ONNX only) and
``check`` (agreement on the test split, largest logit difference, latency per image). A TorchScript archive also
carries the sidecar inside (``autokd.json`` in its extra files), as it was before the check.
"""

from __future__ import annotations

import json
import math
from typing import Any

from torch import nn

from autokd.export.graph import LayerPlan, is_simulated
from autokd.models.saved import architecture

SIDECAR_VERSION = 1


def rebuild_info(model: nn.Module, settings: dict[str, Any], *, num_classes: int, in_channels: int) -> dict[str, Any]:
    """The architecture record that :func:`autokd.models.saved.rebuild` takes (as the search saved it)."""
    arch = dict(settings.get("model", {}))
    family = arch.pop("family", None)
    if family is None:
        raise ValueError("the trial's settings do not name its model family")
    return architecture(model, family=family, arch=arch, num_classes=num_classes, in_channels=in_channels)


def metrics_of(trial_attrs: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` (mean), ``repeats``, ``model_repeat``, ``model_metrics``, ``repeat_metrics`` of a trial."""
    raw = dict(trial_attrs.get("metrics") or {})
    per_repeat = raw.pop("repeats", None) or [dict(raw)]
    model_repeat = int(trial_attrs.get("model_repeat", 0) or 0)
    model_metrics = per_repeat[model_repeat] if model_repeat < len(per_repeat) else dict(raw)
    return {"metrics": raw, "repeats": len(per_repeat), "model_repeat": model_repeat,
            "model_metrics": dict(model_metrics), "repeat_metrics": [dict(m) for m in per_repeat]}


def build(*, fmt: str, file: str, study: str, trial: Any, settings: dict[str, Any], arch: dict[str, Any],
          plans: list[LayerPlan], input_shape: tuple[int, ...], preprocessing: dict[str, Any] | None = None,
          extra: dict[str, Any] | None = None, value_names: list[str] | None = None) -> dict[str, Any]:
    """The sidecar of one export, before its check (see :func:`with_check`). ``preprocessing``: the data's
    :meth:`autokd.data.Splits.preprocessing` (``None``: unknown). ``value_names`` name ``values`` (the study's
    ``metric_names``: a cost told on the log10 scale is ``log10_<metric>``; ``metrics`` keep raw counts)."""
    simulated = is_simulated(plans)
    return {
        "autokd_sidecar": SIDECAR_VERSION,
        "format": fmt,
        "file": file,
        "study": study,
        "trial": trial.number,
        "params": dict(trial.params),
        "values": list(trial.values) if trial.values is not None else None,
        "value_names": list(value_names) if value_names else None,
        **metrics_of(trial.user_attrs),
        "settings": settings,
        "architecture": arch,
        "input": input_section(input_shape, preprocessing, settings.get("dataset")),
        "output": {"name": "logits", "shape": [1, arch["num_classes"]]},
        "quantization": {"simulated": simulated, "layers": {p.name: p.as_dict() for p in plans}},
        "simulated": simulated,
        **(extra or {}),
    }


def input_section(input_shape: tuple[int, ...], preprocessing: dict[str, Any] | None,
                  dataset: Any = None) -> dict[str, Any]:
    """The sidecar's ``input``: tensor name, shape (batch 1; the batch dimension is dynamic), dtype, layout, and
    ``preprocessing``, what turns raw images into that tensor, as :func:`autokd.data.load_dataset` did for the
    search: ``formula`` (one line), ``raw`` (what the raw images are), ``pixel_max`` (the raw value scaled to
    1.0), ``resize`` (``null``, or ``from``/``to`` sizes and the exact ``torch.nn.functional.interpolate`` call),
    ``mean``/``std`` per channel. So the file and its sidecar are enough to feed raw images."""
    return {"name": "input", "shape": [1, *input_shape], "dtype": "float32", "layout": "NCHW", "batch": "dynamic",
            "preprocessing": preprocessing, "dataset": dataset}


def with_check(sidecar: dict[str, Any], check: dict[str, Any]) -> dict[str, Any]:
    return {**sidecar, "check": check}


def clean(value: Any) -> Any:
    """NaN/inf as null (in dicts, lists and tuples, keys as strings): what stays strict JSON, for the files and
    for ``autokd export --json`` alike."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def dumps(sidecar: dict[str, Any]) -> str:
    """One sidecar as strict JSON text (:func:`clean` first)."""
    return json.dumps(clean(sidecar), indent=2, sort_keys=False, allow_nan=False) + "\n"
