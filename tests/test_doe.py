"""autokd.doe: the design phase's designs are balanced, orthogonal (or nearly, D-efficient), of the promised
resolution, estimable, deterministic for a seed, and fast."""

from __future__ import annotations

import itertools
from collections import Counter as Counter_
import math
import time

import numpy as np
import pytest

from autokd.doe import Design, contrasts, d_efficiency, default_runs, make_design, model_matrix, n_parameters, rotate

DEMO = (4, 3, 3, 3, 2, 2, 2, 2, 2)
SMALL_MIXED = (3, 3, 2, 2, 2)


def level_counts(d: Design, levels) -> list[np.ndarray]:
    a = np.array(d.rows)
    return [np.bincount(a[:, j], minlength=k) for j, k in enumerate(levels)]


def assert_valid(d: Design, levels) -> None:
    a = np.array(d.rows)
    assert a.shape == (d.runs, len(levels))
    assert all(0 <= a[:, j].min() and a[:, j].max() < k for j, k in enumerate(levels))
    assert all(isinstance(v, int) for r in d.rows for v in r)


def assert_balanced(d: Design, levels) -> None:
    for counts in level_counts(d, levels):
        assert counts.max() - counts.min() <= 1, counts


def pm1(d: Design) -> np.ndarray:
    return 2 * np.array(d.rows) - 1


def aliased_with_two_factor_interaction(h: np.ndarray) -> list[tuple[int, int, int]]:
    """(c, i, j) where main-effect column c equals +- the product of columns i and j (a word of length 3)."""
    n, k = h.shape
    hits = []
    for i, j in itertools.combinations(range(k), 2):
        dots = (h[:, i] * h[:, j]) @ h
        hits += [(int(c), i, j) for c in np.flatnonzero(np.abs(dots) == n) if c not in (i, j)]
    return hits


def min_word_length(h: np.ndarray) -> int | None:
    """Brute force: the fewest columns whose product is constant (+-1): the resolution of a regular fraction."""
    k = h.shape[1]
    for size in range(1, k + 1):
        for cols in itertools.combinations(range(k), size):
            if abs(np.prod(h[:, cols], axis=1).sum()) == len(h):
                return size
    return None


# -- the automatic choice ---------------------------------------------------------------------------------------------

def test_auto_is_full_up_to_max_full_then_fraction_then_d_optimal():
    d = make_design([2] * 5, seed=0)
    assert (d.kind, d.runs, d.resolution) == ("full_factorial", 32, None)
    d = make_design([2] * 6, seed=0)
    assert (d.kind, d.runs, d.resolution) == ("fraction", 16, 4)
    d = make_design(DEMO, seed=0)
    assert (d.kind, d.runs, d.resolution) == ("d_optimal", 24, None)
    assert make_design([2] * 5, seed=0, max_full=31).kind == "fraction"
    assert make_design(SMALL_MIXED, seed=0, max_full=72).kind == "full_factorial"  # 3·3·2·2·2 = 72 cells
    assert make_design(SMALL_MIXED, seed=0).kind == "d_optimal"


def test_auto_with_runs_keeps_its_choice_only_at_that_size():
    assert make_design([2] * 4, seed=0, runs=16).kind == "full_factorial"
    d = make_design([2] * 4, seed=0, runs=12)
    assert (d.kind, d.runs) == ("d_optimal", 12)
    assert_balanced(d, [2] * 4)


# -- full factorials and fractions ------------------------------------------------------------------------------------

@pytest.mark.parametrize("levels", [(2, 2, 2, 2), (2,) * 5, (3, 3, 2), (4, 3, 2), (5,)])
def test_full_factorial_is_every_cell_once_balanced_and_orthogonal(levels):
    d = make_design(levels, seed=1, kind="full")
    assert d.kind == "full_factorial" and d.d_efficiency == 1.0
    assert sorted(d.rows) == list(itertools.product(*(range(k) for k in levels)))
    assert all(len(set(c)) == 1 for c in level_counts(d, levels))
    x = model_matrix(d.rows, levels)
    np.testing.assert_allclose(x.T @ x / d.runs, np.eye(x.shape[1]), atol=1e-12)
    if set(levels) == {2}:
        h = pm1(d)
        assert np.array_equal(h.T @ h, d.runs * np.eye(len(levels)))


@pytest.mark.parametrize("k", [4, 5, 6, 7, 8, 9, 12, 16, 17, 20, 32])
def test_fraction_is_balanced_orthogonal_resolution_iv_in_the_fewest_runs(k):
    d = make_design([2] * k, seed=3, kind="fraction")
    assert_valid(d, [2] * k)
    assert d.kind == "fraction" and d.resolution in (4, 5)
    fewest = 2 ** next(m for m in itertools.count(1) if 2 ** (m - 1) >= k)  # resolution IV holds <= N/2 factors
    assert d.runs == fewest
    h = pm1(d)
    assert (h.sum(axis=0) == 0).all()  # balanced: every column half -1, half +1
    xtx = h.T @ h
    assert np.array_equal(xtx, d.runs * np.eye(k))  # orthogonal (X'X diagonal), so also no two columns equal
    assert aliased_with_two_factor_interaction(h) == []  # resolution >= IV
    assert len(set(d.rows)) == d.runs  # a fraction: no run twice
    if k <= 8:
        assert min_word_length(h) == d.resolution
    assert d.d_efficiency == 1.0 == d_efficiency(d.rows, [2] * k)


