"""Tests for autokd.report.orthogonality: unit checks of the numerical pieces against explicit-loop references,
the output contract, and a small fixed-seed version of the simulation in ``bench/orthogonality.py`` (each rate
checked against its target with a tolerance of 3 Monte-Carlo standard errors)."""

from __future__ import annotations

import itertools
import json
import math
import sys

import numpy as np
import pytest
from scipy import stats as st

from autokd.report import orthogonality as orth
from autokd.report.linear import fit_ols_hc3, gvif
from autokd.report.orthogonality import analyze, heterogeneity
from autokd.report.stats import holm_adjust
from tests.conftest import load_bench

MARGIN = 0.01
WIDTH, BITS, AUG = "model.width_mult", "compress.bits", "train.augment"


def _bench():
    return load_bench("orthogonality")


def _by_factor(result):
    return {f["factor"]: f for f in result["factors"]}


def _dumps(result):
    return json.dumps(result, allow_nan=False)


def _factorial(reps, *, seed=0, gain_fn=lambda w, b, a: 0.02, noise=0.01):
    """Balanced full factorial width x bits x augment, ``reps`` pairs per cell."""
    rng = np.random.default_rng(seed)
    rows = [(w, b, a) for w, b, a in itertools.product([0.25, 1.0], [4, 32], ["none", "flip", "crop"])
            for _ in range(reps)]
    gains = np.array([gain_fn(*r) for r in rows]) + rng.normal(0, noise, len(rows))
    factors = {WIDTH: [r[0] for r in rows], BITS: [r[1] for r in rows], AUG: [r[2] for r in rows]}
    return gains, factors


# --------------------------------------------------------------------------- #
# numerical core against explicit references
# --------------------------------------------------------------------------- #
def test_ols_hc3_matches_an_explicit_loop():
    rng = np.random.default_rng(3)
    n = 15
    X = np.column_stack([np.ones(n), rng.random(n) < 0.5, rng.random(n) < 0.4, rng.normal(size=n)]).astype(float)
    y = rng.normal(size=n) * (1 + X[:, 1] * 2)
    fit = fit_ols_hc3(X, y)

    xtx = np.zeros((4, 4))
    for i in range(n):
        xtx += np.outer(X[i], X[i])
    bread = np.linalg.inv(xtx)
    beta = bread @ sum(X[i] * y[i] for i in range(n))
    meat = np.zeros((4, 4))
    for i in range(n):
        h = X[i] @ bread @ X[i]
        e = y[i] - X[i] @ beta
        meat += np.outer(X[i], X[i]) * e ** 2 / (1 - h) ** 2
    np.testing.assert_allclose(fit.beta, beta, rtol=1e-10)
    np.testing.assert_allclose(fit.cov, bread @ meat @ bread, rtol=1e-9)
    np.testing.assert_allclose(fit.leverage, [X[i] @ bread @ X[i] for i in range(n)], rtol=1e-10)


def test_bell_mccaffrey_df_matches_trace_formula():
    rng = np.random.default_rng(4)
    n = 12
    X = np.column_stack([np.ones(n), np.arange(n) % 2, np.arange(n) % 3 == 0]).astype(float)
    fit = fit_ols_hc3(X, rng.normal(size=n))
    a = fit.solver[1]
    W = np.diag(a ** 2 / (1 - fit.leverage) ** 2)
    M = np.eye(n) - X @ fit.solver
    expected = np.trace(W @ M) ** 2 / np.trace(W @ M @ W @ M)
    got = orth.bell_mccaffrey_df(np.diag(W), X, fit, 10 ** 6)
    assert got == pytest.approx(expected, rel=1e-10)
    assert orth.bell_mccaffrey_df(np.diag(W), X, fit, 3) == 3  # capped at df_resid


