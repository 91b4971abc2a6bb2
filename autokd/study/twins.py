"""KD twins: the same settings and seed with ``distill.kd`` flipped, enqueued once for every COMPLETE trial.

A twin of a design point carries the point's replicate (and index): the replicate is part of the twin key, so each
replicate gets its own twin, with the same streams as its original."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from autokd.progress import ProgressCallback, silent
from autokd.sampling import DESIGN_POINT_ATTR, REPLICATE_ATTR, replicate_of
from autokd.space import Space, dimensions
from autokd.study.storage import quiet_optuna
from autokd.trial_index import KD_PARAM, index_of, params_key, twin_key


def design_attrs(user_attrs: dict[str, Any]) -> dict[str, Any]:
    """The design point and replicate a trial records, for its twin and its retries to carry on."""
    return {k: user_attrs[k] for k in (DESIGN_POINT_ATTR, REPLICATE_ATTR) if k in user_attrs}


def twin_params(params: dict[str, Any]) -> dict[str, Any]:
    """The same parameters with ``distill.kd`` flipped."""
    if KD_PARAM not in params:
        raise ValueError(f"{KD_PARAM} is not a parameter of this trial")
    return {**params, KD_PARAM: not params[KD_PARAM]}


def enqueue_missing_twins(study: optuna.Study, *, progress: ProgressCallback = silent) -> list[int]:
    """Enqueue the KD twin of every COMPLETE trial that has none (in any state); returns their originals' numbers.

    A twin that FAILED is not enqueued again (a broken configuration would otherwise loop forever); trials that
    died with their worker are re-enqueued by :func:`recover_stale_trials` instead. A trial that early stopping
    stopped is no twin: a twin whose settings only a stopped trial had is enqueued (and is never stopped).
    """
    index = index_of(study)  # only what changed since this worker's last look is read (autokd.trial_index)
    # PRUNED trials are no twins: a duplicate's original is COMPLETE or RUNNING (seen through it), unless the
    # original was early-stopped, and neither that nor its duplicates should hide the twin.
    there = set()  # keys of the unfinished trials (a WAITING one by the params it was queued with)
    for t in index.unfinished.values():
        if t.state == TrialState.WAITING:
            there.add(params_key(t.system_attrs.get("fixed_params", {}), replicate_of(t.user_attrs)))
        there.add(params_key(t.params, replicate_of(t.user_attrs)))
    done = []
    for number in sorted(index.open_twins):
        t = index.open_twins[number]
        key = twin_key(t)
        if key in index.finished_keys:
            del index.open_twins[number]  # its twin has finished (not pruned): settled for good
            continue
        if key in there:
            continue
        twin = twin_params(t.params)
        with quiet_optuna():
            study.enqueue_trial(twin, user_attrs={"twin_of": t.number, **design_attrs(t.user_attrs)})
        there.add(key)
        done.append(t.number)
        progress("study.enqueue", number=t.number, reason="twin")
    return done


def kd_searched(space: Space) -> bool:
    return any(d.path == KD_PARAM for d in dimensions(space))
