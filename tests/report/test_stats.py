"""Tests for autokd.report.stats: simulated coverage / error rates against a planted truth (fixed seeds, tolerances
of ~3 standard errors), brute-force checks of the exact signed-rank p-value, and hand-checked examples."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
from scipy import stats as st

from autokd.report.stats import (
    GainSummary,
    hodges_lehmann,
    holm_adjust,
    outlier_indices,
    relative_error_reduction,
    signed_rank_test,
    summarize_gain,
    t_interval,
)
from autokd.report.stats import _signed_rank_p_exact, _signed_rank_p_mc

REPS = 2000
NS = [5, 10, 20, 40]
SE_95 = np.sqrt(0.05 * 0.95 / REPS)  # binomial SE of a coverage / rejection rate near 0.95 / 0.05
STEP = 1 / 360  # one validation image out of 360


def _skewed(rng, shape):
    """85% N(1, 1) and 15% N(-8, 2^2): true mean 0.85 - 1.2 = -0.35; returns (gains, outlier labels)."""
    planted = rng.random(shape) < 0.15
    return np.where(planted, rng.normal(-8.0, 2.0, shape), rng.normal(1.0, 1.0, shape)), planted


def _coverage(x, mu):
    hits = [lo <= mu <= hi for lo, hi in (t_interval(row) for row in x)]
    return float(np.mean(hits))


# --------------------------------------------------------------------------- #
# Student-t interval of summarize_gain: coverage
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dist", ["normal", "t3"])
@pytest.mark.parametrize("n", NS)
def test_t_interval_coverage_symmetric(dist, n):
    rng = np.random.default_rng(1000 + n + (7 if dist == "t3" else 0))
    mu = 0.02
    noise = rng.normal(size=(REPS, n)) if dist == "normal" else rng.standard_t(3, size=(REPS, n))
    x = mu + 0.01 * noise
    cov = _coverage(x, mu)
    assert cov >= 0.93, f"{dist} n={n}: coverage {cov:.3f}"
    assert cov <= 0.95 + 3 * SE_95 + 0.02, f"{dist} n={n}: interval far too wide, coverage {cov:.3f}"
    for row in x[:25]:  # summarize_gain reports exactly this interval
        s, ci = summarize_gain(row), t_interval(row)
        assert (s.ci_low, s.ci_high) == pytest.approx(ci, rel=1e-12)


def test_t_interval_coverage_skewed_is_measured():
    """Skewed, outlier-ridden gains: coverage is reported, not promised (loose floor only)."""
    rng = np.random.default_rng(77)
    cov = {n: _coverage(_skewed(rng, (REPS, n))[0], -0.35) for n in NS}
    msg = "skewed coverage " + ", ".join(f"n={n}: {c:.3f}" for n, c in cov.items())
    assert min(cov.values()) > 0.6, msg
    assert cov[40] > 0.9, msg  # the CLT takes over


def test_confidence_level_is_used():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(REPS, 10))
    cov = float(np.mean([lo <= 0 <= hi for lo, hi in (t_interval(r, confidence=0.8) for r in x)]))
    assert abs(cov - 0.8) < 3 * np.sqrt(0.8 * 0.2 / REPS)
    s = summarize_gain(x[0], confidence=0.8)
    assert s.confidence == 0.8 and (s.ci_low, s.ci_high) == pytest.approx(t_interval(x[0], confidence=0.8))


# --------------------------------------------------------------------------- #
# outliers
# --------------------------------------------------------------------------- #
def test_outliers_flags_planted_outliers_at_n20():
    rng = np.random.default_rng(2024)
    x, planted = _skewed(rng, (REPS, 20))
    all_found, with_outliers, false_pos = 0, 0, 0
    for row, lab in zip(x, planted):
        flagged = np.zeros(20, bool)
        flagged[outlier_indices(row)] = True
        if lab.any():
            with_outliers += 1
            all_found += bool(np.all(flagged[lab]))
        false_pos += int(np.sum(flagged & ~lab))
    found_rate, fp_rate = all_found / with_outliers, false_pos / np.sum(~planted)
    assert found_rate >= 0.75, f"all planted outliers flagged in {found_rate:.3f} of replications"
    assert fp_rate <= 0.01, f"bulk gains flagged at rate {fp_rate:.4f}"


def test_outliers_examples():
    assert outlier_indices([0.0, 0.1, -0.1, 0.05, -0.05, 5.0]) == [5]
    assert outlier_indices([0.0, 0.1, -0.1, 0.05, -0.05, 0.12]) == []
    assert outlier_indices([0.0, 0.0, 0.0, 100.0]) == []  # fewer than 5 values
    assert outlier_indices([0.02] * 8) == []  # no spread at all
    # MAD = 0 (most gains identical, discrete accuracies): mean-absolute-deviation fallback still finds -8
    assert outlier_indices(np.array([0, 0, 0, 0, 0, 0, 1, -8]) * STEP) == [7]
    assert outlier_indices([]) == []


# --------------------------------------------------------------------------- #
# signed-rank test
# --------------------------------------------------------------------------- #
def _brute_force_p(x, zero_method):
    """Enumerate every sign pattern of the nonzero values: two-sided p of |sum(sign * midrank)|."""
    x = np.asarray(x, dtype=float)
    if zero_method == "wilcox":
        x = x[x != 0]
    ranks = st.rankdata(np.abs(x))
    nz = x != 0
    r = ranks[nz]
    obs = abs(np.sum(np.sign(x[nz]) * r))
    count = sum(abs(np.dot(s, r)) >= obs - 1e-9 for s in itertools.product([-1, 1], repeat=r.size))
    return count / 2**r.size


@pytest.mark.parametrize("zero_method", ["pratt", "wilcox"])
@pytest.mark.parametrize(
    "k", [[0, 1, -1, 2, 2, -3, 0, 3, 3, 1], [0, 0, 2, 2, 2, -1, 4, 5, 5], [1, 1, 1, -1, 0], [3, 0, 0, 1, 2, 2, 2, 2]]
)
def test_signed_rank_matches_brute_force_with_ties_and_zeros(k, zero_method):
    x = np.array(k) * STEP
    p, desc = signed_rank_test(x, zero_method=zero_method)
    assert p == pytest.approx(_brute_force_p(x, zero_method), rel=1e-12, abs=1e-15)
    assert zero_method in desc and "exact" in desc


def test_zero_methods_hand_checked():
    x = np.array([0, 0, 1, 2, 3, -4, 5]) * STEP
    # wilcox: ranks 1..5, W = 7, |W| >= 7 <=> R+ <= 4 or >= 11: 2 * 7 of 32 subsets of {1..5}
    assert signed_rank_test(x, zero_method="wilcox")[0] == pytest.approx(14 / 32)
    # pratt: zeros take ranks 1.5, 1.5; the rest 3..7, W = 13, R+ <= 6 or >= 19: 2 * 5 of 32 subsets of {3..7}
    assert signed_rank_test(x, zero_method="pratt")[0] == pytest.approx(10 / 32)
    assert signed_rank_test(x)[0] == pytest.approx(10 / 32)  # Pratt is the default


def test_signed_rank_hand_example():
    assert signed_rank_test([1.0, 2.0, 3.0, 4.0, 5.0])[0] == pytest.approx(2 / 32)  # only all-+ and all-- as extreme
    assert signed_rank_test([-0.5])[0] == 1.0
    assert signed_rank_test([1.0, -1.0])[0] == 1.0


@pytest.mark.parametrize("n", [5, 8, 12, 15, 20])
def test_signed_rank_matches_scipy_exact_without_ties(n):
    rng = np.random.default_rng(n)
    for shift in (0.0, 0.5, 1.0):
        x = rng.normal(shift, 1.0, n)
        assert signed_rank_test(x)[0] == pytest.approx(st.wilcoxon(x, method="exact").pvalue, rel=1e-9)


def test_signed_rank_float_noise_does_not_split_ties():
    noisy = [0.3 - 0.2, 0.2 - 0.1, -(0.5 - 0.4), 0.7 - 0.7, 0.9 - 0.6]
    assert signed_rank_test(noisy)[0] == pytest.approx(signed_rank_test([0.1, 0.1, -0.1, 0.0, 0.3])[0], rel=1e-12)


@pytest.mark.parametrize("n", [8, 20])
def test_signed_rank_type_one_error_with_ties_and_zeros(n):
    rng = np.random.default_rng(300 + n)
    x = np.rint(rng.normal(0.0, 2.0, (REPS, n))) * STEP  # symmetric null; ~20% zeros and many ties
    assert np.mean(x == 0) > 0.1
    p = np.array([signed_rank_test(row)[0] for row in x], dtype=float)
    p = np.where(np.isnan(p), 1.0, p)
    rate = float(np.mean(p <= 0.05))
    assert rate <= 0.05 + 3 * SE_95, f"n={n}: type-I error {rate:.4f}"
    if n == 20:  # exact, not just conservative: the test must still reject at close to the nominal rate
        assert rate >= 0.02, f"n={n}: type-I error {rate:.4f}"


def test_signed_rank_has_power_against_planted_shift():
    rng = np.random.default_rng(9)
    x = np.rint(rng.normal(2.0, 2.0, (300, 20))) * STEP
    rate = float(np.mean([signed_rank_test(row)[0] <= 0.05 for row in x]))
    assert rate > 0.9, f"power {rate:.3f}"


def test_signed_rank_monte_carlo_branch():
    rng = np.random.default_rng(11)
    x = np.rint(rng.normal(0.3, 2.0, 30)) * STEP
    nz = x[x != 0]
    ranks2 = np.rint(2 * st.rankdata(np.abs(x))[x != 0]).astype(np.int64)
    w = int(np.sum(np.sign(nz) * ranks2))
    exact = _signed_rank_p_exact(ranks2, w)
    mc = _signed_rank_p_mc(ranks2, w, seed=1)
    assert abs(mc - exact) < 3 * np.sqrt(exact * (1 - exact) / 20_000) + 1e-4, (mc, exact)
    assert mc == _signed_rank_p_mc(ranks2, w, seed=1)  # seeded
    big = rng.normal(0.1, 1.0, 400)  # above the exact limit: Monte-Carlo, close to the normal approximation
    p, desc = signed_rank_test(big, seed=3)
    assert "Monte-Carlo" in desc and "seed 3" in desc
    assert abs(p - st.wilcoxon(big, method="asymptotic", correction=False).pvalue) < 0.015


def test_signed_rank_all_zero_and_bad_zero_method():
    p, desc = signed_rank_test([0.0, 0.0, 0.0])
    assert p is None and "no nonzero" in desc
    assert signed_rank_test([])[0] is None
    with pytest.raises(ValueError, match="zero_method"):
        signed_rank_test([1.0, 2.0], zero_method="zsplit")


# --------------------------------------------------------------------------- #
# Hodges-Lehmann, relative error reduction
# --------------------------------------------------------------------------- #
def test_hodges_lehmann_examples():
    assert hodges_lehmann([1.0, 2.0, 3.0]) == 2.0
    assert hodges_lehmann([0.0, 0.0, 10.0]) == 2.5  # Walsh averages 0,0,0,5,5,10 (i <= j, not i < j -> 5)
    assert hodges_lehmann([0.0, 1.0, 2.0, 3.0, 100.0]) == 2.0  # robust: the mean is 21.2
    assert hodges_lehmann([1.0, 5.0]) == 3.0
    assert hodges_lehmann([4.0]) == 4.0
    assert hodges_lehmann([]) is None


def test_relative_error_reduction_examples():
    assert relative_error_reduction([0.9, 0.8], [0.8, 0.8]) == pytest.approx(0.25)  # errors 0.4 -> 0.3
    assert relative_error_reduction([0.95, 0.9], [1.0, 0.8]) == pytest.approx(0.25)  # a perfect KD-off model is fine
    assert relative_error_reduction([1.0, 1.0], [0.9, 0.9]) == pytest.approx(1.0)
    assert relative_error_reduction([0.8], [0.9]) == pytest.approx(-1.0)  # KD hurt: errors doubled
    assert relative_error_reduction([0.9, 0.95], [1.0, 1.0]) is None  # no KD-off error to reduce
    assert relative_error_reduction([], []) is None
    with pytest.raises(ValueError, match="pair"):
        relative_error_reduction([0.9], [0.9, 0.8])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        relative_error_reduction([90.0], [80.0])


# --------------------------------------------------------------------------- #
# summarize_gain / GainSummary
# --------------------------------------------------------------------------- #
def test_summarize_gain_values():
    g = [0.01, 0.0, -0.01, 0.02, 0.03, 0.0, 0.5]
    s = summarize_gain(g)
    x = np.array(g)
    assert s.n_pairs == 7 and s.method == "student-t" and s.confidence == 0.95
    assert s.mean == pytest.approx(x.mean()) and s.sd == pytest.approx(x.std(ddof=1))
    lo, hi = st.t.interval(0.95, 6, loc=x.mean(), scale=x.std(ddof=1) / np.sqrt(7))
    assert (s.ci_low, s.ci_high) == pytest.approx((lo, hi))
    assert s.win_rate == pytest.approx((4 + 0.5 * 2) / 7)
    assert s.p_sign == pytest.approx(st.binomtest(4, 5).pvalue)
    assert s.hodges_lehmann == hodges_lehmann(g)
    assert s.p_signed_rank == signed_rank_test(g)[0] and s.signed_rank == signed_rank_test(g)[1]
    assert "pratt" in s.signed_rank
    assert s.outliers == [6]


def test_summarize_gain_empty_single_and_all_zero():
    e = summarize_gain([])
    assert e.n_pairs == 0 and e.outliers == []
    assert all(getattr(e, f) is None for f in ("mean", "sd", "ci_low", "ci_high", "hodges_lehmann",
                                               "p_signed_rank", "signed_rank", "win_rate", "p_sign"))
    one = summarize_gain([0.02])
    assert one.mean == 0.02 and one.sd is None and one.ci_low is None and one.win_rate == 1.0
    z = summarize_gain([0.0, 0.0, 0.0, 0.0, 0.0])
    assert z.p_sign is None and z.p_signed_rank is None and z.win_rate == 0.5 and z.sd == 0.0


def test_to_dict_is_plain_json():
    s = summarize_gain(np.array([1, 2, 0, -1, 3, 2, 2, 40]) * STEP)
    d = s.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(GainSummary)}
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert all(type(d[k]) is float for k in ("mean", "sd", "ci_low", "p_signed_rank", "win_rate", "p_sign"))
    assert d["outliers"] == [7]
    weird = dataclasses.replace(s, mean=float("nan"), sd=float("inf"), outliers=[np.int64(3)])
    wd = weird.to_dict()
    assert wd["mean"] is None and wd["sd"] is None and type(wd["outliers"][0]) is int
    json.dumps(wd, allow_nan=False)
    json.dumps(summarize_gain([]).to_dict(), allow_nan=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.mean = 0.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "bad", [[0.1, float("nan")], [0.1, float("inf")], [[0.1, 0.2], [0.3, 0.4]], ["a", "b"], "0.1", [None, 0.1], 0.5]
)
def test_bad_gains_raise(bad):
    for fn in (summarize_gain, signed_rank_test, hodges_lehmann, outlier_indices):
        with pytest.raises(ValueError):
            fn(bad)


@pytest.mark.parametrize("conf", [0.0, 1.0, 1.5, -0.1, "0.9", True, float("nan")])
def test_bad_confidence_raises(conf):
    with pytest.raises(ValueError, match="confidence"):
        summarize_gain([0.1, 0.2, 0.3], confidence=conf)


def test_existing_helpers_unchanged():
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert t_interval([1.0]) is None
    x = [0.1, 0.3, 0.2, 0.5]
    assert t_interval(x) == pytest.approx(st.t.interval(0.95, 3, loc=np.mean(x), scale=np.std(x, ddof=1) / 2))
