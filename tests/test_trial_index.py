"""The incremental trial index (autokd.trial_index): after any sequence of new and finishing trials, what it holds
equals an index built from scratch on the final trials, and an update looks only at what changed."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

import autokd.trial_index
from autokd.trial_index import TrialIndex, claim, duplicate_of, index_of, params_key, sibling_keys

DIST = {"a": CategoricalDistribution([0, 1, 2]), "distill.kd": CategoricalDistribution([True, False])}


def _contents(index: TrialIndex) -> tuple:
    return (index.seen, sorted(index.unfinished), {k: sorted(v) for k, v in index.finished_by_key.items()},
            index.finished_keys, index.complete, sorted(index.open_twins))


def test_an_incremental_index_equals_one_built_from_scratch():
    rng = random.Random(0)
    study = optuna.create_study()
    live = TrialIndex()
    running = []
    for step in range(300):
        if running and rng.random() < 0.5:  # a running trial finishes, in any order
            trial = running.pop(rng.randrange(len(running)))
            state = rng.choice([TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED])
            if state == TrialState.PRUNED and rng.random() < 0.5:
                trial.set_user_attr("stopped_reason", "early stop")
            if rng.random() < 0.3:
                trial.set_user_attr("replicate", 1)
            study.tell(trial, 0.5 if state == TrialState.COMPLETE else None, state=state)
        else:
            trial = study.ask(DIST) if rng.random() < 0.8 else None
            if trial is None:
                study.enqueue_trial({"a": rng.randrange(3), "distill.kd": True})
            else:
                running.append(trial)
        if step % 7 == 0:
            live.update(study.get_trials(deepcopy=False))
    final = study.get_trials(deepcopy=False)
    live.update(final)
    fresh = TrialIndex()
    fresh.update(final)
    assert _contents(live) == _contents(fresh)
    assert live.complete == sum(t.state == TrialState.COMPLETE for t in final)
    assert set(live.unfinished) == {t.number for t in final if not t.state.is_finished()}


def test_an_update_reads_only_unfinished_and_new_trials():
    study = optuna.create_study()
    for i in range(50):
        study.add_trial(optuna.trial.create_trial(params={"a": i % 3, "distill.kd": True}, distributions=DIST,
                                                  value=0.1))
    index = index_of(study)
    assert index.complete == 50 and len(index.open_twins) == 50

    class Guarded(list):  # a finished trial already taken in must not be looked at again
        def __getitem__(self, n):
            assert n >= 50, f"finished trial {n} read again"
            return super().__getitem__(n)

    trials = study.get_trials(deepcopy=False)
    study.ask(DIST)
    index.update(Guarded(study.get_trials(deepcopy=False)))
    assert list(index.unfinished) == [50]
    assert trials[0].number == 0


def test_keys_carry_the_replicate_and_twins_flip_kd():
    assert params_key({"a": 1}, 0) != params_key({"a": 1}, 1)
    t = optuna.trial.create_trial(params={"a": 1, "distill.kd": True}, distributions=DIST, value=0.1,
                                  user_attrs={"replicate": 2})
    assert sibling_keys(t) == [params_key({"a": 1, "distill.kd": False}, 2)]


# --- duplicate_of: of trials with the same params, exactly one trains --------------------------------------------

def test_a_running_claimed_trial_is_a_duplicate_for_a_later_one():
    study = optuna.create_study(directions=["maximize", "minimize"])
    first = study.ask(DIST)
    study.enqueue_trial(first.params)
    second = study.ask(DIST)  # the same settings, popped while the first still runs
    claim(first)
    claim(second)
    # the earlier one, not yet decided, wins: the later yields at once (it says so) and waits for its decision
    assert duplicate_of(second, second.params, wait=0.3) == first.number
    assert second.user_attrs["duplicate_of"] == first.number
    assert duplicate_of(first, first.params) is None  # the later one yielded: the earlier runs on
    first.set_user_attr("settings", {})
    study.enqueue_trial({**first.params, "a": (first.params["a"] + 1) % 3})
    other = study.ask(DIST)
    claim(other)
    assert duplicate_of(other, other.params) is None


def test_a_half_written_trial_yields_to_the_later_one_that_ran():
    """The race three PostgreSQL workers met: the earlier trial's params were half written when the later one
    checked, so the later one ran; the earlier one must then yield to it, not run as well."""
    study = optuna.create_study()
    study.enqueue_trial({"a": 1, "distill.kd": True})
    study.enqueue_trial({"a": 1, "distill.kd": True})
    first = study.ask()
    first.suggest_categorical("a", DIST["a"].choices)  # half written: distill.kd not yet suggested
    second = study.ask(DIST)
    claim(second)
    assert duplicate_of(second, second.params) is None  # the first one is not claimed: not comparable yet
    second.set_user_attr("settings", {})  # second trains
    first.suggest_categorical("distill.kd", DIST["distill.kd"].choices)
    claim(first)
    assert first.params == second.params and duplicate_of(first, first.params) == second.number


def test_a_claimed_undecided_later_trial_is_waited_for():
    study = optuna.create_study()
    study.enqueue_trial({"a": 1, "distill.kd": True})
    study.enqueue_trial({"a": 1, "distill.kd": True})
    first, second = study.ask(DIST), study.ask(DIST)
    claim(first)
    claim(second)  # claimed, and about to decide to run (it read before first claimed)
    threading.Timer(0.5, second.set_user_attr, ("settings", {})).start()
    start = time.monotonic()
    assert duplicate_of(first, first.params, wait=10) == second.number
    assert 0.4 < time.monotonic() - start < 5
    # a claimed trial whose worker never decides (it died) is waited for only `wait` seconds
    study.enqueue_trial({"a": 2, "distill.kd": True})
    study.enqueue_trial({"a": 2, "distill.kd": True})
    third, fourth = study.ask(DIST), study.ask(DIST)
    claim(third)
    claim(fourth)
    start = time.monotonic()
    assert duplicate_of(third, third.params, wait=0.5) is None
    assert time.monotonic() - start < 3


def _worker(storage: optuna.storages.BaseStorage, rng: random.Random, outcomes: list) -> None:
    """One worker: pops a queued trial (or asks a fresh one), writes its params one at a time with pauses, claims,
    checks, and records what it decided, as the objective does."""
    study = optuna.load_study(study_name="race", storage=storage,  # its own Study object: its own index
                              sampler=optuna.samplers.RandomSampler(seed=rng.randrange(1 << 30)))
    trial = study.ask()  # a queued copy (its params are fixed), or a fresh draw
    for name in ("a", "distill.kd"):
        time.sleep(rng.random() * 0.01)
        trial.suggest_categorical(name, DIST[name].choices)
    time.sleep(rng.random() * 0.01)
    claim(trial)
    time.sleep(rng.random() * 0.01)
    twin = duplicate_of(trial, trial.params, wait=10)
    time.sleep(rng.random() * 0.01)
    if twin is None:
        trial.set_user_attr("settings", {})
        outcomes.append(("run", trial.number, tuple(sorted(trial.params.items()))))
    else:
        trial.set_user_attr("duplicate_of", twin)
        outcomes.append(("yield", trial.number, twin))


def test_of_many_racing_trials_with_the_same_params_exactly_one_runs(monkeypatch):
    """Eight workers at once, half of them on copies of one queued configuration, the others on four possible
    ones, with random pauses between every write and read: in every round each configuration trains exactly once
    (nothing finishes, so every check meets only RUNNING trials, the hard case)."""
    monkeypatch.setattr(autokd.trial_index, "CLAIM_POLL_SECONDS", 0.005)
    for round_ in range(40):
        rng = random.Random(round_)
        storage = optuna.storages.InMemoryStorage()
        study = optuna.create_study(study_name="race", storage=storage)
        for _ in range(4):
            study.enqueue_trial({"a": 0, "distill.kd": True})
        outcomes: list = []
        threads = [threading.Thread(target=_worker, args=(storage, random.Random(rng.random()), outcomes))
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        runs = Counter(params for what, _, params in outcomes if what == "run")
        params_of = {t.number: tuple(sorted(t.params.items())) for t in study.get_trials()}
        assert len(outcomes) == 8
        assert set(runs.values()) == {1}, (round_, outcomes)
        assert set(runs) == set(params_of.values())  # every configuration trains, none twice
        for what, number, twin in outcomes:  # a trial yields to one that trains the same params
            if what == "yield":
                assert params_of[twin] == params_of[number] and ("run", twin, params_of[twin]) in outcomes
