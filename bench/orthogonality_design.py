"""Simulation check of the design phase: a balanced design, an internal pilot, the Wittes-Brittain plan, the analysis.

Each replication of a cell runs the procedure of ``autokd/study/design.py`` against a planted truth:

1. the design: ``autokd.doe.make_design(levels, seed=0)`` (full factorial up to 32 cells, else a resolution-IV
   2-level fraction, else a D-optimal near-balanced design), L points, one KD pair per point and replicate;
2. the pilot: the first replicate, analysed at exactly the design's levels (``analyze(..., exact_levels=True,
   min_level_pairs=1, n_perm=1)``). When one replicate leaves fewer than 5 residual df (``analyze``'s
   ``min_df_resid``; the 2^3 factorial: 8 pairs, 4 coefficients) the model cannot be fitted, and the bench's
   pilot is the fewest whole replicates that can be (see PILOT below);
3. the plan: ``autokd.report.plan.replicates_for(pilot["factors"], n, p, points=L, target=h)`` -> R replicates
   (pilot included), capped at ``CAP`` = 40 (how often the cap binds is printed);
4. the final analysis of all R L design pairs (pilot included), exactly as the report does it.

Truth (fractions: 0.01 = 1 point; margin m = 1 pt; target half-width h = m / 2 = 0.5 pts; sigma in units of m):

    null    gain = 2 pts everywhere (every level difference 0)
    diff    gain = 2 pts + 1.5 m at level 0 of technique t0 (t0 differs by 1.5 m between level 0 and the others)
    inter   gain = 2 pts + 1.5 m * u0 * u1, u_j = level index / (levels - 1) in [0, 1] (a t0 x t1 interaction; the
            main-effect estimand averages it over the design's level combinations, each weighted equally)
    noise   normal; t3 (sigma * t3 / sqrt 3, same SD); unequal (level 0 of t1 has 3 sigma)

The estimand of a level difference (a, b) of technique j is the mean over the design's rows r of
g(r with j = a) - g(r with j = b) (autokd.study.design.ESTIMAND); a difference's interval covers when the true
(high - low) value lies in [ci_low, ci_high]. The overall mean gain's estimand is the mean of g over the design's
rows; its 95% interval is ``summarize_gain``'s Student-t interval (computed with ``stats.t_interval``, the function
``summarize_gain`` calls, since ``summarize_gain`` also ranks every Walsh average: 50 ms at 480 pairs).

Structures (techniques: levels): 3t (2,2,2) full factorial 8; 2^6 (2 x 6) resolution IV 16; 5t (3,2,2,2,2) =
48 > 32 cells -> D-optimal; 9t (4,3,3,3,2,2,2,2,2), the demo space's techniques -> D-optimal.

Measured per cell: coverage of the 90% level-difference intervals (all differences of all techniques), coverage
of the overall 95% interval, P(reached: every technique's half_width <= h), replicates (mean, max) and how often
the cap binds, P(t0 ``orthogonal``) when its true difference is 1.5 m. Coverage cells use ``n_perm=1`` (intervals
and ``orthogonal`` need no bootstrap); the verdict-rate cells (P(``undetermined``) per technique with true
difference 0 and >= 1.5 m) run fewer replications with 199 sign-flip resamples.

Side by side (``--gp-seeds``): pairs needed to reach every half_width <= h on the demo space (9 techniques; null
truth, sigma = m, normal) with the design (the first whole replicate at which the analysis reaches it; median over
replications) and with configurations chosen by Optuna's GPSampler on ``bench/samplers.py``'s surrogate world
(the usual binned ``analyze`` of the first n pairs, the first n at which it reaches h; median over noise draws,
then over GP seeds; 10 noise draws of 150 trials by default). A run that never reaches h within ``--gp-trials`` is
extrapolated as
n * max(half_width / h)^2 (standard errors shrinking as 1/sqrt n) and marked ``>``.

    python bench/orthogonality_design.py [--reps 2000] [--rate-reps 400] [--perms 199] [--jobs 2] [--seed 0]
                                         [--gp-seeds 3] [--gp-trials 150] [--quick] [--smoke]

Last line: ``design_coverage_min=... design_overall_coverage_min=... design_reached_min=...
design_false_orthogonal=... design_undetermined5=... sampler_pairs_ratio=...``:

* design_coverage_min: min over coverage cells of the 90% level-difference coverage (target >= 0.88);
* design_overall_coverage_min: min over coverage cells of the overall 95% coverage (target >= 0.93);
* design_reached_min: min over coverage cells of P(reached) (target >= 0.88);
* design_false_orthogonal: max over ``diff`` cells of P(t0 ``orthogonal``) (true difference 1.5 m; <= 0.05);
* design_undetermined5: max over the 5-technique verdict-rate cells and techniques of P(``undetermined``) with a
  true difference of 0 or >= 1.5 m (<= 0.20);
* sampler_pairs_ratio: GP pairs / design pairs to reach h (nan with --smoke or --gp-seeds 0).

RESULTS (2000 replications, seed 0, --jobs 2 on a quiet 2-core machine: 804 s wall). Designs: 2^3 full factorial (8
points; pilot 2 replicates, see PILOT), 2^(6-2) fraction (16), D-optimal 18 for 3x2^4 and 24 for 4x3^3x2^5, whose
replicates rotate their levels (autokd.doe.rotate). The procedure is the study's: pilot, plan, one top-up. Last line:
design_coverage_min=0.896 design_overall_coverage_min=0.940 design_reached_min=0.959 design_false_orthogonal=0.000
design_undetermined5=0.013 sampler_pairs_ratio=2.264.

* 90% level-difference intervals cover 0.896-0.929 in every cell, the interaction cells included (5t 0.922, 9t
  0.914). One replicate of a D-optimal design is not clear of two-factor interactions (the planted t0 x t1 one
  biases others by up to 0.17 pts (5t) and 0.23 pts (9t) at one replicate: ``aliasing_bias``, printed), but the
  rotated replicates average it out (0.00 over the 12-15 replicates these cells run). Before rotation and the top-up
  (the previous bench run): 0.848 (5t) and 0.697 (9t).
* P(reached) >= 0.959 in every cell (3t/null/t3/s2 the lowest); the plan alone reached 0.75-0.89 with t3 noise, and
  the top-up catches those. Mean replicates: 14.6 for 9t at sigma = m (34.6 before, with the kurtosis discount).
* Verdicts: P(orthogonal) for a 1.5 m difference 0.000 in every cell; P(undetermined) with 5 techniques <= 0.013.
* Side by side (sigma = m, null truth): the demo design first reaches h at 132 pairs (median; IQR 120-144); 150
  GP-chosen configurations never reached it in 30 of 30 (seed, noise) runs; extrapolated, medians 260 / 306 / 299
  over seeds -> ratio 2.26.

PILOT: the pilot is the fewest whole replicates the verdict model can be fitted to
(:func:`autokd.space.design.min_replicates`, as ``autokd/study/design.py`` runs it): 2 for the 2^3 factorial (one
replicate has 8 pairs for 4 coefficients and analyze's 5 residual df), 1 elsewhere; the bench prints how many.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import math
import multiprocessing
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads BLAS: small matrices, and --jobs processes share the cores

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autokd.report.orthogonality import analyze  # noqa: E402
from autokd.report.plan import replicates_for, topup_replicates, undetermined_at_target  # noqa: E402
from autokd.report.stats import t_interval  # noqa: E402

MARGIN = 0.01
TARGET = MARGIN / 2
MU = 0.02
DELTA = 1.5 * MARGIN
ALPHA = 0.05
CAP = 40            # most replicates a study runs (the plan's R is cut here; how often is printed)
MIN_DF_RESID = 5    # analyze()'s default: a pilot needs n - p >= 5 to be fitted
NOISY = 3.0         # unequal: level 0 of t1 has NOISY x sigma
STRUCTURES: dict[str, tuple[int, ...]] = {"3t": (2, 2, 2), "2^6": (2,) * 6, "5t": (3, 2, 2, 2, 2),
                                          "9t": (4, 3, 3, 3, 2, 2, 2, 2, 2)}
KEYS = ("design_coverage_min", "design_overall_coverage_min", "design_reached_min", "design_false_orthogonal",
        "design_undetermined5", "sampler_pairs_ratio")


# --------------------------------------------------------------------------------------------------- designs

def _doe() -> tuple[Any, str]:
    """autokd's make_design (autokd.doe, else autokd.study.doe); a development fallback only when neither exists."""
    for name in ("autokd.doe", "autokd.study.doe"):
        try:
            module = __import__(name, fromlist=["make_design"])
            return module.make_design, name
        except ImportError:
            continue
    return _fallback_design, "FALLBACK (autokd.doe not found: development stand-in, not the real designs)"


