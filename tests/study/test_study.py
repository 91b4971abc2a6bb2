"""The study: creation and identity checks, storage errors, stale-trial recovery, resume-safe seeds, Ctrl-C,
failure budget, and a real kill -9 (slow)."""

from __future__ import annotations

import math
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from autokd.errors import StudyError
from autokd.space import legacy_space_hashes, space_from_dict, space_hash, to_dict
from autokd.study import (
    ATTR_COST_SCALE,
    ATTR_HASH,
    ATTR_SPACE,
    cost_scale,
    default_artifacts_dir,
    count_states,
    create_or_load_study,
    derive_seed,
    load_study,
    open_storage,
    recover_stale_trials,
    run_search,
    trial_records,
)

REPO = Path(__file__).resolve().parents[2]

# study.ask() on a storage with a heartbeat warns that heartbeats are meant for optimize(); harmless here
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def worker(pid: int, host: str | None = None) -> dict:
    """A worker identity (as recorded on each trial) of process ``pid``, on this host or on ``host``."""
    from autokd.worker import identity

    ident = identity(pid)
    if host is not None:
        ident["host"] = host
    return ident


@pytest.fixture
def url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{tmp_path}/s.db"


def lr_space(**search) -> dict:
    """A space with one continuous dimension and no KD (no teacher needed)."""
    return {"version": 1, "name": "lr", "dataset": {"name": "digits", "image_size": 8},
            "model": {"family": "mobilenetv2", "width_mult": 0.25}, "distill": {"kd": False},
            "train": {"epochs": 1, "lr": {"low": 0.01, "high": 0.1, "log": True}},
            "search": {"n_trials": 1, **search}}


# --- creating and loading ------------------------------------------------------------------------


def test_new_study_records_the_space(url, tiny_space):
    sp = space_from_dict(tiny_space)
    study = create_or_load_study(sp, storage=url)
    assert study.study_name == "tiny"
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "log10_flops"]
    assert study.user_attrs[ATTR_COST_SCALE] == "log10" and cost_scale(study) == "log10"
    assert study.user_attrs[ATTR_HASH] == space_hash(sp)
    assert space_from_dict(study.user_attrs[ATTR_SPACE]).model_dump() == sp.model_dump()
    loaded, loaded_space = load_study(storage=url, study_name="tiny")
    assert loaded._study_id == study._study_id
    assert space_hash(loaded_space) == space_hash(sp)


def test_two_objectives_give_three_directions(url, tiny_space):
    tiny_space["search"]["objectives"] = ["flops", "params"]
    study = create_or_load_study(space_from_dict(tiny_space), storage=url)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "log10_flops", "log10_params"]


def test_a_study_made_while_the_sampler_was_hashed_resumes_under_any_sampler(url, tiny_space):
    # Such a study stored the hash of its question *and* its sampler (spaces/mobilenet.yaml: 530b394c7dec6492).
    tpe = space_from_dict(tiny_space, overrides=["search.sampler=tpe"])
    made = create_or_load_study(tpe, storage=url)
    for legacy in sorted(legacy_space_hashes(tpe)):
        made.set_user_attr(ATTR_HASH, legacy)
        for sampler in ("gp", "tpe"):  # the new default, and the old one
            made.set_user_attr(ATTR_HASH, legacy)
            study = create_or_load_study(space_from_dict(tiny_space, overrides=[f"search.sampler={sampler}"]),
                                         storage=url)
            assert study._study_id == made._study_id
            assert study.user_attrs[ATTR_HASH] == space_hash(tpe)  # migrated to today's hash, no history entry
            assert "autokd.space_history" not in study.user_attrs
    # another question behind an old hash is still another study
    made.set_user_attr(ATTR_HASH, sorted(legacy_space_hashes(tpe))[0])
    with pytest.raises(StudyError, match="different space"):
        create_or_load_study(space_from_dict(tiny_space, overrides=["train.epochs=2"]), storage=url)


