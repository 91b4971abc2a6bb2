"""The design phase: the study's first pairs form a balanced design over the searched techniques' levels.

Each design point is an ordinary Optuna trial enqueued with its params (``distill.kd`` true) and two user
attributes, ``design_point`` (its index) and ``replicate`` (which replicate of the design it belongs to); its KD
twin is enqueued by :mod:`autokd.study.twins` once it completes and carries both. The replicate feeds the trial's
random streams (:func:`autokd.train.stream_seed`), so replicates are runs, not duplicates; it is part of the
duplicate, twin, pairing and retry keys, and design points and their twins are never early-stopped.

**Deterministic, idempotent, shared.** The design is generated from the space and ``search.seed`` alone
(:func:`build_design`), so every worker computes the same points. :func:`enqueue_design` is called by every worker
before each trial: it reads the study once and enqueues, one replicate (a block) at a time, the points that are not
in the storage yet. Two workers that enqueue the same point at once leave two queued copies: the later one is
pruned as a duplicate when it is popped (:func:`autokd.trial_index.duplicate_of`), so no point runs twice, and none
goes missing (a point of a begun block that is absent is enqueued again; a retry keeps its point and replicate).

**Budget.** ``search.n_trials`` bounds the study: a design of L points needs 2 L trials a replicate (with ``distill.method`` searched, (1 + methods) L), so at most
``n_trials // (2 L)`` replicates run (cut at a block boundary, said in the study's ``autokd.design`` attribute and by
progress event ``design.cut``); the sampler spends the rest. With ``replicates: auto`` the first replicate (the first
few, when one has fewer pairs than the verdict model needs: :func:`autokd.space.design.min_replicates`) is an
internal pilot: once all its pairs are done, :func:`autokd.report.plan.replicates_for` sizes the design from the
pilot's noise (Wittes-Brittain), and the plan is recorded on the study (``autokd.design``). Once the planned
replicates are done, one top-up re-plans from all their pairs (a technique still above the target gets the
replicates it still needs; progress event ``design.topup``); until then the design is pending, so the sampler's
trials cannot take the budget a top-up needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from autokd.progress import ProgressCallback, silent
from autokd.sampling import DESIGN_POINT_ATTR, REPLICATE_ATTR, replicate_of
from autokd.space import Space, space_hash
from autokd.space.design import (KD_PARAM, DesignFactor, design_factors, held_settings, min_replicates,
                                 trials_per_point)
from autokd.study.storage import quiet_optuna
from autokd.study.twins import kd_methods

ATTR_DESIGN = "autokd.design"  # study user attribute: the design and, once planned, its replicates
ESTIMAND = ("the mean KD gain difference between a technique's levels, averaged over the design's level "
            "combinations of the other techniques, each weighted equally (a balanced design: every technique's "
            "levels meet every other's equally often)")
_FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
_SIZING_KEYS = ("pilot_replicates", "pilot_pairs", "target_half_width", "pilot_fitted", "pairs_per_technique",
                "pilot_half_width", "pilot_reason", "replicates_per_method")


@dataclass(frozen=True)
class StudyDesign:
    """The design of a space: techniques and levels, the runs (level indices), what kind of design it is."""

    kind: str
    factors: tuple[DesignFactor, ...]
    rows: tuple[tuple[int, ...], ...]
    note: str
    held: dict[str, Any] = field(default_factory=dict)
    d_efficiency: float | None = None

    @property
    def points(self) -> int:
        return len(self.rows)

    @property
    def pilot_replicates(self) -> int:
        """Replicates the pilot of ``replicates: auto`` takes: the fewest the verdict model can be fitted to."""
        return min_replicates(self.points, [len(f.levels) for f in self.factors])

    @property
    def rotates(self) -> bool:
        """Whether replicates rotate the levels (:func:`autokd.doe.rotate`): a D-optimal design's main effects are
        not clear of two-factor interactions, and rotating moves that aliasing so it averages out over replicates;
        full factorials and resolution-IV fractions are clear already and repeat their rows."""
        return self.kind == "d_optimal"

    def row(self, i: int, replicate: int = 0) -> tuple[int, ...]:
        """The level indices of design point ``i`` in ``replicate``."""
        if not self.rotates or not replicate:
            return self.rows[i]
        from autokd.doe import rotate

        return rotate([self.rows[i]], [len(f.levels) for f in self.factors], replicate)[0]

    def params(self, i: int, replicate: int = 0) -> dict[str, Any]:
        """The params of design point ``i`` in ``replicate`` (KD on; its twin runs it with KD off)."""
        values = {f.path: f.levels[j] for f, j in zip(self.factors, self.row(i, replicate), strict=True)}
        return {**values, **self.held, KD_PARAM: True}

    def summary(self) -> dict[str, Any]:
        """JSON-able description (the study's ``autokd.design`` attribute and the report's ``kd.design``)."""
        return {"kind": self.kind, "levels": {f.path: list(f.levels) for f in self.factors}, "rotates": self.rotates,
                "points": self.points, "note": self.note, "d_efficiency": self.d_efficiency,
                "held": dict(self.held), "estimand": ESTIMAND}


def build_design(space: Space) -> StudyDesign | None:
    """The design of ``space`` (None without ``search.design``), deterministic from the space and its seed."""
    if space.search.design is None:
        return None
    key = space_hash(space)  # the design depends on the question only (its seed included), not on the budget
    if key not in _DESIGNS:  # a D-optimal design takes a fraction of a second: built once per process
        from autokd.doe import make_design

        spec, factors = space.search.design, design_factors(space)
        d = make_design([len(f.levels) for f in factors], seed=space.search.seed, kind=spec.kind, runs=spec.runs)
        _DESIGNS[key] = StudyDesign(d.kind, tuple(factors), tuple(tuple(r) for r in d.rows), d.note,
                                    held_settings(space), d.d_efficiency)
    return _DESIGNS[key]


_DESIGNS: dict[str, StudyDesign] = {}


@dataclass(frozen=True)
class DesignState:
    """Where the design phase of a study stands (from one read of its trials)."""

    replicates: int  # replicates the study will run (planned, within the budget); the pilot only until planned
    pending: bool  # a replicate remains that cannot be enqueued yet (the pilot or the current block unfinished)
    planned: bool  # the number of replicates is known (fixed, or planned from the pilot)
    added: int = 0  # trials this call enqueued


def _originals(trials: Sequence[optuna.trial.FrozenTrial]) -> dict[tuple[int, int], list]:
    """(replicate, point) -> the design trials that run that point with KD on (originals and their retries)."""
    out: dict[tuple[int, int], list] = {}
    for t in trials:
        point = t.user_attrs.get(DESIGN_POINT_ATTR)
        if point is None or "twin_of" in t.user_attrs:
            continue
        out.setdefault((replicate_of(t.user_attrs), int(point)), []).append(t)
    return out


def _pilot_done(trials: Sequence[optuna.trial.FrozenTrial], points: int, replicates: int) -> bool:
    """Every point of the pilot's ``replicates`` and its twin have finished (a point that failed for good counts as
    finished)."""
    pilot = [t for t in trials if t.user_attrs.get(DESIGN_POINT_ATTR) is not None
             and replicate_of(t.user_attrs) < replicates]
    if any(t.state not in _FINISHED for t in pilot):
        return False
    originals = {(replicate_of(t.user_attrs), int(t.user_attrs[DESIGN_POINT_ATTR]))
                 for t in pilot if "twin_of" not in t.user_attrs}
    twinned = {t.user_attrs.get("twin_of") for t in pilot if "twin_of" in t.user_attrs}
    complete = [t for t in pilot if "twin_of" not in t.user_attrs and t.state == TrialState.COMPLETE]
    return len(originals) >= points * replicates and all(t.number in twinned for t in complete)


def planned_replicates(study: optuna.Study, space: Space, design: StudyDesign,
                       trials: Sequence[optuna.trial.FrozenTrial]) -> tuple[int, bool, bool, dict[str, Any]]:
    """(replicates to run, whether the number is planned, whether it is final, the plan to record), within
    ``search.n_trials``. A pilot-sized plan is final once its top-up was decided: when the planned replicates are
    done, all their pairs are analysed and, if a technique misses the target, the design is re-planned once from
    them (:func:`autokd.report.plan.topup_replicates`)."""
    spec = space.search.design
    budget = max(1, space.search.n_trials // (trials_per_point(space) * design.points))
    record: dict[str, Any] = {"budget_replicates": budget, "target_half_width": spec.target / 100.0,
                              "margin": spec.margin / 100.0}
    if spec.replicates != "auto":
        asked = int(spec.replicates)
        record.update(asked=asked, how="fixed")
        run = min(asked, budget)
        record.update(replicates=run, cut=run < asked)
        return run, True, True, record
    pilot = design.pilot_replicates
    record["pilot_replicates"] = pilot
    if not _pilot_done(trials, design.points, pilot):
        return pilot, False, False, record
    known = study.user_attrs.get(ATTR_DESIGN) or {}
    if known.get("planned") and known.get("how") == "pilot":  # sized once: the pilot does not change
        sizing = {k: v for k, v in known.items() if k in _SIZING_KEYS}
        asked = known.get("planned_replicates", known.get("asked"))
    else:
        planned, sizing = _size(study, design, pilot, spec.target / 100.0, margin=spec.margin / 100.0,
                                methods=kd_methods(space) or ())
        asked = planned if planned is not None else budget  # the pilot could not be analysed: the design's share
    record.update(how="pilot", planned_replicates=int(asked), **sizing)
    topup = known.get("topup") if known.get("how") == "pilot" else None
    run = min(int(asked), budget)
    if topup is None and (asked >= budget or _pilot_done(trials, design.points, run)):
        if asked >= budget:  # the budget holds no more: nothing to top up
            topup = {"asked": int(asked), "reason": "budget"}
        else:
            more, sizing2 = _size(study, design, run, spec.target / 100.0, margin=spec.margin / 100.0, topup=run,
                                  methods=kd_methods(space) or ())
            topup = {"pairs": sizing2["pilot_pairs"], "asked": int(more if more is not None else asked),
                     "half_width": sizing2["pilot_half_width"]}
    if topup is not None:
        record["topup"] = topup
        asked = max(int(asked), int(topup["asked"]))
    run = min(int(asked), budget)
    record.update(asked=int(asked), replicates=run, cut=run < asked)
    return run, True, topup is not None, record


def _size(study: optuna.Study, design: StudyDesign, replicates: int, target: float, *, margin: float,
          topup: int | None = None, methods: Sequence[str] = ()) -> tuple[int | None, dict[str, Any]]:
    """Replicates that reach ``target``, sized (Wittes-Brittain) from the design pairs of the first ``replicates``
    replicates: the pilot, or (``topup``: the replicates run so far) the top-up's re-plan. With KD ``methods``
    searched, every method's own technique questions are sized too, on its own pairs, and the design runs the
    most any of them (or the pooled analysis) needs: each point runs every method, so that settles them all."""
    from autokd.report.kd_gain import design_factor_analysis
    from autokd.study.records import trial_records

    pairs = [r for r in trial_records(study) if r.get("replicate", 0) < replicates]
    replicates_needed, sizing = _size_one(pairs, design, target, margin=margin, topup=topup)
    if methods and replicates_needed is not None:
        per_method: dict[str, int | None] = {}
        for m in methods:
            analysis = design_factor_analysis(pairs, factors=[f.path for f in design.factors], margin=margin,
                                              n_perm=1, method=m)
            per_method[m] = _replicates(analysis, design, target, topup)
        sizing["replicates_per_method"] = per_method
        replicates_needed = max([replicates_needed, *(r for r in per_method.values() if r is not None)])
    return replicates_needed, sizing


def _replicates(analysis: dict[str, Any], design: StudyDesign, target: float, topup: int | None) -> int | None:
    from autokd.report.plan import replicates_for, topup_replicates

    n, p = int(analysis.get("n_pairs") or 0), int(analysis.get("n_coefficients") or 0)
    factors = analysis.get("factors") or []
    if topup is None:
        return replicates_for(factors, n=n, p=p, points=design.points, target=target)[0]
    return topup_replicates(factors, n=n, p=p, points=design.points, target=target,
                            replicates=topup) if analysis.get("fitted") else None


def _size_one(pairs: list[dict[str, Any]], design: StudyDesign, target: float, *, margin: float,
              topup: int | None) -> tuple[int | None, dict[str, Any]]:
    """:func:`_size` on the pooled analysis (one unit per sibling set when methods are searched)."""
    from autokd.report.kd_gain import design_factor_analysis
    from autokd.report.plan import replicates_for

    # Only the standard errors and their df size the design: no resampling test is needed here.
    analysis = design_factor_analysis(pairs, factors=[f.path for f in design.factors], margin=margin, n_perm=1)
    n = int(analysis.get("n_pairs") or 0)
    factors = analysis.get("factors") or []
    per: dict[str, int | None] = {}
    if topup is None:
        replicates_needed, per = replicates_for(factors, n=n, p=int(analysis.get("n_coefficients") or 0),
                                                points=design.points, target=target)
    else:
        replicates_needed = _replicates(analysis, design, target, topup)
    sizing = {"pilot_pairs": n, "target_half_width": target, "pilot_fitted": bool(analysis.get("fitted")),
              "pairs_per_technique": per, "pilot_half_width": {f["factor"]: f.get("half_width") for f in factors}}
    if not analysis.get("fitted"):
        sizing["pilot_reason"] = analysis.get("reason")
    return replicates_needed, sizing


def enqueue_design(study: optuna.Study, space: Space, *, progress: ProgressCallback = silent,
                   trials: Sequence[optuna.trial.FrozenTrial] | None = None) -> DesignState | None:
    """Enqueue the design points that are due and not in the storage yet (see the module docstring); None when
    the space has no design."""
    design = build_design(space)
    if design is None:
        return None
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    replicates, planned, final, record = planned_replicates(study, space, design, trials)
    _record(study, design, record, planned, progress, per=trials_per_point(space) * design.points)
    have = _originals(trials)
    for r in range(replicates):
        missing = [i for i in range(design.points) if (r, i) not in have]
        if not missing:
            continue
        begun = len(missing) < design.points
        if not begun and any(t.state == TrialState.WAITING for (rr, _), ts in have.items() if rr < r for t in ts):
            return DesignState(replicates, True, planned)  # one replicate at a time
        with quiet_optuna():
            for i in missing:
                study.enqueue_trial(design.params(i, r), user_attrs={DESIGN_POINT_ATTR: i, REPLICATE_ATTR: r})
        progress("design.enqueue", replicate=r, points=len(missing), replicates=replicates, planned=planned)
        return DesignState(replicates, r + 1 < replicates or not final, planned, len(missing))
    return DesignState(replicates, not final, planned)


def _record(study: optuna.Study, design: StudyDesign, record: dict[str, Any], planned: bool,
            progress: ProgressCallback, *, per: int) -> None:
    """Keep the design (and, once final, its plan) on the study for the report; said once per change."""
    current = study.user_attrs.get(ATTR_DESIGN)
    new = {**design.summary(), **record, "planned": planned}
    if current == new:
        return
    study.set_user_attr(ATTR_DESIGN, new)
    before = current or {}
    if planned and record.get("how") == "pilot" and before.get("planned") is not True:
        progress("design.planned", replicates=record["planned_replicates"], pilot_pairs=record.get("pilot_pairs"),
                 target=record.get("target_half_width"))
    topup = record.get("topup")
    if topup and "pairs" in topup and not before.get("topup"):
        progress("design.topup", planned=record["planned_replicates"], replicates=record["replicates"],
                 asked=topup["asked"], pairs=topup["pairs"], target=record.get("target_half_width"))
    if planned and record.get("cut") and (not before.get("cut") or before.get("asked") != record.get("asked")):
        progress("design.cut", replicates=record["replicates"], asked=record.get("asked"),
                 budget=record["budget_replicates"], points=design.points, trials=per)
