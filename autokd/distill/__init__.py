"""Knowledge distillation methods behind one small interface: a method's name and settings in, a training loss
out. ``hinton`` (the default) is autokd's own loss on cached teacher logits (:mod:`autokd.distill.hinton`); the
other logit methods are torchdistill's modules (:mod:`autokd.distill.logit`); the feature methods run the teacher
on each batch and read both networks' features through hooks (:mod:`autokd.distill.features`)."""

from typing import Any

from autokd.distill.features import FEATURE_METHODS, FeatureDistiller, FeatureMethod, feature_pairs
from autokd.distill.hinton import kd_loss, soft_target_loss
from autokd.distill.logit import LOGIT_METHODS, LogitMethod, logit_loss

KD_METHODS = (*LOGIT_METHODS, *FEATURE_METHODS)


def method_settings(distill: Any) -> dict[str, Any]:
    """The settings of ``distill.method`` from a resolved ``DistillSpec`` (its ``distill.<method>`` block; none
    for ``hinton``, whose temperature is ``distill.temperature``)."""
    block = getattr(distill, distill.method, None) if distill.method != "hinton" else None
    return {} if block is None else block.model_dump(mode="python")


__all__ = ["FEATURE_METHODS", "KD_METHODS", "LOGIT_METHODS", "FeatureDistiller", "FeatureMethod", "LogitMethod",
           "feature_pairs", "kd_loss", "logit_loss", "method_settings", "soft_target_loss"]
