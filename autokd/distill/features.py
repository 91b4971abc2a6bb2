"""KD methods that need the teacher's intermediate features: the teacher runs online, in eval mode and without
gradients, on exactly the batch of views the student sees (the same teacher, trained on the view pool, whose
logits the logit methods read from the cache).

- ``at``: attention transfer (Zagoruyko & Komodakis 2017), torchdistill's ``ATLoss`` in the authors' code form on
  the stage ends both networks have at a resolution (:func:`autokd.distill.hooks.match_stages`), weighted by the
  paper's ``beta / 2`` with beta = 1000.
- ``fitnets``: hints (Romero et al. 2015): a 1×1 convolution regresses the student's stage end onto the
  teacher's, MSE (torchdistill has no module for it: two lines here). Trained jointly in one stage, as the CRD
  benchmark (Tian et al. 2020) runs it, with its weight 100. The regressor lives in the loss, never in the student.
- ``pkt``: probabilistic knowledge transfer (Passalis & Tefas 2018), torchdistill's ``PKTLoss`` on both
  networks' penultimate feature vectors (the input of their dropout, before it drops anything; else of their
  classifier), weight 30000 as in the CRD benchmark.

The loss is ``CE + weight * L_method``: the feature term is added to the full cross-entropy, as each paper and the
CRD benchmark (Tian et al. 2020: ``-r 1 -a 0 -b weight``) train them, which is what the papers' weights are for.
``distill.alpha`` is the logit methods' balance (their soft term against CE) and is not used here: at alpha 0.9 it
would weigh the feature term 9 times the papers' (measured on digits with the papers' weights: AT and FitNets
then lost 50-60 points of accuracy).

Compression: pruning removes channels from the student's stage ends; :meth:`FeatureDistiller.pruned` slices the
regressor's input weights to the kept channels (torch-pruning's dependency graph never sees the regressor), so
the fine-tune phase keeps distilling with what was learnt. Quantization replaces modules: :meth:`attach` hooks
the new ones. The teacher is put in eval mode (its BatchNorm statistics never move). :meth:`close` removes every hook (the student's and the teacher's) before the model is saved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autokd.distill.hooks import StageEnd, Tap, last_batchnorm, match_stages, stage_ends

def penultimate(model: nn.Module) -> str:
    """The module whose input is ``model``'s penultimate feature vector: its dropout (before it drops anything),
    else its classifier (every registry family has one)."""
    return "dropout" if isinstance(getattr(model, "dropout", None), nn.Dropout) else "classifier"


@dataclass(frozen=True)
class FeatureMethod:
    """One feature KD method: its paper, settings with the paper's defaults, and where it reads features
    (``stages``: matched stage ends, chosen by the ``layers`` setting; else the classifier's input)."""

    name: str
    paper: str
    defaults: dict[str, Any] = field(default_factory=dict)
    stages: bool = True


FEATURE_METHODS: dict[str, FeatureMethod] = {
    m.name: m for m in (
        FeatureMethod("at", "Zagoruyko & Komodakis 2017, Paying more attention to attention",
                      {"beta": 1000.0, "layers": "all"}),
        # the paper hints one middle layer (deeper hints over-regularize the student)
        FeatureMethod("fitnets", "Romero, Ballas, Kahou, Chassang, Gatta & Bengio 2015, FitNets: hints for thin "
                      "deep nets", {"weight": 100.0, "layers": "middle"}),
        FeatureMethod("pkt", "Passalis & Tefas 2018, Learning deep representations with probabilistic knowledge "
                      "transfer", {"weight": 30000.0}, stages=False),
    )
}


def feature_pairs(method: str, student: nn.Module, teacher: nn.Module, image_shape: tuple[int, int, int],
                  layers: str | int | None = None) -> list[tuple[StageEnd, StageEnd]]:
    """The (student, teacher) stage ends ``method`` hints with ``layers`` (its default when None); [] for a
    method on the penultimate features. ``ValueError`` when they cannot be matched."""
    spec = FEATURE_METHODS[method]
    if not spec.stages:
        return []
    return match_stages(stage_ends(student, image_shape), stage_ends(teacher, image_shape),
                        spec.defaults["layers"] if layers is None else layers)


class FeatureDistiller:
    """The KD term of a feature method for one student: hooks on the student and the teacher, the method's
    torchdistill module (and FitNets' regressors). :meth:`step` runs both networks on a batch."""

    def __init__(self, method: str, student: nn.Module, teacher: nn.Module, *, image_shape: tuple[int, int, int],
                 label_smoothing: float = 0.0, settings: dict[str, Any] | None = None, ce_weight: float = 1.0):
        if method not in FEATURE_METHODS:
            raise ValueError(f"unknown feature KD method {method!r} (valid: {', '.join(FEATURE_METHODS)})")
        if not ce_weight >= 0.0:
            raise ValueError(f"ce_weight must be >= 0 (got {ce_weight})")
        spec = FEATURE_METHODS[method]
        unknown = set(settings or {}) - set(spec.defaults)
        if unknown:
            raise ValueError(f"{method}: unknown settings {sorted(unknown)} (valid: {', '.join(spec.defaults)})")
        self.method, self.values = method, {**spec.defaults, **(settings or {})}
        self.ce_weight, self.label_smoothing, self.teacher = ce_weight, label_smoothing, teacher.eval()
        self.pairs = feature_pairs(method, student, teacher, image_shape, self.values.get("layers"))
        if spec.stages:
            s_paths, t_paths, io = [s.path for s, _ in self.pairs], [t.path for _, t in self.pairs], "output"
        else:
            s_paths, t_paths, io = [penultimate(student)], [penultimate(teacher)], "input"
        # the BatchNorm whose channels each hinted student output has: pruning's kept channels are followed on it
        self._bns = [last_batchnorm(student.get_submodule(p)) for p in s_paths] if spec.stages else []
        self.adapters = nn.ModuleList()
        if method == "fitnets":  # drawn from the trial's init stream, after the student (its init is unchanged)
            device = next(student.parameters()).device
            self.adapters.extend(nn.Conv2d(s.channels, t.channels, 1).to(device) for s, t in self.pairs)
        self.student_tap = Tap(student, s_paths, io)
        try:
            self.teacher_tap = Tap(teacher, t_paths, io)
            self.term = self._term(spec)
        except BaseException:  # no hook may outlive a distiller that was never handed out (the teacher is shared)
            self.student_tap.close()
            if hasattr(self, "teacher_tap"):
                self.teacher_tap.close()
            raise

    def _term(self, spec: FeatureMethod) -> Callable[[dict, dict], torch.Tensor]:
        v = self.values
        if self.method == "at":
            from torchdistill.losses.mid_level import ATLoss
            at = ATLoss({f"p{i}": {"student": {"io": "output", "path": s.path},
                                   "teacher": {"io": "output", "path": t.path}, "weight": 1}
                         for i, (s, t) in enumerate(self.pairs)}, mode="code")
            return lambda s, t: v["beta"] / 2 * at(s, t)  # the authors' code: beta / 2 * sum of the pairs' terms
        if self.method == "fitnets":
            def hints(s: dict, t: dict) -> torch.Tensor:
                return v["weight"] * sum(F.mse_loss(r(s[a.path]["output"]), t[b.path]["output"])
                                         for r, (a, b) in zip(self.adapters, self.pairs))
            return hints
        from torchdistill.losses.mid_level import PKTLoss
        pkt = PKTLoss(self.student_tap.paths[0], "input", self.teacher_tap.paths[0], "input")
        return lambda s, t: v["weight"] * pkt(s, t)

    def parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the term (FitNets' regressors), trained beside the student's."""
        return list(self.adapters.parameters())

    def step(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step's forward: the student's logits on ``x`` and the loss (the teacher runs on the
        same ``x``). Features are taken from this forward only: what a hook kept earlier is dropped first."""
        self.student_tap.seen.clear()
        self.teacher_tap.seen.clear()
        logits = student(x)
        with torch.no_grad():
            self.teacher(x)
        term = self.term(self.student_tap.take(), self.teacher_tap.take())
        ce = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return logits, self.ce_weight * ce + term

    def pruned(self, removed: dict[int, list[int]]) -> None:
        """After pruning: slice each regressor's input weights to the student channels that were kept.
        ``removed``: the output channels pruning removed, by ``id`` of the layer (filled by
        :func:`autokd.compress.prune_model`'s ``removed``), read on the BatchNorm that ends each hinted stage."""
        for bn, r in zip(self._bns, self.adapters):
            gone = set(removed.get(id(bn), ()))
            kept = [i for i in range(r.in_channels) if i not in gone]
            if len(kept) != bn.num_features:
                raise RuntimeError(f"the hinted layer has {bn.num_features} channels, but pruning says it kept "
                                   f"{len(kept)} of {r.in_channels}")
            if len(kept) == r.in_channels:
                continue
            idx = torch.as_tensor(kept, device=r.weight.device)
            r.weight = nn.Parameter(r.weight.detach()[:, idx].clone())
            r.in_channels = len(kept)

    def attach(self, student: nn.Module) -> None:
        """Hook the modules now at the student's paths (after quantization replaced them)."""
        self.student_tap.attach(student)

    def close(self) -> None:
        """Remove every hook; the student and the teacher are left as they were."""
        self.student_tap.close()
        self.teacher_tap.close()
