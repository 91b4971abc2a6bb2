"""Tests for autokd.report.pairing: KD twins -> pairs by the recorded ``twin_of`` link (checked to differ in
distill.kd only), lost pairs with reasons, pending twins, retries, PRUNED duplicates, unlinked trials matched by
params and seed, and repeat-by-repeat gains. Plain trial dicts, as made by ``autokd.study.trial_records``."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from autokd.report.pairing import LostPair, Pair, is_state, kd_flag, metric_of, pair_trials
from autokd.study import trial_records

PARAMS = {"compress.bits": 8, "model.width_mult": 0.5}


def trial(number, kd, *, acc=0.80, params=PARAMS, seed=0, state="COMPLETE", twin_of=None, retry_of=None,
          duplicate_of=None, fail_reason=None, settings=None, repeats=None, kd_in_params=True):
    """One trial record. ``settings`` entries are merged into the default resolved settings."""
    params = dict(params)
    if kd_in_params:
        params["distill.kd"] = kd
    base = {"train": {"seed": seed, "epochs": 2}, "distill": {"kd": kd, "temperature": 4.0},
            "model": {"family": "mobilenetv2"}, "search": {"n_trials": 10},
            "dataset": {"name": "digits", "root": "data", "download": True}}
    for block, values in (settings or {}).items():
        base[block] = {**base.get(block, {}), **values}
    metrics = {}
    if state == "COMPLETE":
        metrics = {"val_accuracy": acc, "test_accuracy": acc - 0.01, "flops": 1e6}
        if repeats is not None:
            metrics["repeats"] = [{"val_accuracy": a, "flops": 1e6} for a in repeats]
    return {"number": number, "state": state, "values": [acc, 1e6] if state == "COMPLETE" else None,
            "params": params, "metrics": metrics, "settings": base, "fail_reason": fail_reason,
            "twin_of": twin_of, "retry_of": retry_of, "duplicate_of": duplicate_of}


def numbers(pairing):
    return [p.numbers for p in pairing.pairs]


# --------------------------------------------------------------------------- #
# linked twins
# --------------------------------------------------------------------------- #
def test_linked_twins_pair_by_the_recorded_link_not_by_params():
    trials = [trial(0, True, acc=0.82),
              trial(1, False, acc=0.70),              # same configuration and seed, but not the recorded twin
              trial(2, False, acc=0.80, twin_of=0)]   # the recorded twin
    pairing = pair_trials(trials)
    assert numbers(pairing) == [(0, 2)]
    (pair,) = pairing.pairs
    assert pair.linked is True
    assert pair.gain("val_accuracy") == pytest.approx(0.02)
    assert pairing.unpaired == [1]
    assert pairing.lost == [] and pairing.pending == []


def test_pair_orientation_params_and_seed():
    # the original ran without KD: the twin is the KD-on side
    trials = [trial(5, False, acc=0.75, seed=3), trial(9, True, acc=0.78, seed=3, twin_of=5)]
    (pair,) = pair_trials(trials).pairs
    assert pair.numbers == (9, 5)
    assert pair.on["number"] == 9 and pair.off["number"] == 5
    assert pair.params == PARAMS and "distill.kd" not in pair.params
    assert pair.seed == 3
    assert pair.gain("val_accuracy") == pytest.approx(0.03)
    assert pair.gain("flops") == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        pair.on = {}  # type: ignore[misc]


@pytest.mark.parametrize("twin_kwargs,why", [
    ({"params": {"compress.bits": 4, "model.width_mult": 0.5}}, "compress.bits"),
    ({"params": {**PARAMS, "train.lr": 0.1}}, "train.lr"),
    ({"settings": {"train": {"epochs": 5}}}, "train.epochs"),
    ({"seed": 1}, "train.seed"),
    ({"settings": {"dataset": {"name": "cifar10"}}}, "dataset.name"),
    ({"settings": {"distill": {"temperature": 2.0}}}, "distill.temperature"),
])
def test_linked_pair_that_differs_beyond_kd_is_refused_and_lost(twin_kwargs, why):
    trials = [trial(0, True), trial(1, False, twin_of=0, **twin_kwargs)]
    pairing = pair_trials(trials)
    assert pairing.pairs == [] and pairing.lost == []  # refused, not lost: no twin failed
    (lost,) = pairing.refused
    assert (lost.original, lost.twin, lost.failed_side) == (0, 1, None)
    assert lost.reason.startswith("settings differ beyond distill.kd: ")
    assert why in lost.reason
    # neither trial is offered to the params+seed matching, nor listed as unpaired
    assert pairing.unpaired == []


@pytest.mark.parametrize("field,default,other", [("train.precision", "fp32", "bf16"),
                                                   ("compress.quantizer", "minmax", "lsq")])
def test_a_setting_added_later_reads_as_its_default_in_a_trial_recorded_before_it(field, default, other):
    """A study resumed after an upgrade: the original was recorded before the field existed, its twin records it.
    At its default the twins are a pair (the old trial ran with it); at another value they are not."""
    block, name = field.split(".")
    original = trial(0, True)
    assert name not in original["settings"].get(block, {})
    same = pair_trials([original, trial(1, False, twin_of=0, settings={block: {name: default}})])
    assert numbers(same) == [(0, 1)] and same.refused == []
    changed = pair_trials([original, trial(1, False, twin_of=0, settings={block: {name: other}})])
    assert changed.pairs == [] and field in changed.refused[0].reason


def test_linked_pair_with_kd_not_flipped_is_refused():
    pairing = pair_trials([trial(0, True), trial(1, True, twin_of=0)])
    assert pairing.pairs == []
    assert [lp.to_dict() for lp in pairing.refused] == [
        {"original": 0, "twin": 1, "failed_side": None, "reason": "distill.kd is not flipped between the two trials"}]


def test_settings_outside_the_configuration_may_differ():
    """search.* (budget) and where the data lives do not make twins different configurations."""
    twin = trial(1, False, twin_of=0, settings={"search": {"n_trials": 50, "timeout": 60},
                                                "dataset": {"root": "/elsewhere", "download": False}})
    pairing = pair_trials([trial(0, True), twin])
    assert numbers(pairing) == [(0, 1)] and pairing.lost == []


def test_a_retry_of_a_failed_twin_that_completed_pairs_and_is_not_lost():
    trials = [trial(0, True, acc=0.83),
              trial(1, False, state="FAIL", twin_of=0, fail_reason="worker process died (stale trial)"),
              trial(2, False, acc=0.80, twin_of=0, retry_of=1)]
    pairing = pair_trials(trials)
    assert numbers(pairing) == [(0, 2)]
    assert pairing.pairs[0].linked
    assert pairing.pairs[0].gain("val_accuracy") == pytest.approx(0.03)
    assert pairing.lost == [] and pairing.pending == [] and pairing.unpaired == []


@pytest.mark.parametrize("state", ["WAITING", "RUNNING"])
def test_a_twin_still_waiting_or_running_is_pending_not_lost(state):
    # optuna leaves params empty until a queued trial runs
    waiting = dict(trial(1, False, state=state, twin_of=0), params={}, settings={})
    pairing = pair_trials([trial(0, True), waiting])
    assert pairing.pending == [0]
    assert pairing.lost == [] and pairing.pairs == []
    assert pairing.unpaired == []  # the original waits for its twin: it is not "unpaired"


def test_a_failed_twin_whose_retry_is_queued_is_pending():
    trials = [trial(0, True), trial(1, False, state="FAIL", twin_of=0, fail_reason="interrupted"),
              dict(trial(2, False, state="WAITING", twin_of=0, retry_of=1), params={})]
    pairing = pair_trials(trials)
    assert pairing.pending == [0] and pairing.lost == []


@pytest.mark.parametrize("original_kd,side", [(True, "kd_off"), (False, "kd_on")])
def test_a_twin_failed_for_good_is_a_lost_pair(original_kd, side):
    trials = [trial(0, original_kd), trial(1, not original_kd, state="FAIL", twin_of=0,
                                           fail_reason="RuntimeError: CUDA out of memory"),
              trial(2, True, params={"compress.bits": 4, "model.width_mult": 0.5}),
              trial(3, False, params={"compress.bits": 4, "model.width_mult": 0.5}, twin_of=2)]
    pairing = pair_trials(trials)
    assert numbers(pairing) == [(2, 3)]
    assert pairing.lost == [LostPair(0, 1, side, "RuntimeError: CUDA out of memory")]
    assert pairing.lost[0].to_dict() == {"original": 0, "twin": 1, "failed_side": side,
                                         "reason": "RuntimeError: CUDA out of memory"}
    assert pairing.pending == [] and pairing.unpaired == []


def test_a_twin_that_failed_before_sampling_still_names_its_side():
    """A queued twin that fails before it samples anything keeps no params or settings: its side is the
    opposite of its original's."""
    failed = dict(trial(1, True, state="FAIL", twin_of=0, fail_reason="data folder missing"), params={},
                  settings={})
    (lost,) = pair_trials([trial(0, False), failed]).lost
    assert lost.failed_side == "kd_on"
    (lost,) = pair_trials([trial(0, True), dict(failed, params={}, settings={})]).lost
    assert lost.failed_side == "kd_off"


