"""Pareto-aware early stopping: hypervolume against cumulative training epochs, plain search vs early stopping, and
the bias early stopping adds to the KD gain (issue 9).

    python bench/early_stop.py [--seeds 3] [--trials 24] [--epochs 6] [--finetune-epochs 3] [--threads 1]
                               [--mode extrapolate|rung] [--margin M] [--width W] [--min-complete N] [--min-epoch E]
                               [--sim-studies 400] [--keep DIR] [--analyze DIR] [--smoke]

**Searches.** spaces/mobilenet.yaml with KD fixed (``distill.kd: false``, ``search.kd_twins: false``: no teacher,
no twins), ``--sampler`` (default: autokd's, GP; TPE before GP became the default) and the demo's 6 + 3 epochs per
trial, run for ``--seeds`` search seeds (``search.seed``). For each seed two arms run side by side, each its own process (``autokd.run_search``, one torch
thread, its own SQLite study), identical except for ``search.early_stop``:

    plain:      early_stop false, until ``--trials`` COMPLETE trials: a budget of B = trials x 9 epochs;
    early_stop: early_stop true (the rule of :mod:`autokd.early_stop` with the settings printed first), until it
                has trained B epochs (then the trial about to start is failed and re-queued untrained, through the
                runner's Ctrl-C handling; it counts 0 epochs).

Cumulative epochs count every epoch a trial trained: 9 for a COMPLETE trial, ``stopped_epoch`` for a stopped one,
0 for a duplicate (pruned untrained). The hypervolume after each COMPLETE trial is
:func:`autokd.report.pareto.hypervolume_2d` of (val accuracy, the cost objective: BitOps) of the trials completed so
far, with one reference for both arms and every seed. The issue's ratios, per seed:

    epoch_ratio = epochs the plain arm needs to reach its own final hypervolume
                  / epochs the early-stopping arm needs to reach 0.98 x that final hypervolume
    hv_ratio    = early-stopping hypervolume / plain hypervolume, both after B epochs

aggregated over seeds as the geometric mean (epoch_ratio; an arm that does not reach the level within B counts
with the bound ``plain epochs / B``, which flatters it) and the mean (hv_ratio). Beside each epoch_ratio the same
quotient for the plain arm against itself (its epochs to its final hypervolume / its epochs to 0.98 x of it,
``without_stopping``) shows how much of the ratio the definition gives with no early stopping at all.

Two references are reported. ``report``: the report's convention (accuracy 0, 1.1 x the largest cost of all runs,
linear cost): the first trials already hold 98% of that area (BitOps span four decades, so it is the rectangle
under the cheapest accurate trial), the plain arm reaches 0.98 x in its first few trials, and epoch_ratio equals
its ``without_stopping`` value: it cannot tell the arms apart. ``log``: accuracy against log10(BitOps), reference
(0.5, log10 of the largest cost + 0.1): every decade of cost counts alike, and the ratios measure the fronts'
differences. The last line gives the report convention's ratios first (the issue's names), then the rest.

**KD bias, simulated.** Studies of 40 configurations proposed in turn; each has a cost (log-uniform over four
decades), a KD-off accuracy (0.85 +- 0.05) and a planted KD gain (2 +- 2 pts) correlated with that accuracy
(rho = -0.5, 0, +0.5); learning curves saturate over the train phase, drop at the fine-tune phase by a random
amount (pruning, quantization) and climb back, with 1 pt of evaluation noise. The first trial of each configuration
(KD on or off at random) runs under :func:`autokd.early_stop.decide` against the trials completed so far; only when
it completes does its twin run (never stopped), making a pair. ``kd_bias`` is the mean over studies of (mean
measured gain over the pairs - mean planted gain over all configurations), in points, the largest in size of the
three rho; without early stopping the same difference is ~0 (printed beside it).

Last line: ``epoch_ratio=<report convention> hv_ratio=<report convention> kd_bias=<pts>
epoch_ratio_without_stopping=... epoch_ratio_log=... epoch_ratio_log_without_stopping=... hv_ratio_log=...
seeds=N seconds=S``. About 7-10 minutes on 2 busy cores (two arms of 2-3 minutes side by side per seed); the
simulation takes seconds.

``--smoke`` (tests/test_benches.py): 1 seed, 2 trials of 1 + 1 epochs on 200 training images at 8 px per arm, 4
simulated studies per cell: seconds, the code paths only (its ratios mean nothing).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autokd.report.pareto import hypervolume_2d  # noqa: E402
from autokd.space import SearchSpec  # noqa: E402

NAME = "bench-early-stop"
DIRECTIONS = ["maximize", "minimize"]
TARGET_FRACTION = 0.98

ARM_SCRIPT = r"""
import json, sys
import torch
from autokd.early_stop import StopRule
from autokd.space import load_space
from autokd.study import run_search
args = json.loads(sys.argv[1])
space = load_space(args["space"], overrides=args["overrides"])
epochs = [0]

