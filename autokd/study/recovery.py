"""Trials whose worker is gone: failed and re-queued once, by one mechanism.

A RUNNING trial is known dead when its worker ran on this host, this boot and this PID namespace and its process is
gone (:mod:`autokd.worker`); that is checked at once. Trials of workers elsewhere are left to the storage's
heartbeat (RDB storages), whose stale-trial callback re-queues them the same way. An interrupted worker (Ctrl-C,
SIGTERM) re-queues its own trial, never another's.
"""

from __future__ import annotations

import datetime
from typing import Any

import optuna
from optuna.trial import TrialState

from autokd import worker
from autokd.progress import ProgressCallback, silent
from autokd.study.storage import quiet_optuna
from autokd.study.twins import design_attrs


ORPHAN_SECONDS = 60.0  # a RUNNING trial with no worker record this old has no worker (one records it in ms)
MAX_RETRIES = 3  # retries of a configuration whose worker keeps dying (it may be the cause, e.g. out of memory)


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str, *, fail: bool = True,
            counts: bool = True) -> bool:
    """Fail ``trial`` (when ``fail``: it is RUNNING) and enqueue its parameters again, once: the one retry
    mechanism, whoever found the trial dead (the local check, the storage's heartbeat, an interrupted worker).

    Moving the trial out of RUNNING is the claim: the storage refuses a second transition
    (``UpdateFinishedTrialError``), so when two workers find the same dead trial only one enqueues it.
    ``counts``: whether this retry counts toward :data:`MAX_RETRIES` (a death does; a Ctrl-C does not).
    Returns whether this call re-queued it."""
    with quiet_optuna():
        if fail:
            try:
                # Private API: Optuna has no public way to fail another process's RUNNING trial.
                study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
                if not study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                    return False
            except optuna.exceptions.UpdateFinishedTrialError:
                return False  # another worker (or the heartbeat) got there first and re-queued it
        # A queued trial (twin, retry) taken by a worker that died before it began has no params yet: what it was
        # to run is in Optuna's record of the enqueued parameters (found by bench/kill9.py: a lost twin).
        params = trial.params or trial.system_attrs.get("fixed_params") or {}
        if not params:
            return False
        retries = int(trial.user_attrs.get("retry_count", 0))
        if counts and retries >= MAX_RETRIES:
            return False
        study.enqueue_trial(params,
                            user_attrs={**_retry_attrs(trial, reason), "retry_count": retries + int(counts)})
    return True


def stale_trial_callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna's ``heartbeat_stale_trial_callback``: the storage already failed ``trial`` (its heartbeat is older
    than the grace period; it won the transition), so only the re-queue is left."""
    requeue(study, trial, "worker stopped sending heartbeats (stale trial)", fail=False)


def has_worker(t: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial's worker recorded itself (autokd's first step in a trial; ``worker`` for older autokd)."""
    return "worker_id" in t.user_attrs or "worker" in t.user_attrs


def orphan_age(t: optuna.trial.FrozenTrial) -> float | None:
    """Seconds since a RUNNING trial without any worker record started (None when it has one).

    Optuna creates the trial, then autokd records the worker a few milliseconds later: a worker killed in between
    leaves a trial that neither the local check (no identity) nor the heartbeat (none recorded yet) can judge."""
    if has_worker(t) or t.datetime_start is None:
        return None
    return (datetime.datetime.now() - t.datetime_start).total_seconds()  # Optuna stores local naive times


def recover_stale_trials(study: optuna.Study, *, progress: ProgressCallback = silent) -> list[int]:
    """Fail RUNNING trials whose worker process is known dead and enqueue their parameters again.

    Known dead only for workers of this host, boot and PID namespace whose process is gone (:func:`worker.is_dead`):
    containers share a hostname and a boot id, so hostname + pid alone proves nothing; and trials whose worker never
    recorded itself within :data:`ORPHAN_SECONDS` (killed between Optuna's creation of the trial and autokd's first
    step). Every other RUNNING trial is left to the storage's heartbeat (:func:`stale_trial_callback`)."""
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        counts = True
        age = orphan_age(t)
        if age is not None:
            if age < ORPHAN_SECONDS:
                continue  # its worker may be recording itself right now
            reason = "worker died before it recorded itself (orphan trial)"
        elif worker.is_dead(t.user_attrs.get("worker_id")) is True:
            reason = "worker process died (stale trial)"
            note = worker.exit_note(t.user_attrs.get("worker_id"))
            if note is not None:  # it stopped for a cause that is not this configuration's (an outage)
                reason, counts = f"worker stopped: {note}", False
        else:
            continue  # alive, or not ours to judge (the heartbeat will)
        if requeue(study, t, reason, counts=counts):
            recovered.append(t.number)
            progress("study.stale", number=t.number)
    return recovered


def _requeue_interrupted(study: optuna.Study, number: int | None, reason: str = "interrupted (Ctrl-C)") -> None:
    """After Ctrl-C or SIGTERM, put this worker's interrupted trial ``number`` back in the queue so a rerun starts
    with it (another worker's trials are never touched).

    Optuna has normally marked the interrupted trial FAIL already (then only the re-queue is left)."""
    if number is None:
        return
    trials = study.get_trials(deepcopy=False)
    if number >= len(trials):
        return
    t = trials[number]
    if t.state == TrialState.RUNNING:
        requeue(study, t, reason, counts=False)
    elif t.state == TrialState.FAIL:
        requeue(study, t, reason, fail=False, counts=False)


def _retry_attrs(t: optuna.trial.FrozenTrial, reason: str) -> dict[str, Any]:
    """User attributes of a retry: what it retries and why, and the twin link, design point and replicate of the
    original, if any (a retry of a design point is that point, in that replicate)."""
    attrs = {"retry_of": t.number, "retry_reason": reason, **design_attrs(t.user_attrs)}
    if "twin_of" in t.user_attrs:
        attrs["twin_of"] = t.user_attrs["twin_of"]
    return attrs