def test_repeated_failures_name_the_last_attempt():
    trials = [trial(0, True), trial(1, False, state="FAIL", twin_of=0, fail_reason="boom"),
              trial(2, False, state="FAIL", twin_of=0, retry_of=1, fail_reason="boom again")]
    (lost,) = pair_trials(trials).lost
    assert (lost.original, lost.twin, lost.failed_side) == (0, 2, "kd_off")
    assert lost.reason == "boom again (after 2 attempts)"
    (lost,) = pair_trials([trial(0, True), trial(1, False, state="FAIL", twin_of=0)]).lost
    assert lost.reason == "failed"


def test_a_pruned_duplicate_twin_is_not_lost():
    # trial 0 (KD off) ran first; 1 is the same configuration with KD on; its queued twin 2 was pruned as a
    # duplicate of 0, which already is that twin
    trials = [trial(0, False, acc=0.78), trial(1, True, acc=0.81),
              trial(2, False, state="PRUNED", twin_of=1, duplicate_of=0)]
    pairing = pair_trials(trials)
    assert pairing.lost == [] and pairing.pending == []
    assert numbers(pairing) == [(1, 0)]
    assert pairing.pairs[0].linked is False
    # a pruned duplicate without a completed counterpart is still not a lost pair
    pairing = pair_trials([trial(1, True), trial(2, False, state="PRUNED", twin_of=1, duplicate_of=0)])
    assert pairing.lost == [] and pairing.pairs == [] and pairing.unpaired == [1]


