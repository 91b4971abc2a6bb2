"""Simulation check of the KD-orthogonality statistics (autokd.report.orthogonality, autokd.report.stats).

Simulates KD studies with a planted truth and measures, per cell and number of pairs (5, 10, 20, 40):

* coverage of the overall 95% interval of the mean gain (stats.summarize_gain, Student-t);
* coverage of the 90% intervals of level differences (HC3, t with Bell-McCaffrey df), among fitted models;
* type-I error of the dependence test (raw p of the width factor < alpha; also each of its two parts alone,
  the sign-flip bootstrap and the Bell-McCaffrey F) and the family-wise rate (any Holm-corrected p < alpha)
  when the gain depends on nothing;
* power to find the planted dependence; how often the correlated innocent factor is blamed (``interacts``);
* how often ``orthogonal`` is claimed when the planted dependence is 1.5 x the margin, and when the gain is
  constant;
* coverage of the heterogeneity (tau) interval: the MSW-scaled exact-theta interval used, and the modified
  large-sample (MLS) interval it was compared with.

Design: three searched factors, as a search space would have them -- width (0.25 / 1.0, the planted factor),
bits (4 / 32) and augment (none / flip / crop), each level equally likely. Noise SD sigma = margin = 1 point.
Cells:

    constant     gain = 2 pts + N(0, sigma)
    zero         gain = 0 + N(0, sigma)
    t3           gain = 2 pts + sigma * t3 / sqrt(3)           (symmetric heavy tails, same SD)
    skewed       85% N(2 pts, sigma), 15% N(2 pts - 6 sigma, 2 sigma)   (unstable 2-bit runs; reported apart)
    unequal      gain = 2 pts + N(0, sigma), sigma x 3 at width 0.25
    unequal_rare as unequal, but width 0.25 in only 15% of the pairs (a rare, noisy level)
    interaction  gain = 2 pts + 1.5 sigma [width = 0.25] + N(0, sigma); bits agree with width 80% of the time
                 (4 bits with width 0.25), like TPE sampling them together
    interaction_ind  as interaction, with bits sampled independently
    single       as constant, with width as the only factor

    python bench/orthogonality.py [--reps 2000] [--perms 499] [--quick | --smoke] [--jobs 1] [--seed 0]
                                  [--design-only | --no-design]

By default the designed procedure of ``bench/orthogonality_design.py`` (design, internal pilot, plan, analysis)
runs after these cells, with the same --quick / --smoke, --jobs and --seed, and its keys are appended to the last
line; ``--design-only`` runs only it (its keys alone), ``--no-design`` skips it. ``--smoke`` (tests/test_benches.py):
4 replications and 19 sign-flip resamples per row, and the design bench's ``--smoke``: seconds, the code paths only
(rates from 4 replications mean nothing; a rate with no replication to count is ``nan``).

The last line is ``coverage_min=... false_blame=... false_orthogonal=... power40=... orthogonal_null40=...``:

* coverage_min: min coverage of the overall 95% interval over every non-skewed cell and n >= 5;
* false_blame: max over n of P(bits ``interacts`` | model fitted) in ``interaction`` (bits correlated with the
  planted factor), over the n with >= 100 fitted replications (reps/4 when --reps < 400);
* false_orthogonal: max over n and both interaction cells of P(width ``orthogonal`` | fitted) (the planted
  dependence is 1.5 x the margin), same n rule;
* power40: P(width ``interacts``) at 40 pairs in ``interaction_ind`` (difference 1.5 sigma, 3 factors in the
  model, Holm across them); the table also shows it for the correlated design (``interaction``), and a line
  before the last one repeats it;
* orthogonal_null40: P(width ``orthogonal``) at 40 pairs in ``single`` (a two-level factor, constant gain,
  sigma = margin); the same line also gives it with 3 factors in the model (``constant``, Holm across 3),
  which is lower.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scipy import stats as st  # noqa: E402

from autokd.report.orthogonality import analyze, heterogeneity  # noqa: E402
from autokd.report.stats import summarize_gain  # noqa: E402

MARGIN = SIGMA = 0.01
MU = 0.02
DELTA = 1.5 * MARGIN
ALPHA = 0.05
SIZES = (5, 10, 20, 40)
CELLS = ("constant", "zero", "t3", "skewed", "unequal", "unequal_rare", "interaction", "interaction_ind", "single")
AUGMENT = np.array(["none", "flip", "crop"], dtype=object)
WIDTH, BITS, AUG = "model.width_mult", "compress.bits", "train.augment"


def simulate(cell: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict, float, float]:
    """(gains, factors, true mean gain, true width difference 0.25 minus 1.0)."""
    small = rng.random(n) < (0.15 if cell == "unequal_rare" else 0.5)   # width 0.25
    if cell == "interaction":
        low_bits = np.where(rng.random(n) < 0.8, small, ~small)
    else:
        low_bits = rng.random(n) < 0.5
    aug = AUGMENT[rng.integers(0, 3, n)]
    mean, diff = MU, 0.0
    if cell == "t3":
        noise = SIGMA * rng.standard_t(3, n) / math.sqrt(3.0)
    elif cell == "skewed":
        far = rng.random(n) < 0.15
        noise = np.where(far, rng.normal(-6 * SIGMA, 2 * SIGMA, n), rng.normal(0.0, SIGMA, n))
        mean = MU - 0.15 * 6 * SIGMA
    elif cell.startswith("unequal"):
        noise = rng.normal(0.0, SIGMA, n) * np.where(small, 3.0, 1.0)
    else:
        noise = rng.normal(0.0, SIGMA, n)
    if cell == "zero":
        mean = 0.0
    gains = (0.0 if cell == "zero" else MU) + noise
    if cell.startswith("interaction"):
        gains = gains + DELTA * small
        mean, diff = MU + 0.5 * DELTA, DELTA
    factors = {WIDTH: np.where(small, 0.25, 1.0).tolist()}
    if cell != "single":
        factors[BITS] = np.where(low_bits, 4, 32).tolist()
        factors[AUG] = aug.tolist()
    return gains, factors, mean, diff


def _covers(entry: dict, truth_high_minus_low: dict) -> list[bool]:
    out = []
    for d in entry["differences"]:
        truth = truth_high_minus_low.get((d["high"], d["low"]), 0.0)
        out.append(d["ci_low"] <= truth <= d["ci_high"])
    return out


def run_cell(args: tuple[str, int, int, int, int]) -> dict:
    cell, n, reps, perms, seed = args
    c = dict.fromkeys(("cover95", "fitted", "w_cov", "w_cov_n", "b_cov", "b_cov_n", "all_cov", "all_cov_n", "w_p",
                       "w_flip", "w_f", "w_tested", "fwer", "w_orth", "w_int", "b_int", "b_orth", "b_tested"), 0)
    for rep in range(reps):
        rng = np.random.default_rng([seed, CELLS.index(cell), n, rep])
        gains, factors, mean, diff = simulate(cell, n, rng)
        summary = summarize_gain(gains, confidence=0.95, seed=rep)
        c["cover95"] += summary.ci_low is not None and summary.ci_low <= mean <= summary.ci_high
        res = analyze(gains, factors, margin=MARGIN, alpha=ALPHA, n_perm=perms, seed=rep)
        by = {f["factor"]: f for f in res["factors"]}
        c["fitted"] += res["fitted"]
        if not res["fitted"]:
            continue
        truth = {("0.25", "1.0"): diff, ("1.0", "0.25"): -diff}
        for name, entry in by.items():
            if entry["p_interaction"] is None:
                continue
            covers = _covers(entry, truth)
            c["all_cov"] += sum(covers)
            c["all_cov_n"] += len(covers)
            if name == WIDTH:
                c["w_cov"] += sum(covers)
                c["w_cov_n"] += len(covers)
            if name == BITS:
                c["b_cov"] += sum(covers)
                c["b_cov_n"] += len(covers)
        c["fwer"] += any(e["p_adjusted"] is not None and e["p_adjusted"] < ALPHA for e in by.values())
        w = by.get(WIDTH)
        if w is not None and w["p_interaction"] is not None:
            c["w_tested"] += 1
            c["w_p"] += w["p_interaction"] < ALPHA
            c["w_flip"] += w["p_signflip"] < ALPHA
            c["w_f"] += w["p_f"] < ALPHA
            c["w_orth"] += w["verdict"] == "orthogonal"
            c["w_int"] += w["verdict"] == "interacts"
        b = by.get(BITS)
        if b is not None and b["p_interaction"] is not None:
            c["b_tested"] += 1
            c["b_int"] += b["verdict"] == "interacts"
            c["b_orth"] += b["verdict"] == "orthogonal"
    c.update(cell=cell, n=n, reps=reps)
    return c


def mls_interval(s1: float, s2: float, n1: int, n2: int, c: float, confidence: float) -> tuple[float, float]:
    """Modified large-sample interval for c (E[S1] - E[S2]) (Ting et al. 1990; Burdick & Graybill 1992, 3.3),
    the alternative the heterogeneity interval was compared with."""
    a = (1.0 - confidence) / 2.0
    g1, h1 = 1.0 - n1 / st.chi2.ppf(1 - a, n1), n1 / st.chi2.ppf(a, n1) - 1.0
    g2, h2 = 1.0 - n2 / st.chi2.ppf(1 - a, n2), n2 / st.chi2.ppf(a, n2) - 1.0
    f_hi, f_lo = st.f.ppf(1 - a, n1, n2), st.f.ppf(a, n1, n2)
    g12 = ((f_hi - 1.0) ** 2 - g1 ** 2 * f_hi ** 2 - h2 ** 2) / f_hi
    h12 = ((1.0 - f_lo) ** 2 - h1 ** 2 * f_lo ** 2 - g2 ** 2) / f_lo
    est = c * (s1 - s2)
    vl = g1 ** 2 * s1 ** 2 + h2 ** 2 * s2 ** 2 + g12 * s1 * s2
    vu = h1 ** 2 * s1 ** 2 + g2 ** 2 * s2 ** 2 + h12 * s1 * s2
    return est - c * math.sqrt(max(0.0, vl)), est + c * math.sqrt(max(0.0, vu))


def run_tau(args: tuple[int, int, float, int, int]) -> dict:
    """Coverage of the 90% tau interval (heterogeneity(): F interval scaled by MSW) and of the MLS interval it
    was compared with; ``high_miss`` = P(tau_high < tau), the error behind a wrong ``same_everywhere``."""
    k, R, tau, reps, seed = args
    used = miss = mls = same = 0
    for rep in range(reps):
        rng = np.random.default_rng([seed, 99, k, R, int(round(tau * 1e4)), rep])
        Y = rng.normal(0.0, tau, (k, 1)) + rng.normal(0.0, SIGMA, (k, R)) + MU
        h = heterogeneity(Y.tolist(), margin=MARGIN, confidence=0.90)
        used += h["tau_low"] <= tau + 1e-15 and tau - 1e-15 <= h["tau_high"]
        miss += h["tau_high"] < tau - 1e-15
        lo, hi = mls_interval(h["msb"], h["msw"], k - 1, k * (R - 1), 1.0 / R, 0.90)
        mls += math.sqrt(max(0.0, lo)) <= tau + 1e-15 and tau - 1e-15 <= math.sqrt(max(0.0, hi))
        same += h["same_everywhere"]
    return {"k": k, "R": R, "tau": tau, "reps": reps, "used": used / reps, "high_miss": miss / reps,
            "mls": mls / reps, "same": same / reps}


def _rate(num: int, den: int) -> float:
    return num / den if den else float("nan")


def _f(x: float, width: int = 5) -> str:
    return f"{'-':>{width}}" if not math.isfinite(x) else f"{x:{width}.3f}"


def run_design(args: argparse.Namespace) -> str:
    """bench/orthogonality_design.py's main (same --quick / --smoke, --jobs, --seed); its last line's keys as one
    string."""
    import importlib.util

    name = "bench_orthogonality_design"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(os.path.dirname(os.path.abspath(__file__)), "orthogonality_design.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    module = sys.modules[name]
    print(flush=True)
    out = module.main(["--jobs", str(args.jobs), "--seed", str(args.seed)] + (["--quick"] if args.quick else [])
                      + (["--smoke"] if args.smoke else []))
    return " ".join(f"{k}={out[k]:.3f}" if math.isfinite(out[k]) else f"{k}=nan" for k in module.KEYS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2000, help="replications per cell and n (default 2000)")
    ap.add_argument("--perms", type=int, default=499, help="sign-flip resamples per test (default 499)")
    speed = ap.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="300 replications, 199 resamples")
    speed.add_argument("--smoke", action="store_true",
                       help="4 replications, 19 resamples, the design bench's --smoke: checks that the bench runs")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--design-only", action="store_true", help="only bench/orthogonality_design.py")
    which.add_argument("--no-design", action="store_true", help="skip bench/orthogonality_design.py")
    args = ap.parse_args()
    if args.design_only:
        print(run_design(args))
        return
    reps, perms = (300, 199) if args.quick else (4, 19) if args.smoke else (args.reps, args.perms)
    start = time.perf_counter()
    tasks = [(cell, n, reps, perms, args.seed) for cell in CELLS for n in SIZES]
    tau_tasks = [(k, R, tau, reps, args.seed) for R in (2, 3) for k in SIZES for tau in (0.0, MARGIN / 2, MARGIN)]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(run_cell, tasks))
            tau_results = list(pool.map(run_tau, tau_tasks))
    else:
        results = [run_cell(t) for t in tasks]
        tau_results = [run_tau(t) for t in tau_tasks]
    elapsed = time.perf_counter() - start

    print(f"{reps} replications per row; {perms} sign-flip resamples per test (all 2^(n-1) sign patterns when "
          f"that is fewer); margin = sigma = 1 pt; alpha = {ALPHA}; seed {args.seed}")
    print("cov95: overall 95% t interval (summarize_gain). Among fitted models: covD = coverage of the 90% "
          "level-difference intervals (all factors; width; bits); p<a = the width test rejects (raw p; then its "
          "two parts alone: sign flip, Bell-McCaffrey F); FWER = any corrected p < alpha; then verdict rates for "
          "width (orth/int) and for bits (blame = interacts, orth).")
    head = (f"{'cell':<16}{'n':>3} {'fit':>5} {'cov95':>5} | {'covD':>5} {'w':>5} {'bits':>5} | {'p<a':>5} "
            f"{'flip':>5} {'F':>5} {'FWER':>5} | {'w.orth':>6} {'w.int':>5} | {'blame':>5} {'b.orth':>6}")
    print(head)
    print("-" * len(head))
    by = {}
    for r in results:
        by[r["cell"], r["n"]] = r
        fitted = r["fitted"]
        print(f"{r['cell']:<16}{r['n']:>3} {_f(fitted / r['reps'])} {_f(r['cover95'] / r['reps'])} | "
              f"{_f(_rate(r['all_cov'], r['all_cov_n']))} {_f(_rate(r['w_cov'], r['w_cov_n']))} "
              f"{_f(_rate(r['b_cov'], r['b_cov_n']))} | {_f(_rate(r['w_p'], r['w_tested']))} "
              f"{_f(_rate(r['w_flip'], r['w_tested']))} {_f(_rate(r['w_f'], r['w_tested']))} "
              f"{_f(_rate(r['fwer'], fitted))} | {_f(_rate(r['w_orth'], r['w_tested']), 6)} "
              f"{_f(_rate(r['w_int'], r['w_tested']))} | {_f(_rate(r['b_int'], r['b_tested']))} "
              f"{_f(_rate(r['b_orth'], r['b_tested']), 6)}")
    print()
    print("heterogeneity: coverage of the 90% interval of tau (k configurations x R repeats, seed SD = 1 pt): "
          "F interval scaled by MSW (used; hi.miss = P(tau_high < tau), nominal 0.05) and MLS (compared); "
          "same = P(same_everywhere: tau_high < margin/2 = 0.50 pts)")
    print(f"{'k':>3} {'R':>2} {'tau':>5} | {'used':>5} {'hi.miss':>7} | {'MLS':>5} | {'same':>5}")
    for t in tau_results:
        print(f"{t['k']:>3} {t['R']:>2} {100 * t['tau']:5.2f} | {_f(t['used'])} {_f(t['high_miss'], 7)} | "
              f"{_f(t['mls'])} | {_f(t['same'])}")
    print()

    normal_cells = [c for c in CELLS if c != "skewed"]
    coverage_min = min(by[c, n]["cover95"] / by[c, n]["reps"] for c in normal_cells for n in SIZES)
    skewed = {n: by["skewed", n]["cover95"] / reps for n in SIZES}
    least = min(100, max(1, reps // 4))  # rows with fewer fitted replications are too noisy to count
    usable = [n for n in SIZES if by["interaction", n]["b_tested"] >= least]
    false_blame = max((_rate(by["interaction", n]["b_int"], by["interaction", n]["b_tested"]) for n in usable),
                      default=float("nan"))
    usable_w = [(c, n) for c in ("interaction", "interaction_ind") for n in SIZES
                if by[c, n]["w_tested"] >= least]
    false_orth = max((_rate(by[c, n]["w_orth"], by[c, n]["w_tested"]) for c, n in usable_w), default=float("nan"))
    power40 = by["interaction_ind", 40]["w_int"] / reps
    power40_corr = by["interaction", 40]["w_int"] / reps
    orth_null40 = by["single", 40]["w_orth"] / reps
    orth_null40_3 = by["constant", 40]["w_orth"] / reps
    diff_cov = [_rate(by[c, n]["all_cov"], by[c, n]["all_cov_n"]) for c in CELLS for n in SIZES
                if by[c, n]["all_cov_n"] >= least] or [float("nan")]
    nulls = [(c, n) for c in ("constant", "zero", "t3", "skewed", "unequal", "unequal_rare") for n in SIZES
             if by[c, n]["w_tested"] >= least]
    type1 = {key: max((_rate(by[c, n][key], by[c, n]["w_tested"]) for c, n in nulls), default=float("nan"))
             for key in ("w_p", "w_flip", "w_f")}
    se = lambda p: math.sqrt(max(p * (1 - p), 1e-12) / reps)  # noqa: E731
    print("overall 95% interval, skewed outliers (reported apart): "
          + ", ".join(f"n={n}: {v:.3f}" for n, v in skewed.items()))
    print(f"90% level-difference intervals: coverage min {min(diff_cov):.3f}, max {max(diff_cov):.3f} "
          f"(rows with >= {least} intervals)")
    print(f"dependence test, width raw p < {ALPHA} with no dependence (rows with >= {least} tests): max "
          f"{type1['w_p']:.3f}; its parts alone: sign flip {type1['w_flip']:.3f}, Bell-McCaffrey F "
          f"{type1['w_f']:.3f}")
    print(f"false_blame over n = {usable}; false_orthogonal over (cell, n) with >= {least} fitted replications")
    print(f"harder designs (not in the last line): power40 with bits 80% correlated with width "
          f"{power40_corr:.3f}; P(orthogonal) for width at 40 pairs with 3 factors in the model (Holm over 3) "
          f"{orth_null40_3:.3f}")
    print(f"Monte-Carlo SE at {reps} replications: coverage_min +-{se(coverage_min):.3f}, power40 "
          f"+-{se(power40):.3f}, orthogonal_null40 +-{se(orth_null40):.3f}")
    print(f"runtime {elapsed:.0f} s ({args.jobs} process{'es' if args.jobs > 1 else ''})")
    line = (f"coverage_min={coverage_min:.3f} false_blame={false_blame:.3f} false_orthogonal={false_orth:.3f} "
            f"power40={power40:.3f} orthogonal_null40={orth_null40:.3f}")
    print(line, flush=True)
    if not args.no_design:
        print(line + " " + run_design(args))


if __name__ == "__main__":
    main()
