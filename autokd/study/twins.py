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


KD_PARAM = "distill.kd"


def _params_key(params: dict[str, Any], replicate: int = 0) -> tuple:
    """What makes two trials the same run: their params and their design replicate (each has its own streams)."""
    return tuple(sorted((k, repr(v)) for k, v in params.items())) + ((REPLICATE_ATTR, replicate),)


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
    trials = study.get_trials(deepcopy=False)
    # PRUNED trials are no twins: a duplicate's original is COMPLETE or RUNNING (seen through it), unless the
    # original was early-stopped, and neither that nor its duplicates should hide the twin.
    seen = {_params_key(t.params, replicate_of(t.user_attrs)) for t in trials if t.state != TrialState.PRUNED}
    seen |= {_params_key(t.system_attrs.get("fixed_params", {}), replicate_of(t.user_attrs))
             for t in trials if t.state == TrialState.WAITING}
    done = []
    for t in trials:
        if t.state != TrialState.COMPLETE or KD_PARAM not in t.params:
            continue
        twin = twin_params(t.params)
        key = _params_key(twin, replicate_of(t.user_attrs))
        if key in seen:
            continue
        with quiet_optuna():
            study.enqueue_trial(twin, user_attrs={"twin_of": t.number, **design_attrs(t.user_attrs)})
        seen.add(key)
        done.append(t.number)
        progress("study.enqueue", number=t.number, reason="twin")
    return done


def kd_searched(space: Space) -> bool:
    return any(d.path == KD_PARAM for d in dimensions(space))
