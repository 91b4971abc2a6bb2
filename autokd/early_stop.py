"""Pareto-aware early stopping: the decision, as pure functions of plain data (no Optuna, no torch).

Optuna cannot prune multi-objective trials (``trial.report`` / ``should_prune`` refuse them, optuna#3450), so autokd
keeps each trial's learning curve itself (user attribute ``learning_curve``) and decides here after every epoch.

A trial's cost objectives (FLOPs, BitOps, size, params) are fixed by its configuration before it trains
(:func:`autokd.objective.planned_costs`), so only its accuracy is unknown, and the question after each epoch is:
can it still reach the Pareto front *at its own cost*?

**The rule** (:func:`decide`, ``mode="rung"``, the default). After epoch ``e`` of phase ``p`` (``train`` or
``finetune``; of repeat ``r``) a trial ``t`` stands at validation accuracy ``a``. Its *peers* are the COMPLETE trials
with a point at the same place of the same schedule (same repeat, phase, epoch and phase length; their recorded
curves). In the spirit of Syne Tune's MOASHA, ``t`` is compared with them at this rung, but against the front at
its own cost instead of a quantile:

1. ``t`` is stopped when some COMPLETE trial ``j`` that costs no more in every cost objective (``c_j <= c_t``)
   stood at ``a_j(e) >= a + margin`` at the same epoch **and** ended at ``final_j >= a + margin``. Read as an
   extrapolation: if ``t`` gains from here as much as ``j`` did (and loses nothing where ``j`` lost), plus
   ``margin``, it still ends no better than ``j``, which is cheaper: ``t`` is dominated.
2. Guards: no decision before ``min_complete`` peers exist, nor in the first ``min_epoch - 1`` epochs of the
   ``train`` phase (epoch 1 of most trials is near chance and says nothing); a trial nobody costs less than is never
   stopped (the front has no point at its cost). The objective never asks about a KD twin of a completed trial, nor
   at a trial's last epoch (it is complete then: stopping it would only throw its result away).

``mode="extrapolate"`` is the pure optimistic extrapolation: ``t`` can end at most at ``U = a + max(0, G) +
margin``, ``G`` the largest gain from this point to the end among the peers that stood within ``±width`` of ``a``
(all peers when none did), and is stopped when a COMPLETE trial costing no more ended at ``>= U``.

Measured (``bench/early_stop.py``: TPE on spaces/mobilenet.yaml with KD off, 6 + 3 epochs, 3 seeds, the plain
search's 216 epochs): the rung rule stopped 11-37 trials per search, mostly after epoch 2, so that the search tried
31-52 configurations in the epochs the plain one spent on 24; at that budget its hypervolume (accuracy vs log BitOps)
was 1.035x the plain search's (0.998-1.089). The extrapolation stopped 13-26, later, for 0.991x (0.975-1.011): it
waits until fewer epochs remain to save, and still errs where pruning and quantization reshape the fine-tune phase.
(On shuffled replays of 94 recorded curves with random proposals the extrapolation stopped fewer front trials; with
TPE the rung rule's earlier stops did better in this run, but over 3 seeds the ranges overlap: not established.)

The rung rule is monotone in the completed trials: one more COMPLETE trial only adds peers and front points, so a
stopped configuration proposed again would, with the same seeds and the same curve, be stopped again at the same
epoch or earlier (the extrapolation nearly so: a new, wider-ranging curve can raise its ``G``). autokd does not run
it again (``duplicate_of``, see :mod:`autokd.objective`), except as the KD twin of a completed trial.

Trial attributes written by the objective (stable names): ``learning_curve`` (per repeat, ``{phase: [val accuracy
after each epoch]}``), and on a stopped trial (state PRUNED) ``stopped_reason`` (a sentence),
``stopped_epoch`` (epochs it trained, both phases and all repeats), ``stopped_at`` (``{repeat, phase, epoch,
epochs}``) and ``stopped_by`` (the number of the completed trial it could not beat).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CURVE_ATTR = "learning_curve"
STOPPED_REASON_ATTR = "stopped_reason"
STOPPED_EPOCH_ATTR = "stopped_epoch"
STOPPED_AT_ATTR = "stopped_at"
STOPPED_BY_ATTR = "stopped_by"
# [accuracy, cost objectives...] a stopped trial is told to the GP sampler as (autokd.study.sampler): the final
# accuracy of the trial that stopped it (mean over repeats; it was bound to end no higher) at its own costs, on
# the study's scale
STOPPED_VALUES_ATTR = "stopped_values"

Curve = list  # per repeat: {phase: [val accuracy after epoch 1, 2, ...]} (plain JSON, a trial user attribute)


@dataclass(frozen=True)
class CurvePoint:
    """One point of a trial's learning curve: validation accuracy after ``epoch`` of ``epochs`` of ``phase``."""

    repeat: int
    phase: str
    epoch: int
    epochs: int
    val_accuracy: float


