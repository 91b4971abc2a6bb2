"""Worker identities: a trial is recovered only when its worker is known dead, never because a container that
shares the hostname runs a pid we cannot see."""

from __future__ import annotations

import subprocess

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from autokd import worker
from autokd.study import recover_stale_trials


def test_identity_and_liveness():
    proc = subprocess.Popen(["sleep", "30"])
    try:
        ident = worker.identity(proc.pid)
        assert ident["pid"] == proc.pid and ident["start"] is not None
        assert worker.is_dead(ident) is False                       # alive
        assert worker.is_dead({**ident, "start": "1"}) is True      # the pid now belongs to another process
        assert worker.is_dead({**ident, "pidns": 1}) is None        # another container: cannot tell
        assert worker.is_dead({**ident, "host": "elsewhere"}) is None
        assert worker.is_dead({**ident, "boot": "another-boot"}) is None
    finally:
        proc.kill()
        proc.wait()
    assert worker.is_dead(ident) is True                             # gone
    assert worker.is_dead("vm:123") is None and worker.is_dead({}) is None


def test_only_trials_of_known_dead_workers_are_recovered():
    proc = subprocess.Popen(["sleep", "30"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    study = optuna.create_study(directions=["maximize", "minimize"])
    dist = {"model.width_mult": CategoricalDistribution([0.25, 0.5])}
    try:
        cases = {"alive": worker.identity(proc.pid), "dead": worker.identity(dead.pid) | {"start": "1"},
                 "other container": {**worker.identity(proc.pid), "pidns": 1}}
        cases["dead"]["pid"] = dead.pid
        numbers = {}
        for name, ident in cases.items():
            t = study.ask(dist)
            t.set_user_attr("worker_id", ident)
            numbers[name] = t.number
        recovered = recover_stale_trials(study)
    finally:
        proc.kill()
        proc.wait()
    assert recovered == [numbers["dead"]]
    states = {name: study.get_trials()[n].state for name, n in numbers.items()}
    assert states == {"alive": TrialState.RUNNING, "dead": TrialState.FAIL, "other container": TrialState.RUNNING}
