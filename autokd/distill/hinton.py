"""Hinton, Vinyals & Dean (2015): soft targets from the teacher's logits, as pure functions. autokd's own code,
not torchdistill's KDLoss: `hinton` trials must train bitwise as they did before KD methods existed (torchdistill's
loss differs by ~5e-7 in float32; `tests/distill/test_logit.py` compares the two)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))`` averaged over the batch (``reduction="batchmean"``).

    The T² factor keeps the soft-target gradients on the same scale as the hard-label term when T changes.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (got {temperature})")
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, *,
            temperature: float, alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """``α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1−α)·CE(s, y)``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (got {alpha})")
    ce = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    return alpha * soft_target_loss(student_logits, teacher_logits.detach(), temperature=temperature) + (1 - alpha) * ce