def budget(event, **d):
    # the epoch budget of the arm: no new trial once it is spent (the trial about to start is failed and
    # re-queued by the runner's Ctrl-C handling, untrained)
    if event == "trial.epoch":
        epochs[0] += 1
    elif event == "trial.start" and args["budget"] and epochs[0] >= args["budget"]:
        raise KeyboardInterrupt

try:
    result = run_search(space, storage=args["storage"], study_name=args["study"], device="cpu",
                        threads=args["threads"], cache_dir=args["cache"], artifacts=args["artifacts"],
                        stop_rule=StopRule(**args["rule"]), progress=budget)
    print(json.dumps({"complete": result.complete, "stopped": result.stopped, "epochs": epochs[0]}))
except KeyboardInterrupt:
    print(json.dumps({"stopped": "epoch budget", "epochs": epochs[0]}))
"""


def overrides(args: argparse.Namespace, seed: int, early_stop: bool) -> list[str]:
    """spaces/mobilenet.yaml with KD fixed (off: no teacher, no twins), ``--sampler``, the given epochs and budget
    (``--smoke``: 200 training images at 8 px)."""
    return ["distill.kd=false", "search.kd_twins=false", "search.design=null", f"search.sampler={args.sampler}",
            f"search.seed={seed}",
            f"search.n_trials={args.trials}",
            f"train.epochs={args.epochs}", f"compress.finetune_epochs={args.finetune_epochs}",
            f"search.early_stop={'true' if early_stop else 'false'}", f"name={NAME}",
            *(["dataset.image_size=8", "dataset.limit=200"] if getattr(args, "smoke", False) else [])]


def run_arms(args: argparse.Namespace, folder: Path, seed: int) -> dict[str, float]:
    """Both arms of one search seed, side by side (one process each, ``--threads`` threads); their wall times."""
    rule = {"mode": args.mode, "margin": args.margin, "width": args.width, "min_complete": args.min_complete,
            "min_epoch": args.min_epoch}
    procs, started = {}, time.perf_counter()
    for arm, on in (("plain", False), ("early_stop", True)):
        where = folder / f"seed{seed}-{arm}"
        where.mkdir(parents=True, exist_ok=True)
        payload = {"space": str(REPO / "spaces" / "mobilenet.yaml"), "overrides": overrides(args, seed, on),
                   "storage": f"sqlite:///{where / 'study.db'}", "study": NAME, "threads": args.threads,
                   "cache": str(folder / "cache"), "artifacts": str(where / "artifacts"), "rule": rule,
                   "budget": args.trials * (args.epochs + args.finetune_epochs) if on else 0}
        log = open(where / "log.txt", "w")
        procs[arm] = (subprocess.Popen([sys.executable, "-c", ARM_SCRIPT, json.dumps(payload)], cwd=REPO,
                                       stdout=log, stderr=subprocess.STDOUT), log, time.perf_counter())
    walls = {}
    for arm, (proc, log, t0) in procs.items():
        code = proc.wait()
        log.close()
        walls[arm] = time.perf_counter() - t0
        if code != 0:
            text = (folder / f"seed{seed}-{arm}" / "log.txt").read_text()
            raise SystemExit(f"arm {arm} of seed {seed} failed (exit {code}):\n{text[-3000:]}")
    walls["both"] = time.perf_counter() - started
    return walls


def read_arm(where: Path) -> list[dict[str, Any]]:
    """The trials of one arm in order: state, epochs trained, (val accuracy, cost) when COMPLETE."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{where / 'study.db'}")
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        s = t.user_attrs.get("settings") or {}
        full = ((s.get("train", {}).get("epochs", 0) + s.get("compress", {}).get("finetune_epochs", 0))
                * s.get("train", {}).get("repeats", 1))
        if t.state.name == "COMPLETE":
            m = t.user_attrs["metrics"]  # raw BitOps (the study tells Optuna log10 of it)
            rows.append({"number": t.number, "state": "COMPLETE", "epochs": full,
                         "point": [m["val_accuracy"], m["bitops"]]})
        elif "stopped_epoch" in t.user_attrs:
            rows.append({"number": t.number, "state": "STOPPED", "epochs": int(t.user_attrs["stopped_epoch"]),
                         "at": t.user_attrs.get("stopped_at")})
        elif "duplicate_of" in t.user_attrs:
            rows.append({"number": t.number, "state": "DUPLICATE", "epochs": 0})
        else:
            rows.append({"number": t.number, "state": t.state.name, "epochs": 0})
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Hypervolume against cumulative epochs