def test_the_sampler_may_change_on_resume(url, tiny_space):
    first = create_or_load_study(space_from_dict(tiny_space, overrides=["search.sampler=tpe"]), storage=url)
    again = create_or_load_study(space_from_dict(tiny_space, overrides=["search.sampler=nsga2"]), storage=url)
    assert again._study_id == first._study_id


def test_same_space_loads_the_same_study_and_budget_may_change(url, tiny_space):
    first = create_or_load_study(space_from_dict(tiny_space), storage=url)
    again = create_or_load_study(space_from_dict(tiny_space, overrides=["search.n_trials=40"]), storage=url)
    assert again._study_id == first._study_id
    assert len(optuna.get_all_study_names(url)) == 1


def test_changed_space_is_refused(url, tiny_space):
    create_or_load_study(space_from_dict(tiny_space), storage=url)
    with pytest.raises(StudyError) as exc:
        create_or_load_study(space_from_dict(tiny_space, overrides=["train.epochs=2"]), storage=url)
    (line,) = exc.value.lines
    assert "--study" in line and "--allow-space-change" in line


def test_allow_space_change_keeps_the_history(url, tiny_space):
    old = space_from_dict(tiny_space)
    create_or_load_study(old, storage=url)
    new = space_from_dict(tiny_space, overrides=["train.epochs=2"])
    study = create_or_load_study(new, storage=url, allow_space_change=True)
    assert study.user_attrs[ATTR_HASH] == space_hash(new)
    assert study.user_attrs["autokd.space_history"] == [space_hash(old)]
    assert space_from_dict(study.user_attrs[ATTR_SPACE]).train.epochs == 2
    # and from now on the new space is the study's space
    assert create_or_load_study(new, storage=url)._study_id == study._study_id


def test_changed_objectives_are_refused_even_with_allow_space_change(url, tiny_space):
    create_or_load_study(space_from_dict(tiny_space), storage=url)
    with pytest.raises(StudyError, match="objectives"):
        create_or_load_study(space_from_dict(tiny_space, overrides=["search.objectives=[flops, params]"]),
                             storage=url, allow_space_change=True)


def test_foreign_study_of_the_same_name_is_refused(url, tiny_space, monkeypatch):
    import autokd.study

    # An empty foreign study looks like one being created by another worker: autokd waits for its attributes
    # (CREATE_WAIT_SECONDS) before refusing; keep that wait short here.
    monkeypatch.setattr(autokd.study.storage, "CREATE_WAIT_SECONDS", 0.3)
    optuna.create_study(study_name="tiny", storage=url, directions=["maximize", "minimize"])
    with pytest.raises(StudyError, match="not made by autokd"):
        create_or_load_study(space_from_dict(tiny_space), storage=url)
    with pytest.raises(StudyError, match="not made by autokd"):
        load_study(storage=url, study_name="tiny")


def test_custom_study_name(url, tiny_space):
    study = create_or_load_study(space_from_dict(tiny_space), storage=url, study_name="other")
    assert study.study_name == "other"
    with pytest.raises(StudyError, match="no study 'tiny'"):
        load_study(storage=url, study_name="tiny")


# --- storage -------------------------------------------------------------------------------------