def test_single_two_level_factor_estimate_se_and_p_f():
    gains, factors = _factorial(3, seed=1, gain_fn=lambda w, b, a: 0.02 + 0.01 * (w == 0.25))
    one = {WIDTH: factors[WIDTH]}
    res = analyze(gains, one, margin=MARGIN, n_perm=199)
    entry = _by_factor(res)[WIDTH]
    g, w = np.asarray(gains), np.asarray(one[WIDTH])
    X = np.column_stack([np.ones(w.size), (w == 1.0).astype(float)])
    fit = fit_ols_hc3(X, g)
    d = entry["max_difference"]
    assert (d["high"], d["low"]) == ("0.25", "1.0")
    assert d["estimate"] == pytest.approx(g[w == 0.25].mean() - g[w == 1.0].mean(), rel=1e-10)
    assert d["se"] == pytest.approx(math.sqrt(fit.cov[1, 1]), rel=1e-10)
    # with q = 1 the Wald statistic is (estimate / se)^2
    assert entry["p_f"] == pytest.approx(st.f.sf((d["estimate"] / d["se"]) ** 2, 1, d["df"]), rel=1e-8)
    assert entry["p_f"] == pytest.approx(2 * st.t.sf(d["estimate"] / d["se"], d["df"]), rel=1e-8)
    assert 1 <= d["df"] <= res["df_resid"]
    assert entry["p_interaction"] == max(entry["p_f"], entry["p_signflip"])
    t = st.t.ppf(0.95, d["df"])
    assert d["ci_low"] == pytest.approx(d["estimate"] - t * d["se"])
    # adjusted gains differ exactly by the estimate
    levels = {lv["level"]: lv for lv in entry["levels"]}
    assert levels["0.25"]["adjusted"] - levels["1.0"]["adjusted"] == pytest.approx(d["estimate"])


def test_sign_flip_p_enumerates_all_patterns_when_few():
    rng = np.random.default_rng(5)
    n = 9
    gains = rng.normal(0.02, 0.01, n)
    factors = {WIDTH: [0.25] * 4 + [1.0] * 5}
    res = analyze(gains, factors, margin=MARGIN, n_perm=2 ** (n - 1))
    assert res["n_resamples"] == 2 ** (n - 1)
    p = _by_factor(res)[WIDTH]["p_signflip"]
    assert p * 2 ** (n - 1) == pytest.approx(round(p * 2 ** (n - 1)))  # an exact count over 256 patterns
    # brute force: T over every sign pattern of the reduced-model (intercept-only) residuals
    X = np.column_stack([np.ones(n), np.asarray(factors[WIDTH]) == 1.0]).astype(float)
    fit = fit_ols_hc3(X, gains)
    er = gains - gains.mean()

    def wald(y):
        f = fit_ols_hc3(X, y)
        return f.beta[1] ** 2 / f.cov[1, 1]

    t_obs = wald(gains)
    count = sum(wald(er * np.array((1,) + s)) >= t_obs * (1 - 1e-9)
                for s in itertools.product([1, -1], repeat=n - 1))
    assert p == pytest.approx(count / 2 ** (n - 1))
    assert 0 < fit.leverage.max() < 1
    # sampled sign flips: p = (1 + #) / (1 + B)
    res = analyze(gains, factors, margin=MARGIN, n_perm=99)
    assert res["n_resamples"] == 99
    assert round(_by_factor(res)[WIDTH]["p_signflip"] * 100) == pytest.approx(
        _by_factor(res)[WIDTH]["p_signflip"] * 100)


def test_gvif_is_one_for_orthogonal_balanced_designs_and_large_for_aliased():
    gains, factors = _factorial(2)
    res = analyze(gains, factors, margin=MARGIN, n_perm=99)
    for entry in res["factors"]:
        assert entry["gvif_adjusted"] == pytest.approx(1.0, abs=1e-9)
    assert res["collinear"] == []
    # bits equal width except for two of 40 pairs: nearly aliased (r = 0.9, VIF = 1 / (1 - r^2))
    w = np.array([0] * 20 + [1] * 20, dtype=float)
    b = w.copy()
    b[[0, 39]] = 1 - b[[0, 39]]
    r = np.corrcoef(w, b)[0, 1]
    g = gvif(np.column_stack([w, b]), [[0], [1]])
    assert g[0] == pytest.approx(1 / (1 - r ** 2)) and g[1] == pytest.approx(g[0]) and g[0] ** 0.5 > 2
    assert gvif(np.column_stack([w, w]), [[0], [1]]) == [None, None]
    rng = np.random.default_rng(0)
    res = analyze(rng.normal(0.02, 0.01, 40), {"a": w.tolist(), "b": b.tolist()}, margin=MARGIN, n_perm=99)
    assert res["collinear"] == ["a", "b"]
    assert all(e["gvif_adjusted"] > 2 for e in res["factors"])


