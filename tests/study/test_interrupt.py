"""An interrupt (Ctrl-C or SIGTERM) fails and re-queues only this worker's own trial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from autokd.study.recovery import _requeue_interrupted  # the one function under test; the CLI path is tested below
from tests.study.test_study import CRASH_SPACE, REPO, _running_with_worker


def test_only_this_workers_trial_is_failed_and_requeued():
    study = optuna.create_study(directions=["maximize", "minimize"])
    dist = {"model.width_mult": CategoricalDistribution([0.25, 0.5])}
    mine = study.ask(dist)      # this worker's trial
    theirs = study.ask(dist)    # another worker's live trial, started later (it is trials[-1])
    _requeue_interrupted(study, mine.number)
    trials = study.get_trials()
    assert trials[mine.number].state == TrialState.FAIL
    assert trials[theirs.number].state == TrialState.RUNNING  # untouched
    (retry,) = [t for t in trials if t.state == TrialState.WAITING]
    assert retry.user_attrs["retry_of"] == mine.number
    assert retry.system_attrs["fixed_params"] == mine.params


def test_nothing_is_requeued_when_no_trial_was_started():
    study = optuna.create_study(directions=["maximize", "minimize"])
    theirs = study.ask({"model.width_mult": CategoricalDistribution([0.25, 0.5])})
    _requeue_interrupted(study, None)
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]
    assert theirs.number == 0


def test_sigterm_is_handled_like_ctrl_c_with_exit_143(tmp_path):
    (tmp_path / "crash.yaml").write_text(CRASH_SPACE)
    db = tmp_path / "crash.db"
    args = ["search", "crash.yaml", "--storage", f"sqlite:///{db}", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    code = "import sys; from autokd.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not _running_with_worker(db, 0):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "trial 0 never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert "interrupted" in err and "resume with: autokd search crash.yaml" in err
    assert "Traceback" not in err
    trials = optuna.load_study(study_name="crash", storage=f"sqlite:///{db}").get_trials()
    assert trials[0].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.state == TrialState.WAITING]
    assert retry.user_attrs["retry_of"] == 0 and retry.system_attrs["fixed_params"] == trials[0].params


def test_sigterm_is_raised_at_the_next_progress_event():
    import pytest
    from rich.console import Console

    from autokd.cli import Terminated, terminated
    from autokd.cli.search import RichProgress, stop_on_sigterm

    ui = stop_on_sigterm(RichProgress(Console(file=open(os.devnull, "w"))))
    ui("trial.fail", number=0, reason="x")  # no signal: nothing happens
    terminated.set()
    try:
        with pytest.raises(Terminated):
            ui("trial.epoch", epoch=1, epochs=2, loss=0.1)
    finally:
        terminated.clear()