EpochWatch = Callable[[CurvePoint], None]


def add_point(curve: Curve, point: CurvePoint) -> None:
    """Append ``point`` to ``curve`` (in place)."""
    while len(curve) <= point.repeat:
        curve.append({})
    curve[point.repeat].setdefault(point.phase, []).append(float(point.val_accuracy))


def curve_value(curve: Any, point: CurvePoint) -> float | None:
    """The accuracy ``curve`` recorded at the place of ``point`` (same repeat, phase, epoch and phase length), or
    None (no such point, another schedule, not a number)."""
    try:
        values = curve[point.repeat][point.phase]
    except (IndexError, KeyError, TypeError):
        return None
    if not isinstance(values, list) or len(values) != point.epochs or not 1 <= point.epoch <= len(values):
        return None
    value = values[point.epoch - 1]
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


@dataclass(frozen=True)
class Reference:
    """A COMPLETE trial as the rule sees it: its cost objectives, final validation accuracy per repeat (the mean
    when only that is known) and its learning curve."""

    number: int
    costs: tuple[float, ...]
    finals: tuple[float, ...]
    curve: Curve = field(default_factory=list)

    def final(self, repeat: int) -> float:
        return self.finals[repeat] if repeat < len(self.finals) else self.finals[0]

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Reference | None:
        """From a plain trial record (``number``, ``state``, ``values`` = [val accuracy, cost objectives...],
        ``metrics`` with optional per-repeat ``repeats``, ``learning_curve``); None unless COMPLETE and finite."""
        values = record.get("values")
        if str(record.get("state", "")).rsplit(".", 1)[-1].upper() != "COMPLETE" or not values:
            return None
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            return None
        repeats = (record.get("metrics") or {}).get("repeats") or []
        finals = tuple(float(r["val_accuracy"]) for r in repeats
                       if isinstance(r, Mapping) and isinstance(r.get("val_accuracy"), (int, float)))
        if len(finals) != len(repeats) or not finals:
            finals = (float(values[0]),)
        curve = record.get(CURVE_ATTR)
        return cls(int(record["number"]), tuple(float(v) for v in values[1:]), finals,
                   curve if isinstance(curve, list) else [])


@dataclass(frozen=True)
class StopRule:
    """The rule's settings (see the module docstring); the defaults are the ones ``bench/early_stop.py`` measured.

    ``margin`` and ``width`` are fractions of accuracy (0.01 = 1 point)."""

    mode: str = "rung"  # or "extrapolate"
    margin: float = 0.02
    width: float = 0.05  # extrapolate only
    min_complete: int = 6
    min_epoch: int = 2

    def __post_init__(self) -> None:
        if self.mode not in ("rung", "extrapolate"):
            raise ValueError(f"unknown early-stopping mode {self.mode!r} (valid: rung, extrapolate)")


@dataclass(frozen=True)
class Decision:
    """Why a trial is stopped: at ``point`` it can end at most at ``bound``, and trial ``by`` (costing no more)
    ended at ``by_final``."""

    point: CurvePoint
    bound: float
    by: int
    by_final: float
    peers: int
    by_at: float | None = None  # rung: ``by``'s accuracy at the same point
    by_mean: float | None = None  # ``by``'s final accuracy, mean over its repeats (what it told the sampler)

    @property
    def reason(self) -> str:
        p = self.point
        rep = f" of repeat {p.repeat}" if p.repeat else ""
        head = (f"stopped early after {p.phase} epoch {p.epoch}/{p.epochs}{rep} at val accuracy "
                f"{100 * p.val_accuracy:.1f}%")
        if self.by_at is not None:
            return (f"{head}: trial {self.by}, costing no more, stood at {100 * self.by_at:.1f}% there and ended at "
                    f"{100 * self.by_final:.1f}%")
        return (f"{head}: it can reach at most {100 * self.bound:.1f}% (extrapolated from {self.peers} completed "
                f"curves), and trial {self.by}, costing no more, ended at {100 * self.by_final:.1f}%")