@dataclass(frozen=True)
class _Design:
    kind: str
    rows: tuple[tuple[int, ...], ...]


def _fallback_design(levels: list[int], *, seed: int = 0, kind: str = "auto", runs: int | None = None) -> _Design:
    """Development stand-in for autokd.doe.make_design: full factorial <= 32 cells; 2^(k-p) resolution IV for 6-8
    two-level factors; else the most D-efficient of 200 random balanced designs."""
    levels = list(levels)
    if math.prod(levels) <= 32:
        return _Design("full_factorial", tuple(itertools.product(*(range(k) for k in levels))))
    if set(levels) == {2} and 6 <= len(levels) <= 8:
        base = np.array(list(itertools.product((0, 1), repeat=4)))
        gens = {6: [(0, 1, 2), (1, 2, 3)], 7: [(0, 1, 2), (1, 2, 3), (0, 2, 3)],
                8: [(1, 2, 3), (0, 2, 3), (0, 1, 2), (0, 1, 3)]}[len(levels)]
        cols = [base[:, i] for i in range(4)] + [base[:, list(g)].sum(axis=1) % 2 for g in gens]
        return _Design("fractional_factorial", tuple(tuple(int(c[i]) for c in cols) for i in range(16)))
    p = 1 + sum(k - 1 for k in levels)
    lcm = math.lcm(*levels)
    n = runs or lcm * math.ceil((p + MIN_DF_RESID) / lcm)
    rng = np.random.default_rng(seed)
    best, best_det = None, -np.inf
    for _ in range(200):
        cols = [rng.permutation(np.resize(np.arange(k), n)) for k in levels]
        D = np.column_stack(cols)
        X = _dummies(D, levels)
        det = np.linalg.slogdet(X.T @ X)
        if det[0] > 0 and det[1] > best_det:
            best, best_det = D, det[1]
    return _Design("d_optimal", tuple(tuple(int(v) for v in r) for r in best))


def _dummies(D: np.ndarray, levels: tuple[int, ...] | list[int]) -> np.ndarray:
    cols = [np.ones(len(D))]
    for j, k in enumerate(levels):
        cols += [(D[:, j] == a).astype(float) for a in range(1, k)]
    return np.column_stack(cols)


@lru_cache(maxsize=16)
@lru_cache(maxsize=None)
def design_rows(levels: tuple[int, ...], seed: int = 0) -> tuple[str, tuple[tuple[int, ...], ...]]:
    make, _ = _doe()
    d = make(list(levels), seed=seed)
    return str(d.kind), tuple(tuple(int(v) for v in r) for r in d.rows)