def test_three_level_factor_gvif_uses_the_block():
    rng = np.random.default_rng(8)
    n = 60
    a = rng.integers(0, 3, n)
    b = np.where(rng.random(n) < 0.9, a, rng.integers(0, 3, n))  # b mostly follows a
    D = np.column_stack([a == 1, a == 2, b == 1, b == 2]).astype(float)
    R = np.corrcoef(D, rowvar=False)
    expected = np.linalg.det(R[:2, :2]) * np.linalg.det(R[2:, 2:]) / np.linalg.det(R)
    assert gvif(D, [[0, 1], [2, 3]])[0] == pytest.approx(expected)


# --------------------------------------------------------------------------- #
# levels, merging, fittability
# --------------------------------------------------------------------------- #
def test_small_levels_are_merged_and_recorded():
    rng = np.random.default_rng(6)
    bits = [2] * 2 + [4] * 8 + [8] * 8 + [32] * 7
    gains = rng.normal(0.02, 0.01, len(bits))
    res = analyze(gains, {BITS: bits}, margin=MARGIN, n_perm=99)
    levels = _by_factor(res)[BITS]["levels"]
    assert [lv["level"] for lv in levels] == ["2 or 4", "8", "32"]
    assert levels[0]["merged_from"] == ["2", "4"] and levels[1]["merged_from"] == []
    assert levels[0]["n_pairs"] == 10
    assert res["n_coefficients"] == 3


def test_factor_with_one_level_is_skipped_and_tiny_factor_left_out():
    rng = np.random.default_rng(7)
    n = 12
    res = analyze(rng.normal(0.02, 0.01, n),
                  {"const": [1] * n, "rare": [0] * 10 + [1] * 2, WIDTH: [0.25] * 6 + [1.0] * 6},
                  margin=MARGIN, n_perm=99)
    by = _by_factor(res)
    assert "const" not in by
    rare = by["rare"]
    assert rare["verdict"] == "undetermined" and "merged into one" in rare["left_out"]
    assert [lv["level"] for lv in rare["levels"]] == ["0", "1"]  # raw levels still reported
    assert rare["levels"][1]["ci_low"] is None  # < 3 pairs
    assert res["fitted"] and res["n_coefficients"] == 2
    assert [f["factor"] for f in res["factors"]] == sorted(by)


def test_not_fittable_reason_and_raw_stats():
    gains, factors = _factorial(1)  # 12 pairs, 5 coefficients: needs 10 -> fits
    assert analyze(gains, factors, margin=MARGIN, n_perm=99)["fitted"]
    factors = dict(factors, extra=[i % 4 for i in range(12)])  # 3 more coefficients: needs 13
    res = analyze(gains, factors, margin=MARGIN, n_perm=99)
    assert not res["fitted"] and res["df_resid"] is None
    assert res["reason"] == "needs >= p+5 = 13 pairs for 8 coefficients, has 12"
    for entry in res["factors"]:
        assert entry["verdict"] == "undetermined" and entry["reason"] == res["reason"]
        assert entry["p_interaction"] is None and entry["differences"] == []
        assert all(lv["mean"] is not None and lv["adjusted"] is None for lv in entry["levels"])
    _dumps(res)


