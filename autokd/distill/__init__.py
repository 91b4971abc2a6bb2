"""Knowledge distillation methods behind one small interface: a method's name and settings in, a training loss
out. ``hinton`` (the default) is autokd's own loss on cached teacher logits (:mod:`autokd.distill.hinton`); the
other logit methods are torchdistill's modules (:mod:`autokd.distill.logit`)."""

from autokd.distill.hinton import kd_loss, soft_target_loss
from autokd.distill.logit import LOGIT_METHODS, LogitMethod, logit_loss

__all__ = ["LOGIT_METHODS", "LogitMethod", "kd_loss", "logit_loss", "soft_target_loss"]