def replicate_rows(levels: tuple[int, ...], rows: tuple[tuple[int, ...], ...], replicates: int,
                   rotates: bool | None = None) -> np.ndarray:
    """The rows of ``replicates`` replicates as the study runs them: a D-optimal design's replicate r rotated by r
    (``autokd.doe.rotate``; ``rotates`` None: when ``design_rows(levels)`` is D-optimal), others repeated."""
    if rotates is None:
        rotates = design_rows(tuple(levels))[0] == "d_optimal"
    if not rotates:
        return np.tile(np.array(rows, dtype=int), (replicates, 1))
    from autokd.doe import rotate

    return np.vstack([np.array(rotate(rows, levels, r), dtype=int) for r in range(replicates)])


# ----------------------------------------------------------------------------------------------------- truth

def truth_gain(truth: str, D: np.ndarray, levels: tuple[int, ...]) -> np.ndarray:
    """The planted mean gain of each row of level indices ``D``."""
    D = np.asarray(D)
    g = np.full(len(D), MU)
    if truth == "diff":
        g = g + DELTA * (D[:, 0] == 0)
    elif truth == "inter":
        g = g + DELTA * (D[:, 0] / (levels[0] - 1)) * (D[:, 1] / (levels[1] - 1))
    elif truth != "null":
        raise ValueError(f"unknown truth {truth!r}")
    return g


def true_differences(truth: str, D: np.ndarray, levels: tuple[int, ...]) -> dict[int, dict[tuple[str, str], float]]:
    """Technique j -> {(a, b): mean over the design's rows of g(row, j = a) - g(row, j = b)} (the estimand)."""
    out = {}
    for j, k in enumerate(levels):
        at = []
        for a in range(k):
            Da = np.array(D, copy=True)
            Da[:, j] = a
            at.append(truth_gain(truth, Da, levels).mean())
        out[j] = {(str(a), str(b)): float(at[a] - at[b]) for a in range(k) for b in range(k) if a != b}
    return out