def test_an_original_that_did_not_complete_has_no_pair():
    trials = [trial(0, True, state="FAIL"), trial(1, False, twin_of=0)]
    pairing = pair_trials(trials)
    assert pairing.pairs == [] and pairing.lost == []
    assert pairing.unpaired == [1]


# --------------------------------------------------------------------------- #
# unlinked trials
# --------------------------------------------------------------------------- #
def test_unlinked_twins_pair_by_params_and_seed():
    other = {"compress.bits": 4, "model.width_mult": 0.5}
    trials = [trial(0, True, seed=1), trial(1, False, seed=1),            # a pair
              trial(2, True, seed=2), trial(3, False, seed=3),            # seeds differ
              trial(4, True, params=other), trial(5, False),              # params differ
              trial(6, True, params=other, seed=7), trial(7, False, params=other, seed=7, state="FAIL")]
    pairing = pair_trials(trials)
    assert numbers(pairing) == [(0, 1)]
    assert pairing.pairs[0].linked is False and pairing.pairs[0].seed == 1
    assert pairing.unpaired == [2, 3, 4, 5, 6]
    assert pairing.lost == []  # nothing links 6 to 7: an unlinked trial has no twin to lose


def test_unlinked_duplicates_pair_lowest_numbers_first():
    trials = [trial(n, kd, acc=acc) for n, kd, acc in [(9, True, 0.5), (3, False, 0.8), (5, True, 0.9),
                                                       (4, False, 0.1)]]
    pairing = pair_trials(trials)
    assert numbers(pairing) == [(5, 3), (9, 4)]
    assert [p.gain("val_accuracy") for p in pairing.pairs] == pytest.approx([0.1, 0.4])


def test_kd_flag_from_settings_when_kd_is_not_a_searched_param():
    trials = [trial(0, True, kd_in_params=False), trial(1, False, kd_in_params=False)]
    assert numbers(pair_trials(trials)) == [(0, 1)]
    assert kd_flag(trials[0]) is True and kd_flag(trials[1]) is False
    assert kd_flag({"params": {"distill.kd": "false"}}) is False
    assert kd_flag({"params": {"distill.kd": 2}}) is None
    assert kd_flag({"params": {}, "settings": {}}) is None


def test_a_missing_seed_counts_as_equal_and_bools_never_equal_ints():
    no_seed = [dict(trial(n, kd), settings={"distill": {"kd": kd}}) for n, kd in ((0, True), (1, False))]
    assert numbers(pair_trials(no_seed)) == [(0, 1)]
    one_vs_true = [trial(0, True, params={"flag": 1}), trial(1, False, params={"flag": True})]
    assert pair_trials(one_vs_true).pairs == []