def test_fraction_detector_sees_resolution_iii():
    res3 = np.array([[a, b, a * b] for a in (-1, 1) for b in (-1, 1)])  # 2^(3-1), C = AB
    assert sorted(aliased_with_two_factor_interaction(res3)) == [(0, 1, 2), (1, 0, 2), (2, 0, 1)]
    assert min_word_length(res3) == 3


def test_fraction_of_three_or_fewer_factors_is_the_full_factorial():
    d = make_design([2, 2, 2], seed=0, kind="fraction")
    assert (d.kind, d.runs, d.resolution) == ("full_factorial", 8, None)
    assert "no resolution-IV fraction" in d.note


def test_run_order_is_random_but_fixed_by_the_seed():
    a, b = make_design([2] * 8, seed=5), make_design([2] * 8, seed=5)
    assert a == b
    orders = {make_design([2] * 4, seed=s).rows for s in range(4)}
    assert len(orders) > 1 and len({tuple(sorted(o)) for o in orders}) == 1


# -- D-optimal near-balanced designs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("levels,runs", [(DEMO, 24), (SMALL_MIXED, 18)])
def test_d_optimal_is_balanced_estimable_efficient_and_deterministic(levels, runs):
    d = make_design(levels, seed=7)
    assert d.kind == "d_optimal" and d.runs == runs == default_runs(levels)
    assert_valid(d, levels)
    assert all(len(set(c)) == 1 for c in level_counts(d, levels))  # the default size balances every factor exactly
    x = model_matrix(d.rows, levels)
    assert np.linalg.matrix_rank(x) == n_parameters(levels) == x.shape[1]
    assert d.d_efficiency >= 0.95
    assert d.d_efficiency == pytest.approx(d_efficiency(d.rows, levels))
    assert f"D-efficiency {d.d_efficiency:.3f}" in d.note and f"{runs}-run" in d.note
    assert make_design(levels, seed=7) == d


def test_d_optimal_note_says_what_an_orthogonal_array_would_need():
    note = make_design(DEMO, seed=7).note
    assert note.startswith("D-optimal near-balanced 24-run design for 4·3³·2⁵ levels (an orthogonal array needs a "
                           "multiple of 72 runs); D-efficiency 0.9")


@pytest.mark.parametrize("runs", [15, 25, 37])
def test_d_optimal_stays_near_balanced_at_any_size(runs):
    d = make_design(DEMO, seed=2, runs=runs)
    assert d.runs == runs
    assert_balanced(d, DEMO)
    assert np.linalg.matrix_rank(model_matrix(d.rows, DEMO)) == n_parameters(DEMO)
    assert d.d_efficiency > 0.85


def test_d_optimal_of_two_level_factors_can_find_an_orthogonal_array():
    d = make_design([2] * 6, seed=0, kind="d_optimal", runs=16)
    assert d.d_efficiency == pytest.approx(1.0)
    h = pm1(d)
    assert np.array_equal(h.T @ h, 16 * np.eye(6))


def test_demo_design_takes_well_under_two_seconds():
    make_design(SMALL_MIXED, seed=0)  # warm-up (imports)
    start = time.perf_counter()
    make_design(DEMO, seed=11)
    assert time.perf_counter() - start < 1.5  # about 0.2 s on one core


# -- D-efficiency and the default size --------------------------------------------------------------------------------

def test_d_efficiency_is_one_for_an_orthogonal_array_and_zero_when_not_estimable():
    oa = [(a, b, (a + b) % 3, (a + 2 * b) % 3) for a in range(3) for b in range(3)]  # L9(3^4)
    assert d_efficiency(oa, [3] * 4) == pytest.approx(1.0)
    assert d_efficiency([(0, 0), (1, 1), (0, 0), (1, 1)], [2, 2]) == 0.0  # the two columns are confounded


def test_d_optimality_does_not_depend_on_the_coding():
    """det(X'X) under treatment dummies is a constant multiple of det under the orthogonal contrasts."""
    def dummies(rows, levels):
        a = np.array(rows)
        return np.column_stack([np.ones(len(a))] + [(a[:, j] == v) for j, k in enumerate(levels) for v in range(1, k)])

    ratios = []
    for seed in range(3):
        d = make_design(SMALL_MIXED, seed=seed, runs=20)
        xd, xo = dummies(d.rows, SMALL_MIXED).astype(float), model_matrix(d.rows, SMALL_MIXED)
        ratios.append(np.linalg.det(xd.T @ xd) / np.linalg.det(xo.T @ xo))
    assert ratios == pytest.approx([ratios[0]] * 3)


