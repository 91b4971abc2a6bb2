"""The design phase in the study: points enqueued once, one replicate at a time, within the budget; a replicate is
neither a duplicate nor early-stopped and gets its own twin; a kill mid-way and two workers neither run a point twice
nor lose one."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

from autokd.early_stop import STOPPED_REASON_ATTR, StopRule
from autokd.trial_index import duplicate_of
from autokd.sampling import DESIGN_POINT_ATTR, REPLICATE_ATTR, sample
from autokd.space import space_from_dict
from autokd.study import enqueue_missing_twins, load_study, run_search
from autokd.study.design import ATTR_DESIGN, build_design, enqueue_design
from autokd.study.recovery import requeue
from autokd.train import stream_seed

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


def design_space(tiny: dict, *, replicates=2, n_trials=None, early_stop=None) -> dict:
    """Two techniques at 2 levels (width, prune): a 4-point full factorial, 8 trials a replicate."""
    data = copy.deepcopy(tiny)
    data["name"] = "design"
    data["dataset"]["limit"] = 200
    data["compress"] = {"prune_ratio": {"choices": [0.0, 0.5]}, "finetune_epochs": 1}
    data["distill"]["temperature"] = {"low": 2.0, "high": 6.0}  # KD's own: held at 2 in the design
    data["search"] = {"n_trials": n_trials or 8 * (replicates if isinstance(replicates, int) else 2),
                      "sampler": "random", "design": {"replicates": replicates}}
    if early_stop is not None:
        data["search"]["early_stop"] = early_stop
    return data


def keys(trials) -> Counter:
    """(replicate, point, KD) of every COMPLETE design trial."""
    return Counter((t.user_attrs[REPLICATE_ATTR], t.user_attrs[DESIGN_POINT_ATTR], t.params["distill.kd"])
                   for t in trials if t.state == TrialState.COMPLETE and DESIGN_POINT_ATTR in t.user_attrs)


def assert_design_whole(trials, points: int, replicates: int) -> None:
    got = keys(trials)
    want = {(r, i, kd) for r in range(replicates) for i in range(points) for kd in (True, False)}
    assert set(got) == want, sorted(want - set(got))
    assert max(got.values()) == 1, [k for k, n in got.items() if n > 1]
    assert not [t for t in trials if t.state == TrialState.RUNNING]


def new_study() -> optuna.Study:
    return optuna.create_study(directions=["maximize", "minimize"])


def complete_waiting(study: optuna.Study, space) -> None:
    """Run every queued trial as a stub (COMPLETE, value from its params), as a worker would pop them."""
    while any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False)):
        trial = study.ask()
        cfg = sample(space, trial)
        study.tell(trial, [0.5 + 0.1 * bool(cfg.params["distill.kd"]), 1.0])


# --- enqueueing -----------------------------------------------------------------------------------


def test_one_replicate_at_a_time_and_never_twice(tiny_space):
    space = space_from_dict(design_space(tiny_space, replicates=2))
    design = build_design(space)
    assert design.kind == "full_factorial" and design.points == 4
    study = new_study()
    state = enqueue_design(study, space)
    assert state.added == 4 and state.pending and state.planned and state.replicates == 2
    assert enqueue_design(study, space).added == 0  # idempotent: block 0 is all in the storage
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs[DESIGN_POINT_ATTR] for t in waiting) == [0, 1, 2, 3]
    assert {t.user_attrs[REPLICATE_ATTR] for t in waiting} == {0}
    assert all(t.system_attrs["fixed_params"]["distill.kd"] is True for t in waiting)
    # the design is balanced: each technique's levels appear equally often
    for path in ("model.width_mult", "compress.prune_ratio"):
        assert len(set(Counter(t.system_attrs["fixed_params"][path] for t in waiting).values())) == 1
    complete_waiting(study, space)
    enqueue_missing_twins(study)
    state = enqueue_design(study, space)  # block 0 popped (twins still queued): block 1 is due
    assert state.added == 4 and not state.pending
    assert enqueue_design(study, space).added == 0
    complete_waiting(study, space)
    enqueue_missing_twins(study)
    complete_waiting(study, space)
    assert_design_whole(study.get_trials(), points=4, replicates=2)
    assert study.user_attrs[ATTR_DESIGN]["replicates"] == 2


def test_an_auto_design_is_sized_once_from_its_pilot(tiny_space):
    space = space_from_dict(design_space(tiny_space, replicates="auto", n_trials=80))  # the budget holds 10
    study = new_study()
    rng = __import__("random").Random(0)
    for _ in range(2):  # the pilot: 2 replicates of 4 points (3 coefficients need 8 pairs)
        state = enqueue_design(study, space)
        assert not state.planned and state.replicates == 2
        while any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False)):
            trial = study.ask()
            cfg = sample(space, trial)
            acc = 0.9 - (0.0 if cfg.params["distill.kd"] else 0.02 + rng.gauss(0, 0.0005))  # a quiet gain
            trial.set_user_attr("metrics", {"val_accuracy": acc})
            study.tell(trial, [acc, 1.0])
            enqueue_missing_twins(study)
    first = enqueue_design(study, space)
    plan = study.user_attrs[ATTR_DESIGN]
    assert first.planned and plan["how"] == "pilot" and plan["pilot_pairs"] == 8
    assert 2 <= first.replicates < 10 and plan["asked"] == first.replicates and not plan["cut"]
    again = enqueue_design(study, space)  # later rounds reuse the recorded plan, not the budget
    assert again.replicates == first.replicates and study.user_attrs[ATTR_DESIGN]["asked"] == first.replicates


def _run_block(study, space, rng, sd: float) -> None:
    """Run every queued trial and its twin as a stub whose KD gain is 2 pts plus N(0, sd) noise."""
    while any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False)):
        trial = study.ask()
        cfg = sample(space, trial)
        acc = 0.9 - (0.0 if cfg.params["distill.kd"] else 0.02 + rng.gauss(0, sd))
        trial.set_user_attr("metrics", {"val_accuracy": acc})
        study.tell(trial, [acc, 1.0])
        enqueue_missing_twins(study)


def test_the_planned_replicates_are_topped_up_once_when_they_miss_the_target(tiny_space):
    space = space_from_dict(design_space(tiny_space, replicates="auto", n_trials=400))  # the budget holds 50
    study, rng, events = new_study(), __import__("random").Random(1), []
    progress = lambda event, **d: events.append((event, d))  # noqa: E731
    state = enqueue_design(study, space, progress=progress)
    while not state.planned:  # a pilot of SD 0.4 pts: the plan asks for a few replicates more
        _run_block(study, space, rng, 0.004)
        state = enqueue_design(study, space, progress=progress)
    planned = study.user_attrs[ATTR_DESIGN]["planned_replicates"]
    assert planned > 2 and state.pending and "topup" not in study.user_attrs[ATTR_DESIGN]
    while True:  # the planned replicates turn out loud (SD 1.5 pts): they miss the 0.5-pt target
        _run_block(study, space, rng, 0.015)
        state = enqueue_design(study, space, progress=progress)
        if "topup" in study.user_attrs[ATTR_DESIGN]:
            break
        assert state.pending, "the design is pending until the top-up is decided"
    plan = study.user_attrs[ATTR_DESIGN]
    assert plan["topup"]["pairs"] == 4 * planned
    assert plan["asked"] == plan["topup"]["asked"] > planned and plan["replicates"] == min(plan["asked"], 50)
    assert state.pending and state.added == 4  # the first extra replicate is queued
    assert [d for e, d in events if e == "design.topup"] == [
        {"planned": planned, "replicates": plan["replicates"], "asked": plan["asked"], "pairs": 4 * planned,
         "target": 0.005}]
    while state.pending:  # once only: the extra replicates run, and no second top-up follows
        _run_block(study, space, rng, 0.015)
        state = enqueue_design(study, space, progress=progress)
    _run_block(study, space, rng, 0.015)
    assert study.user_attrs[ATTR_DESIGN]["topup"] == plan["topup"]
    assert_design_whole(study.get_trials(), points=4, replicates=plan["replicates"])


def test_planned_replicates_that_reach_the_target_are_final(tiny_space):
    space = space_from_dict(design_space(tiny_space, replicates="auto", n_trials=400))
    study, rng = new_study(), __import__("random").Random(2)
    state = enqueue_design(study, space)
    while state.pending:  # quiet throughout
        _run_block(study, space, rng, 0.0005)
        state = enqueue_design(study, space)
    _run_block(study, space, rng, 0.0005)
    plan = study.user_attrs[ATTR_DESIGN]
    assert plan["topup"]["asked"] == plan["planned_replicates"] == plan["replicates"] == plan["asked"]
    assert all(h <= 0.005 for h in plan["topup"]["half_width"].values())
    assert_design_whole(study.get_trials(), points=4, replicates=plan["replicates"])


def test_replicates_of_a_d_optimal_design_rotate_its_levels(tiny_space):
    data = design_space(tiny_space, replicates=2, n_trials=24)
    data["compress"]["prune_ratio"] = {"choices": [0.0, 0.25, 0.5]}
    data["search"]["design"].update(kind="d_optimal", runs=6)  # 6 of the 6 cells, so rotation is easy to follow
    space = space_from_dict(data)
    design = build_design(space)
    assert design.kind == "d_optimal" and design.rotates
    study = new_study()
    for _ in range(2):
        enqueue_design(study, space)
        complete_waiting(study, space)
        enqueue_missing_twins(study)
        complete_waiting(study, space)
    trials = [t for t in study.get_trials() if DESIGN_POINT_ATTR in t.user_attrs and "twin_of" not in t.user_attrs]
    by = {(t.user_attrs[REPLICATE_ATTR], t.user_attrs[DESIGN_POINT_ATTR]): t.params for t in trials}
    paths = [f.path for f in design.factors]
    for i in range(design.points):
        first, second = ([design.factors[j].levels.index(by[r, i][p]) for j, p in enumerate(paths)] for r in (0, 1))
        assert first == list(design.rows[i])
        assert second == [(v + 1) % len(f.levels) for v, f in zip(design.rows[i], design.factors)]
    assert_design_whole(study.get_trials(), points=design.points, replicates=2)


def test_a_begun_block_is_completed_after_a_kill(tiny_space):
    space = space_from_dict(design_space(tiny_space, replicates=2))
    study = new_study()
    design = build_design(space)
    study.enqueue_trial(design.params(0), user_attrs={DESIGN_POINT_ATTR: 0, REPLICATE_ATTR: 0})  # killed here
    assert enqueue_design(study, space).added == 3
    points = sorted(t.user_attrs[DESIGN_POINT_ATTR] for t in study.get_trials())
    assert points == [0, 1, 2, 3]


def test_the_budget_cuts_at_a_block_boundary_and_says_so(tiny_space):
    data = design_space(tiny_space, replicates=3, n_trials=20)  # 20 trials hold 2 replicates of 8
    space = space_from_dict(data)
    events = []
    state = enqueue_design(new_study(), space, progress=lambda e, **d: events.append((e, d)))
    assert state.replicates == 2
    (cut,) = [d for e, d in events if e == "design.cut"]
    assert cut == {"replicates": 2, "asked": 3, "budget": 2, "points": 4, "trials": 8}


def test_a_design_point_keeps_its_replicate_through_twin_and_retry(tiny_space):
    space = space_from_dict(design_space(tiny_space, replicates=2))
    study = new_study()
    design = build_design(space)
    study.enqueue_trial(design.params(1), user_attrs={DESIGN_POINT_ATTR: 1, REPLICATE_ATTR: 1})
    trial = study.ask()
    cfg = sample(space, trial)
    assert cfg.replicate == 1
    study.tell(trial, [0.5, 1.0])
    enqueue_missing_twins(study)
    (twin,) = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert twin.user_attrs == {"twin_of": 0, DESIGN_POINT_ATTR: 1, REPLICATE_ATTR: 1}
    running = study.ask()  # the twin, whose worker dies
    assert requeue(study, study.get_trials()[running.number], "worker died")
    (retry,) = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert retry.user_attrs[DESIGN_POINT_ATTR] == 1 and retry.user_attrs[REPLICATE_ATTR] == 1
    assert retry.user_attrs["twin_of"] == 0


def test_a_replicate_is_no_duplicate_and_has_its_own_streams(tiny_space):
    space = space_from_dict(design_space(tiny_space, replicates=2))
    study = new_study()
    params = build_design(space).params(0)
    for r in (0, 1):
        study.enqueue_trial(params, user_attrs={DESIGN_POINT_ATTR: 0, REPLICATE_ATTR: r})
    first = study.ask()
    sample(space, first)
    study.tell(first, [0.5, 1.0])
    second = study.ask()  # replicate 1: the same params
    assert sample(space, second).replicate == 1 and second.params == study.get_trials()[0].params
    assert duplicate_of(second, second.params, replicate=1) is None
    assert duplicate_of(second, second.params, replicate=0) == first.number  # the same replicate would be
    enqueue_missing_twins(study)
    twins = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert [t.user_attrs[REPLICATE_ATTR] for t in twins] == [0]  # replicate 1 is still running: no twin yet
    study.tell(second, [0.5, 1.0])
    enqueue_missing_twins(study)
    twins = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs[REPLICATE_ATTR] for t in twins) == [0, 1]  # each replicate has its own twin
    # replicate 0 keeps the streams every trial had; replicate 1 has its own
    assert stream_seed(0, 0, "train", 0) == stream_seed(0, 0, "train")
    assert stream_seed(0, 0, "train", 1) != stream_seed(0, 0, "train")


# --- whole searches -------------------------------------------------------------------------------


def test_a_design_search_runs_every_point_once_and_is_never_early_stopped(tiny_space, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = space_from_dict(design_space(tiny_space, replicates=2, n_trials=16, early_stop=True))
    url = f"sqlite:///{tmp_path}/d.db"
    # a rule that stops any trial it may judge after one epoch: only the protection keeps the design whole
    rule = StopRule(min_complete=1, min_epoch=1, margin=-1.0)
    result = run_search(space, storage=url, device="cpu", stop_rule=rule)
    trials = result.study.get_trials()
    assert_design_whole(trials, points=4, replicates=2)
    design_trials = [t for t in trials if DESIGN_POINT_ATTR in t.user_attrs]
    assert not [t.number for t in design_trials if STOPPED_REASON_ATTR in t.user_attrs]
    assert not [t.number for t in design_trials if "duplicate_of" in t.user_attrs]
    assert all(t.params["distill.temperature"] == 2.0 for t in design_trials)  # KD's own setting is held
    # replicates differ: same params, other streams, other accuracies somewhere
    by = {(t.user_attrs[REPLICATE_ATTR], t.user_attrs[DESIGN_POINT_ATTR], t.params["distill.kd"]):
          t.user_attrs["metrics"]["val_accuracy"] for t in design_trials if t.state == TrialState.COMPLETE}
    assert any(by[(0, i, kd)] != by[(1, i, kd)] for i in range(4) for kd in (True, False))


def _search_cmd(path, url, *extra) -> list[str]:
    return [sys.executable, "-m", "autokd", "search", str(path), "--storage", url, "--device", "cpu", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


def _complete(db: str) -> int:
    try:
        study = optuna.load_study(study_name="design", storage=db)
    except Exception:  # noqa: BLE001 - not created yet
        return 0
    return sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))


def test_kill_a_design_study_mid_way_and_rerun(tiny_space, tmp_path, space_file):
    path = space_file(design_space(tiny_space, replicates=2))
    url = f"sqlite:///{tmp_path}/d.db"
    proc = subprocess.Popen(_search_cmd(path, url), cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while _complete(url) < 5:  # mid-way through the first replicate's twins
            assert proc.poll() is None, "the search ended before it was killed"
            assert time.monotonic() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = subprocess.run(_search_cmd(path, url), cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    study, _ = load_study(storage=url, study_name="design")
    assert_design_whole(study.get_trials(), points=4, replicates=2)


def test_two_workers_share_a_design(tiny_space, tmp_path, space_file):
    # replicates: auto: a pilot of 2 replicates (4 points, 3 coefficients) that both workers run, then the plan,
    # capped by the budget (16 trials: 2 replicates)
    path = space_file(design_space(tiny_space, replicates="auto", n_trials=16))
    url = f"sqlite:///{tmp_path}/d.db"
    proc = subprocess.run(_search_cmd(path, url, "--workers", "2"), cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    study, _ = load_study(storage=url, study_name="design")
    trials = study.get_trials()
    assert_design_whole(trials, points=4, replicates=2)
    workers = {t.user_attrs["worker_id"]["pid"] for t in trials if t.state == TrialState.COMPLETE}
    assert len(workers) == 2
    plan = study.user_attrs[ATTR_DESIGN]
    assert plan["how"] == "pilot" and plan["planned"] and plan["pilot_replicates"] == 2 and plan["replicates"] == 2
    assert plan["pilot_pairs"] == 8 and plan["budget_replicates"] == 2


def test_with_kd_methods_the_design_is_sized_for_every_methods_own_questions(tiny_space):
    """Each design point runs every KD method, and the report answers each method's technique questions on its
    own pairs: an auto design asks for the most that any of them (or the pooled sets) needs. Here hinton's gain is
    quiet and dist's loud; pooled sets average the two, so sizing on them alone would leave dist's undecided."""
    data = design_space(tiny_space, replicates="auto", n_trials=1200)
    data["distill"]["method"] = {"choices": ["hinton", "dist"]}
    space = space_from_dict(data)
    study, rng = new_study(), __import__("random").Random(2)
    noise = {"hinton": 0.0005, "dist": 0.008}
    state = enqueue_design(study, space)
    while not state.planned:
        while any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False)):
            trial = study.ask()
            cfg = sample(space, trial)
            kd, method = cfg.params["distill.kd"], cfg.params.get("distill.method")
            acc = 0.9 + (0.02 + rng.gauss(0, noise[method]) if kd else 0.0)
            trial.set_user_attr("metrics", {"val_accuracy": acc})
            study.tell(trial, [acc, 1.0])
            enqueue_missing_twins(study, methods=("hinton", "dist"))
        state = enqueue_design(study, space)
    plan = study.user_attrs[ATTR_DESIGN]
    per_method = plan["replicates_per_method"]
    pooled = -(-max(plan["pairs_per_technique"].values()) // 4)  # whole replicates of the 4-point design
    assert per_method["dist"] > max(per_method["hinton"], pooled)
    assert plan["planned_replicates"] == per_method["dist"]
