"""An incremental index of a study's trials, so a worker's checks after each trial do not grow with the study.

A worker asks three questions of the whole study around every trial: is this configuration a duplicate
(:func:`autokd.trial_index.duplicate_of`), which COMPLETE trials still miss their KD twin
(:func:`autokd.study.twins.enqueue_missing_twins`), and where does the study stand (:class:`autokd.study.runner.
Standing`). Asked by scanning every trial, each costs milliseconds per 1,000 trials, several times a trial
(``bench/scale.py``: 100 ms a trial at 10,000 trials against 41 ms at 100). A finished trial never changes (its
params, replicate and state are final), so :class:`TrialIndex` keeps what the questions need of the finished ones
and, on each :meth:`~TrialIndex.update`, looks only at the trials that were unfinished at the last look and the new
ones. Optuna gives no cheaper way to learn which trials changed than its full (cached) trial list, which is read
once per question; everything after that read is proportional to what changed.

One index per ``optuna.Study`` object (weakly held: :func:`index_of`). It reads the storage only through the list
of trials it is given, so every worker keeps its own, and nothing is shared through it.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autokd.sampling import replicate_of
from autokd.space.schema import METHOD_SETTINGS

KD_PARAM = "distill.kd"
METHOD_PARAM = "distill.method"  # searched only with KD: a KD-off trial carries none (autokd.space.dimensions.CONDITIONS)
CLAIM_ATTR = "claimed"  # user attr: every param of this RUNNING trial is written (see duplicate_of)
DECIDED_RUN_ATTR = "settings"  # written by the objective once a trial has decided to train (it is no duplicate)
CLAIM_WAIT_SECONDS = 30.0  # how long to wait for a claimed trial to decide; past it its worker is taken for dead
CLAIM_POLL_SECONDS = 0.2


def params_key(params: dict[str, Any], replicate: int = 0) -> tuple:
    """What makes two trials the same run: their params and their design replicate (each has its own streams)."""
    return tuple(sorted((k, repr(v)) for k, v in params.items())) + (("replicate", replicate),)


def kd_setting(key: str) -> bool:
    """Whether the param ``key`` is a KD method's own setting (``distill.<method>.*``): part of the KD treatment,
    not of the configuration, and drawn for each KD-on trial of its method."""
    parts = key.split(".")
    return len(parts) == 3 and parts[0] == "distill" and parts[1] in METHOD_SETTINGS


def sibling_core(params: dict[str, Any]) -> dict[str, Any]:
    """What places a trial in its sibling set: its params without any KD method's own settings."""
    return {k: v for k, v in params.items() if not kd_setting(k)}


def sibling_params(params: dict[str, Any], methods: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The other members of ``params``' sibling set: the same configuration KD-off (which carries no method) and
    KD-on once per method of ``methods`` (the searched ``distill.method`` choices; ``None`` when it is not
    searched: then the KD-on member carries no method either, and the set is a pair of twins).

    A method's own searched settings (:func:`kd_setting`) are not given: each KD-on member draws its own from
    the sampler, so every member is identified by :func:`sibling_core` alone."""
    if KD_PARAM not in params:
        raise ValueError(f"{KD_PARAM} is not a parameter of this trial")
    own = sibling_core(params)
    base = {k: v for k, v in own.items() if k not in (KD_PARAM, METHOD_PARAM)}
    members = [{**base, KD_PARAM: False}]
    members += [{**base, KD_PARAM: True, METHOD_PARAM: m} for m in methods] if methods else [{**base, KD_PARAM: True}]
    return [m for m in members if m != own]


def sibling_keys(t: FrozenTrial, methods: Sequence[str] | None = None) -> list[tuple]:
    """The keys of ``t``'s siblings (:func:`sibling_params`, in ``t``'s replicate), to look up among
    :attr:`TrialIndex.finished_cores`; none without ``distill.kd``."""
    if KD_PARAM not in t.params:
        return []
    return [params_key(p, replicate_of(t.user_attrs)) for p in sibling_params(t.params, methods)]


class TrialIndex:
    """What the per-trial checks need of a study's finished trials, kept up to date incrementally."""

    def __init__(self) -> None:
        self.seen = 0  # trials 0 .. seen-1 have been looked at
        self.unfinished: dict[int, FrozenTrial] = {}  # number -> the trial as last read (WAITING, RUNNING)
        self.finished_by_key: dict[tuple, list[tuple[int, TrialState, bool]]] = {}  # key -> (number, state, stopped)
        self.finished_keys: set[tuple] = set()  # keys of finished trials that are not PRUNED (twins are "there")
        self.finished_cores: set[tuple] = set()  # the same by sibling_core (a sibling is there whatever its settings)
        self.complete = 0
        self.open_twins: dict[int, FrozenTrial] = {}  # COMPLETE trials whose siblings have not all finished

    def update(self, trials: Sequence[FrozenTrial]) -> None:
        """Take in ``trials`` (the study's full list, in number order): only the trials unfinished at the last
        update and the new ones are looked at."""
        numbers = [n for n in self.unfinished if n < len(trials)] + list(range(self.seen, len(trials)))
        self.seen = max(self.seen, len(trials))
        for n in numbers:
            t = trials[n]
            if not t.state.is_finished():
                self.unfinished[n] = t
                continue
            self.unfinished.pop(n, None)
            key = params_key(t.params, replicate_of(t.user_attrs))
            stopped = t.state == TrialState.PRUNED and "stopped_reason" in t.user_attrs
            self.finished_by_key.setdefault(key, []).append((n, t.state, stopped))
            if t.state == TrialState.PRUNED:
                continue
            self.finished_keys.add(key)
            self.finished_cores.add(params_key(sibling_core(t.params), replicate_of(t.user_attrs)))
            if t.state == TrialState.COMPLETE:
                self.complete += 1
                if KD_PARAM in t.params:
                    self.open_twins[n] = t


