"""One retry mechanism for dead workers, whoever finds them: the local check or the storage's heartbeat."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

import autokd.study.storage
from autokd.space import space_from_dict
from autokd.study import create_or_load_study, recover_stale_trials
from autokd.study.recovery import MAX_RETRIES, requeue

pytestmark = [pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning"),
              pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]
DISTS = {"model.width_mult": CategoricalDistribution([0.25, 0.5]), "distill.kd": CategoricalDistribution([True, False])}


@pytest.fixture
def study(tmp_path, tiny_space):
    return create_or_load_study(space_from_dict(tiny_space), storage=f"sqlite:///{tmp_path}/s.db")


def waiting(study):
    return [t for t in study.get_trials() if t.state == TrialState.WAITING]


def test_two_finders_of_one_dead_trial_enqueue_it_once(study):
    trial = study.ask(DISTS)
    frozen = study.get_trials()[trial.number]
    assert requeue(study, frozen, "worker process died") is True
    assert requeue(study, frozen, "worker process died") is False  # the second finder lost the transition
    (retry,) = waiting(study)
    assert retry.user_attrs["retry_of"] == trial.number and retry.user_attrs["retry_count"] == 1


def test_a_configuration_that_keeps_killing_its_worker_is_not_retried_forever(study):
    for attempt in range(MAX_RETRIES + 1):
        trial = study.ask(DISTS)  # the first time sampled, then the queued retry
        frozen = study.get_trials()[trial.number]
        queued = requeue(study, frozen, "worker process died")
        assert queued == (attempt < MAX_RETRIES)
    assert waiting(study) == []
    assert len({tuple(sorted(t.params.items())) for t in study.get_trials()}) == 1


def test_ctrl_c_retries_do_not_count_toward_the_limit(study):
    trial = study.ask(DISTS)
    frozen = study.get_trials()[trial.number]
    assert requeue(study, frozen, "interrupted (Ctrl-C)", counts=False)
    assert waiting(study)[0].user_attrs["retry_count"] == 0


def test_the_heartbeat_finds_a_silent_worker_and_autokd_requeues_it_once(tmp_path, tiny_space, monkeypatch):
    """A worker on another machine stops (heartbeat older than the grace period): Optuna fails its trial and
    autokd's callback queues one retry, not also Optuna's RetryHeartbeatStaleTrialCallback."""
    monkeypatch.setattr(autokd.study.storage, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(autokd.study.storage, "GRACE_SECONDS", 1)
    # no retry budget: the grace is then max(1 s, 2 heartbeats) = 2 s (it outlasts the budget otherwise)
    study = create_or_load_study(space_from_dict(tiny_space), storage=f"sqlite:///{tmp_path}/s.db", retry_seconds=0)
    trial = study.ask(DISTS)
    trial.set_user_attr("worker_id", {"host": "elsewhere.invalid", "boot": "x", "pidns": 1, "pid": 7,
                                      "start": "1"})
    study._storage.record_heartbeat(trial._trial_id)  # private: what a running optimize() does every second
    assert recover_stale_trials(study) == []  # not this host's to judge
    time.sleep(3.5)
    optuna.storages.fail_stale_trials(study)
    optuna.storages.fail_stale_trials(study)  # a second worker's check changes nothing
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL
    (retry,) = waiting(study)
    assert retry.user_attrs["retry_of"] == trial.number and "heartbeat" in retry.user_attrs["retry_reason"]
    assert "failed_trial" not in retry.system_attrs  # Optuna's own retry callback did not run


def test_a_trial_whose_worker_died_before_recording_itself_is_recovered_once_old(study, monkeypatch):
    """Killed between Optuna's creation of the trial and autokd's first step: no identity, no heartbeat. Young, it
    may be a live worker recording itself; past ORPHAN_SECONDS it is an orphan, failed and re-queued."""
    import autokd.study.recovery as recovery

    trial = study.ask(DISTS)
    assert recover_stale_trials(study) == []  # a moment old: left alone
    monkeypatch.setattr(recovery, "ORPHAN_SECONDS", 0.0)
    assert recover_stale_trials(study) == [trial.number]
    (retry,) = waiting(study)
    assert "recorded itself" in retry.user_attrs["retry_reason"]


def test_a_search_waits_out_an_orphan_instead_of_ending_with_it_running(tmp_path, tiny_space, monkeypatch):
    import autokd.study.recovery as recovery
    from autokd.study import run_search

    monkeypatch.setattr(recovery, "ORPHAN_SECONDS", 3.0)
    sp = space_from_dict({**tiny_space, "distill": {"kd": False}}, overrides=["search.n_trials=1"])
    url = f"sqlite:///{tmp_path}/s.db"
    study = create_or_load_study(sp, storage=url)
    study.ask({"model.width_mult": CategoricalDistribution([0.25, 0.5])})  # its worker "died" right here
    result = run_search(sp, storage=url, device="cpu")
    states = [t.state for t in result.study.get_trials()]
    assert TrialState.RUNNING not in states  # failed once old enough, and its retry ran or was a duplicate
    assert states[0] == TrialState.FAIL and result.complete >= 1


def test_standing_decides_the_next_step(study):
    """A worker's next step from one read: a queued twin is work past the target; the others' recorded RUNNING
    trials can cover the target; an orphan is neither work nor cover until it is old enough to be recovered."""
    from autokd.study.runner import Standing

    t = study.ask(DISTS)
    assert Standing.of(study) == Standing(complete=0, waiting=0, running=0, young_orphans=1)
    t.set_user_attr("worker_id", {"host": "elsewhere.invalid", "pid": 1})
    now = Standing.of(study)
    assert now.running == 1 and now.young_orphans == 0
    assert now.others_cover(target=1) and not now.others_cover(target=2)
    study.enqueue_trial({"model.width_mult": 0.5, "distill.kd": True})
    now = Standing.of(study)
    assert not now.others_cover(target=1)  # a queued trial is run first
    assert Standing(1, 1, 0, 0).work_left(target=1, twins=True)
    assert not Standing(1, 1, 0, 0).work_left(target=1, twins=False)


def test_a_queued_twin_whose_worker_died_before_it_began_is_queued_again(study, monkeypatch):
    """The worker took a queued twin (Optuna made it RUNNING) and died before the parameters were suggested:
    the trial has no params, but the twin must not be lost."""
    import autokd.study.recovery as recovery

    study.enqueue_trial({"model.width_mult": 0.5, "distill.kd": False}, user_attrs={"twin_of": 0})
    taken = study.ask()  # popped from the queue; no parameter suggested yet
    assert study.get_trials()[taken.number].params == {}
    monkeypatch.setattr(recovery, "ORPHAN_SECONDS", 0.0)
    assert recover_stale_trials(study) == [taken.number]
    (retry,) = waiting(study)
    assert retry.system_attrs["fixed_params"] == {"model.width_mult": 0.5, "distill.kd": False}
    assert retry.user_attrs["twin_of"] == 0 and retry.user_attrs["retry_of"] == taken.number
