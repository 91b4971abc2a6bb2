"""Tests for autokd.report.kd_gain: KD-twin statistics on synthetic trials
whose true KD effect is known by construction."""

from __future__ import annotations

import itertools
import json
import time

import numpy as np
import pytest
from scipy.stats import binomtest

from autokd.report.kd_gain import (
    Pair,
    factor_breakdown,
    find_pairs,
    front_comparison,
    holm_adjust,
    hypervolume_2d,
    kd_analysis,
    paired_gains,
    pareto_front,
    summarize_gain,
    verdict,
)

MAX_MIN = ["maximize", "minimize"]


# --------------------------------------------------------------------------- #
# synthetic trials
# --------------------------------------------------------------------------- #
def make_trial(number, params, *, kd, acc, seed=0, flops=1e6, state="COMPLETE",
               kd_in_params=True):
    params = dict(params)
    if kd_in_params:
        params["distill.kd"] = kd
    settings = {"distill": {"kd": kd, "temperature": 4.0}}
    if seed is not None:
        settings["train"] = {"seed": seed, "epochs": 1}
    return {"number": number, "state": state, "params": params,
            "metrics": {"val_accuracy": acc, "test_accuracy": acc - 0.01,
                        "flops": flops, "size_bytes": 1000, "params": 123},
            "settings": settings}


class Study:
    """Builds KD twins with consecutive trial numbers."""

    def __init__(self):
        self.trials = []

    def twin(self, params, *, base, gain, seed=0, flops=1e6):
        n = len(self.trials)
        self.trials.append(make_trial(n, params, kd=True, acc=base + gain, seed=seed, flops=flops))
        self.trials.append(make_trial(n + 1, params, kd=False, acc=base, seed=seed, flops=flops))


