"""KD methods that need only the teacher's logits: they run on the cached view-pool logits at no teacher cost.

``hinton`` is autokd's own loss (:mod:`autokd.distill.hinton`); the others are torchdistill's loss modules
(``torchdistill.losses.mid_level``, imported when first used: ~2 ms once torch is loaded). Whatever the method,
autokd's ``alpha`` weights the distillation term against cross-entropy, as it always has for ``hinton``::

    loss = alpha * L_method(student, teacher) + (1 - alpha) * CE(student, y)

(torchdistill's own ``alpha`` weights the cross-entropy instead, and some of its modules have no CE term at all:
the cross-entropy is always autokd's, with its label smoothing.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autokd.distill.hinton import kd_loss

LogitLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (student, teacher, y) -> loss


@dataclass(frozen=True)
class LogitMethod:
    """One logit KD method: its name, its paper, its settings' defaults (from the paper) and how to build its
    distillation term (``None`` for ``hinton``, which keeps autokd's own loss)."""

    name: str
    paper: str
    defaults: dict[str, float] = field(default_factory=dict)
    term: Callable[[dict[str, float]], nn.Module] | None = None


def _io(logits: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    # torchdistill's modules read tensors from {module_path: {'input'|'output': tensor}}; "." is the whole model
    return {".": {"output": logits}}


def _dist(settings: dict[str, float]) -> nn.Module:
    from torchdistill.losses.mid_level import DISTLoss
    return DISTLoss(".", "output", ".", "output", beta=settings["beta"], gamma=settings["gamma"],
                    tau=settings["tau"])


def _logit_std(settings: dict[str, float]) -> nn.Module:
    from torchdistill.losses.mid_level import LogitStdKDLoss
    # Without alpha the module returns the soft term alone, and without T² (its formula multiplies T² in only
    # beside the CE term): T² is put back by the caller, as the paper's loss has it. beta is unused then, but
    # torchdistill 1.1.5 computes `1 - alpha` when it is left out, which fails for alpha None.
    return LogitStdKDLoss(".", "output", ".", "output", temperature=settings["temperature"], beta=1.0)


LOGIT_METHODS: dict[str, LogitMethod] = {
    m.name: m for m in (
        LogitMethod("hinton", "Hinton, Vinyals & Dean 2015, Distilling the knowledge in a neural network"),
        # beta (inter-class) and gamma (intra-class) weights and tau: the paper's defaults (Huang et al. 2022, §4)
        LogitMethod("dist", "Huang, You, Wang, Qian & Xu 2022, Knowledge distillation from a stronger teacher",
                    {"beta": 1.0, "gamma": 1.0, "tau": 1.0}, _dist),
        # the base temperature of the paper's CIFAR-100 runs (Sun et al. 2024, §4.1)
        LogitMethod("logit_std", "Sun, Ren, Li, Wang & Cao 2024, Logit standardization in knowledge distillation",
                    {"temperature": 2.0}, _logit_std),
    )
}


def logit_loss(method: str, *, temperature: float, alpha: float, label_smoothing: float = 0.0,
               settings: dict[str, Any] | None = None) -> LogitLoss:
    """The training loss of ``method``: ``(student_logits, teacher_logits, targets) -> loss``. ``temperature``
    is ``distill.temperature`` (``hinton``'s); each other method reads its own settings (``settings`` over its
    defaults). The teacher's logits are never differentiated."""
    if method not in LOGIT_METHODS:
        raise ValueError(f"unknown logit KD method {method!r} (valid: {', '.join(LOGIT_METHODS)})")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (got {alpha})")
    spec = LOGIT_METHODS[method]
    if spec.term is None:
        return lambda s, t, y: kd_loss(s, t, y, temperature=temperature, alpha=alpha, label_smoothing=label_smoothing)
    unknown = set(settings or {}) - set(spec.defaults)
    if unknown:
        raise ValueError(f"{method}: unknown settings {sorted(unknown)} (valid: {', '.join(spec.defaults)})")
    values = {**spec.defaults, **(settings or {})}
    term = spec.term(values)
    scale = values["temperature"] ** 2 if method == "logit_std" else 1.0

    def loss(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        soft = term(_io(s), _io(t.detach())) * scale
        return alpha * soft + (1 - alpha) * F.cross_entropy(s, y, label_smoothing=label_smoothing)

    return loss