def hv_curve(rows: list[dict[str, Any]], *, reference: list[float], log_cost: bool = False) -> list[tuple[int, float]]:
    """(cumulative epochs, hypervolume of the COMPLETE trials so far) after each COMPLETE trial (trials in order:
    one worker runs them one after another)."""
    done: list[list[float]] = []
    epochs, out = 0, [(0, 0.0)]
    for r in rows:
        epochs += r["epochs"]
        if r["state"] != "COMPLETE":
            continue
        acc, cost = r["point"][0], r["point"][1]
        done.append([acc, math.log10(cost) if log_cost else cost])
        out.append((epochs, hypervolume_2d(done, directions=DIRECTIONS, reference=reference)))
    return out


def epochs_to(curve: list[tuple[int, float]], level: float) -> int | None:
    """The cumulative epochs at which ``curve`` first reaches ``level`` (None: never)."""
    return next((e for e, h in curve if h >= level * (1 - 1e-12)), None)


def hv_at(curve: list[tuple[int, float]], budget: int) -> float:
    """The hypervolume of ``curve`` once ``budget`` epochs were spent (the trials completed within it)."""
    return max((h for e, h in curve if e <= budget), default=0.0)


def ratios(plain: list[dict[str, Any]], stop: list[dict[str, Any]], *, reference: list[float],
           log_cost: bool = False) -> dict[str, Any]:
    """The issue's two ratios for one seed, plus what the plain search alone gives."""
    cp, cs = hv_curve(plain, reference=reference, log_cost=log_cost), hv_curve(stop, reference=reference,
                                                                               log_cost=log_cost)
    budget, final = cp[-1][0], cp[-1][1]
    plain_full, plain_98 = epochs_to(cp, 1.0 * final), epochs_to(cp, TARGET_FRACTION * final)
    stop_98 = epochs_to([(e, h) for e, h in cs if e <= budget], TARGET_FRACTION * final)
    return {"budget": budget, "plain_hv": final, "stop_hv": hv_at(cs, budget), "plain_epochs_full": plain_full,
            "plain_epochs_98": plain_98, "stop_epochs_98": stop_98,
            "epoch_ratio": plain_full / stop_98 if stop_98 else 0.0,
            "epoch_ratio_no_stopping": plain_full / plain_98 if plain_98 else float("nan"),  # 0: no area at all
            "hv_ratio": hv_at(cs, budget) / final if final > 0 else float("nan")}


def geomean(xs: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(max(x, 1e-9)) for x in xs))


# ----------------------------------------------------------------------------------------------------------------
# KD gain under early stopping, simulated