# --------------------------------------------------------------------------- #
# gains
# --------------------------------------------------------------------------- #
def test_repeat_gains_pair_repeat_by_repeat():
    on = trial(0, True, acc=0.80, repeats=[0.80, 0.90, 0.70])
    off = trial(1, False, acc=0.7833, twin_of=0, repeats=[0.78, 0.85, 0.72])
    (pair,) = pair_trials([on, off]).pairs
    # repeat r of the KD trial against repeat r of its twin (the same random streams), in order
    assert pair.repeat_gains("val_accuracy") == pytest.approx([0.02, 0.05, -0.02])
    assert pair.repeat_gains("flops") == [0.0, 0.0, 0.0]
    assert pair.repeat_gains("test_accuracy") is None  # not kept per repeat
    uneven = Pair(on, trial(1, False, repeats=[0.78, 0.85]), PARAMS)
    assert uneven.repeat_gains("val_accuracy") is None
    assert Pair(trial(0, True), trial(1, False), PARAMS).repeat_gains("val_accuracy") is None


def test_gain_needs_finite_numbers_on_both_sides():
    on, off = trial(0, True, acc=0.9), trial(1, False, acc=0.8)
    assert Pair(on, off, {}).gain("val_accuracy") == pytest.approx(0.1)
    assert Pair(on, off, {}).gain("bitops") is None
    nan = dict(off, metrics={"val_accuracy": float("nan")})
    assert Pair(on, nan, {}).gain("val_accuracy") is None
    assert metric_of({"x": True}, "x") is None and metric_of({"x": "0.5"}, "x") is None
    assert metric_of(None, "x") is None and metric_of({"x": 3}, "x") == 3.0


def test_states_may_be_enum_spellings_and_bad_records_are_skipped():
    trials = [dict(trial(0, True), state="TrialState.COMPLETE"), dict(trial(1, False, twin_of=0), state="complete"),
              {"state": "COMPLETE"}, "not a trial", trial(2, True, params={"compress.bits": 2})]
    pairing = pair_trials(trials)
    assert numbers(pairing) == [(0, 1)]
    assert pairing.unpaired == [2]
    assert is_state({"state": "TrialState.FAIL"}, "FAIL") and not is_state({"state": None}, "FAIL")


# --------------------------------------------------------------------------- #
# through optuna and trial_records
# --------------------------------------------------------------------------- #
def test_links_survive_trial_records():
    dists = {"distill.kd": CategoricalDistribution([True, False]), "compress.bits": CategoricalDistribution([4, 8])}
    study = optuna.create_study(directions=["maximize", "minimize"])

    def add(state, kd, bits, acc=None, **attrs):
        user_attrs = {"settings": {"train": {"seed": 0}, "distill": {"kd": kd}}, **attrs}
        if state == TrialState.COMPLETE:
            user_attrs["metrics"] = {"val_accuracy": acc, "flops": 1e6}
        study.add_trial(create_trial(state=state, values=[acc, 1e6] if acc is not None else None,
                                     params={"distill.kd": kd, "compress.bits": bits}, distributions=dists,
                                     user_attrs=user_attrs))

    add(TrialState.COMPLETE, True, 8, 0.9)                                  # 0
    add(TrialState.FAIL, False, 8, fail_reason="boom", twin_of=0)          # 1
    add(TrialState.COMPLETE, False, 8, 0.85, twin_of=0, retry_of=1)        # 2
    add(TrialState.COMPLETE, False, 4, 0.7)                                 # 3
    add(TrialState.FAIL, True, 4, fail_reason="out of memory", twin_of=3)  # 4
    pairing = pair_trials(trial_records(study))
    assert numbers(pairing) == [(0, 2)] and pairing.pairs[0].linked
    assert [lp.to_dict() for lp in pairing.lost] == [
        {"original": 3, "twin": 4, "failed_side": "kd_on", "reason": "out of memory"}]


def test_a_chain_of_links_pairs_each_trial_once():
    # 1 links to 0 and 2 links to 1 (a corrupted or hand-edited study): trial 1 may sit in one pair only.
    trials = [trial(0, True), trial(1, False, twin_of=0), trial(2, True, twin_of=1)]
    pairing = pair_trials(trials)
    assert [p.numbers for p in pairing.pairs] == [(0, 1)]
    assert pairing.unpaired == [2]
