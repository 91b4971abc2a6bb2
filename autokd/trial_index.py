"""An incremental index of a study's trials, so a worker's checks after each trial do not grow with the study.

A worker asks three questions of the whole study around every trial: is this configuration a duplicate
(:func:`autokd.objective.duplicate_of`), which COMPLETE trials still miss their KD twin
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

import weakref
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autokd.sampling import replicate_of

KD_PARAM = "distill.kd"


def params_key(params: dict[str, Any], replicate: int = 0) -> tuple:
    """What makes two trials the same run: their params and their design replicate (each has its own streams)."""
    return tuple(sorted((k, repr(v)) for k, v in params.items())) + (("replicate", replicate),)


def twin_key(t: FrozenTrial) -> tuple | None:
    """The key of ``t``'s KD twin (the same params with ``distill.kd`` flipped, the same replicate), or None."""
    if KD_PARAM not in t.params:
        return None
    return params_key({**t.params, KD_PARAM: not t.params[KD_PARAM]}, replicate_of(t.user_attrs))


class TrialIndex:
    """What the per-trial checks need of a study's finished trials, kept up to date incrementally."""

    def __init__(self) -> None:
        self.seen = 0  # trials 0 .. seen-1 have been looked at
        self.unfinished: dict[int, FrozenTrial] = {}  # number -> the trial as last read (WAITING, RUNNING)
        self.finished_by_key: dict[tuple, list[tuple[int, TrialState, bool]]] = {}  # key -> (number, state, stopped)
        self.finished_keys: set[tuple] = set()  # keys of finished trials that are not PRUNED (twins are "there")
        self.complete = 0
        self.open_twins: dict[int, FrozenTrial] = {}  # COMPLETE KD trials whose twin has not finished (unpruned)

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