def factorial_study(gain_fn, *, noise_seed=0, noise=0.01, antithetic=False):
    """bits x width x seed design (48 pairs); label smoothing varies too but
    never matters. ``gain_fn(params)`` is the true KD gain."""
    rng = np.random.default_rng(noise_seed)
    study = Study()
    cells = list(itertools.product([2, 4, 8, 32], [0.25, 0.5, 0.75, 1.0], [0, 1, 2]))
    eps = rng.normal(0.0, noise, size=len(cells))
    if antithetic:  # exactly mean-zero noise: the sample mean equals the truth
        eps[1::2] = -eps[0::2]
    for i, (bits, width, seed) in enumerate(cells):
        params = {"compress.bits": bits, "model.width_mult": width,
                  "train.label_smoothing": [0.0, 0.1][(i // 3) % 2]}
        base = 0.70 + 0.1 * width - (0.05 if bits == 2 else 0.0) + rng.normal(0, 0.02)
        study.twin(params, base=base, gain=gain_fn(params) + eps[i], seed=seed,
                   flops=1e6 * width * bits / 8)
    return study.trials


def by_factor(breakdown):
    return {entry["factor"]: entry for entry in breakdown}


# --------------------------------------------------------------------------- #
# end-to-end scenarios with known truth
# --------------------------------------------------------------------------- #
def test_constant_gain_is_found_and_no_factor_is_flagged():
    trials = factorial_study(lambda p: 0.02)
    pairs = find_pairs(trials)
    assert len(pairs) == 48
    gains = paired_gains(pairs)
    summary = summarize_gain(gains)
    assert summary["n_pairs"] == 48
    assert abs(summary["mean"] - 0.02) < 0.005
    assert summary["ci_low"] < 0.02 < summary["ci_high"]
    assert summary["ci_low"] > 0
    assert summary["win_rate"] > 0.9
    assert summary["p_sign"] < 1e-6

    breakdown = factor_breakdown(pairs)
    assert set(by_factor(breakdown)) == {"compress.bits", "model.width_mult",
                                         "train.label_smoothing"}
    for entry in breakdown:
        assert entry["p_interaction"] is not None
        assert entry["p_adjusted"] > 0.05, entry["factor"]
    sentence = verdict(summary, breakdown)
    assert sentence.startswith("KD adds +2.")
    assert "over 48 pairs" in sentence
    assert "no factor changes the gain significantly" in sentence


def test_gain_that_depends_on_bits_is_flagged():
    trials = factorial_study(lambda p: 0.05 if p["compress.bits"] in (2, 4) else 0.0)
    pairs = find_pairs(trials)
    breakdown = by_factor(factor_breakdown(pairs))

    bits = breakdown["compress.bits"]
    assert bits["test"] == "permutation-F"
    assert bits["p_adjusted"] < 0.05
    assert [lv["level"] for lv in bits["levels"]] == ["2", "4", "8", "32"]
    means = {lv["level"]: lv["mean"] for lv in bits["levels"]}
    assert means["2"] == pytest.approx(0.05, abs=0.01)
    assert means["32"] == pytest.approx(0.0, abs=0.01)
    for lv in bits["levels"]:
        assert lv["n_pairs"] == 12
        assert lv["ci_low"] <= lv["mean"] <= lv["ci_high"]

    assert breakdown["model.width_mult"]["p_adjusted"] > 0.05
    assert breakdown["train.label_smoothing"]["p_adjusted"] > 0.05

    sentence = verdict(summarize_gain(paired_gains(pairs)), list(breakdown.values()))
    assert "the gain depends on compress.bits" in sentence
    assert "model.width_mult" not in sentence


def test_no_gain_gives_no_clear_gain():
    trials = factorial_study(lambda p: 0.0, antithetic=True)
    pairs = find_pairs(trials)
    summary = summarize_gain(paired_gains(pairs))
    assert summary["mean"] == pytest.approx(0.0, abs=1e-12)
    assert summary["ci_low"] < 0 < summary["ci_high"]
    sentence = verdict(summary, factor_breakdown(pairs))
    assert sentence.startswith("No clear KD gain:")


def test_negative_gain_says_kd_hurts():
    trials = factorial_study(lambda p: -0.03)
    analysis = kd_analysis(trials)
    assert analysis["gain"]["val_accuracy"]["mean"] == pytest.approx(-0.03, abs=0.005)
    assert analysis["verdict"].startswith("KD hurts: -")


def test_too_few_pairs():
    study = Study()
    for bits in (2, 4, 8):
        study.twin({"compress.bits": bits}, base=0.8, gain=0.01)
    analysis = kd_analysis(study.trials)
    assert analysis["n_pairs"] == 3
    assert analysis["verdict"] == ("Too few KD pairs to tell "
                                   "(3 pairs, mean gain +1.0 pts; need at least 5).")
    assert kd_analysis([])["verdict"] == "Too few KD pairs to tell (0 pairs; need at least 5)."


# --------------------------------------------------------------------------- #
# pairing
# --------------------------------------------------------------------------- #
def test_pairing_rules():
    p = {"compress.bits": 4, "model.width_mult": 0.5}
    q = {"compress.bits": 8, "model.width_mult": 0.5}
    r = {"compress.bits": 2, "model.width_mult": 1.0}
    s = {"compress.bits": 32, "model.width_mult": 1.0}
    trials = [
        make_trial(0, p, kd=True, acc=0.90),
        make_trial(1, p, kd=False, acc=0.88),
        make_trial(2, p, kd=True, acc=0.70),             # duplicate of 0 -> unpaired
        make_trial(3, q, kd=True, acc=0.90),             # partner failed
        make_trial(4, q, kd=False, acc=0.85, state="FAIL"),
        make_trial(5, r, kd=True, acc=0.90, seed=1),     # seeds differ
        make_trial(6, r, kd=False, acc=0.80, seed=2),
        make_trial(7, s, kd=True, acc=0.90),             # no partner at all
        make_trial(8, q | {"train.augment": True}, kd=False, acc=0.8),  # different params
        make_trial(9, p, kd=False, acc=0.10, state="RUNNING"),
    ]
    pairs = find_pairs(trials)
    assert [pair.numbers for pair in pairs] == [(0, 1)]
    pair = pairs[0]
    assert isinstance(pair, Pair)
    assert pair.params == p and "distill.kd" not in pair.params
    assert pair.seed == 0
    assert paired_gains(pairs) == pytest.approx([0.02])
    with pytest.raises(AttributeError):
        pair.on = {}  # frozen

    analysis = kd_analysis(trials)
    assert analysis["n_pairs"] == 1
    assert analysis["n_unpaired"] == 6  # 2, 3, 5, 6, 7, 8 (FAIL/RUNNING ignored)


def test_duplicates_use_lowest_numbers_on_both_sides():
    p = {"compress.bits": 4}
    trials = [make_trial(n, p, kd=kd, acc=acc) for n, kd, acc in
              [(9, True, 0.5), (3, False, 0.8), (5, True, 0.9), (4, False, 0.1)]]
    pairs = find_pairs(trials)
    assert [pair.numbers for pair in pairs] == [(5, 3)]
    assert paired_gains(pairs) == pytest.approx([0.1])


def test_seed_missing_counts_as_equal_and_kd_flag_from_settings():
    p = {"compress.bits": 4}
    q = {"compress.bits": 8}
    r = {"compress.bits": 2}
    trials = [
        make_trial(0, p, kd=True, acc=0.9, seed=None),
        make_trial(1, p, kd=False, acc=0.8, seed=None),
        make_trial(2, q, kd=True, acc=0.9, seed=None),
        make_trial(3, q, kd=False, acc=0.8, seed=7),
        make_trial(4, r, kd=True, acc=0.9, kd_in_params=False),
        make_trial(5, r, kd=False, acc=0.8, kd_in_params=False),
    ]
    assert [pair.numbers for pair in find_pairs(trials)] == [(0, 1), (2, 3), (4, 5)]


def test_pairs_per_seed_and_metric_missing_is_skipped():
    study = Study()
    for seed in range(3):
        study.twin({"compress.bits": 4}, base=0.8, gain=0.01 * seed, seed=seed)
    del study.trials[0]["metrics"]["val_accuracy"]
    pairs = find_pairs(study.trials)
    assert len(pairs) == 3
    assert paired_gains(pairs) == pytest.approx([0.01, 0.02])
    assert paired_gains(pairs, metric="flops") == pytest.approx([0.0, 0.0, 0.0])


# --------------------------------------------------------------------------- #
# summarize_gain
# --------------------------------------------------------------------------- #
def test_summary_known_values():
    gains = [0.01] * 9 + [-0.02]
    s = summarize_gain(gains)
    assert s["n_pairs"] == 10
    assert s["mean"] == pytest.approx(0.007)
    assert s["sd"] == pytest.approx(np.std(gains, ddof=1))
    assert s["win_rate"] == pytest.approx(0.9)
    assert s["p_sign"] == pytest.approx(22 / 1024)  # 2 * P(X >= 9), X ~ Bin(10, 1/2)

    ties = summarize_gain([0.1, 0.0, -0.1, 0.2])
    assert ties["win_rate"] == pytest.approx(0.625)
    assert ties["p_sign"] == pytest.approx(binomtest(2, 3, 0.5).pvalue)


def test_summary_small_samples():
    empty = summarize_gain([])
    assert empty["n_pairs"] == 0
    assert all(empty[k] is None for k in ("mean", "sd", "ci_low", "ci_high", "win_rate", "p_sign"))
    one = summarize_gain(np.array([0.03]))
    assert one["mean"] == pytest.approx(0.03)
    assert one["ci_low"] is None and one["ci_high"] is None and one["sd"] is None
    assert summarize_gain([0.0, 0.0])["p_sign"] is None


def test_bootstrap_ci_matches_normal_theory_and_is_seeded():
    rng = np.random.default_rng(1)
    gains = rng.normal(0.02, 0.01, size=200)
    s = summarize_gain(gains, seed=3)
    half = 1.96 * gains.std(ddof=1) / np.sqrt(gains.size)
    assert s["ci_low"] == pytest.approx(gains.mean() - half, abs=0.15 * half)
    assert s["ci_high"] == pytest.approx(gains.mean() + half, abs=0.15 * half)
    assert summarize_gain(gains, seed=3) == s
    assert summarize_gain(gains, seed=4)["ci_low"] != s["ci_low"]
    narrow = summarize_gain(gains, seed=3, confidence=0.5)
    assert s["ci_low"] < narrow["ci_low"] < narrow["ci_high"] < s["ci_high"]


def test_bootstrap_coverage_is_near_nominal():
    rng = np.random.default_rng(7)
    hits = 0
    runs = 300
    for i in range(runs):
        sample = rng.normal(0.02, 0.01, size=40)
        s = summarize_gain(sample, n_boot=1000, seed=i)
        hits += s["ci_low"] <= 0.02 <= s["ci_high"]
    assert 0.88 <= hits / runs <= 0.99


def test_bootstrap_is_fast():
    gains = np.random.default_rng(0).normal(size=300)
    start = time.perf_counter()
    summarize_gain(gains, n_boot=10_000)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("kwargs", [{"n_boot": 0}, {"confidence": 1.5}, {"confidence": 0},
                                    {"seed": -1}, {"seed": 1.5}, {"n_boot": True}])
def test_summary_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        summarize_gain([0.1, 0.2], **kwargs)


@pytest.mark.parametrize("gains", [[0.1, float("nan")], [[0.1, 0.2]], "abc", [0.1, None]])
def test_summary_rejects_bad_gains(gains):
    with pytest.raises(ValueError):
        summarize_gain(gains)


# --------------------------------------------------------------------------- #
# factor breakdown
# --------------------------------------------------------------------------- #
def test_prune_ratio_bins_and_float_tertiles():
    study = Study()
    prune = [0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 1.0]
    lr = [0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009, 0.01]
    for i, (ratio, rate) in enumerate(zip(prune, lr)):
        study.twin({"compress.prune_ratio": ratio, "train.lr": rate, "train.augment": True},
                   base=0.8, gain=0.01 * i)
    entries = by_factor(factor_breakdown(find_pairs(study.trials)))
    assert "train.augment" not in entries  # only one level
    prune_entry = entries["compress.prune_ratio"]
    assert prune_entry["binning"] == "prune_bins"
    assert [(lv["level"], lv["n_pairs"]) for lv in prune_entry["levels"]] == [
        ("0", 2), ("(0, 0.25)", 2), ("[0.25, 0.5)", 2), ("[0.5, 0.75)", 2), ("[0.75, 1]", 2)]
    lr_entry = entries["train.lr"]
    assert lr_entry["binning"] == "tertiles"
    # sample tertiles of 0.001..0.010 are 0.004 and 0.007
    assert [(lv["level"], lv["n_pairs"]) for lv in lr_entry["levels"]] == [
        ("[0.001, 0.004)", 3), ("[0.004, 0.007)", 3), ("[0.007, 0.01]", 4)]


def test_prune_ratio_with_few_values_is_still_binned():
    study = Study()
    for ratio in (0.1, 0.2, 0.3, 0.35):
        study.twin({"compress.prune_ratio": ratio}, base=0.8, gain=0.01)
    (entry,) = factor_breakdown(find_pairs(study.trials))
    assert [lv["level"] for lv in entry["levels"]] == ["(0, 0.25)", "[0.25, 0.5)"]


def test_interaction_needs_two_levels_with_two_pairs():
    study = Study()
    study.twin({"compress.bits": 2, "model.arch": "a"}, base=0.8, gain=0.05)
    study.twin({"compress.bits": 4, "model.arch": "a"}, base=0.8, gain=0.01, seed=1)
    study.twin({"compress.bits": 4, "model.arch": "b"}, base=0.8, gain=0.02, seed=2)
    study.twin({"compress.bits": 8}, base=0.8, gain=0.03)  # model.arch absent
    entries = by_factor(factor_breakdown(find_pairs(study.trials)))
    bits = entries["compress.bits"]
    assert [lv["n_pairs"] for lv in bits["levels"]] == [1, 2, 1]
    assert bits["p_interaction"] is None and bits["p_adjusted"] is None
    arch = entries["model.arch"]
    assert [lv["level"] for lv in arch["levels"]] == ["a", "b", "(absent)"]
    assert arch["p_interaction"] is None
    assert arch["levels"][1]["ci_low"] is None  # single pair: no interval


def test_permutation_test_is_calibrated_under_the_null():
    rejections = 0
    runs = 60
    for i in range(runs):
        rng = np.random.default_rng(100 + i)
        study = Study()
        for j in range(24):
            study.twin({"compress.bits": [2, 4, 8][j % 3]}, base=0.8,
                       gain=rng.normal(0.01, 0.01), seed=j)
        (entry,) = factor_breakdown(find_pairs(study.trials), n_perm=400, n_boot=1, seed=i)
        assert 0 < entry["p_interaction"] <= 1
        rejections += entry["p_interaction"] < 0.05
    assert rejections <= 9  # expected 3 of 60


def test_breakdown_is_deterministic():
    pairs = find_pairs(factorial_study(lambda p: 0.02))
    assert factor_breakdown(pairs, seed=1) == factor_breakdown(pairs, seed=1)


def test_holm():
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm_adjust([]) == []


def test_breakdown_rejects_bad_arguments():
    pairs = find_pairs(factorial_study(lambda p: 0.02))
    with pytest.raises(ValueError):
        factor_breakdown(pairs, prune_bins=(0.5, 0.25))
    with pytest.raises(ValueError):
        factor_breakdown(pairs, n_perm=0)
    with pytest.raises(ValueError):
        factor_breakdown([{"on": 1}])
    with pytest.raises(ValueError):
        paired_gains(pairs, metric="")


# --------------------------------------------------------------------------- #
# Pareto fronts and hypervolume
# --------------------------------------------------------------------------- #
def test_pareto_front_and_hypervolume_by_hand():
    points = [(0.9, 10.0), (0.8, 5.0), (0.85, 12.0), (0.7, 5.0)]
    assert pareto_front(points, directions=MAX_MIN) == [0, 1]
    # boxes [0, 0.9] x [10, 20] (area 9) and [0, 0.8] x [5, 20] (area 12) overlap by 8
    assert hypervolume_2d(points, directions=MAX_MIN, reference=[0.0, 20.0]) == pytest.approx(13.0)

    staircase = [(1, 3), (2, 2), (3, 1)]
    both_min = ["minimize", "minimize"]
    assert hypervolume_2d(staircase, directions=both_min, reference=[4, 4]) == pytest.approx(6.0)
    extra = staircase + [(3, 3), (5, 0), (2, 2)]  # dominated, outside ref, duplicate
    assert hypervolume_2d(extra, directions=both_min, reference=[4, 4]) == pytest.approx(6.0)
    assert pareto_front(extra, directions=both_min) == [0, 1, 2, 4, 5]
    assert hypervolume_2d([], directions=both_min, reference=[4, 4]) == 0.0
    assert pareto_front([], directions=both_min) == []


def test_hypervolume_matches_grid_count():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pts = rng.integers(0, 10, size=(8, 2))
        ref = (10, 10)
        cells = sum(any(px <= x and py <= y for px, py in pts)
                    for x in range(10) for y in range(10))
        hv = hypervolume_2d(pts, directions=["minimize", "minimize"], reference=ref)
        assert hv == pytest.approx(cells)
        front = pts[pareto_front(pts, directions=["minimize", "minimize"])]
        assert hypervolume_2d(front, directions=["minimize", "minimize"],
                              reference=ref) == pytest.approx(cells)


@pytest.mark.parametrize("kwargs", [
    {"points": [(1, 2)], "directions": ["up", "minimize"]},
    {"points": [(1, 2, 3)], "directions": MAX_MIN},
    {"points": [(1, float("nan"))], "directions": MAX_MIN},
    {"points": [(1, 2)], "directions": "maximize"},
])
def test_pareto_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        pareto_front(**kwargs)


def test_front_comparison_dominating_kd_front():
    trials = []
    for i, (acc, flops) in enumerate([(0.70, 1e6), (0.80, 2e6), (0.85, 4e6)]):
        trials.append(make_trial(2 * i, {"w": i}, kd=True, acc=acc + 0.05, flops=flops))
        trials.append(make_trial(2 * i + 1, {"w": i}, kd=False, acc=acc, flops=flops))
    trials.append(make_trial(99, {"w": 9}, kd=False, acc=0.99, flops=1e9, state="FAIL"))
    result = front_comparison(trials)
    assert result["reference"] == pytest.approx([0.0, 4.4e6])
    assert result["front_kd_on"] == [0, 2, 4]
    assert result["front_kd_off"] == [1, 3, 5]
    assert result["dominated_share"] == 1.0
    assert result["hv_kd_on"] > result["hv_kd_off"] > 0
    # by hand: off front area = 0.70*3.4e6 + 0.10*2.4e6 + 0.05*0.4e6
    assert result["hv_kd_off"] == pytest.approx(2.64e6)

    same = [dict(t, metrics=dict(t["metrics"], val_accuracy=0.8)) for t in trials]
    equal = front_comparison(same)
    assert equal["dominated_share"] == 0.0
    assert equal["hv_kd_on"] == pytest.approx(equal["hv_kd_off"])


def test_front_comparison_without_usable_trials():
    result = front_comparison([make_trial(0, {}, kd=True, acc=0.9, state="FAIL")])
    assert result["reference"] is None and result["hv_kd_on"] is None
    assert result["front_kd_on"] == [] and result["dominated_share"] is None
    only_on = front_comparison([make_trial(0, {}, kd=True, acc=0.9)])
    assert only_on["hv_kd_off"] == 0.0 and only_on["dominated_share"] is None


# --------------------------------------------------------------------------- #
# verdict and kd_analysis
# --------------------------------------------------------------------------- #
def _summary(n, mean, low, high):
    return {"n_pairs": n, "mean": mean, "ci_low": low, "ci_high": high, "confidence": 0.95}


def test_verdict_sentences():
    flat = [{"factor": "compress.bits", "p_adjusted": 0.31},
            {"factor": "model.width_mult", "p_adjusted": 0.8}]
    assert verdict(_summary(24, 0.018, 0.011, 0.025), flat) == (
        "KD adds +1.8 pts (95% CI 1.1–2.5) over 24 pairs; "
        "no factor changes the gain significantly (smallest corrected p = 0.31).")
    dep = [{"factor": "compress.bits", "p_adjusted": 0.004},
           {"factor": "model.width_mult", "p_adjusted": 0.8}]
    assert verdict(_summary(24, 0.018, 0.011, 0.025), dep).endswith(
        "; the gain depends on compress.bits (corrected p = 0.004).")
    assert verdict(_summary(24, 0.002, -0.006, 0.010), flat) == (
        "No clear KD gain: +0.2 pts (95% CI -0.6 to +1.0) over 24 pairs; "
        "no factor changes the gain significantly (smallest corrected p = 0.31).")
    assert verdict(_summary(24, -0.012, -0.020, -0.004), []).startswith(
        "KD hurts: -1.2 pts (95% CI -2.0 to -0.4) over 24 pairs")
    assert verdict(_summary(3, 0.01, 0.0, 0.02), flat) == (
        "Too few KD pairs to tell (3 pairs, mean gain +1.0 pts; need at least 5).")
    assert verdict(_summary(3, 0.01, 0.001, 0.02), flat, min_pairs=3).startswith("KD adds")
    assert verdict(_summary(24, 0.018, 0.011, 0.025),
                   [{"factor": "x", "p_adjusted": None}]).endswith(
        "; too few pairs per level to test whether any factor changes the gain.")
    assert verdict(_summary(24, 0.018, 0.011, 0.025), []).endswith(
        "; no other setting varies across the pairs.")


def test_verdict_rejects_bad_arguments():
    with pytest.raises(ValueError):
        verdict({}, [])
    with pytest.raises(ValueError):
        verdict(_summary(24, 0.01, 0.0, 0.02), [], alpha=2)
    with pytest.raises(ValueError):
        verdict(_summary(24, 0.01, 0.0, 0.02), [], min_pairs=0)


def test_kd_analysis_is_json_serialisable_with_exact_keys():
    trials = factorial_study(lambda p: 0.05 if p["compress.bits"] in (2, 4) else 0.0)
    trials.append(make_trial(1000, {"compress.bits": 4}, kd=True, acc=0.5))       # unpaired
    trials.append(make_trial(1001, {"compress.bits": 4}, kd=False, acc=float("nan"),
                             state="FAIL"))
    analysis = kd_analysis(trials, seed=2)
    text = json.dumps(analysis, allow_nan=False)
    assert json.loads(text) == analysis
    assert set(analysis) == {"n_pairs", "n_unpaired", "pairs", "metric", "gain", "factors",
                             "fronts", "verdict"}
    assert analysis["n_pairs"] == 48 and analysis["n_unpaired"] == 1
    assert set(analysis["gain"]) == {"val_accuracy", "test_accuracy"}
    assert set(analysis["gain"]["val_accuracy"]) == {
        "n_pairs", "mean", "sd", "ci_low", "ci_high", "confidence", "win_rate", "p_sign"}
    assert set(analysis["factors"][0]) == {"factor", "binning", "levels", "p_interaction",
                                           "p_adjusted", "test"}
    assert set(analysis["factors"][0]["levels"][0]) == {
        "level", "n_pairs", "mean", "ci_low", "ci_high", "win_rate"}
    assert set(analysis["fronts"]) == {"metric", "cost_metric", "reference", "hv_kd_on",
                                       "hv_kd_off", "dominated_share", "front_kd_on",
                                       "front_kd_off", "n_kd_on", "n_kd_off"}
    assert "compress.bits" in analysis["verdict"]
    assert kd_analysis(trials, seed=2) == analysis

    json.dumps(kd_analysis([]), allow_nan=False)


@pytest.mark.parametrize("kwargs", [{"metrics": []}, {"metrics": "val_accuracy"},
                                    {"seed": -1}, {"cost_metric": ""}, {"min_pairs": 0}])
def test_kd_analysis_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        kd_analysis([], **kwargs)


@pytest.mark.parametrize("trials", [None, {"a": 1}, [1, 2], [{"state": "COMPLETE"}],
                                    [{"number": 1, "state": "COMPLETE", "params": [1]}]])
def test_find_pairs_rejects_bad_trials(trials):
    with pytest.raises(ValueError):
        find_pairs(trials)