def test_rank_deficient_and_leverage_one_designs_are_not_fitted():
    rng = np.random.default_rng(9)
    w = [0.25] * 8 + [1.0] * 8
    res = analyze(rng.normal(0.02, 0.01, 16), {WIDTH: w, BITS: [4] * 8 + [32] * 8}, margin=MARGIN)
    assert not res["fitted"] and "rank-deficient" in res["reason"]
    assert BITS in res["reason"] and WIDTH in res["reason"] and res["collinear"] == [BITS, WIDTH]
    bits = [4] * 7 + [32] * 9  # one pair breaks the aliasing: it alone determines a coefficient
    res = analyze(rng.normal(0.02, 0.01, 16), {WIDTH: w, BITS: bits}, margin=MARGIN)
    assert not res["fitted"] and "leverage 1" in res["reason"]
    _dumps(res)


def test_no_factors_and_no_pairs():
    res = analyze([0.01, 0.02, 0.03], {}, margin=MARGIN)
    assert not res["fitted"] and res["factors"] == [] and "no other setting" in res["reason"]
    res = analyze([], {"a": []}, margin=MARGIN)
    assert res["n_pairs"] == 0 and not res["fitted"]
    _dumps(res)


# --------------------------------------------------------------------------- #
# verdicts, Holm, contract
# --------------------------------------------------------------------------- #
def test_clear_verdicts_and_direction():
    gains, factors = _factorial(8, seed=2, gain_fn=lambda w, b, a: 0.02 + 0.03 * (w == 0.25), noise=0.002)
    res = analyze(gains, factors, margin=MARGIN, n_perm=499)
    by = _by_factor(res)
    width = by[WIDTH]
    assert width["verdict"] == "interacts" and width["detectable"] and width["reason"] is None
    top = width["max_difference"]
    assert (top["high"], top["low"]) == ("0.25", "1.0") and top["estimate"] == pytest.approx(0.03, abs=0.003)
    assert by[BITS]["verdict"] == "orthogonal" and by[AUG]["verdict"] == "orthogonal"
    assert by[BITS]["p_equivalence_adjusted"] < 0.05 and by[BITS]["pairs_needed"] is None
    for entry in res["factors"]:
        assert all(d["estimate"] >= 0 for d in entry["differences"])
    assert len(by[AUG]["differences"]) == 3


def test_orthogonal_with_a_detectable_small_difference():
    gains, factors = _factorial(40, seed=3, gain_fn=lambda w, b, a: 0.02 + 0.002 * (w == 0.25), noise=0.002)
    entry = _by_factor(analyze(gains, factors, margin=MARGIN, n_perm=499))[WIDTH]
    assert entry["verdict"] == "orthogonal" and entry["detectable"]
    assert entry["reason"].startswith("a difference smaller than the margin is detectable")


def test_undetermined_gives_pairs_needed():
    gains, factors = _factorial(1, seed=4, noise=0.01)
    res = analyze(gains, factors, margin=MARGIN, n_perm=99)
    undetermined = [e for e in res["factors"] if e["verdict"] == "undetermined"]
    assert undetermined
    for entry in undetermined:
        assert entry["reason"].startswith("neither shown") and entry["pairs_needed"] > res["n_pairs"]


def test_holm_is_applied_across_factors():
    gains, factors = _factorial(3, seed=5, gain_fn=lambda w, b, a: 0.02 + 0.006 * (w == 0.25))
    res = analyze(gains, factors, margin=MARGIN, n_perm=199)
    entries = res["factors"]
    assert [e["p_adjusted"] for e in entries] == holm_adjust([e["p_interaction"] for e in entries])
    assert [e["p_equivalence_adjusted"] for e in entries] == holm_adjust([e["p_equivalence"] for e in entries])