_INDEXES: weakref.WeakKeyDictionary[Any, TrialIndex] = weakref.WeakKeyDictionary()


def index_of(study: optuna.Study, trials: Sequence[FrozenTrial] | None = None) -> TrialIndex:
    """The index of ``study`` (this process's, for this Study object), updated from ``trials`` (default: a fresh
    read of the study's trials)."""
    index = _INDEXES.get(study)
    if index is None:
        index = _INDEXES[study] = TrialIndex()
    index.update(study.get_trials(deepcopy=False) if trials is None else trials)
    return index


def claim(trial: Any) -> None:
    """Say that every param of ``trial`` is written, so other workers may compare theirs with it (see
    :func:`duplicate_of`). ``FixedTrial`` (no study) has nothing to say it to."""
    if getattr(trial, "study", None) is not None:
        trial.set_user_attr(CLAIM_ATTR, True)


def _decision(t: FrozenTrial) -> str | None:
    """What a claimed RUNNING trial decided: "run", "yield" (it is a duplicate), or None (not yet)."""
    if "duplicate_of" in t.user_attrs:
        return "yield"
    return "run" if DECIDED_RUN_ATTR in t.user_attrs else None


def _claimed(t: FrozenTrial) -> bool:
    # A trial that decided to run claimed first; one written before claims existed has only its decision.
    return CLAIM_ATTR in t.user_attrs or DECIDED_RUN_ATTR in t.user_attrs


def duplicate_of(trial: Any, params: dict[str, Any], *, stopped: bool = False, replicate: int = 0,
                 wait: float = CLAIM_WAIT_SECONDS) -> int | None:
    """The number of the trial that trains ``params`` in ``replicate`` instead of ``trial`` (a COMPLETE one, or a
    RUNNING one that decided to train); else None. With ``stopped``, also a trial that early stopping stopped
    (PRUNED with ``stopped_reason``). A design replicate (:data:`autokd.sampling.REPLICATE_ATTR`) trains with its
    own streams: the same params in another replicate is another run. ``trial`` must have claimed (:func:`claim`).

    Trials share ``train.seed``, so a repeated proposal would only retrain an identical model: the sampler (TPE
    converges on small discrete spaces) re-proposed 6 of the demo's 24 trials. A stopped configuration would follow
    the same curve against a front that has only grown, and be stopped again (see :mod:`autokd.early_stop`): it
    is not run again. ``FixedTrial`` (no study) has none.

    Two RUNNING trials with the same params (two workers popped copies of one queued twin, or a sampler proposed
    what another worker runs) must not both train. Optuna writes a trial's params one suggest at a time, so a check
    can meet the other trial half written and miss it; three workers on PostgreSQL once trained one configuration
    twice that way. Hence the claim: each trial writes :data:`CLAIM_ATTR` once its params are all written, then
    reads. Of two claimed trials at least one reads after both claims, so at least one sees the other, and:

    - a claimed trial that decided to train wins, whichever its number;
    - a claimed earlier trial that has not decided wins: this one yields at once (it writes ``duplicate_of``, so
      the earlier one need not wait for it), then follows the earlier one's decision to the trial that trains;
    - a claimed later trial that has not decided is waited for (it yields or trains within a read of the storage).

    So exactly one of them trains, whatever the timing, and every yield names it. Past ``wait`` seconds a trial that
    never decides is taken for dead (its worker died between claim and decision): this trial runs, or names it.
    """
    study = getattr(trial, "study", None)
    if study is None:
        return None
    key = params_key(params, replicate)
    deadline = time.monotonic() + wait
    while True:
        index = index_of(study)  # finished trials by key; only what changed since the last look is read
        found = [n for n, state, was_stopped in index.finished_by_key.get(key, ())
                 if n != trial.number and (state == TrialState.COMPLETE or (stopped and was_stopped))]
        earlier, later = [], []  # claimed RUNNING trials with these params that have not decided
        for n, other in index.unfinished.items():
            if (n == trial.number or other.state != TrialState.RUNNING or not _claimed(other)
                    or replicate_of(other.user_attrs) != replicate or other.params != params):
                continue
            decision = _decision(other)
            if decision == "run":
                found.append(n)
            elif decision is None:
                (earlier if n < trial.number else later).append(n)
        if found:
            return min(found)
        if earlier:
            trial.set_user_attr("duplicate_of", min(earlier))  # yielded: the earlier one goes on
            return _trainer(study, min(earlier), deadline)
        if not later or time.monotonic() > deadline:
            return None
        time.sleep(CLAIM_POLL_SECONDS)


def _trainer(study: optuna.Study, number: int, deadline: float) -> int:
    """The trial that trains instead of trial ``number``'s params: ``number`` itself once it decides to train (or has
    finished: it trained), else the one its ``duplicate_of`` names, followed. A link written before its trial decided
    points to an earlier trial, and a decided one to a trial that trains, so the links end."""
    while True:
        trials = study.get_trials(deepcopy=False)  # rare: only trials that raced their same-params peers get here
        t = trials[number] if number < len(trials) and trials[number].number == number else \
            next(t for t in trials if t.number == number)
        decision = _decision(t) if t.state == TrialState.RUNNING else None
        if t.state == TrialState.RUNNING and decision is None and time.monotonic() <= deadline:
            time.sleep(CLAIM_POLL_SECONDS)
        elif "duplicate_of" in t.user_attrs and (decision == "yield" or t.state == TrialState.PRUNED):
            number = t.user_attrs["duplicate_of"]
        else:
            return number