def simulated_trial(rng: Any, final: float, shape: dict[str, float], *, epochs: tuple[int, int]) -> list[dict]:
    """A learning curve ending at ``final``: a saturating train phase, then a fine-tune phase that starts
    ``shape["drop"]`` below and climbs back (what pruning / quantization do), with evaluation noise."""
    train, finetune = epochs
    before = final + shape["offset"]
    t = [0.1 + (before - 0.1) * (1 - math.exp(-e / shape["tau"])) + rng.normal(0, 0.01) for e in range(1, train + 1)]
    f = [final - shape["drop"] * (1 - k / finetune) + (rng.normal(0, 0.01) if k < finetune else 0.0)
         for k in range(1, finetune + 1)]
    return [{"train": [min(1.0, max(0.0, v)) for v in t], "finetune": [min(1.0, max(0.0, v)) for v in f]}]


def simulated_study(rng: Any, *, rho: float, early_stop: bool, rule: Any, configs: int = 40, gain: float = 0.02,
                    gain_sd: float = 0.02, epochs: tuple[int, int] = (6, 3)) -> dict[str, float] | None:
    """One simulated search with KD twins: ``configs`` configurations in the order a sampler proposes them, each
    with a cost, a KD-off accuracy (quality) and a planted KD gain whose correlation with the quality is ``rho``.
    The first trial of each configuration (KD on or off at random) runs under the early-stopping rule
    (:func:`autokd.early_stop.decide`, against the completed trials so far) when ``early_stop``; when it completes,
    its twin runs to its end (never stopped). Returns the mean measured gain over the pairs and the mean planted gain
    over every configuration (the estimand without early stopping)."""
    from autokd.early_stop import CurvePoint, Reference, decide

    refs: list[Reference] = []
    measured, planted = [], []
    for number in range(configs):
        z = float(rng.normal())
        quality = 0.85 + 0.05 * z  # KD-off accuracy; no clipping: a planted gain is measured as planted
        g = gain + gain_sd * (rho * z + math.sqrt(1 - rho * rho) * rng.normal())
        planted.append(g)
        cost = 10 ** rng.uniform(5, 9)
        shape = {"tau": rng.uniform(0.7, 2.5), "offset": rng.uniform(-0.02, 0.05), "drop": rng.uniform(0.0, 0.4)}
        first_kd = bool(rng.random() < 0.5)
        finals = {kd: quality + (g if kd else 0.0) + rng.normal(0, 0.01) for kd in (True, False)}
        curves = {kd: simulated_trial(rng, finals[kd], shape, epochs=epochs) for kd in (True, False)}
        stopped = False
        if early_stop:
            total = epochs[0] + epochs[1]
            done = 0
            for phase, n in (("train", epochs[0]), ("finetune", epochs[1])):
                for e in range(1, n + 1):
                    done += 1
                    point = CurvePoint(0, phase, e, n, curves[first_kd][0][phase][e - 1])
                    if done < total and decide(point, [cost], refs, rule) is not None:
                        stopped = True
                        break
                if stopped:
                    break
        if stopped:
            continue
        for kd in (first_kd, not first_kd):
            refs.append(Reference(len(refs), (cost,), (finals[kd],), curves[kd]))
        measured.append(finals[True] - finals[False])
    if not measured:
        return None
    return {"pairs": len(measured), "measured": statistics.fmean(measured), "planted": statistics.fmean(planted)}