class Stopped(Exception):
    """Raised from a trial's epoch callback to stop it (the objective turns it into ``optuna.TrialPruned``)."""

    def __init__(self, decision: Decision, epochs_trained: int):
        super().__init__(decision.reason)
        self.decision, self.epochs_trained = decision, epochs_trained


def _no_dearer(ref: Sequence[float], costs: Sequence[float]) -> bool:
    return len(ref) == len(costs) and all(r <= c for r, c in zip(ref, costs))


def decide(point: CurvePoint, costs: Sequence[float], references: Sequence[Reference],
           rule: StopRule = StopRule()) -> Decision | None:
    """Whether the trial at ``point`` (cost objectives ``costs``) is stopped, given the COMPLETE trials
    ``references``: a :class:`Decision`, or None to go on. See the module docstring for the rule."""
    if point.phase == "train" and point.epoch < rule.min_epoch:
        return None
    a = float(point.val_accuracy)
    if not math.isfinite(a):
        return None
    peers = [(r, v) for r in references if (v := curve_value(r.curve, point)) is not None]
    if len(peers) < rule.min_complete:
        return None
    cheaper = [r for r in references if _no_dearer(r.costs, costs)]
    if not cheaper:
        return None
    if rule.mode == "rung":
        # stop when a cheaper-or-equal peer was ahead by the margin here and ended at least that far ahead
        ahead = [(r, v, min(v, r.final(point.repeat))) for r, v in peers if _no_dearer(r.costs, costs)]
        best = max(ahead, key=lambda rv: (rv[2], -rv[0].number), default=None)
        if best is None or best[2] < a + rule.margin:
            return None
        return Decision(point, a + rule.margin, best[0].number, best[0].final(point.repeat), len(peers), best[1],
                        by_mean=statistics.fmean(best[0].finals))
    near = [r.final(point.repeat) - v for r, v in peers if abs(v - a) <= rule.width]
    gains = near or [r.final(point.repeat) - v for r, v in peers]
    bound = a + max(0.0, max(gains)) + rule.margin
    by = max(cheaper, key=lambda r: (r.final(point.repeat), -r.number))
    if by.final(point.repeat) < bound:
        return None
    return Decision(point, bound, by.number, by.final(point.repeat), len(peers), by_mean=statistics.fmean(by.finals))


class EarlyStopWatch:
    """The epoch callback of one trial under early stopping: keeps its learning curve and, when the trial may be
    stopped, asks :func:`decide` after every epoch against the COMPLETE trials read from the
    study (``references()``, read each epoch so that other workers' trials count as soon as they complete);
    raises :class:`~autokd.early_stop.Stopped`. ``costs()`` (the trial's planned cost objectives) is computed once,
    when a decision first needs it. The trial's last epoch (``total``, all phases and repeats) is never a reason to
    stop: the trial is complete by then, and stopping it would only throw its result away."""

    def __init__(self, *, references: Any, costs: Any, rule: StopRule = StopRule(), may_stop: bool = True,
                 total: int | None = None):
        self.references, self.costs, self.rule, self.may_stop = references, costs, rule, may_stop
        self.total = total
        self.curve: list = []
        self.epochs = 0
        self._costs: list[float] | None = None

    @property
    def told_costs(self) -> list[float] | None:
        """The trial's cost objectives as ``costs()`` gave them, once a decision needed them (else None)."""
        return self._costs

    def __call__(self, point: CurvePoint) -> None:
        add_point(self.curve, point)
        self.epochs += 1
        if not self.may_stop or (point.phase == "train" and point.epoch < self.rule.min_epoch) or \
                (self.total is not None and self.epochs >= self.total):
            return
        refs = self.references()
        if len(refs) < self.rule.min_complete:
            return
        if self._costs is None:
            self._costs = list(self.costs())
        decision = decide(point, self._costs, refs, self.rule)
        if decision is not None:
            raise Stopped(decision, self.epochs)
