"""KD twins and siblings: the same settings and seed with ``distill.kd`` flipped, enqueued once for every COMPLETE
trial. When ``distill.method`` is searched, a configuration's **sibling set** is its KD-off trial (one, whatever
the method: it carries none) and one KD-on trial per method, all on the same streams; twins are the case of one
method. Every member of a COMPLETE trial's set is enqueued once.

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
from autokd.trial_index import (KD_PARAM, METHOD_PARAM, index_of, params_key, sibling_core, sibling_keys,
                                sibling_params)


def design_attrs(user_attrs: dict[str, Any]) -> dict[str, Any]:
    """The design point and replicate a trial records, for its twin and its retries to carry on."""
    return {k: user_attrs[k] for k in (DESIGN_POINT_ATTR, REPLICATE_ATTR) if k in user_attrs}


def twin_params(params: dict[str, Any]) -> dict[str, Any]:
    """The same parameters with ``distill.kd`` flipped (a KD-on trial's method and the method's settings dropped:
    its KD-off twin has none)."""
    if KD_PARAM not in params:
        raise ValueError(f"{KD_PARAM} is not a parameter of this trial")
    if METHOD_PARAM in params and not params[KD_PARAM]:
        raise ValueError(f"a KD-off trial carries no {METHOD_PARAM}")
    return {**{k: v for k, v in sibling_core(params).items() if k != METHOD_PARAM}, KD_PARAM: not params[KD_PARAM]}


def kd_methods(space: Space) -> tuple[str, ...] | None:
    """The searched ``distill.method`` choices, or None when the method is not searched."""
    dim = next((d for d in dimensions(space) if d.path == METHOD_PARAM), None)
    return None if dim is None else tuple(dim.choices)


def enqueue_missing_twins(study: optuna.Study, *, methods: tuple[str, ...] | None = None,
                          progress: ProgressCallback = silent) -> list[int]:
    """Enqueue every missing sibling (:func:`autokd.trial_index.sibling_params`; the KD twin when ``methods`` is
    None) of every COMPLETE trial, once (a sibling in any state counts); returns the originals' numbers.

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
            there.add(params_key(sibling_core(t.system_attrs.get("fixed_params", {})), replicate_of(t.user_attrs)))
        there.add(params_key(sibling_core(t.params), replicate_of(t.user_attrs)))
    done = []
    for number in sorted(index.open_twins):
        t = index.open_twins[number]
        keys = sibling_keys(t, methods)
        if all(key in index.finished_cores for key in keys):
            del index.open_twins[number]  # every sibling has finished (not pruned): settled for good
            continue
        for key, sibling in zip(keys, sibling_params(t.params, methods), strict=True):
            if key in there or key in index.finished_cores:
                continue
            with quiet_optuna():
                study.enqueue_trial(sibling, user_attrs={"twin_of": t.number, **design_attrs(t.user_attrs)})
            there.add(key)
            done.append(t.number)
            progress("study.enqueue", number=t.number, reason="twin")
    return done


def kd_searched(space: Space) -> bool:
    return any(d.path == KD_PARAM for d in dimensions(space))