def test_storage_errors(tmp_path):
    with pytest.raises(StudyError, match="not a storage URL"):
        open_storage("nonsense")
    with pytest.raises(StudyError, match="no study database"):
        open_storage(f"sqlite:///{tmp_path}/missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(StudyError, match="directory"):
        open_storage(f"sqlite:///{tmp_path}")
    with pytest.raises(StudyError) as exc:
        open_storage("nosuchdriver://x/y")
    assert exc.value.lines[0].startswith("--storage: cannot open nosuchdriver://x/y")


def test_storage_creates_missing_folders(tmp_path):
    open_storage(f"sqlite:///{tmp_path}/a/b/s.db")
    assert (tmp_path / "a" / "b" / "s.db").exists()


def test_default_artifacts_dir():
    assert default_artifacts_dir("sqlite:////tmp/x/s.db", "tiny") == Path("/tmp/x/tiny/artifacts")
    assert default_artifacts_dir("sqlite:///studies/s.db", "tiny") == Path("studies/tiny/artifacts")
    assert default_artifacts_dir("postgresql://u@h/db", "tiny") == Path("studies/tiny/artifacts")


# --- stale trials --------------------------------------------------------------------------------

DISTS = {"model.width_mult": CategoricalDistribution([0.25, 0.5]), "distill.kd": CategoricalDistribution([True, False])}


def running_trial(study, who: dict | str | None):
    trial = study.ask(DISTS)
    if isinstance(who, dict):
        trial.set_user_attr("worker_id", who)
    elif who is not None:
        trial.set_user_attr("worker", who)  # what autokd recorded before worker identities
    return trial


def test_dead_worker_trial_is_failed_and_requeued(url, tiny_space):
    study = create_or_load_study(space_from_dict(tiny_space), storage=url)
    stale = running_trial(study, worker(dead_pid()))
    params = dict(stale.params)
    assert set(params) == set(DISTS)
    events = []
    assert recover_stale_trials(study, progress=lambda e, **d: events.append((e, d))) == [stale.number]
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[0].user_attrs["fail_reason"]
    assert trials[1].system_attrs["fixed_params"] == params
    assert trials[1].user_attrs["retry_of"] == stale.number
    assert events == [("study.stale", {"number": stale.number})]
    assert recover_stale_trials(study) == []  # idempotent


@pytest.mark.parametrize("who", ["live-other", "other-host", "no-worker", "garbled", "hostname-and-pid-only"])
def test_trials_of_live_or_unknown_workers_are_left_alone(url, tiny_space, who):
    """Only a worker of this host, boot and PID namespace whose process is gone is known dead; hostname + pid
    alone (what containers sharing a hostname also match) proves nothing: such trials wait for the heartbeat."""
    study = create_or_load_study(space_from_dict(tiny_space), storage=url)
    alive = subprocess.Popen(["sleep", "30"])
    try:
        value = {"live-other": worker(alive.pid), "other-host": worker(dead_pid(), "elsewhere.invalid"),
                 "no-worker": None, "garbled": "nonsense",
                 "hostname-and-pid-only": f"{socket.gethostname()}:{dead_pid()}"}[who]
        running_trial(study, value)
        assert recover_stale_trials(study) == []
        assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]
    finally:
        alive.kill()
        alive.wait()


def test_run_search_retries_a_stale_trial_first(url):
    sp = space_from_dict(lr_space(), overrides=["search.n_trials=1"])
    study = create_or_load_study(sp, storage=url)
    stale = study.ask({"train.lr": FloatDistribution(0.01, 0.1, log=True)})
    stale.set_user_attr("worker_id", worker(dead_pid()))
    events = []
    result = run_search(sp, storage=url, device="cpu", progress=lambda e, **d: events.append(e))
    assert "study.stale" in events
    trials = result.study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].params == stale.params
    assert trials[1].user_attrs["retry_of"] == 0


# --- seeds and resume ----------------------------------------------------------------------------


def test_derive_seed():
    assert derive_seed(0, 0) == derive_seed(0, 0)
    seeds = {derive_seed(0, n) for n in range(50)}
    assert len(seeds) == 50
    assert derive_seed(0, 3) != derive_seed(1, 3)
    # Workers started together get different seeds; worker 0 keeps the single-worker seed.
    assert derive_seed(0, 3, 0) == derive_seed(0, 3)
    assert len({derive_seed(0, 3, w) for w in range(8)}) == 8
    assert all(0 <= s < 2**32 for s in seeds)


def _run_twice(url) -> list[optuna.trial.FrozenTrial]:
    first = run_search(space_from_dict(lr_space()), storage=url, device="cpu")
    assert (first.complete, first.ran_this_run) == (1, 1)
    # a new run (as a new process would do: the study is loaded from the storage)
    second = run_search(space_from_dict(lr_space(), overrides=["search.n_trials=2"]), storage=url, device="cpu")
    assert (second.complete, second.ran_this_run) == (2, 1)
    return second.study.get_trials()