def test_output_contract_json_and_determinism():
    gains, factors = _factorial(2, seed=6)
    factors["compress.prune_ratio"] = np.random.default_rng(1).permutation([0.0, 0.1, 0.3, 0.6, 0.9, 1.0] * 4)
    repeats = [[g - 0.001, g + 0.001, g] for g in gains]
    res = analyze(gains, factors, margin=MARGIN, repeat_gains=repeats, n_perm=99, seed=3)
    assert res == analyze(gains, factors, margin=MARGIN, repeat_gains=repeats, n_perm=99, seed=3)
    _dumps(res)
    top = {"fitted", "reason", "n_pairs", "n_coefficients", "df_resid", "se", "test", "margin", "alpha",
           "equivalence_confidence", "collinear", "factors", "heterogeneity"}
    assert top <= set(res) and res["se"] == "HC3"
    per = {"factor", "binning", "levels", "differences", "max_difference", "p_interaction", "p_adjusted",
           "p_equivalence", "p_equivalence_adjusted", "test", "verdict", "reason", "pairs_needed", "detectable",
           "gvif_adjusted", "left_out"}
    for entry in res["factors"]:
        assert per <= set(entry)
        for lv in entry["levels"]:
            assert {"level", "n_pairs", "mean", "ci_low", "ci_high", "win_rate", "adjusted",
                    "merged_from"} <= set(lv)
        for d in entry["differences"]:
            assert {"high", "low", "estimate", "se", "ci_low", "ci_high"} <= set(d)
    assert _by_factor(res)["compress.prune_ratio"]["binning"] == "prune_bins"
    # degenerate: identical gains everywhere (zero residuals)
    flat = analyze([0.02] * 24, factors, margin=MARGIN, n_perm=99)
    _dumps(flat)
    assert flat["fitted"], flat["reason"]
    assert all(e["verdict"] == "orthogonal" for e in flat["factors"])


def test_module_imports_no_heavy_dependencies():
    import subprocess

    # the parent packages are imported first: only what this module itself pulls in is checked
    code = ("import sys, autokd.report.stats, autokd.report.levels; before = set(sys.modules); "
            "import autokd.report.orthogonality; new = set(sys.modules) - before; "
            "print(any(m.split('.')[0] in ('optuna', 'torch', 'rich') for m in new))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("kwargs", [
    {"gains": [0.1, float("nan")]},
    {"gains": "abc"},
    {"gains": [[0.1, 0.2]]},
    {"gains": [True, False]},
    {"factors": {"a": [1]}},
    {"factors": {"": [1, 2]}},
    {"factors": {"a": "ab"}},
    {"factors": [1, 2]},
    {"margin": 0},
    {"margin": -0.01},
    {"margin": float("inf")},
    {"margin": True},
    {"alpha": 1.0},
    {"equivalence_confidence": 0},
    {"n_perm": 0},
    {"n_perm": 10.5},
    {"seed": -1},
    {"min_level_pairs": 0},
    {"min_df_resid": 0},
    {"repeat_gains": [[0.1, 0.1]]},
    {"repeat_gains": [[0.1], [0.2]]},
    {"repeat_gains": [[0.0, 0.3], [0.2, 0.2]]},
    {"repeat_gains": [[0.1, float("nan")], [0.2, 0.2]]},
])
def test_invalid_inputs_raise(kwargs):
    args = {"gains": [0.1, 0.2], "factors": {"a": [1, 2]}, "margin": 0.01} | kwargs
    gains, factors, margin = args.pop("gains"), args.pop("factors"), args.pop("margin")
    with pytest.raises(ValueError):
        analyze(gains, factors, margin=margin, **args)


# --------------------------------------------------------------------------- #
# heterogeneity
# --------------------------------------------------------------------------- #
def test_heterogeneity_by_hand_and_unbalanced():
    Y = [[0.01, 0.03], [0.02, 0.02], [0.05, 0.07]]
    h = heterogeneity(Y, margin=MARGIN)
    means = np.array([0.02, 0.02, 0.06])
    msb = 2 * np.sum((means - means.mean()) ** 2) / 2
    msw = (0.0001 + 0.0001 + 0 + 0 + 0.0001 + 0.0001) / 3
    assert h["msb"] == pytest.approx(msb) and h["msw"] == pytest.approx(msw)
    assert h["tau"] == pytest.approx(math.sqrt((msb - msw) / 2))
    assert h["tau_low"] <= h["tau"] <= h["tau_high"] and h["repeats"] == 2 and h["repeats_dropped"] == 0
    h2 = heterogeneity([[0.01, 0.03, 0.5], [0.02, 0.02], [0.05, 0.07]], margin=MARGIN)
    assert h2["repeats_dropped"] == 1 and h2["tau"] == pytest.approx(h["tau"])
    res = analyze(np.mean(Y, axis=1), {"a": [1, 2, 3]}, margin=MARGIN, repeat_gains=Y)
    assert res["heterogeneity"]["tau"] == pytest.approx(h["tau"])
    _dumps(res)


