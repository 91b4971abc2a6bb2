"""KD methods in the report (autokd.report.methods, pairing of sibling sets): each KD-on trial pairs with its
configuration's one KD-off trial; the pooled interval counts sibling sets, not pairs, and holds its coverage where
pairs counted as independent would not (simulation against a planted truth); method-vs-method differences too."""

from __future__ import annotations

import numpy as np
import pytest

from autokd.report import stats
from autokd.report.kd_gain import kd_analysis
from autokd.report.methods import difference_word, method_differences, set_pairs
from autokd.report.pairing import pair_trials

METHODS = ("dist", "hinton", "logit_std")


def trial(number, kd, acc, *, method=None, config=0, state="COMPLETE", twin_of=None, seed=0, params_written=True):
    params = {"model.width_mult": [0.25, 0.5][config % 2], "train.lr": 0.01 * (1 + config), "distill.kd": kd}
    if kd and method is not None:
        params["distill.method"] = method
    settings = {"train": {"seed": seed}, "distill": {"kd": kd, "method": method or "hinton"},
                "model": {"width_mult": params["model.width_mult"]}}
    return {"number": number, "state": state, "params": params if params_written else {},
            "queued_params": None if params_written else params,
            "metrics": {"val_accuracy": acc, "test_accuracy": acc} if state == "COMPLETE" else {},
            "settings": settings if params_written else {}, "twin_of": twin_of, "replicate": 0,
            "fail_reason": "RuntimeError: boom" if state == "FAIL" else None}


def sibling_study(rng, n_sets, gains, *, off_sd=0.02, on_sd=0.005):
    """n_sets configurations, each with one KD-off trial and one KD-on trial per method: accuracy = configuration
    level + the method's gain + noise; the KD-off trial's own noise is shared by every pair of its set."""
    trials, n = [], 0
    for c in range(n_sets):
        level = 0.8 + rng.normal(0, 0.05)
        off = n
        trials.append(trial(n, False, level + rng.normal(0, off_sd), config=c))
        n += 1
        for m in METHODS:
            trials.append(trial(n, True, level + gains[m] + rng.normal(0, on_sd), method=m, config=c, twin_of=off))
            n += 1
    return trials


def test_siblings_pair_with_their_one_kd_off_trial_and_carry_their_method():
    trials = [trial(0, True, 0.82, method="hinton"), trial(1, False, 0.80, twin_of=0),
              trial(2, True, 0.83, method="dist", twin_of=0), trial(3, True, 0.0, method="logit_std", twin_of=0,
                                                                   state="FAIL", params_written=False),
              trial(4, True, 0.9, method="hinton", config=1), trial(5, False, 0.0, config=1, twin_of=4,
                                                                     state="WAITING", params_written=False)]
    pairing = pair_trials(trials)
    assert sorted((p.numbers, p.method) for p in pairing.pairs) == [((0, 1), "hinton"), ((2, 1), "dist")]
    assert pairing.pending == [4] and not pairing.refused
    (lost,) = pairing.lost
    assert (lost.original, lost.twin, lost.failed_side) == (0, 3, "kd_on") and "logit_std" in lost.reason
    pooled, partial = set_pairs(pairing.pairs, ("dist", "hinton"))
    assert len(pooled) == 1 and partial == []
    assert pooled[0].gain("val_accuracy") == pytest.approx((0.02 + 0.03) / 2)
    _, partial = set_pairs(pairing.pairs, METHODS)
    assert partial == [1]  # logit_std never completed there: out of the pooled gain


def test_a_study_without_methods_pairs_as_before():
    trials = [trial(0, True, 0.82), trial(1, False, 0.80, twin_of=0)]
    trials[0]["params"].pop("distill.method", None)
    (pair,) = pair_trials(trials).pairs
    assert pair.numbers == (0, 1) and pair.method is None