def test_resumed_study_does_not_repropose_the_first_params(url):
    trials = _run_twice(url)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert trials[0].params["train.lr"] != trials[1].params["train.lr"]
    # rerunning with the budget reached runs nothing
    again = run_search(space_from_dict(lr_space(), overrides=["search.n_trials=2"]), storage=url, device="cpu")
    assert again.ran_this_run == 0 and again.complete == 2
    assert [t.values for t in again.study.get_trials()] == [t.values for t in trials]


@pytest.mark.filterwarnings("ignore:.*set_metric_names is experimental")
def test_a_new_study_tells_log10_costs_and_one_made_before_keeps_telling_raw_ones(url):
    sp = space_from_dict(lr_space())
    new = run_search(sp, storage=url, device="cpu", study_name="new")
    (t,) = new.study.get_trials()
    assert t.values == [t.user_attrs["metrics"]["val_accuracy"], math.log10(t.user_attrs["metrics"]["flops"])]
    # a study as autokd made them before the scale was recorded: raw costs, no autokd.cost_scale
    old = optuna.create_study(study_name="old", storage=url, directions=["maximize", "minimize"])
    old.set_metric_names(["val_accuracy", "flops"])
    old.set_user_attr(ATTR_SPACE, to_dict(sp))
    old.set_user_attr(ATTR_HASH, space_hash(sp))
    resumed = run_search(sp, storage=url, device="cpu", study_name="old")
    assert cost_scale(resumed.study) == "linear" and ATTR_COST_SCALE not in resumed.study.user_attrs
    (t,) = resumed.study.get_trials()
    assert t.values == [t.user_attrs["metrics"]["val_accuracy"], t.user_attrs["metrics"]["flops"]]
    assert resumed.study.metric_names == ["val_accuracy", "flops"]


def test_the_resume_check_would_catch_a_fixed_seed(url, monkeypatch):
    """Without a seed derived from the history, a fresh sampler repeats trial 0's proposal."""
    import autokd.study

    monkeypatch.setattr(autokd.study.sampler, "derive_seed", lambda seed, n_existing, worker_index=0: seed)
    trials = _run_twice(url)
    assert trials[0].params["train.lr"] == trials[1].params["train.lr"]


# --- interruption and failures -------------------------------------------------------------------


def test_ctrl_c_requeues_the_interrupted_trial(url):
    sp = space_from_dict(lr_space())

    def interrupt(event, **data):
        if event == "trial.epoch":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(sp, storage=url, device="cpu", progress=interrupt)
    study, _ = load_study(storage=url, study_name="lr")
    first, queued = study.get_trials()
    assert first.state == TrialState.FAIL and "interrupted" in first.user_attrs["fail_reason"]
    assert queued.state == TrialState.WAITING
    assert queued.system_attrs["fixed_params"] == first.params
    # the rerun starts with the interrupted parameters
    result = run_search(sp, storage=url, device="cpu")
    trials = result.study.get_trials()
    assert trials[1].state == TrialState.COMPLETE and trials[1].params == first.params


def test_failing_trials_stop_at_max_failures(url, monkeypatch):
    import autokd.objective

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(autokd.objective, "run_config", boom)
    sp = space_from_dict(lr_space(max_failures=2), overrides=["search.n_trials=5"])
    result = run_search(sp, storage=url, device="cpu")
    assert result.stopped == "max_failures"
    assert (result.failed_this_run, result.ran_this_run, result.complete) == (2, 2, 0)
    assert result.last_error == "RuntimeError: boom"
    assert count_states(result.study) == {"FAIL": 2}
    records = trial_records(result.study)
    assert [r["fail_reason"] for r in records] == ["RuntimeError: boom"] * 2
    assert all(r["values"] is None for r in records)


