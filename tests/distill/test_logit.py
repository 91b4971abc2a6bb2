"""The logit KD methods (autokd.distill.logit): each wrapped loss against torchdistill's module and against the
paper's formula written out by hand, on the same tensors; autokd's Hinton loss against torchdistill's KDLoss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchdistill.losses.mid_level import DISTLoss, KDLoss, LogitStdKDLoss

from autokd.distill import LOGIT_METHODS, kd_loss, logit_loss

IO = "."


def _io(x):
    return {IO: {"output": x}}


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(32, 10, generator=g) * 3
    t = torch.randn(32, 10, generator=g) * 3
    y = torch.randint(10, (32,), generator=g)
    return s, t, y


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9, 1.0])
def test_hinton_is_autokds_own_loss_and_agrees_with_torchdistills_kdloss(batch, alpha):
    s, t, y = batch
    ours = logit_loss("hinton", temperature=4.0, alpha=alpha)(s, t, y)
    assert torch.equal(ours, kd_loss(s, t, y, temperature=4.0, alpha=alpha))  # the very same function: bitwise
    # torchdistill's alpha weights the cross-entropy and beta the T²-scaled soft term: autokd's alpha is its beta
    theirs = KDLoss(IO, "output", IO, "output", temperature=4.0, alpha=1 - alpha, beta=alpha)(_io(s), _io(t), y)
    if alpha == 1.0:  # torchdistill returns the soft term alone, without T², when its alpha is 0
        theirs = theirs * 16.0
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def _pearson_rows(a, b):
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def test_dist_is_the_papers_inter_and_intra_class_correlation_loss(batch):
    """Huang et al. 2022, eq. 6-9: 1 - mean Pearson correlation of the softened predictions, over each image's
    classes (inter) and over each class's images (intra), each times tau²."""
    s, t, y = batch
    beta, gamma, tau, alpha = 2.0, 0.5, 3.0, 0.7
    ps, pt = F.softmax(s / tau, 1), F.softmax(t / tau, 1)
    inter = 1 - _pearson_rows(ps, pt).mean()
    intra = 1 - _pearson_rows(ps.T, pt.T).mean()
    by_hand = alpha * tau**2 * (beta * inter + gamma * intra) + (1 - alpha) * F.cross_entropy(s, y)
    got = logit_loss("dist", temperature=4.0, alpha=alpha, settings={"beta": beta, "gamma": gamma, "tau": tau})(s, t, y)
    module = DISTLoss(IO, "output", IO, "output", beta=beta, gamma=gamma, tau=tau)(_io(s), _io(t))
    assert torch.allclose(got, alpha * module + (1 - alpha) * F.cross_entropy(s, y), rtol=1e-6, atol=1e-7)
    assert torch.allclose(got, by_hand, rtol=1e-4, atol=1e-6)


def test_logit_std_is_kd_on_standardized_logits(batch):
    """Sun et al. 2024: Hinton's soft term (with T²) on z-scored logits (each row: mean 0, std 1)."""
    s, t, y = batch
    T, alpha = 2.0, 0.6

    def z(x):
        return (x - x.mean(1, keepdim=True)) / (1e-7 + x.std(1, keepdim=True))

    soft = F.kl_div(F.log_softmax(z(s) / T, 1), F.softmax(z(t) / T, 1), reduction="batchmean") * T**2
    by_hand = alpha * soft + (1 - alpha) * F.cross_entropy(s, y, label_smoothing=0.1)
    got = logit_loss("logit_std", temperature=4.0, alpha=alpha, label_smoothing=0.1,
                     settings={"temperature": T})(s, t, y)
    module = LogitStdKDLoss(IO, "output", IO, "output", temperature=T, beta=1.0)(_io(s), _io(t))
    assert torch.allclose(got, alpha * module * T**2 + (1 - alpha) * F.cross_entropy(s, y, label_smoothing=0.1))
    assert torch.allclose(got, by_hand, rtol=1e-5, atol=1e-6)
    # the scale of the logits does not matter to it (what standardization is for); it does to Hinton's
    assert torch.allclose(logit_loss("logit_std", temperature=4.0, alpha=1.0)(s, 5 * t, y),
                          logit_loss("logit_std", temperature=4.0, alpha=1.0)(s, t, y), rtol=1e-4)


@pytest.mark.parametrize("method", sorted(LOGIT_METHODS))
def test_the_teacher_gets_no_gradient_and_the_student_does(batch, method):
    s, t, y = batch
    s, t = s.clone().requires_grad_(), t.clone().requires_grad_()
    logit_loss(method, temperature=4.0, alpha=0.9)(s, t, y).backward()
    assert t.grad is None and s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_bad_methods_and_settings_are_refused(batch):
    with pytest.raises(ValueError, match="unknown logit KD method 'nope' .valid: hinton, dist, logit_std"):
        logit_loss("nope", temperature=4.0, alpha=0.9)
    with pytest.raises(ValueError, match=r"dist: unknown settings \['temperature'\] \(valid: beta, gamma, tau\)"):
        logit_loss("dist", temperature=4.0, alpha=0.9, settings={"temperature": 2.0})
    with pytest.raises(ValueError, match="alpha must be in"):
        logit_loss("dist", temperature=4.0, alpha=1.5)