@pytest.mark.parametrize("n_sets", [10, 40])
def test_sim_the_pooled_interval_counts_sets_and_holds_its_coverage(n_sets):
    """Planted: gains 1, 2 and 3 points (mean 2); the KD-off noise (2 pts) is shared by a set's three pairs.
    Counted as sibling sets, the 95% t interval covers 2 pts in ~95% of studies; counted as 3n independent
    pairs it would be far too narrow (the shared noise does not average out)."""
    rng = np.random.default_rng(n_sets)
    gains = {"dist": 0.01, "hinton": 0.02, "logit_std": 0.03}
    sims, covered, naive = 400, 0, 0
    for _ in range(sims):
        pairs = pair_trials(sibling_study(rng, n_sets, gains)).pairs
        pooled, partial = set_pairs(pairs, METHODS)
        assert len(pooled) == n_sets and not partial
        s = stats.summarize_gain([p.gain("val_accuracy") for p in pooled])
        covered += s.ci_low <= 0.02 <= s.ci_high
        n = stats.summarize_gain([p.gain("val_accuracy") for p in pairs])
        naive += n.ci_low <= 0.02 <= n.ci_high
    assert covered / sims >= 0.92, covered / sims
    assert naive / sims < 0.90, naive / sims  # what pooling pairs as independent would have claimed


@pytest.mark.parametrize("n_sets", [5, 20])
def test_sim_method_differences_hold_coverage_and_error_rates(n_sets):
    """Planted: dist 1 pt below hinton, hinton = logit_std. Coverage of the true difference; how often the words
    are right; and their error rates: a difference called between equal methods, and 'equivalent' called for
    methods 1.5 margins apart (dist and logit_std here at margin 0.67 pts), each at most ~5%."""
    rng = np.random.default_rng(7 + n_sets)
    gains = {"dist": 0.01, "hinton": 0.02, "logit_std": 0.02}
    sims, covered, found, equivalent, false_difference, false_equivalent = 300, 0, 0, 0, 0, 0
    for _ in range(sims):
        pairs = pair_trials(sibling_study(rng, n_sets, gains)).pairs
        diffs = {(d["a"], d["b"]): d for d in method_differences(pairs, "val_accuracy", margin=0.01)}
        d = diffs[("dist", "hinton")]["difference"]
        covered += d["ci_low"] <= -0.01 <= d["ci_high"]
        found += diffs[("dist", "hinton")]["word"] == "lower"
        equivalent += diffs[("hinton", "logit_std")]["word"] == "equivalent"
        false_difference += diffs[("hinton", "logit_std")]["word"] in ("higher", "lower")
        narrow = {(x["a"], x["b"]): x for x in method_differences(pairs, "val_accuracy", margin=0.01 / 1.5)}
        false_equivalent += narrow[("dist", "logit_std")]["word"] == "equivalent"
    assert covered / sims >= 0.92
    assert false_difference / sims <= 0.06
    assert false_equivalent / sims <= 0.06
    if n_sets >= 20:  # 1 point apart, on-side noise 0.5 pts: found nearly always with 20 sets
        assert found / sims >= 0.9 and equivalent / sims >= 0.9


def test_difference_words():
    few = {"n_pairs": 3, "ci_low": 0.01, "ci_high": 0.02, "p_signed_rank": 0.01}
    assert difference_word(few, few, margin=0.01) == "too_few_pairs"
    big = {**few, "n_pairs": 20}
    assert difference_word(big, big, margin=0.01) == "higher"
    assert difference_word({**big, "ci_low": -0.02, "ci_high": -0.01}, big, margin=0.01) == "lower"
    unclear = {**big, "ci_low": -0.004, "ci_high": 0.006, "p_signed_rank": 0.4}
    assert difference_word(unclear, {"ci_low": -0.003, "ci_high": 0.005}, margin=0.01) == "equivalent"
    assert difference_word(unclear, {"ci_low": -0.003, "ci_high": 0.012}, margin=0.01) == "undetermined"


