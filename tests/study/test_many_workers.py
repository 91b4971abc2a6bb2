"""Many workers on one study, as real processes: 2 on SQLite (``--workers 2``), 3 started by hand on PostgreSQL,
and Ctrl-C in one of two workers. The study reaches its target with every KD pair whole, nothing RUNNING, no
configuration trained twice and the teacher trained once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autokd.study import load_study

N_TRIALS = 8


def many_space(tiny: dict, *, n_trials: int = N_TRIALS, epochs: int = 1) -> dict:
    """The tiny space with room for 8+ distinct trials: 4 widths x 3 prune ratios x KD on/off."""
    space = dict(tiny)
    space["name"] = "many"
    space["model"] = {"family": "mobilenetv2", "width_mult": {"choices": [0.25, 0.5, 0.75, 1.0]}}
    space["compress"] = {"prune_ratio": {"choices": [0.0, 0.25, 0.5]}}
    space["train"] = {"epochs": epochs}
    space["search"] = {"n_trials": n_trials, "kd_twins": True}
    return space


def autokd(*args: object) -> list[str]:
    return [sys.executable, "-m", "autokd", "search", *map(str, args)]


def env() -> dict[str, str]:
    return {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}


def check_study(url: str, study_name: str, workers: int, n_trials: int = N_TRIALS) -> list[optuna.trial.FrozenTrial]:
    """The acceptance checks of a finished many-worker study; returns its trials."""
    study, _ = load_study(storage=url, study_name=study_name)
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert n_trials <= len(complete) <= n_trials + 2 * workers - 1, Counter(t.state.name for t in trials)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # no configuration+seed ran COMPLETE twice
    keys = Counter(tuple(sorted(t.params.items())) for t in complete)
    assert max(keys.values()) == 1, keys
    # every KD trial has exactly one COMPLETE twin
    for t in complete:
        twin = {**t.params, "distill.kd": not t.params["distill.kd"]}
        assert keys[tuple(sorted(twin.items()))] == 1, f"trial {t.number} has no COMPLETE twin"
    # one teacher: every KD trial records the same teacher weights
    hashes = {t.user_attrs.get("teacher_hash") for t in complete if t.params["distill.kd"]}
    assert len(hashes) == 1 and None not in hashes
    return trials


def test_two_workers_on_sqlite_with_one_command(tmp_path, space_file, tiny_space):
    path = space_file(many_space(tiny_space))
    url = f"sqlite:///{tmp_path}/s.db"
    cache = tmp_path / "cache"
    proc = subprocess.run(autokd(path, "--storage", url, "--device", "cpu", "--workers", 2, "--cache-dir", cache),
                          capture_output=True, text=True, env=env(), timeout=600)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "Starting 2 workers on this machine, 1 CPU thread(s) each." in proc.stdout
    assert proc.stdout.count("trained and cached") == 1  # the teacher was trained once
    assert proc.stdout.count("Pareto") >= 1 and proc.stdout.count("Done:") == 1  # one report
    trials = check_study(url, "many", workers=2)
    assert len({t.user_attrs["worker_id"]["pid"] for t in trials if t.state == TrialState.COMPLETE}) == 2
    assert len(list(cache.glob("*.pt"))) == 1


def test_three_workers_by_hand_on_postgresql(tmp_path, space_file, tiny_space, postgres_url):
    path = space_file(many_space(tiny_space))
    study = f"many-{uuid.uuid4().hex[:8]}"
    cache = tmp_path / "cache"
    logs = [open(tmp_path / f"w{i}.log", "w") for i in range(3)]
    procs = [subprocess.Popen(autokd(path, "--storage", postgres_url, "--study", study, "--device", "cpu",
                                     "--worker-index", i, "--threads", 1, "--cache-dir", cache,
                                     "--artifacts", tmp_path / "artifacts"),
                              stdout=logs[i], stderr=subprocess.STDOUT, text=True, env=env()) for i in range(3)]
    codes = [p.wait(timeout=600) for p in procs]
    outputs = [(tmp_path / f"w{i}.log").read_text() for i in range(3)]
    assert codes == [0, 0, 0], outputs
    assert sum(o.count("trained and cached") for o in outputs) == 1  # one teacher for the study
    trials = check_study(postgres_url, study, workers=3)
    store = tmp_path / "artifacts"
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert (store / t.user_attrs["model_artifact"]).is_file()


def _trial_in_training(log: Path) -> int | None:
    """The trial a worker (run with ``--progress-json``) is training right now, past its first epoch (so epochs of it
    remain), from the events it has written; None when there is none.

    Read from the worker's own event stream, not from the storage: polling a SQLite study that two workers write
    fails on locks often enough that both workers were seen training at once only near the end of the study,
    when the interrupted worker could already be past its last trial (seen once: it exited 0)."""
    current, in_training = None, False
    for line in log.read_text().splitlines():
        if not line.startswith("{"):
            continue
        try:
            ev = json.loads(line)
        except ValueError:  # a line being written
            continue
        if ev.get("event") == "trial.start":
            current, in_training = ev.get("number"), False
        elif ev.get("event") == "trial.done":
            current, in_training = None, False
        elif ev.get("event") == "trial.epoch" and ev.get("phase") == "train" and ev.get("epoch") == 1:
            in_training = ev.get("epochs", 0) > 1
    return current if in_training else None


def test_ctrl_c_in_one_worker_leaves_the_other_alone(tmp_path, space_file, tiny_space):
    # 3 epochs at 16 px: trials last long enough to be interrupted in the middle; 4 trials are enough for both
    # workers to be training at once
    space = many_space(tiny_space, n_trials=4, epochs=3)
    space["dataset"] = {"name": "digits", "image_size": 16}
    path = space_file(space)
    url = f"sqlite:///{tmp_path}/s.db"
    common = ["--storage", url, "--device", "cpu", "--threads", 1, "--cache-dir", tmp_path / "cache"]
    # output to files, not pipes: a pipe nobody reads while the test polls would block a worker mid-print
    log0, out1, err1_file = (open(tmp_path / name, "w") for name in ("w0.log", "w1.out", "w1.err"))
    w0 = subprocess.Popen(autokd(path, *common, "--worker-index", 0, "--progress-json"), stdout=log0,
                          stderr=subprocess.STDOUT, text=True, env=env())
    w1_cmd = autokd(path, *common, "--worker-index", 1)
    w1 = subprocess.Popen([*w1_cmd, "--progress-json"], stdout=out1, stderr=err1_file, text=True, env=env())
    deadline = time.monotonic() + 300
    mine = theirs = None
    while time.monotonic() < deadline and (mine is None or theirs is None):
        mine = _trial_in_training(tmp_path / "w1.out")
        theirs = _trial_in_training(tmp_path / "w0.log")
        time.sleep(0.02)
    assert mine is not None and theirs is not None, "both workers should be training a trial"
    w1.send_signal(signal.SIGINT)
    w1.wait(timeout=120)
    err1 = (tmp_path / "w1.err").read_text()
    assert w1.returncode == 130, err1 + (tmp_path / "w1.out").read_text()
    assert "resume with: autokd search" in err1
    w0.wait(timeout=600)
    assert w0.returncode == 0, (tmp_path / "w0.log").read_text()

    study, _ = load_study(storage=url, study_name="many")
    trials = study.get_trials()
    assert trials[theirs].state == TrialState.COMPLETE  # the other worker's trial was not touched
    assert trials[mine].state == TrialState.FAIL
    assert trials[mine].user_attrs["fail_reason"] == "interrupted (Ctrl-C)"
    retries = [t for t in trials if t.user_attrs.get("retry_of") == mine]
    assert len(retries) == 1 and retries[0].params == trials[mine].params

    # rerunning the interrupted worker's command completes the study (here: it is already complete)
    again = subprocess.run(w1_cmd, capture_output=True, text=True, env=env(), timeout=600)
    assert again.returncode == 0, again.stderr
    check_study(url, "many", workers=2, n_trials=4)


def test_workers_split_the_cores():
    from autokd.cli.workers import split_threads

    assert split_threads(2, None, cores=2) == 1
    assert split_threads(3, None, cores=16) == 5
    assert split_threads(4, None, cores=2) == 1
    assert split_threads(2, 3, cores=2) == 3


def test_a_worker_command_repeats_the_options(tmp_path):
    from autokd.cli.search import SearchOptions
    from autokd.cli.workers import worker_command

    opts = SearchOptions(space=Path("s.yaml"), sets=["train.epochs=1"], storage="sqlite:///x.db", study=None,
                         timeout=None, device="cpu", cache_dir=None, allow_space_change=False, margin=None,
                         artifacts=tmp_path, threads=None, worker_index=0)
    cmd = worker_command(opts, 1, 2)
    assert cmd[:4] == [sys.executable, "-m", "autokd", "search"]
    assert cmd[4:] == ["s.yaml", "--set", "train.epochs=1", "--storage", "sqlite:///x.db", "--device", "cpu",
                       "--artifacts", str(tmp_path), "--threads", "2", "--worker-index", "1", "--progress-json"]
    opts.margin = 1.0  # given on the command line (even at the usual default): repeated, it wins over the space's
    assert worker_command(opts, 1, 2)[-3:] == ["--margin", "1", "--progress-json"]


def test_the_many_space_is_valid(space_file, tiny_space):
    from autokd.space import load_space

    space = load_space(space_file(many_space(tiny_space)))
    assert space.search.n_trials == N_TRIALS


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # study.ask() on an RDB storage
def test_a_worker_started_by_hand_is_told_about_its_neighbours(tmp_path, tiny_space):
    from autokd.progress import EventLog
    from autokd.space import space_from_dict
    from autokd.study import create_or_load_study
    from autokd.study.runner import _say_neighbours
    from autokd.worker import identity

    study = create_or_load_study(space_from_dict(tiny_space), storage=f"sqlite:///{tmp_path}/s.db")
    log = EventLog()
    _say_neighbours(study, None, log)
    assert log.events == []  # alone
    other = subprocess.Popen(["sleep", "30"])
    try:
        trial = study.ask()
        trial.set_user_attr("worker_id", identity(other.pid))
        _say_neighbours(study, 2, log)
    finally:
        other.kill()
        other.wait()
    ((event, data),) = log.events
    assert event == "study.neighbours" and data["workers"] == 1 and data["threads"] == 2
    assert data["suggested"] == max(1, (os.cpu_count() or 1) // 2)
