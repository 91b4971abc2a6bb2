"""The incremental trial index (autokd.trial_index): after any sequence of new and finishing trials, what it holds
equals an index built from scratch on the final trials, and an update looks only at what changed."""

from __future__ import annotations

import random

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from autokd.trial_index import TrialIndex, index_of, params_key, twin_key

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
    assert twin_key(t) == params_key({"a": 1, "distill.kd": False}, 2)
