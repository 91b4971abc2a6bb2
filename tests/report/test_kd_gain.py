"""Tests for autokd.report.kd_gain.kd_analysis, the one-call assembly of the KD report, on synthetic KD twins whose
true gain is known by construction: the overall word, lost/pending pairs, per-technique verdicts against the margin,
per-level intervals, the teacher warning, relative error reduction, repeats and heterogeneity, and the JSON keys.

(The statistics themselves are tested in test_stats.py and test_orthogonality.py, the pairing rules in
test_pairing.py, the words in test_verdict.py, the fronts in test_pareto.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from autokd.report.kd_gain import kd_analysis
from autokd.report.verdict import FACTOR_WORDS

BITS = (4, 8, 32)
WIDTHS = (0.25, 0.5)
KEYS = {"metric", "estimand", "units", "n_pairs", "n_unpaired", "n_pending", "pairs", "lost_pairs", "n_lost_pairs", "refused_pairs",
        "repeats", "min_pairs", "gain", "overall", "margin", "model", "factors", "collinear", "heterogeneity",
        "fronts", "teacher", "early_stop", "warnings", "verdict"}


def record(number, kd, params, *, acc, seed, state="COMPLETE", twin_of=None, repeats=None, flops=1e6, **extra):
    metrics = {}
    if state == "COMPLETE":
        metrics = {"val_accuracy": acc, "test_accuracy": acc - 0.01, "flops": flops}
        if repeats is not None:
            metrics["repeats"] = [{"val_accuracy": a, "test_accuracy": a - 0.01, "flops": flops} for a in repeats]
    return {"number": number, "state": state, "params": {**params, "distill.kd": kd}, "metrics": metrics,
            "settings": {"train": {"seed": seed}, "distill": {"kd": kd, "temperature": params.get(
                "distill.temperature", 4.0)}},
            "twin_of": twin_of, "retry_of": None, "duplicate_of": None, "fail_reason": None, **extra}


def twins(gain, n, *, noise=0.002, rng_seed=0, n_repeats=None, repeat_noise=0.003, start=0):
    """``n`` linked KD twins over bits x width; pair i is trials start+2i (original) and start+2i+1 (twin).
    ``gain(bits, width)`` is the true gain; the noise is centred, so the mean gain is exactly the mean of gain()."""
    rng = np.random.default_rng(rng_seed)
    eps = rng.normal(0.0, noise, n)
    eps -= eps.mean()
    trials = []
    for i in range(n):
        bits, width = BITS[i % 3], WIDTHS[(i // 3) % 2]
        params = {"compress.bits": bits, "model.width_mult": width, "distill.temperature": [2.0, 4.0][i % 2]}
        base = 0.70 + 0.1 * width + rng.normal(0, 0.01)
        g = gain(bits, width) + eps[i]
        acc = {True: base + g, False: base}
        reps = {True: None, False: None}
        if n_repeats:
            off_reps = base + rng.normal(0, 0.01, n_repeats)
            off_reps += base - off_reps.mean()
            on_reps = off_reps + g + rng.normal(0, repeat_noise, n_repeats)
            on_reps += (base + g) - on_reps.mean()
            reps = {True: list(on_reps), False: list(off_reps)}
        first = i % 2 == 0  # which side the sampler proposed
        a, b = start + 2 * i, start + 2 * i + 1
        flops = 1e6 * width * (bits / 32 + 0.5)
        trials.append(record(a, first, params, acc=acc[first], seed=i, repeats=reps[first], flops=flops))
        trials.append(record(b, not first, params, acc=acc[not first], seed=i, twin_of=a, repeats=reps[not first],
                             flops=flops))
    return trials


def factor(kd, name):
    (f,) = [f for f in kd["factors"] if f["factor"] == name]
    return f


@pytest.fixture(scope="module")
def constant():
    return twins(lambda bits, width: 0.02, 24)


@pytest.fixture(scope="module")
def constant_kd(constant):
    return kd_analysis(constant)


# --------------------------------------------------------------------------- #
# shape of the result
# --------------------------------------------------------------------------- #
def test_keys_and_json(constant, constant_kd):
    kd = constant_kd
    assert set(kd) == KEYS
    assert json.loads(json.dumps(kd, allow_nan=False)) == kd
    assert kd["metric"] == "val_accuracy" and set(kd["gain"]) == {"val_accuracy", "test_accuracy"}
    assert kd["n_pairs"] == 24 and kd["n_unpaired"] == 0 and kd["n_pending"] == 0
    assert kd["lost_pairs"] == [] and kd["n_lost_pairs"] == 0
    assert kd["margin"] == 0.01 and kd["min_pairs"] == 10 and kd["repeats"] == 1
    assert kd["heterogeneity"] is None and kd["teacher"] is None
    gain = constant[0]["metrics"]["val_accuracy"] - constant[1]["metrics"]["val_accuracy"]
    assert kd["pairs"][0] == {"on": 0, "off": 1, "gain": pytest.approx(gain), "repeat_gains": None, "linked": True,
                                 "design": False}
    assert kd["pairs"][1]["on"] == 3 and kd["pairs"][1]["off"] == 2  # the twin ran with KD on
    assert all(p["linked"] for p in kd["pairs"])


def test_factors_are_the_other_techniques_with_a_verdict_each(constant_kd):
    kd = constant_kd
    # distill.* are KD's own settings, not "other techniques"
    assert [f["factor"] for f in kd["factors"]] == ["compress.bits", "model.width_mult"]
    for f in kd["factors"]:
        assert f["verdict"] in FACTOR_WORDS
    assert kd["model"]["fitted"] is True and kd["model"]["n_pairs"] == 24


def test_the_analysis_is_deterministic(constant, constant_kd):
    assert kd_analysis(constant) == constant_kd


# --------------------------------------------------------------------------- #
# the overall word
# --------------------------------------------------------------------------- #
def test_a_constant_gain_adds_and_is_orthogonal_to_every_technique(constant_kd):
    kd = constant_kd
    g = kd["gain"]["val_accuracy"]
    assert g["mean"] == pytest.approx(0.02)
    assert 0.01 < g["ci_low"] < 0.02 < g["ci_high"] < 0.03
    assert g["p_signed_rank"] < 0.001
    assert kd["overall"] == "adds"
    assert [f["verdict"] for f in kd["factors"]] == ["orthogonal", "orthogonal"]
    assert kd["verdict"].startswith("KD adds +2.0 pts (95% CI "), kd["verdict"]
    assert "over 24 pairs" in kd["verdict"]
    assert "orthogonal to KD within ±1.0 pts: bits, width_mult" in kd["verdict"]


def test_a_gain_that_depends_on_bits_interacts_with_bits():
    kd = kd_analysis(twins(lambda bits, width: {4: 0.06, 8: 0.02, 32: 0.0}[bits], 24))
    bits = factor(kd, "compress.bits")
    assert bits["verdict"] == "interacts"
    assert factor(kd, "model.width_mult")["verdict"] != "interacts"
    means = {lv["level"]: lv["mean"] for lv in bits["levels"]}
    assert means == pytest.approx({"4": 0.06, "8": 0.02, "32": 0.0}, abs=0.003)
    assert bits["max_difference"]["high"] == "4" and bits["max_difference"]["low"] == "32"
    assert kd["overall"] == "adds"
    assert "interacts: KD adds 6.0 pts more at bits 4 than at 32" in kd["verdict"], kd["verdict"]


def test_the_margin_decides_what_counts_as_orthogonal(constant):
    narrow = kd_analysis(constant, margin=0.0002)
    assert narrow["margin"] == 0.0002
    assert [f["verdict"] for f in narrow["factors"]] == ["undetermined", "undetermined"]
    assert "orthogonal" not in narrow["verdict"]
    wide = kd_analysis(constant, margin=0.05)
    assert [f["verdict"] for f in wide["factors"]] == ["orthogonal", "orthogonal"]
    assert "within ±5.0 pts" in wide["verdict"]


def test_no_gain_is_no_clear_gain_and_a_loss_hurts():
    flat = kd_analysis(twins(lambda bits, width: 0.0, 24))
    assert abs(flat["gain"]["val_accuracy"]["mean"]) < 1e-12
    assert flat["overall"] == "no_clear_gain"
    assert flat["verdict"].startswith("No clear KD gain: ")
    loss = kd_analysis(twins(lambda bits, width: -0.03, 24))
    assert loss["overall"] == "hurts"
    assert loss["verdict"].startswith("KD hurts: -3.0 pts")


def test_an_interval_above_zero_is_not_enough_without_the_signed_rank_test():
    # ten pairs: five gain exactly 0, five gain 1 point. The t interval is above 0, but only 5 gains carry a
    # sign, and "all 5 positive" has two-sided signed-rank p = 2/32
    trials = twins(lambda bits, width: 0.0, 10, noise=0.0)
    for i in range(5):
        on = trials[2 * i] if trials[2 * i]["params"]["distill.kd"] else trials[2 * i + 1]
        on["metrics"]["val_accuracy"] += 0.01
    kd = kd_analysis(trials)
    g = kd["gain"]["val_accuracy"]
    assert g["ci_low"] > 0 and g["p_signed_rank"] == pytest.approx(0.0625)
    assert kd["overall"] == "no_clear_gain"
    assert kd["verdict"].startswith("No clear KD gain: +0.5 pts"), kd["verdict"]


def test_too_few_pairs_still_shows_the_numbers():
    kd = kd_analysis(twins(lambda bits, width: 0.05, 9))
    g = kd["gain"]["val_accuracy"]
    assert kd["n_pairs"] == 9 and kd["overall"] == "too_few_pairs"
    assert g["mean"] == pytest.approx(0.05) and g["ci_low"] > 0.04  # overwhelming, and still not judged
    assert kd["verdict"].startswith("Too few KD pairs to judge (9 pairs; need at least 10): mean gain +5.0 pts "
                                    "(95% CI "), kd["verdict"]
    ten = kd_analysis(twins(lambda bits, width: 0.05, 10))
    assert ten["overall"] == "adds"


def test_no_trials_at_all():
    kd = kd_analysis([])
    assert set(kd) == KEYS
    json.dumps(kd, allow_nan=False)
    assert kd["n_pairs"] == 0 and kd["pairs"] == [] and kd["factors"] == []
    assert kd["overall"] == "too_few_pairs"
    assert kd["gain"]["val_accuracy"]["mean"] is None
    assert kd["fronts"]["reference"] is None
    assert kd["verdict"].startswith("No complete KD pairs yet")


# --------------------------------------------------------------------------- #
# pairs lost, pending, unpaired
# --------------------------------------------------------------------------- #
def test_lost_pending_and_retried_twins():
    trials = twins(lambda bits, width: 0.02, 12)
    p = {"compress.bits": 8, "model.width_mult": 0.5, "distill.temperature": 4.0}
    q = {"compress.bits": 4, "model.width_mult": 0.25, "distill.temperature": 4.0}
    trials += [
        # twin failed for good
        record(100, True, p, acc=0.8, seed=50),
        record(101, False, p, acc=None, seed=50, state="FAIL", twin_of=100, fail_reason="RuntimeError: boom"),
        # twin failed, its retry completed: a pair, not lost
        record(102, True, q, acc=0.81, seed=51),
        record(103, False, q, acc=None, seed=51, state="FAIL", twin_of=102, fail_reason="worker died"),
        record(104, False, q, acc=0.79, seed=51, twin_of=102, retry_of=103),
        # the linked twin differs beyond distill.kd: refused
        record(105, False, p, acc=0.8, seed=52),
        record(106, True, {**p, "compress.bits": 32}, acc=0.82, seed=52, twin_of=105),
        # twin still queued: pending
        record(107, True, q, acc=0.8, seed=53),
        dict(record(108, False, q, acc=None, seed=53, state="WAITING", twin_of=107), params={}),
        # no twin at all
        record(109, True, q, acc=0.8, seed=54),
    ]
    kd = kd_analysis(trials)
    assert kd["n_pairs"] == 13
    assert {"on": 102, "off": 104} == {k: v for k, v in kd["pairs"][12].items() if k in ("on", "off")}
    assert kd["n_lost_pairs"] == 1
    assert kd["lost_pairs"] == [{"original": 100, "twin": 101, "failed_side": "kd_off",
                                 "reason": "RuntimeError: boom"}]
    (refused,) = kd["refused_pairs"]
    assert (refused["original"], refused["twin"], refused["failed_side"]) == (105, 106, None)
    assert "compress.bits" in refused["reason"]
    assert kd["n_pending"] == 1 and kd["n_unpaired"] == 1
    assert " 1 pair lost. " in kd["verdict"], kd["verdict"]
    assert any(w.startswith("1 pair lost") for w in kd["warnings"])
    assert any(w.startswith("1 linked pair refused") for w in kd["warnings"])


def test_one_lost_pair_is_one_pair_lost():
    trials = twins(lambda bits, width: 0.02, 10)
    p = {"compress.bits": 8, "model.width_mult": 0.5}
    trials += [record(100, True, p, acc=0.8, seed=50),
               record(101, False, p, acc=None, seed=50, state="FAIL", twin_of=100, fail_reason="boom")]
    kd = kd_analysis(trials)
    assert kd["n_lost_pairs"] == 1 and kd["n_pairs"] == 10
    assert " 1 pair lost. " in kd["verdict"]
    assert kd["gain"]["val_accuracy"]["n_pairs"] == 10  # statistics use the complete pairs only


def test_pairs_without_the_primary_metric_are_left_out_of_the_statistics():
    trials = twins(lambda bits, width: 0.02, 12)
    del trials[0]["metrics"]["val_accuracy"]
    kd = kd_analysis(trials)
    assert kd["n_pairs"] == 12 and kd["pairs"][0]["gain"] is None
    assert kd["gain"]["val_accuracy"]["n_pairs"] == 11
    assert kd["gain"]["test_accuracy"]["n_pairs"] == 12
    assert kd["model"]["n_pairs"] == 11


# --------------------------------------------------------------------------- #
# per-level intervals, teacher, error reduction, outliers
# --------------------------------------------------------------------------- #
def test_no_level_interval_from_fewer_than_three_pairs():
    rng = np.random.default_rng(5)
    trials = []
    # model.arch: "a" and "b" 2 pairs each (merged for the model), "c" 8; train.label_smoothing 0.1 in one pair,
    # train.augment on in two (both left out of the model, their raw levels reported); compress.bits 6 and 6
    for i, arch in enumerate(["a"] * 2 + ["b"] * 2 + ["c"] * 8):
        params = {"model.arch": arch, "compress.bits": [4, 8][i % 2], "train.label_smoothing": [0.0, 0.1][i == 0],
                  "train.augment": i in (5, 9)}
        base = 0.8 + rng.normal(0, 0.01)
        trials.append(record(2 * i, True, params, acc=base + 0.02 + rng.normal(0, 0.004), seed=i))
        trials.append(record(2 * i + 1, False, params, acc=base, seed=i, twin_of=2 * i))
    kd = kd_analysis(trials)
    levels = [lv for f in kd["factors"] for lv in f["levels"]]
    assert sorted(lv["n_pairs"] for lv in levels) == [1, 2, 4, 6, 6, 8, 10, 11]
    for lv in levels:
        if lv["n_pairs"] < 3:
            assert lv["ci_low"] is None and lv["ci_high"] is None, lv
        else:
            assert lv["ci_low"] is not None and lv["ci_low"] <= lv["mean"] <= lv["ci_high"], lv
    assert factor(kd, "train.label_smoothing")["left_out"] and factor(kd, "train.augment")["left_out"]
    assert factor(kd, "train.augment")["verdict"] == "undetermined"


def test_teacher_much_worse_on_its_views_is_a_warning(constant):
    teacher = {"train_accuracy": 0.99, "val_accuracy": 0.97, "test_accuracy": 0.96, "view_accuracy": 0.80,
               "augmented": False, "members": 1}
    kd = kd_analysis(constant, teacher=teacher)
    assert kd["teacher"] == teacher
    suspect = [w for w in kd["warnings"] if "augmented views" in w]
    assert len(suspect) == 1 and "suspect" in suspect[0] and "19.0 pts" in suspect[0]
    fine = kd_analysis(constant, teacher={**teacher, "view_accuracy": 0.97})
    assert not [w for w in fine["warnings"] if "augmented views" in w]
    assert kd_analysis(constant)["warnings"] == []


def test_pairs_trained_by_different_numerics_are_named_in_a_warning(constant):
    def numerics_warnings(trials):
        return [w for w in kd_analysis(trials)["warnings"] if "numerics" in w]

    # a study resumed across an upgrade: trial 2 (the KD-off side of pair 3/2) has numerics 1, the rest 2
    (warning,) = numerics_warnings([dict(t, numerics=1 if t["number"] == 2 else 2) for t in constant])
    assert warning.startswith("1 pair had their two trials") and "trials KD on/off 3/2" in warning
    # trial 2 from before autokd recorded numerics (None), its twin 3 from after: it cannot tell, and says so
    (unsure,) = numerics_warnings([dict(t, numerics=None if t["number"] == 2 else 2) for t in constant])
    assert unsure.startswith("1 pair had one trial trained before") and "trials KD on/off 3/2" in unsure
    assert not numerics_warnings([dict(t, numerics=2) for t in constant])
    assert not numerics_warnings([dict(t, numerics=None) for t in constant])  # none recorded: the same code
    assert not numerics_warnings(constant)


def test_relative_error_reduction_is_pooled_over_pairs():
    accs = [(0.90, 0.85), (0.80, 0.80), (0.95, 0.90), (1.00, 0.96)]  # (KD on, KD off)
    trials = []
    for i, (on, off) in enumerate(accs):
        params = {"compress.bits": 8, "model.width_mult": 0.25 + i}
        trials += [record(2 * i, True, params, acc=on, seed=0), record(2 * i + 1, False, params, acc=off, seed=0,
                                                                         twin_of=2 * i)]
    kd = kd_analysis(trials, metrics=("val_accuracy", "test_accuracy", "flops"))
    err_off = sum(1 - off for _, off in accs)
    err_on = sum(1 - on for on, _ in accs)
    expected = (err_off - err_on) / err_off
    assert kd["gain"]["val_accuracy"]["relative_error_reduction"] == pytest.approx(expected)
    # the mean of per-pair ratios would differ
    assert expected != pytest.approx(np.mean([((1 - off) - (1 - on)) / (1 - off) for on, off in accs]))
    err_off_t = sum(1 - (off - 0.01) for _, off in accs)
    err_on_t = sum(1 - (on - 0.01) for on, _ in accs)
    assert kd["gain"]["test_accuracy"]["relative_error_reduction"] == pytest.approx(
        (err_off_t - err_on_t) / err_off_t)
    assert kd["gain"]["flops"]["relative_error_reduction"] is None  # not an accuracy


def test_outlier_pairs_are_named_in_a_warning():
    trials = twins(lambda bits, width: 0.02, 12, noise=0.001)
    # pair 4 is trials 8 (KD on) and 9 (KD off): make its gain -20 points
    assert trials[8]["params"]["distill.kd"] is True
    trials[8]["metrics"]["val_accuracy"] = trials[9]["metrics"]["val_accuracy"] - 0.20
    kd = kd_analysis(trials)
    assert kd["gain"]["val_accuracy"]["outliers"] == [4]
    (w,) = [w for w in kd["warnings"] if "outlier" in w]
    assert w.startswith("1 pair's gain is an outlier") and "8/9" in w


# --------------------------------------------------------------------------- #
# repeats
# --------------------------------------------------------------------------- #
def test_repeats_give_heterogeneity_and_count_configurations():
    trials = twins(lambda bits, width: 0.02, 12, n_repeats=3)
    kd = kd_analysis(trials)
    assert kd["repeats"] == 3
    pair = kd["pairs"][0]
    assert len(pair["repeat_gains"]) == 3
    assert np.mean(pair["repeat_gains"]) == pytest.approx(pair["gain"])
    het = kd["heterogeneity"]
    assert het is not None
    assert het["n_configurations"] == 12 and het["repeats"] == 3
    assert het["tau"] is not None and het["tau_low"] <= het["tau"] <= het["tau_high"]
    assert "over 12 configurations" in kd["verdict"]
    assert "Between-configuration SD of the gain beyond seed noise" in kd["verdict"]
    json.dumps(kd, allow_nan=False)


def test_a_single_repeat_has_no_heterogeneity():
    kd = kd_analysis(twins(lambda bits, width: 0.02, 12, n_repeats=1))
    assert kd["repeats"] == 1 and kd["heterogeneity"] is None
    assert "over 12 pairs" in kd["verdict"]


# --------------------------------------------------------------------------- #
# arguments
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kwargs", [{"metrics": []}, {"metrics": "val_accuracy"}, {"margin": 0}, {"margin": 1},
                                    {"margin": -0.01}, {"margin": True}, {"margin": "0.01"},
                                    {"margin": float("nan")}])
def test_bad_arguments_are_value_errors(kwargs):
    with pytest.raises(ValueError):
        kd_analysis([], **kwargs)