def noise(kind: str, sigma: float, D: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(D)
    if kind == "t3":
        e = rng.standard_t(3, n) / math.sqrt(3.0)
    else:
        e = rng.normal(0.0, 1.0, n)
    sd = np.full(n, sigma * MARGIN)
    if kind == "unequal":
        sd = sd * np.where(D[:, 1] == 0, NOISY, 1.0)
    elif kind not in ("normal", "t3"):
        raise ValueError(f"unknown noise {kind!r}")
    return e * sd


# ----------------------------------------------------------------------------------------------------- cells

@dataclass(frozen=True)
class Cell:
    structure: str
    truth: str
    noise: str
    sigma: float  # x margin

    @property
    def levels(self) -> tuple[int, ...]:
        return STRUCTURES[self.structure]

    @property
    def name(self) -> str:
        return f"{self.structure}/{self.truth}/{self.noise}/s{self.sigma:g}"


def coverage_cells() -> list[Cell]:
    """34 cells: per structure sigma 0.5 / 1 / 2 (normal, null), the 1.5 m difference, t3, unequal variances and the
    interaction (the 9-technique structure, the slowest, without t3 at 2 m and unequal at 1 m, where its plan is cut
    at the cap anyway)."""
    cells = []
    for s in STRUCTURES:
        cells += [Cell(s, "null", "normal", sigma) for sigma in (0.5, 1.0, 2.0)]
        cells.append(Cell(s, "diff", "normal", 1.0))
        cells += [Cell(s, "null", "t3", sigma) for sigma in ((1.0,) if s == "9t" else (1.0, 2.0))]
        cells += [Cell(s, "null", "unequal", sigma) for sigma in ((0.5,) if s == "9t" else (0.5, 1.0))]
        cells.append(Cell(s, "inter", "normal", 1.0))
    return cells


def aliasing_bias(cell: Cell, rows: tuple[tuple[int, ...], ...] | None = None) -> list[float]:
    """Per technique, the largest |E[estimate] - estimand| over its level differences (noise-free OLS of the planted
    truth on the main-effects model): 0 for an orthogonal design or an additive truth; an interaction biases the
    main effects of a design whose main effects are not orthogonal to it (a D-optimal main-effects design)."""
    levels = cell.levels
    D = np.array(rows if rows is not None else design_rows(levels)[1])
    X = _dummies(D, levels)
    beta = np.linalg.lstsq(X, truth_gain(cell.truth, D, levels), rcond=None)[0]
    td = true_differences(cell.truth, D, levels)
    out, col = [], 1
    for j, k in enumerate(levels):
        coef = np.r_[0.0, beta[col:col + k - 1]]
        col += k - 1
        out.append(max(abs(coef[a] - coef[b] - td[j][str(a), str(b)]) for a in range(k) for b in range(k) if a != b))
    return out


def rate_cells() -> list[Cell]:
    cells = [Cell("5t", t, "normal", s) for t in ("null", "diff") for s in (0.5, 1.0, 2.0)]
    cells += [Cell("5t", t, n, 1.0) for t in ("null", "diff") for n in ("t3", "unequal")]
    cells += [Cell(s, t, "normal", 1.0) for s in ("3t", "2^6", "9t") for t in ("null", "diff")]
    return cells


def pilot_replicates(L: int, levels: tuple[int, ...]) -> int:
    from autokd.space.design import min_replicates  # the study's own pilot size

    return min_replicates(L, list(levels))


def _factors(D: np.ndarray) -> dict[str, list[int]]:
    return {f"t{j}": D[:, j].tolist() for j in range(D.shape[1])}


def run_cell(cell: Cell, reps: int, *, perms: int = 1, seed: int = 0, start: int = 0,
             rows: tuple[tuple[int, ...], ...] | None = None, cap: int = CAP, sizer: Any = None,
             topup: bool = True) -> dict[str, Any]:
    """Replications ``start`` .. ``start + reps - 1`` of ``cell``; sums of the counts (merge with :func:`merge`).
    ``topup``: as the study does, when the planned replicates miss the target, plan once more from all their pairs
    (``plan.topup_replicates``) and run the extra replicates. Experiments only: ``sizer``, a stand-in for
    ``replicates_for``, and ``topup=False``."""
    levels = cell.levels
    if rows is None:
        rows = design_rows(levels)[1]
    D1 = np.array(rows, dtype=int)
    L, k = D1.shape
    R0 = pilot_replicates(L, levels)
    D = replicate_rows(levels, tuple(map(tuple, D1)), cap)
    mean_all = truth_gain(cell.truth, D, levels)

    @lru_cache(maxsize=None)
    def estimands(n: int) -> tuple[dict, float]:  # over the rows the study ran (rotated replicates differ)
        return true_differences(cell.truth, D[:n], levels), float(mean_all[:n].mean())

    custom = sizer is not None
    sizer = sizer or replicates_for
    c: dict[str, Any] = {"cell": cell, "reps": 0, "cov": 0, "cov_n": 0, "cov_t": [0] * k, "cov_t_n": [0] * k,
                         "cov95": 0, "reached": 0, "orth0": 0, "R": [], "capped": 0, "unsized": 0, "fitted": 0,
                         "und": [0] * k, "int": [0] * k, "orth": [0] * k, "perms": perms, "L": L, "R0": R0,
                         "reached_capped": 0, "seconds": 0.0}
    began = time.perf_counter()
    cell_id = sum(ord(ch) * 31 ** i for i, ch in enumerate(cell.name)) % (2 ** 31)
    for rep in range(start, start + reps):
        rng = np.random.default_rng([seed, cell_id, rep])
        gains = mean_all + noise(cell.noise, cell.sigma, D, rng)
        n0 = R0 * L
        pilot = analyze(gains[:n0], _factors(D[:n0]), margin=MARGIN, exact_levels=True, min_level_pairs=1, n_perm=1)
        R = None
        if pilot["fitted"]:
            extra = {"pilot": (D[:n0], gains[:n0], levels)} if getattr(sizer, "wants_pilot", False) else {}
            R, _ = sizer(pilot["factors"], n=n0, p=pilot["n_coefficients"], points=L, target=TARGET, **extra)
        if R is None:
            c["unsized"] += 1
            R = cap
        R = max(R, R0)
        capped = R > cap
        c["capped"] += capped
        R = min(R, cap)
        c["R"].append(R)
        n = R * L
        res = analyze(gains[:n], _factors(D[:n]), margin=MARGIN, alpha=ALPHA, exact_levels=True, min_level_pairs=1,
                      n_perm=perms, seed=rep)
        if topup and R < cap and res["fitted"] and any(f["half_width"] > TARGET for f in res["factors"]):
            if custom:
                R2, _ = sizer(res["factors"], n=n, p=res["n_coefficients"], points=L, target=TARGET)
            else:
                R2 = topup_replicates(res["factors"], n=n, p=res["n_coefficients"], points=L, target=TARGET,
                                      replicates=R)
            if R2 is not None and R2 > R:
                capped = capped or R2 > cap
                R = min(R2, cap)
                c["R"][-1] = R
                n = R * L
                res = analyze(gains[:n], _factors(D[:n]), margin=MARGIN, alpha=ALPHA, exact_levels=True,
                              min_level_pairs=1, n_perm=perms, seed=rep)
        c["reps"] += 1
        truth_d, overall = estimands(n)
        lo, hi = t_interval(gains[:n], confidence=0.95)
        c["cov95"] += lo <= overall <= hi
        if not res["fitted"]:
            continue
        c["fitted"] += 1
        by = {f["factor"]: f for f in res["factors"]}
        reached = True
        for j in range(k):
            f = by[f"t{j}"]
            hw = f["half_width"]
            reached = reached and hw is not None and hw <= TARGET
            for d in f["differences"]:
                ok = d["ci_low"] <= truth_d[j][d["high"], d["low"]] <= d["ci_high"]
                c["cov"] += ok
                c["cov_t"][j] += ok
                c["cov_n"] += 1
                c["cov_t_n"][j] += 1
            c["und"][j] += f["verdict"] == "undetermined"
            c["int"][j] += f["verdict"] == "interacts"
            c["orth"][j] += f["verdict"] == "orthogonal"
        c["reached"] += reached
        c["reached_capped"] += reached and capped
        c["orth0"] += by["t0"]["verdict"] == "orthogonal"
    c["seconds"] = time.perf_counter() - began
    return c


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(parts[0])
    for p in parts[1:]:
        for key, v in p.items():
            if key in ("cell", "perms", "L", "R0"):
                continue
            if isinstance(v, list) and key != "R":
                out[key] = [a + b for a, b in zip(out[key], v)]
            else:
                out[key] = out[key] + v
    return out


def rates(c: dict[str, Any]) -> dict[str, Any]:
    """Rates of a merged cell (per replication; coverage per interval)."""
    reps = max(1, c["reps"])
    R = np.array(c["R"]) if c["R"] else np.array([np.nan])
    zero, big = true_zero_and_big(c["cell"])
    fit = max(1, c["fitted"])
    return {"cov": c["cov"] / c["cov_n"] if c["cov_n"] else float("nan"),
            "cov95": c["cov95"] / reps, "reached": c["reached"] / reps, "orth0": c["orth0"] / fit,
            "R_mean": float(R.mean()), "R_max": int(np.nanmax(R)) if c["R"] else 0, "capped": c["capped"] / reps,
            "unsized": c["unsized"] / reps, "fitted": c["fitted"] / reps,
            "und": [u / fit for u in c["und"]], "int": [u / fit for u in c["int"]],
            "und_zero": max((c["und"][j] / fit for j in zero), default=float("nan")),
            "und_big": max((c["und"][j] / fit for j in big), default=float("nan"))}


def true_zero_and_big(cell: Cell) -> tuple[list[int], list[int]]:
    """Techniques whose true level differences are all 0, and those with one >= 1.5 margin."""
    D1 = np.array(design_rows(cell.levels)[1])
    td = true_differences(cell.truth, D1, cell.levels)
    zero = [j for j, d in td.items() if all(abs(v) < 1e-12 for v in d.values())]
    big = [j for j, d in td.items() if max(abs(v) for v in d.values()) >= DELTA - 1e-12]
    return zero, big


# ---------------------------------------------------- sizing experiments (local copies; not the bench's numbers)

def variant_sizer(scale: str = "n", assurance: float = 0.90, df_factor: float = 1.0, kurtosis: bool = False) -> Any:
    """A local copy of plan.replicates_for / pairs_to_reach / _predicted with one change, for ``--experiment``:
    ``scale="n"`` is plan.py's se^2 (n / N); ``scale="lev"`` is se^2 (n - p) / (N - p) (HC3 at n pairs expects
    var * n / (n - p) under equal variances and balanced leverage p / n, and at N pairs var * N / (N - p));
    ``df_factor`` scales the pilot df in the F quantile (heavier-tailed variance estimates); ``kurtosis``: it is
    min(1, 2 / (k - 1)) with k the kurtosis of the pilot's leverage-adjusted residuals e_i / sqrt(1 - h_ii) (the
    effective df of a variance estimate, n 2 / (k - 1), is the nominal one for normal errors, k = 3)."""
    from scipy import stats as st

    def predicted(se: float, df: float, n: int, N: int, p: int) -> float:
        nu_n = max(1.0, df * (N - p) / max(1.0, n - p))
        t = float(st.t.ppf(0.95, nu_n))
        q = float(st.f.ppf(assurance, nu_n, max(df * df_factor, 1.0))) if assurance > 0.5 else 1.0
        ratio = n / N if scale == "n" else (n - p) / max(1.0, N - p)
        return t * se * math.sqrt(ratio * q)

    def sizer(kd_factors: list[dict], *, n: int, p: int, points: int, target: float,
              pilot: tuple[np.ndarray, np.ndarray, tuple[int, ...]] | None = None) -> tuple[int | None, dict]:
        nonlocal df_factor
        if kurtosis and pilot is not None:
            D, y, levels = pilot
            X = _dummies(D, levels)
            beta, *_ = np.linalg.lstsq(X, y, rcond=None)
            h = np.einsum("ij,jk,ik->i", X, np.linalg.pinv(X.T @ X), X)
            r = (y - X @ beta) / np.sqrt(np.clip(1.0 - h, 1e-12, None))
            k = len(r) * float(np.sum(r ** 4)) / float(np.sum(r ** 2)) ** 2
            df_factor = min(1.0, 2.0 / max(k - 1.0, 1e-9))
        need = n
        for f in kd_factors:
            for d in f.get("differences") or []:
                if d.get("se") is None or d.get("df") is None:
                    return None, {}
                N = n
                while predicted(d["se"], d["df"], n, N, p) > target:
                    N += points
                    if N > 10 ** 6:
                        return None, {}
                need = max(need, N)
        return max(1, math.ceil(need / points)), {}

    sizer.wants_pilot = kurtosis
    return sizer


EXPERIMENT_VARIANTS = {  # name -> (scale of variant_sizer or None for plan.py itself, top-up, df factor)
    "plan.py": (None, False, 1.0), "plan.py+topup": (None, True, 1.0), "n": ("n", False, 1.0),
    "lev+df/3": ("lev", False, 1 / 3), "lev+df/3+topup": ("lev", True, 1 / 3)}
EXPERIMENT_CELLS = (Cell("3t", "null", "t3", 2.0), Cell("2^6", "null", "t3", 2.0), Cell("5t", "null", "t3", 2.0),
                    Cell("9t", "null", "t3", 1.0), Cell("9t", "null", "normal", 1.0), Cell("9t", "null", "normal", 0.5))


def _experiment_job(args: tuple[Cell, str, int, int]) -> dict[str, Any]:
    cell, name, reps, seed = args
    scale, topup, df_factor = EXPERIMENT_VARIANTS[name]
    sizer = variant_sizer(scale, df_factor=df_factor) if scale else None
    return rates(run_cell(cell, reps, seed=seed, sizer=sizer, topup=topup))


def experiment(reps: int, seed: int, jobs: int) -> None:
    """Reached / mean replicates / P(cut) / cov90 of sizing variants on cells where plan.py over- or under-sizes."""
    tasks = [(c, v, reps, seed) for c in EXPERIMENT_CELLS for v in EXPERIMENT_VARIANTS]
    if jobs > 1:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"), initializer=_one_thread) as pool:
            out = list(pool.map(_experiment_job, tasks))
    else:
        out = [_experiment_job(t) for t in tasks]
    print(f"sizing variants, {reps} replications, seed {seed}, cap {CAP}: reached / mean R / P(cut) / cov90")
    print(f"{'cell':20s}" + "".join(f"{v:>26s}" for v in EXPERIMENT_VARIANTS))
    by = {(t[0], t[1]): r for t, r in zip(tasks, out)}
    for cell in EXPERIMENT_CELLS:
        print(f"{cell.name:20s}" + "".join(
            f"   {by[cell, v]['reached']:.3f} {by[cell, v]['R_mean']:5.1f} {by[cell, v]['capped']:.2f} "
            f"{by[cell, v]['cov']:.3f}" for v in EXPERIMENT_VARIANTS), flush=True)


# ------------------------------------------------------------------------------- design vs GP configurations

def design_first_reach(levels: tuple[int, ...], rows: tuple[tuple[int, ...], ...], sigma: float, reps: int,
                       seed: int = 0, cap: int = CAP) -> list[int]:
    """Per replication, the pairs (whole replicates) at which every technique's half_width first is <= h (null
    truth, normal noise); cap * L + 1 when never."""
    L = len(rows)
    D = replicate_rows(levels, tuple(map(tuple, rows)), cap)
    out = []
    for rep in range(reps):
        rng = np.random.default_rng([seed, 777, rep])
        gains = MU + noise("normal", sigma, D, rng)
        first = cap * L + 1
        for R in range(pilot_replicates(L, levels), cap + 1):
            res = analyze(gains[:R * L], _factors(D[:R * L]), margin=MARGIN, exact_levels=True, min_level_pairs=1,
                          n_perm=1)
            if res["fitted"] and all(f["half_width"] is not None and f["half_width"] <= TARGET
                                     for f in res["factors"]):
                first = R * L
                break
        out.append(first)
    return out


def _samplers() -> Any:
    name = "bench_samplers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "bench" / "samplers.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


NO_DESIGN = ["search.design=null"]  # the demo space now starts with a design; the sampler bench runs without one


def build_world(trials: int) -> Any:
    """bench/samplers.py's surrogate world of spaces/mobilenet.yaml (its functions; the same fit as its main)."""
    s = _samplers()
    from autokd.space import dimensions

    space = s.load_space(NO_DESIGN)
    dims = dimensions(space)
    configs = list(itertools.product(*(d.choices for d in dims)))
    data = s.DATA / "mobilenet_digits_trials.csv"
    rows = s.read_rows(data, dims)
    again = s.read_rows(data.with_name(data.stem + "_repeat1" + data.suffix), dims)
    costs = s.cost_table(space, dims, configs, s.DATA / "mobilenet_digits_costs.csv")
    keys = list(rows)
    y = np.array([float(rows[k]["val_accuracy"]) for k in keys])
    x = np.array([s.features(dims, k, costs[s.cost_key(dims, k)]) for k in keys])
    model = s.surrogate_model().fit(x, y)
    mean = model.predict(np.array([s.features(dims, c, costs[s.cost_key(dims, c)]) for c in configs]))
    bitops = np.array([costs[s.cost_key(dims, c)]["bitops"] for c in configs])
    nz = s.repeat_noise(rows, again)
    return s.World([d.path for d in dims], configs, mean, bitops, s.noise_sd_of(nz, mean), float(mean.min()),
                   float(mean.max()), float(np.log10(bitops.min())), float(np.log10(bitops.max())), 0.0, trials)


def gp_configs(world: Any, seed: int) -> tuple[list[int], float]:
    """The configurations (indices into world.configs) GPSampler (as autokd builds it, ``search.seed=seed``) evaluates,
    in order, on the surrogate: duplicates are pruned as autokd's objective prunes them. Returns (indices, seconds)."""
    import optuna
    import torch
    from optuna.trial import TrialState

    from autokd.objective import told_cost
    from autokd.sampling import sample
    from autokd.study.sampler import make_sampler
    from autokd.study.storage import quiet_optuna

    s = _samplers()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", module="optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = s.load_space(NO_DESIGN + ["search.sampler=gp", f"search.seed={seed}"])
    index = {c: i for i, c in enumerate(world.configs)}
    seen_noise = np.random.default_rng([seed, 20240909]).normal(0.0, 1.0, len(world.configs)) * world.noise_sd
    start = time.perf_counter()
    with quiet_optuna():
        study = optuna.create_study(directions=list(s.DIRECTIONS), sampler=make_sampler(space))
        found: list[int] = []
        seen: set[int] = set()
        in_a_row = 0
        while len(found) < world.trials and in_a_row < 50:
            trial = study.ask()
            cfg = sample(space, trial)
            i = index[tuple(cfg.params[p] for p in world.paths)]
            if i in seen:
                study.tell(trial, state=TrialState.PRUNED)
                in_a_row += 1
                continue
            in_a_row = 0
            acc = float(np.clip(world.mean[i] + seen_noise[i], 0.0, 1.0))
            study.tell(trial, [acc, told_cost(float(world.bitops[i]), world.cost_scale)])
            seen.add(i)
            found.append(i)
    return found, time.perf_counter() - start


def gp_pairs_to_reach(world: Any, found: list[int], sigma: float, draws: int, seed: int) -> list[tuple[float, bool]]:
    """Per noise draw: (the first n at which the binned analysis of the GP's first n configurations, with the null
    truth planted, has every technique's half_width <= h, True) or (extrapolated n, False)."""
    paths = world.paths
    cfgs = [world.configs[i] for i in found]
    out = []
    for draw in range(draws):
        rng = np.random.default_rng([seed, 4242, draw])
        gains = MU + rng.normal(0.0, sigma * MARGIN, len(cfgs))
        first = None
        last = None
        for n in range(12, len(cfgs) + 1):
            res = analyze(gains[:n], {p: [c[j] for c in cfgs[:n]] for j, p in enumerate(paths)}, margin=MARGIN,
                          n_perm=1)
            hws = [f["half_width"] for f in res["factors"]]
            if res["fitted"] and len(hws) == len(paths) and all(h is not None for h in hws):
                last = (n, max(hws))
                if max(hws) <= TARGET:
                    first = n
                    break
        if first is not None:
            out.append((float(first), True))
        elif last is not None:
            out.append((last[0] * (last[1] / TARGET) ** 2, False))
        else:
            out.append((float("inf"), False))
    return out


def run_gp(task: tuple[Any, int, float, int]) -> dict[str, Any]:
    world, seed, sigma, draws = task
    found, seconds = gp_configs(world, seed)
    reach = gp_pairs_to_reach(world, found, sigma, draws, seed)
    per_level = {}
    for j, path in enumerate(world.paths):
        choices = sorted({c[j] for c in world.configs}, key=str)
        per_level[path] = {str(v): sum(world.configs[i][j] == v for i in found) for v in choices}
    return {"seed": seed, "trials": len(found), "seconds": seconds, "reach": reach, "levels": per_level}


# ------------------------------------------------------------------------------------------------------ main

def _one_thread() -> None:
    """One BLAS thread (numpy may have been imported before this module set the environment): a 960 x 15 analysis
    takes 28 ms on one thread and 360 ms with two threads fighting other processes for 2 cores."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


def _task(args: tuple) -> Any:
    kind = args[0]
    if kind == "cell":
        _, _group, cell, reps, perms, seed, start, rows, cap = args
        return run_cell(cell, reps, perms=perms, seed=seed, start=start, rows=rows, cap=cap)
    if kind == "first":
        _, levels, rows, sigma, reps, seed = args
        return design_first_reach(levels, rows, sigma, reps, seed)
    return run_gp(args[1:])


def _f(x: float, w: int = 5) -> str:
    return f"{'-':>{w}}" if x is None or not math.isfinite(x) else f"{x:{w}.3f}"


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2000, help="replications per coverage cell (default 2000)")
    ap.add_argument("--rate-reps", type=int, default=400, help="replications per verdict-rate cell (default 400)")
    ap.add_argument("--perms", type=int, default=199, help="sign-flip resamples in the verdict-rate cells")
    ap.add_argument("--gp-seeds", type=int, default=3, help="GPSampler seeds for the side by side (0: skip)")
    ap.add_argument("--gp-trials", type=int, default=150)
    ap.add_argument("--gp-draws", type=int, default=10, help="noise draws planted on each GP run")
    ap.add_argument("--first-reps", type=int, default=200, help="replications of the design's first reach")
    ap.add_argument("--quick", action="store_true", help="300 / 150 replications, 2 GP seeds of 100 trials")
    ap.add_argument("--smoke", action="store_true", help="a few replications, no GP: the code paths only")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--experiment", type=int, default=0, metavar="REPS",
                    help="only compare sizing variants (local copies of plan.py's rule) at REPS replications")
    args = ap.parse_args(argv)
    if args.experiment:
        _one_thread()
        experiment(args.experiment, args.seed, args.jobs)
        return {}
    if args.quick:
        args.reps, args.rate_reps, args.gp_seeds, args.gp_trials = 300, 150, 2, 100
        args.gp_draws, args.first_reps = 10, 60
    cap = CAP
    if args.smoke:  # the code paths only: 2 replications, plans cut at 8 replicates
        args.reps, args.rate_reps, args.perms, args.gp_seeds, args.first_reps, cap = 2, 1, 19, 0, 3, 8
    start = time.perf_counter()
    _, source = _doe()
    designs = {s: design_rows(lv) for s, lv in STRUCTURES.items()}
    demo = None
    tasks: list[tuple] = []
    world = None
    if args.gp_seeds > 0:
        world = build_world(args.gp_trials)
        levels9 = tuple(len(set(c[j] for c in world.configs)) for j in range(len(world.paths)))
        demo = (levels9, design_rows(levels9))
        tasks += [("gp", world, s, 1.0, args.gp_draws) for s in range(args.gp_seeds)]
        chunk = max(1, args.first_reps // 4)
        tasks += [("first", levels9, demo[1][1], 1.0, min(chunk, args.first_reps - i), args.seed + i)
                  for i in range(0, args.first_reps, chunk)]
    cov_cells, rate_cells_ = coverage_cells(), rate_cells()
    chunks = 4 if args.reps >= 100 else 1
    groups = (("cov", cov_cells, args.reps, 1), ("rate", rate_cells_, args.rate_reps, args.perms))
    for group, cells, reps, perms in groups:
        per = math.ceil(reps / chunks)
        for cell in sorted(cells, key=lambda c: -len(c.levels)):  # the slow ones first
            for st in range(0, reps, per):
                tasks.append(("cell", group, cell, min(per, reps - st), perms, args.seed + (group == "rate") * 1000,
                              st, designs[cell.structure][1], cap))
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_one_thread) as pool:
            results = list(pool.map(_task, tasks))
    else:
        _one_thread()
        results = [_task(t) for t in tasks]
    elapsed = time.perf_counter() - start

    gp, first, cov_parts, rate_parts = [], [], {}, {}
    for t, r in zip(tasks, results):
        if t[0] == "gp":
            gp.append(r)
        elif t[0] == "first":
            first += r
        else:
            (rate_parts if t[1] == "rate" else cov_parts).setdefault(t[2], []).append(r)
    cov = {cell: rates(merge(parts)) for cell, parts in cov_parts.items()}
    rate = {cell: rates(merge(parts)) for cell, parts in rate_parts.items()}
    raw = {cell: merge(parts) for cell, parts in cov_parts.items()}

    print(f"designs from {source}; margin m = 1 pt, target half-width h = m/2; cap {cap} replicates; "
          f"seed {args.seed}")
    for s, lv in STRUCTURES.items():
        kind, rows = designs[s]
        p = 1 + sum(k - 1 for k in lv)
        print(f"  {s:4s} levels {'x'.join(map(str, lv)):18s} -> {kind}, L = {len(rows)} points, p = {p}, pilot = "
              f"{pilot_replicates(len(rows), lv)} replicate(s)")
    print(f"\ncoverage cells: {args.reps} replications each, n_perm = 1. cov90 = coverage of the 90% level-difference "
          f"intervals (all techniques); cov95 = overall 95% interval; reach = P(every half_width <= h) (reach|cut: "
          f"among the replications whose plan was cut at the cap); R = replicates (mean, max); cut = P(plan > "
          f"{cap}); orth0 = P(t0 orthogonal)")
    head = (f"{'cell':22s} {'cov90':>5s} {'cov95':>5s} {'reach':>5s} {'|cut':>5s} {'R.mean':>6s} {'R.max':>5s} "
            f"{'cut':>5s} {'orth0':>5s} {'sec':>5s}")
    print(head)
    print("-" * len(head))
    for cell in cov_cells:
        r, m = cov[cell], raw[cell]
        print(f"{cell.name:22s} {_f(r['cov'])} {_f(r['cov95'])} {_f(r['reached'])} "
              f"{_f(m['reached_capped'] / m['capped'] if m['capped'] else float('nan'))} {r['R_mean']:6.1f} "
              f"{r['R_max']:5d} {_f(r['capped'])} {_f(r['orth0']) if cell.truth == 'diff' else '    -'} "
              f"{m['seconds']:5.0f}")
    for cell in cov_cells:
        if cell.truth == "inter":
            m = raw[cell]
            cov_t = [a / b if b else float("nan") for a, b in zip(m["cov_t"], m["cov_t_n"])]
            base = designs[cell.structure][1]
            R = max(1, round(cov[cell]["R_mean"]))
            bias1 = aliasing_bias(cell, base)
            biasR = aliasing_bias(cell, tuple(map(tuple, replicate_rows(cell.levels, base, R))))
            print(f"{cell.name}: cov90 per technique " + " ".join(_f(v, 4) for v in cov_t)
                  + "; aliasing bias of the main effects (pts), 1 replicate: " + " ".join(f"{100 * b:.2f}" for b in bias1)
                  + f"; {R} (rotated) replicates: " + " ".join(f"{100 * b:.2f}" for b in biasR))
    print(f"\nverdict-rate cells: {args.rate_reps} replications, {args.perms} sign-flip resamples; P(undetermined) per "
          f"technique t0..; und.0 = max over techniques with true differences 0, und.big = with one >= 1.5 m")
    for cell in rate_cells_:
        r = rate[cell]
        print(f"{cell.name:26s} und " + " ".join(_f(u, 4) for u in r["und"]) + f" | und.0 {_f(r['und_zero'])} "
              f"und.big {_f(r['und_big'])} | int " + " ".join(_f(u, 4) for u in r["int"])
              + f" | reach {_f(r['reached'])}")
    print("P(undetermined) at a half-width of exactly h with true difference 0 (plan.undetermined_at_target): "
          + ", ".join(f"k={k}: {undetermined_at_target(k):.3f}" for k in (3, 5, 9)))

    ratio = float("nan")
    if gp:
        design_med = float(np.median(first))
        planned = cov.get(Cell("9t", "null", "normal", 1.0))
        per_seed = []
        print(f"\nside by side, demo space (9 techniques {'x'.join(map(str, demo[0]))}; null truth, sigma = m, "
              f"normal): pairs until every half_width <= h")
        print(f"  design ({demo[1][0]}, L = {len(demo[1][1])}): first whole replicate reaching h, median over "
              f"{len(first)} replications: {design_med:.0f} pairs (IQR {np.percentile(first, 25):.0f}-"
              f"{np.percentile(first, 75):.0f})" + (f"; the plan (90% assurance) runs {planned['R_mean']:.1f} "
                                                      f"replicates on average (the 9t coverage cell's design)"
                                                      if planned else ""))
        for g in gp:
            vals = [v for v, _ in g["reach"]]
            reached = sum(ok for _, ok in g["reach"])
            med = float(np.median(vals))
            per_seed.append(med)
            print(f"  GP seed {g['seed']}: {g['trials']} configurations in {g['seconds']:.0f} s; pairs to h, median "
                  f"over {len(vals)} noise draws: {'>' if reached < len(vals) / 2 else ''}{med:.0f} "
                  f"({reached}/{len(vals)} reached within {g['trials']}; the rest extrapolated)")
            sparse = {p: lv for p, lv in g["levels"].items() if min(lv.values()) < 5}
            if sparse:
                print("    levels the GP chose fewer than 5 times: "
                      + "; ".join(f"{p} {lv}" for p, lv in sparse.items()))
        gp_med = float(np.median(per_seed))
        ratio = gp_med / design_med
        print(f"  sampler_pairs_ratio = median GP {gp_med:.0f} / design {design_med:.0f} = {ratio:.2f}")

    def worst(vals: list[float], fn: Any) -> float:
        vals = [v for v in vals if math.isfinite(v)]
        return fn(vals) if vals else float("nan")

    out = {
        "design_coverage_min": worst([r["cov"] for r in cov.values()], min),
        "design_overall_coverage_min": worst([r["cov95"] for r in cov.values()], min),
        "design_reached_min": worst([r["reached"] for r in cov.values()], min),
        "design_false_orthogonal": worst([r["orth0"] for c, r in {**cov, **rate}.items() if c.truth == "diff"], max),
        "design_undetermined5": worst([max(r["und_zero"], r["und_big"]) for c, r in rate.items()
                                       if c.structure == "5t"], max),
        "sampler_pairs_ratio": ratio,
    }
    se = lambda p, n: math.sqrt(max(p * (1 - p), 1e-12) / max(1, n))  # noqa: E731
    print(f"\nMonte-Carlo SE at {args.reps} replications: reached/coverage near 0.9 +-{se(0.9, args.reps):.3f} "
          f"(coverage of intervals is per interval, correlated within a replication); P(orthogonal) near 0.05 "
          f"+-{se(0.05, args.reps):.3f}; verdict rates near 0.2 +-{se(0.2, args.rate_reps):.3f}")
    print(f"runtime {elapsed:.0f} s ({args.jobs} process{'es' if args.jobs > 1 else ''})")
    print(" ".join(f"{k}={v:.3f}" if k != "sampler_pairs_ratio" or math.isfinite(v) else f"{k}=nan"
                   for k, v in out.items()), flush=True)
    return out


if __name__ == "__main__":
    main()
