"""The KD report of a study that ran a design: verdicts from the design pairs alone at exactly the design's levels,
every other number over all pairs, ``kd.design`` and ``half_width``; and the plan built from it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from autokd.report.kd_gain import kd_analysis
from autokd.report.plan import pairs_to_reach, plan_techniques, replicates_for, undetermined_at_target

LR, BITS, PRUNE = "train.lr", "compress.bits", "compress.prune_ratio"
DESIGN = {"kind": "full_factorial", "levels": {LR: [0.02, 0.1], BITS: [32, 4], PRUNE: [0.0, 0.5]}, "points": 8,
          "replicates": 3, "estimand": "the design's", "note": "full factorial of 2³ levels, 8 runs"}


def trial(number, params, acc, *, point=None, replicate=0, twin_of=None):
    return {"number": number, "state": "COMPLETE", "params": params, "metrics": {"val_accuracy": acc,
                                                                                "test_accuracy": acc},
            "settings": {"train": {"seed": 0}}, "twin_of": twin_of, "design_point": point, "replicate": replicate,
            "values": [acc, 1.0]}


def study(seed=0, *, replicates=3, sampler_pairs=6, sd=0.004, bits_effect=0.0):
    """Design pairs (gain 2 pts + bits_effect at 4 bits + noise) and sampler pairs at off-design values whose gains
    are wild (-20 pts): they must not reach the verdicts."""
    rng = np.random.default_rng(seed)
    rows, n = [], 0
    points = list(itertools.product(*DESIGN["levels"].values()))
    for r in range(replicates):
        for i, (lr, bits, prune) in enumerate(points):
            params = {LR: lr, BITS: bits, PRUNE: prune}
            gain = 0.02 + (bits_effect if bits == 4 else 0.0) + rng.normal(0, sd)
            rows.append(trial(n, {**params, "distill.kd": True}, 0.9, point=i, replicate=r))
            rows.append(trial(n + 1, {**params, "distill.kd": False}, 0.9 - gain, point=i, replicate=r, twin_of=n))
            n += 2
    for _ in range(sampler_pairs):
        params = {LR: float(rng.uniform(0.02, 0.1)), BITS: 8, PRUNE: 0.25}
        rows.append(trial(n, {**params, "distill.kd": True}, 0.7))
        rows.append(trial(n + 1, {**params, "distill.kd": False}, 0.9, twin_of=n))
        n += 2
    return rows


def test_verdicts_come_from_the_design_pairs_at_the_design_levels():
    kd = kd_analysis(study(), margin=0.01, design=DESIGN, n_perm=199)
    assert kd["n_pairs"] == 24 + 6 and len(kd["pairs"]) == 30  # every pair counts overall
    assert sum(p["design"] for p in kd["pairs"]) == 24
    assert kd["gain"]["val_accuracy"]["n_pairs"] == 30  # the sampler's -20 pts pairs are in the overall gain
    assert kd["model"]["n_pairs"] == 24  # but not in the verdict model
    factors = {f["factor"]: f for f in kd["factors"]}
    assert set(factors) == {LR, BITS, PRUNE}
    assert [lv["level"] for lv in factors[LR]["levels"]] == ["0.02", "0.1"]  # exact levels, not tertiles
    assert [lv["level"] for lv in factors[PRUNE]["levels"]] == ["0.0", "0.5"]  # not pruning bins
    assert all(lv["n_pairs"] == 12 for f in factors.values() for lv in f["levels"])  # balanced
    for f in factors.values():
        hw = f["half_width"]
        assert hw == pytest.approx(max(d["ci_high"] - d["estimate"] for d in f["differences"]))
        assert f["verdict"] == "orthogonal"  # sd 0.4 pts, 24 pairs, no dependence: decided
    # the sampler's pairs are left out of the model, not unusable; their -20 pts gains are the overall outliers
    assert not [w for w in kd["warnings"] if "lack a finite" in w]
    (outliers,) = [w for w in kd["warnings"] if "outlier" in w]
    assert "48/49" in outliers and "0/1" not in outliers  # named by the pairs' own trial numbers
    d = kd["design"]
    assert d["n_pairs"] == 24 and d["analysed"] == "design pairs" and d["replicates_with_pairs"] == 3
    assert d["levels"] == DESIGN["levels"] and d["estimand"] == "the design's"


def test_sampler_pairs_join_the_model_only_when_asked():
    kd = kd_analysis(study(), margin=0.01, design=DESIGN, sampler_pairs=True, n_perm=199)
    assert kd["model"]["n_pairs"] == 30 and kd["design"]["analysed"].startswith("all pairs")
    bits = next(f for f in kd["factors"] if f["factor"] == BITS)
    assert bits["verdict"] != "orthogonal"  # the sampler's 8-bit pairs lose 20 pts: the model now sees them


def test_no_design_no_design_key():
    kd = kd_analysis(study(replicates=0, sampler_pairs=12), margin=0.01, n_perm=199)
    assert "design" not in kd and not any(p["design"] for p in kd["pairs"])


def test_an_interaction_is_found_in_the_design():
    kd = kd_analysis(study(bits_effect=0.03), margin=0.01, design=DESIGN, n_perm=199)
    bits = next(f for f in kd["factors"] if f["factor"] == BITS)
    assert bits["verdict"] == "interacts" and bits["max_difference"]["high"] == "4"


def test_the_plan_asks_for_more_pairs_the_noisier_the_pilot():
    quiet = kd_analysis(study(replicates=2, sd=0.002), margin=0.01, design=DESIGN, n_perm=1)
    noisy = kd_analysis(study(replicates=2, sd=0.008), margin=0.01, design=DESIGN, n_perm=1)
    n, p = 16, quiet["model"]["n_coefficients"]  # a pilot of 2 replicates: 8 pairs cannot fit 4 coefficients
    r_quiet, _ = replicates_for(quiet["factors"], n=n, p=p, points=8, target=0.005)
    r_noisy, per = replicates_for(noisy["factors"], n=n, p=p, points=8, target=0.005)
    assert 1 <= r_quiet < r_noisy
    assert set(per) == {LR, BITS, PRUNE} and all(v % 8 == 0 for v in per.values())
    plan = plan_techniques(noisy, target=0.005, trial_seconds=30.0, block=8)
    for name, e in plan.items():
        assert e["trials_needed"] == 2 * e["pairs_needed"]
        assert e["minutes_needed"] == pytest.approx(e["trials_needed"] * 0.5)
        assert e["pairs_needed"] % 8 == 0 and e["pairs_needed"] + 16 == per[name]
    # with 6 KD methods a pooled unit is a sibling set: 7 trials (KD-off + one per method), all of them run
    sets = plan_techniques(noisy, target=0.005, trial_seconds=30.0, block=8, trials_per_pair=7)
    for name, e in sets.items():
        assert e["pairs_needed"] == plan[name]["pairs_needed"] and e["trials_needed"] == 7 * e["pairs_needed"]
        assert e["minutes_needed"] == pytest.approx(7 * e["pairs_needed"] * 0.5)


def test_pairs_to_reach_meets_the_prediction_it_promises():
    diff = [{"se": 0.004, "df": 10.0}]
    N = pairs_to_reach(diff, n=16, p=5, target=0.005, block=16)
    assert N % 16 == 0 and N > 16
    assert pairs_to_reach(diff, n=16, p=5, target=0.005, block=1) <= N
    assert pairs_to_reach(diff, n=16, p=5, target=0.5, block=16) == 16  # already there
    # more assurance, more pairs; a more certain pilot (more df), fewer
    assert pairs_to_reach(diff, n=16, p=5, target=0.005, block=1, assurance=0.5) < \
        pairs_to_reach(diff, n=16, p=5, target=0.005, block=1)
    assert pairs_to_reach([{"se": 0.004, "df": 100.0}], n=16, p=5, target=0.005, block=1) < \
        pairs_to_reach(diff, n=16, p=5, target=0.005, block=1)


def test_precision_at_the_target_is_not_yet_a_decision():
    # the figures (k = 3, 5, 9): about 0.11-0.13, 0.16-0.17, 0.25
    assert 0.10 < undetermined_at_target(3) < 0.15
    assert 0.14 < undetermined_at_target(5) < 0.19
    assert 0.22 < undetermined_at_target(9) < 0.28
    assert undetermined_at_target(3) < undetermined_at_target(5) < undetermined_at_target(9)


def test_a_d_optimal_design_says_its_differences_are_not_clear_of_interactions():
    full = kd_analysis(study(), margin=0.01, design=DESIGN, n_perm=1)
    assert full["design"]["caveat"] is None and not [w for w in full["warnings"] if "D-optimal" in w]
    dopt = kd_analysis(study(), margin=0.01, design={**DESIGN, "kind": "d_optimal"}, n_perm=1)
    assert "two-technique interactions" in dopt["design"]["caveat"]
    assert dopt["design"]["caveat"] in dopt["warnings"]