def test_the_report_json_keeps_its_keys_and_adds_methods():
    trials = sibling_study(np.random.default_rng(0), 12, {"dist": 0.01, "hinton": 0.02, "logit_std": 0.03})
    kd = kd_analysis(trials, n_perm=200)
    assert {"gain", "overall", "factors", "pairs", "n_pairs"} <= set(kd)
    assert kd["n_pairs"] == 36 and kd["n_sets"] == 12 and kd["gain"]["val_accuracy"]["n_pairs"] == 12
    assert {p["method"] for p in kd["pairs"]} == set(METHODS) and all({"on", "off"} <= set(p) for p in kd["pairs"])
    assert set(kd["methods"]) == set(METHODS)
    for m in kd["methods"].values():
        assert m["n_pairs"] == 12 and {"gain", "overall", "factors", "pairs"} <= set(m)
        assert set(m["gain"]) == set(kd["gain"])
    assert kd["methods"]["logit_std"]["overall"] == "adds"
    assert len(kd["method_differences"]) == 3
    # the verdict counts sets, and names each method's own word (a pooled mean can hide methods that pull apart)
    assert "over 12 sibling sets" in kd["verdict"]
    assert "Per KD method (each on its own pairs): dist " in kd["verdict"] and "logit_std adds (+2.6 pts)" in kd["verdict"]


def test_the_forest_plot_groups_by_method():
    from autokd.report.plot import _forest_layout, kd_forest_rows

    trials = sibling_study(np.random.default_rng(1), 12, {"dist": 0.01, "hinton": 0.02, "logit_std": 0.03})
    rows = kd_forest_rows(kd_analysis(trials, n_perm=200))
    assert rows["unit"] == "sibling sets" and rows["overall"]["n"] == 12 and list(rows["methods"]) == list(METHODS)
    overall = [line["label"] for line in _forest_layout(rows) if line["kind"] == "overall"]
    assert overall == ["KD, all methods", "KD dist", "KD hinton", "KD logit_std"]
    labels = [line["label"] for line in _forest_layout(rows)]
    assert labels.index("KD dist") < labels.index("dist: width_mult") < labels.index("KD hinton")


def test_a_methods_own_settings_are_part_of_its_kd_treatment():
    """A KD-on trial's method settings (searched: in its params; in every trial's settings) do not split its
    sibling set nor refuse its pair, and are not a configuration param of the pair."""
    off = trial(0, False, 0.80)
    on = trial(1, True, 0.84, method="at", twin_of=0)
    on["params"]["distill.at.beta"] = 300.0
    on["settings"]["distill"]["at"] = {"beta": 300.0, "layers": "all"}
    off["settings"]["distill"]["at"] = {"beta": 1000.0, "layers": "all"}  # the KD-off trial: at its default
    hinton = trial(2, True, 0.83, method="hinton", twin_of=0)
    pairing = pair_trials([off, on, hinton])
    assert not pairing.refused
    assert sorted((p.numbers, p.method) for p in pairing.pairs) == [((1, 0), "at"), ((2, 0), "hinton")]
    assert all("distill.at.beta" not in p.params for p in pairing.pairs)
    # a difference in the configuration itself still refuses
    other = trial(3, True, 0.84, method="at", twin_of=0)
    other["settings"]["model"]["width_mult"] = 0.75
    assert pair_trials([off, other]).refused


def test_unlinked_twins_pair_when_one_method_has_searched_settings():
    """One method fixed, its settings searched: a KD-on trial carries them, its KD-off counterpart never does;
    matched without a twin link (by params and seed), they still pair."""
    on = trial(0, True, 0.84)
    on["params"]["distill.at.beta"] = 300.0
    off = trial(1, False, 0.80)
    pairing = pair_trials([on, off])
    assert [p.numbers for p in pairing.pairs] == [(0, 1)] and not pairing.unpaired
    assert "distill.at.beta" not in pairing.pairs[0].params