@pytest.mark.parametrize("levels,runs", [(DEMO, 24), (SMALL_MIXED, 18), ((6, 5, 4, 3, 2), 24), ((7, 5, 3), 22),
                                         ((5, 3, 2), 30), ((3, 3, 3, 3), 18)])
def test_default_runs_rule(levels, runs):
    # p + 8 rounded up to a multiple of lcm(levels) when that is at most 2 (p + 8), else p + 8 rounded up to even
    assert default_runs(levels) == runs
    n0 = n_parameters(levels) + 8
    assert runs >= n0 and (runs % math.lcm(*levels) == 0 or runs == n0 + n0 % 2)


# -- bad input --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("levels,kwargs,match", [
    ([], {}, "at least one factor"),
    ([2, 1], {}, r"levels\[1\] = 1"),
    ([2, 2.5], {}, r"levels\[1\]"),
    ([True, 2], {}, r"levels\[0\]"),
    (DEMO, {"runs": 14}, r"runs=14 is too few .* p = 1 \+ sum\(k_i - 1\) = 15 .* at least 15"),
    (DEMO, {"runs": 5000}, "more than the 4096"),
    (DEMO, {"kind": "latin"}, "design kind 'latin'"),
    ([2] * 13, {"kind": "full"}, "8192 runs, more than 4096"),
    ([2, 3, 2, 2], {"kind": "fraction"}, "every factor two-level"),
    ([2] * 4, {"kind": "full", "runs": 12}, "a full design of 2⁴ levels has 16 runs"),
    ([2] * 6, {"kind": "fraction", "runs": 32}, "has 16 runs"),
    (DEMO, {"max_full": 0}, "max_full"),
])
def test_bad_input_is_a_clear_value_error(levels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_design(levels, seed=0, **kwargs)


@pytest.mark.parametrize("seed", [-1, 1.5, None])
def test_bad_seed_is_a_value_error(seed):
    with pytest.raises(ValueError, match="seed"):
        make_design(DEMO, seed=seed)


# --- rotated replicates -----------------------------------------------------------------------------------


def _alias_rms(rows, levels) -> float:
    """Root mean square coefficient of the main-effects fit to every two-factor interaction column (0: main
    effects clear of two-factor interactions)."""
    a = np.asarray(rows)
    cols = [contrasts(k)[a[:, j]] for j, k in enumerate(levels)]
    z = np.column_stack([u * v for i, j in itertools.combinations(range(len(levels)), 2)
                         for u in cols[i].T for v in cols[j].T])
    coef = np.linalg.lstsq(model_matrix(rows, levels), z, rcond=None)[0][1:]
    return float(np.sqrt((coef ** 2).mean()))


def test_a_rotation_relabels_levels_keeping_balance_and_efficiency():
    levels = (4, 3, 3, 3, 2, 2, 2, 2, 2)
    d = make_design(levels, seed=0, kind="d_optimal")
    assert rotate(d.rows, levels, 0) == d.rows
    assert rotate(d.rows, levels, math.lcm(*levels)) == d.rows  # a full cycle comes back
    for shift in (1, 2, 5):
        r = rotate(d.rows, levels, shift)
        assert r != d.rows and d_efficiency(r, levels) == pytest.approx(d.d_efficiency, abs=1e-12)
        for j, k in enumerate(levels):
            assert sorted(row[j] for row in r) == sorted(row[j] for row in d.rows)
            assert all(row[j] == (old[j] + shift) % k for row, old in zip(r, d.rows))


@pytest.mark.parametrize("levels", [(4, 3, 3, 3, 2, 2, 2, 2, 2), (3, 2, 2, 2, 2)])
def test_rotated_replicates_average_the_aliasing_with_interactions_out(levels):
    rows = make_design(levels, seed=0, kind="d_optimal").rows
    repeated = _alias_rms(rows * 4, levels)
    rotated = [_alias_rms([r for s in range(n) for r in rotate(rows, levels, s)], levels) for n in (2, 4)]
    assert repeated > 0.1  # one D-optimal replicate is not clear of two-factor interactions
    assert rotated[0] < 0.75 * repeated and rotated[1] < 0.5 * repeated
    cycle = math.lcm(*levels)
    full = _alias_rms([r for s in range(cycle) for r in rotate(rows, levels, s)], levels)
    assert full < 0.1 * repeated


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_d_optimal_never_repeats_a_run(seed):
    # the exchange alone repeated a run of 3x2^4 in 18 runs for seeds 1 and 2 (the study would prune it)
    d = make_design((3, 2, 2, 2, 2), seed=seed, kind="d_optimal")
    assert len(set(d.rows)) == len(d.rows) == 18
    for j, k in enumerate((3, 2, 2, 2, 2)):
        assert sorted(Counter_(r[j] for r in d.rows).values()) == [18 // k] * k


def test_d_optimal_with_more_runs_than_cells_is_a_clear_error():
    with pytest.raises(ValueError, match="repeat some of its 4 cells"):
        make_design((2, 2), seed=0, kind="d_optimal")