def kd_bias(*, rho: float, early_stop: bool, rule: Any, studies: int, seed: int = 0) -> dict[str, float]:
    """Mean over ``studies`` simulated studies of (mean measured gain over the pairs - mean planted gain over all
    configurations), in accuracy points, with its standard error and the mean number of pairs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    diffs, pairs = [], []
    for _ in range(studies):
        r = simulated_study(rng, rho=rho, early_stop=early_stop, rule=rule)
        if r is not None:
            diffs.append(100 * (r["measured"] - r["planted"]))
            pairs.append(r["pairs"])
    return {"bias": statistics.fmean(diffs), "se": statistics.stdev(diffs) / math.sqrt(len(diffs)),
            "pairs": statistics.fmean(pairs)}


def summarize(name: str, rs: list[dict[str, Any]]) -> dict[str, float]:
    """Per-seed lines and the aggregate of one hypervolume convention: geometric means of the epoch ratios (an
    arm that never reached the level within the budget counts with the bound ``plain_epochs_full / budget``, an
    overestimate), mean of the hypervolume ratios."""
    for r in rs:
        reached = r["stop_epochs_98"] is not None
        er = r["epoch_ratio"] if reached else r["plain_epochs_full"] / r["budget"]
        r["epoch_ratio_used"] = er
        stop_98 = str(r["stop_epochs_98"]) if reached else f"more than {r['budget']}"
        print(f"  [{name}] seed {r['seed']}: plain reaches its final hv {r['plain_hv']:.6g} after "
              f"{r['plain_epochs_full']} epochs ({TARGET_FRACTION:g}x of it after {r['plain_epochs_98']}); early "
              f"stopping reaches {TARGET_FRACTION:g}x after {stop_98} epochs: epoch_ratio "
              f"{'' if reached else '<'}{er:.2f} (plain alone to {TARGET_FRACTION:g}x: "
              f"{r['epoch_ratio_no_stopping']:.2f}); hv after {r['budget']} epochs {r['stop_hv']:.6g}: hv_ratio "
              f"{r['hv_ratio']:.4f}")
    out = {"epoch_ratio": geomean([r["epoch_ratio_used"] for r in rs]),
           "epoch_ratio_no_stopping": geomean([r["epoch_ratio_no_stopping"] for r in rs]),
           "hv_ratio": statistics.fmean(r["hv_ratio"] for r in rs)}
    print(f"  [{name}] epoch_ratio {out['epoch_ratio']:.2f} (geometric mean; the plain arm against its own "
          f"{TARGET_FRACTION:g}x: {out['epoch_ratio_no_stopping']:.2f}), hv_ratio {out['hv_ratio']:.4f} (mean)")
    return out


def main() -> None:
    from autokd.early_stop import StopRule

    default = StopRule()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="search seeds (search.seed 0, 1, ...)")
    ap.add_argument("--trials", type=int, default=24, help="search.n_trials of the plain arm (its epoch budget)")
    ap.add_argument("--epochs", type=int, default=6, help="train.epochs")
    ap.add_argument("--finetune-epochs", type=int, default=3, help="compress.finetune_epochs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each arm (the arms run side by side)")
    ap.add_argument("--sampler", default=SearchSpec().sampler, help="search.sampler of both arms (default: autokd's)")
    ap.add_argument("--mode", default=default.mode, help="StopRule.mode: extrapolate or rung")
    ap.add_argument("--margin", type=float, default=default.margin)
    ap.add_argument("--width", type=float, default=default.width)
    ap.add_argument("--min-complete", type=int, default=default.min_complete)
    ap.add_argument("--min-epoch", type=int, default=default.min_epoch)
    ap.add_argument("--sim-studies", type=int, default=400, help="simulated studies per KD-bias cell")
    ap.add_argument("--keep", type=Path, default=None, help="keep the studies in DIR")
    ap.add_argument("--analyze", type=Path, default=None, help="analyze the studies kept in DIR (nothing runs)")
    ap.add_argument("--smoke", action="store_true",
                    help="1 seed, 2 trials of 1 + 1 epochs, 200 images at 8 px, 4 simulated studies: checks "
                         "that the bench runs")
    args = ap.parse_args()
    if args.smoke:
        args.seeds, args.trials, args.epochs, args.finetune_epochs, args.sim_studies = 1, 2, 1, 1, 4
    rule = StopRule(mode=args.mode, margin=args.margin, width=args.width, min_complete=args.min_complete,
                    min_epoch=args.min_epoch)
    seeds = list(range(args.seeds))
    start = time.perf_counter()
    print(f"spaces/mobilenet.yaml, distill.kd false, {args.epochs}+{args.finetune_epochs} epochs per trial, "
          f"sampler {args.sampler}, budget {args.trials} trials = {args.trials * (args.epochs + args.finetune_epochs)} epochs; {rule}")
    folder = args.analyze or args.keep or Path(tempfile.mkdtemp(prefix="autokd-early-stop-"))
    try:
        if args.analyze is None:
            for seed in seeds:
                walls = run_arms(args, folder, seed)
                print(f"seed {seed}: plain {walls['plain']:.0f}s, early stopping {walls['early_stop']:.0f}s "
                      f"(side by side, {args.threads} thread(s) each; load {os.getloadavg()[0]:.1f})", flush=True)
        arms = {s: {a: read_arm(folder / f"seed{s}-{a}") for a in ("plain", "early_stop")} for s in seeds}
    finally:
        if args.analyze is None and args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)

    for s in seeds:
        st = arms[s]["early_stop"]
        stops = [r for r in st if r["state"] == "STOPPED"]
        budget = sum(r["epochs"] for r in arms[s]["plain"])
        spent = sum(r["epochs"] for r in st)
        print(f"seed {s}: early stopping ran {sum(r['state'] == 'COMPLETE' for r in st)} complete + {len(stops)} "
              f"stopped trials in {spent} epochs (plain: {sum(r['state'] == 'COMPLETE' for r in arms[s]['plain'])} "
              f"in {budget}); stopped after epoch "
              + ", ".join(f"{e}: {n}" for e, n in sorted(Counter(r["epochs"] for r in stops).items()))
              + f"; {sum((args.epochs + args.finetune_epochs) - r['epochs'] for r in stops)} epochs saved")
    max_cost = max(r["point"][1] for s in seeds for a in arms[s].values() for r in a if r["state"] == "COMPLETE")
    conventions = {
        "report": ([0.0, 1.1 * max_cost], False,
                   "the report's convention: accuracy vs cost, reference (0, 1.1 x the largest cost of all runs)"),
        "log": ([0.5, math.log10(max_cost) + 0.1], True,
                "accuracy vs log10(cost), reference (0.5, log10 of the largest cost + 0.1)"),
    }
    result = {}
    for name, (reference, log_cost, what) in conventions.items():
        print(f"hypervolume, {what}:")
        rs = [{"seed": s, **ratios(arms[s]["plain"], arms[s]["early_stop"], reference=reference, log_cost=log_cost)}
              for s in seeds]
        result[name] = summarize(name, rs)

    print(f"KD gain under early stopping, simulated ({args.sim_studies} studies of 40 configurations per cell; planted "
          "gain 2.0 +- 2.0 pts, correlation rho with the KD-off accuracy; the first trial of each configuration runs "
          "under the rule, its twin only if it completed):")
    biases = {}
    for rho in (-0.5, 0.0, 0.5):
        off = kd_bias(rho=rho, early_stop=False, rule=rule, studies=args.sim_studies)
        on = kd_bias(rho=rho, early_stop=True, rule=rule, studies=args.sim_studies)
        biases[rho] = on["bias"]
        print(f"  rho {rho:+.1f}: mean gain over the pairs - planted mean: {on['bias']:+.2f} pts (se {on['se']:.2f}; "
              f"{on['pairs']:.1f} pairs per study) with early stopping, {off['bias']:+.2f} (se {off['se']:.2f}; "
              f"{off['pairs']:.0f} pairs) without")
    worst = max(biases.values(), key=abs)
    elapsed = time.perf_counter() - start
    print(f"time {elapsed:.0f}s")
    rep, log = result["report"], result["log"]
    print(f"epoch_ratio={rep['epoch_ratio']:.2f} hv_ratio={rep['hv_ratio']:.4f} kd_bias={worst:+.2f} "
          f"epoch_ratio_without_stopping={rep['epoch_ratio_no_stopping']:.2f} epoch_ratio_log={log['epoch_ratio']:.2f} "
          f"epoch_ratio_log_without_stopping={log['epoch_ratio_no_stopping']:.2f} hv_ratio_log={log['hv_ratio']:.4f} "
          f"seeds={len(seeds)} seconds={elapsed:.0f}")


if __name__ == "__main__":
    main()