def test_trial_records_are_plain_data(url, tiny_space):
    study = create_or_load_study(space_from_dict(tiny_space), storage=url)
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.COMPLETE, values=[0.5, 100.0], params={"distill.kd": True},
        distributions={"distill.kd": CategoricalDistribution([True, False])},
        user_attrs={"metrics": {"val_accuracy": 0.5, "flops": 100.0}, "settings": {"distill": {"kd": True}},
                    "seconds": 1.5}))
    (r,) = trial_records(study)
    assert r == {"number": 0, "state": "COMPLETE", "values": [0.5, 100.0], "params": {"distill.kd": True},
                 "queued_params": None, "metrics": {"val_accuracy": 0.5, "flops": 100.0}, "settings": {"distill": {"kd": True}},
                 "seconds": 1.5, "fail_reason": None, "twin_of": None, "retry_of": None, "duplicate_of": None,
                 "stopped_reason": None, "stopped_epoch": None, "teacher": None, "teacher_hash": None,
                 "numerics": None, "design_point": None, "replicate": 0}


# --- a real crash ----------------------------------------------------------------------------------

CRASH_SPACE = """\
version: 1
name: crash
dataset:
  name: digits
  image_size: 8
model:
  family: mobilenetv2
  width_mult: {choices: [0.25, 0.5, 0.75, 1.0]}  # more configurations than trials: repeats are skipped
distill:
  kd: true
  teacher:
    width: 8
    epochs: 1
train:
  epochs: 3
search:
  n_trials: 3
  sampler: random
"""


def _running_with_worker(db: Path, number: int) -> bool:
    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            # RUNNING, with its worker recorded and its parameters sampled (a kill before sampling leaves a trial
            # with nothing to retry, which is not what these tests are about).
            row = con.execute(
                "SELECT 1 FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                "JOIN trial_params p ON p.trial_id = t.trial_id "
                "WHERE t.number = ? AND t.state = 'RUNNING' AND a.key = 'worker'", (number,)).fetchone()
    except sqlite3.Error:
        return False
    return row is not None


@pytest.mark.slow
def test_kill_9_during_a_trial_then_resume(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "crash.yaml").write_text(CRASH_SPACE)
    db = tmp_path / "crash.db"
    url = f"sqlite:///{db}"
    args = ["search", "crash.yaml", "--storage", url, "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    code = "import sys; from autokd.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not _running_with_worker(db, 1):
            assert proc.poll() is None, "the search ended before trial 1 started"
            assert time.monotonic() < deadline, "trial 1 never started"
            time.sleep(0.05)
        proc.kill()  # SIGKILL: no cleanup, trial 1 stays RUNNING
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    study = optuna.load_study(study_name="crash", storage=url)
    before = study.get_trials()
    assert before[0].state == TrialState.COMPLETE and before[1].state == TrialState.RUNNING

    res = cli(*args)
    assert res.code == 0, res.err
    assert "Trial 1 was left running by a process that died" in res.out
    assert "Teacher loaded from the cache" in res.out
    after = optuna.load_study(study_name="crash", storage=url).get_trials()
    states = [t.state for t in after]
    assert states.count(TrialState.COMPLETE) == 3
    assert after[1].state == TrialState.FAIL
    assert after[0].values == before[0].values and after[0].params == before[0].params
    retried = [t for t in after if t.user_attrs.get("retry_of") == 1]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == before[1].params


def test_a_finished_study_returns_before_loading_data_or_the_teacher(url, tiny_space, tmp_path, monkeypatch):
    from autokd.progress import EventLog

    space = dict(tiny_space, distill={"kd": True, "teacher": {"family": "resnet", "width": 8, "epochs": 1}},
                 search={"n_trials": 1}, compress={"finetune_epochs": 0})
    sp = space_from_dict(space)
    first = run_search(sp, storage=url, device="cpu")
    assert first.complete == 1
    # A rerun with an empty teacher cache and no dataset loader must do nothing at all.
    monkeypatch.setenv("AUTOKD_CACHE_DIR", str(tmp_path / "empty-cache"))
    import autokd.study

    def no_data(*args, **kwargs):
        raise AssertionError("a finished study loaded its dataset")

    monkeypatch.setattr(autokd.study.runner, "load_dataset", no_data)
    log = EventLog()
    again = run_search(sp, storage=url, device="cpu", progress=log)
    assert again.complete == 1 and again.ran_this_run == 0
    assert log.names() == ["study.resume"]
    assert not (tmp_path / "empty-cache").exists()