def test_heterogeneity_same_everywhere_with_many_quiet_configurations():
    rng = np.random.default_rng(11)
    Y = 0.02 + rng.normal(0, 0.002, (40, 3))
    h = heterogeneity(Y.tolist(), margin=MARGIN)
    assert h["same_everywhere"] and h["tau_high"] < MARGIN / 2


# --------------------------------------------------------------------------- #
# small version of bench/orthogonality.py (fixed seed, tolerance 3 Monte-Carlo SE)
# --------------------------------------------------------------------------- #
REPS, PERMS = 300, 199


def _se(p, n):
    return math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def bench():
    return _bench()


@pytest.fixture(scope="module")
def sim(bench):
    cells = {("constant", 20), ("unequal_rare", 40), ("interaction", 40), ("interaction_ind", 40), ("single", 40),
             ("t3", 10)}
    return {key: bench.run_cell((key[0], key[1], REPS, PERMS, 12345)) for key in cells}


def test_sim_dependence_test_level(sim):
    for key in (("constant", 20), ("unequal_rare", 40), ("t3", 10)):
        r = sim[key]
        rate = r["w_p"] / r["w_tested"]
        assert rate <= 0.05 + 3 * _se(0.05, r["w_tested"]), (key, rate)
        assert r["fwer"] / r["fitted"] <= 0.05 + 3 * _se(0.05, r["fitted"])


def test_sim_interval_coverage(sim):
    for key, r in sim.items():
        assert r["cover95"] / r["reps"] >= 0.95 - 3 * _se(0.95, r["reps"]), key
        cov = r["all_cov"] / r["all_cov_n"]
        assert cov >= 0.90 - 3 * _se(0.90, r["all_cov_n"] / 3), (key, cov)  # intervals within a run correlate


def test_sim_blame_power_and_false_orthogonal(sim):
    corr, ind = sim["interaction", 40], sim["interaction_ind", 40]
    assert corr["b_int"] / corr["b_tested"] <= 0.10 + 3 * _se(0.10, corr["b_tested"])
    for r in (corr, ind):
        assert r["w_orth"] / r["w_tested"] <= 0.05 + 3 * _se(0.05, r["w_tested"])
    assert ind["w_int"] / ind["reps"] >= 0.80 - 3 * _se(0.80, ind["reps"])


def test_sim_orthogonal_when_constant(sim):
    r = sim["single", 40]
    assert r["w_orth"] / r["reps"] >= 0.70 - 3 * _se(0.70, r["reps"])


def test_sim_heterogeneity_interval_coverage(bench):
    for k, R, tau in ((10, 2, MARGIN / 2), (20, 3, MARGIN)):
        r = bench.run_tau((k, R, tau, REPS, 12345))
        assert r["used"] >= 0.90 - 3 * _se(0.90, REPS), r
        assert r["high_miss"] <= 0.05 + 3 * _se(0.05, REPS), r


def test_same_everywhere_needs_seed_noise_and_enough_configurations():
    from autokd.report.orthogonality import MIN_SAME_CONFIGURATIONS

    # Every repeat identical (saturated twins): MSW = 0 collapses the bound; no claim is made.
    flat = heterogeneity([[0.02, 0.02]] * 12, margin=0.01)
    assert flat["tau_high"] < 1e-12 and flat["same_everywhere"] is False
    rng = np.random.default_rng(3)
    few = heterogeneity((0.02 + 0.001 * rng.normal(size=(MIN_SAME_CONFIGURATIONS - 1, 3))).tolist(), margin=0.01)
    assert few["tau_high"] < 0.005 and few["same_everywhere"] is False
    many = heterogeneity((0.02 + 0.001 * rng.normal(size=(MIN_SAME_CONFIGURATIONS, 3))).tolist(), margin=0.01)
    assert many["tau_high"] < 0.005 and many["same_everywhere"] is True
