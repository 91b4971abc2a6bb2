"""Trials whose worker is gone: failed and re-queued once, by one mechanism.

A RUNNING trial is known dead when its worker ran on this host, this boot and this PID namespace and its process is
gone (:mod:`autokd.worker`); that is checked at once. Trials of workers elsewhere are left to the storage's
heartbeat (RDB storages), whose stale-trial callback re-queues them the same way. An interrupted worker (Ctrl-C,
SIGTERM) re-queues its own trial, never another's.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import optuna
from optuna.trial import TrialState

from autokd import worker
from autokd.progress import ProgressCallback, silent
from autokd.study.storage import quiet_optuna


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_stale_trials(study: optuna.Study, *, progress: ProgressCallback = silent) -> list[int]:
    """Fail RUNNING trials whose worker process on this host is gone, and enqueue their parameters again."""
    host = socket.gethostname()
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "worker_id" in t.user_attrs:  # host, boot, PID namespace, pid and start time (autokd.worker)
            if worker.is_dead(t.user_attrs["worker_id"]) is not True:
                continue  # alive, or not ours to judge (the heartbeat will)
        else:  # trials of an older autokd: "host:pid" only
            whost, _, pid = t.user_attrs.get("worker", "").rpartition(":")
            if whost != host or not pid.isdigit() or _pid_alive(int(pid)) and int(pid) != os.getpid():
                continue
        with quiet_optuna():
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "worker process died (stale trial)")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            if t.params:
                study.enqueue_trial(t.params, user_attrs=_retry_attrs(t, "worker process died"))
        recovered.append(t.number)
        progress("study.stale", number=t.number)
    return recovered


def _requeue_interrupted(study: optuna.Study, number: int | None) -> None:
    """After Ctrl-C or SIGTERM, put this worker's interrupted trial ``number`` back in the queue so a rerun starts
    with it (another worker's trials are never touched).

    Optuna has already marked the interrupted trial FAIL (finished trials cannot be changed), so the reason goes on
    the re-queued trial.
    """
    trials = study.get_trials(deepcopy=False)
    if number is None or number >= len(trials):
        return
    t = trials[number]
    if t.state == TrialState.RUNNING:
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    if t.state in (TrialState.FAIL, TrialState.RUNNING) and t.params:
        study.enqueue_trial(t.params, user_attrs=_retry_attrs(t, "interrupted (Ctrl-C)"))


def _retry_attrs(t: optuna.trial.FrozenTrial, reason: str) -> dict[str, Any]:
    """User attributes of a retry: what it retries and why, and the twin link of the original, if any."""
    attrs = {"retry_of": t.number, "retry_reason": reason}
    if "twin_of" in t.user_attrs:
        attrs["twin_of"] = t.user_attrs["twin_of"]
    return attrs
