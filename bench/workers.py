"""One worker with 2 threads against 2 workers with 1 thread each, on the same 16 trials (issue target: <= 1.0).

    python bench/workers.py [--rounds 3] [--trials 16] [--epochs 6] [--finetune-epochs 2] [--image-size 16]
                            [--seed 0] [--keep DIR] [--smoke]

The space is spaces/mobilenet.yaml made smaller (digits at 16 px, students trained ``--epochs`` + fine-tuned
``--finetune-epochs`` epochs, ``distill.kd: false``: no teacher, no KD twins, and ``search.early_stop: false``:
every trial trains to its end, so both arms run exactly the trials given to them and the same work). ``--trials``
distinct configurations are drawn once (seeded) from the space's searched dimensions. Each round runs both arms,
alternated (A B, then B A, ...), each on a fresh SQLite study in a temporary folder into which the same
configurations were enqueued before the clock starts:

    A: python -m autokd search SPACE --storage URL --device cpu --workers 1 --threads 2
    B: python -m autokd search SPACE --storage URL --device cpu --workers 2      (1 thread each on 2 cores)

The time is the wall time of the whole command: process start, imports and data load (once per worker process),
the trials and the final report -- what a user waits for. An arm is timed only when it exits 0 and every enqueued
configuration is COMPLETE exactly once, nothing is left RUNNING and at most N - 1 other (sampled) trials were
COMPLETE (the runner's contract allows trials past the target with several workers; they are counted and printed).
Beside the whole command's time each run shows when the last enqueued trial was COMPLETE (``to_target``, from the
study) and the sum of its trials' own times (``seconds`` of each trial: its training and evaluation), so that the
start-up of the worker processes and the cost of sharing the cores can be told apart.

Last line: ``workers2_time_ratio=<median over rounds of (2 workers / 1 worker), 3 decimals> rounds=<n>
one_worker_s=<median> two_workers_s=<median> to_target_ratio=<median> trial_time_ratio=<median of (sum of the
2 workers' trial times / 2) / (sum of the 1 worker's)> extra_trials=<total in the 2-worker arm>``.
Timings depend on the machine and on what else runs on it: the load average is printed with every run. Two torch
threads in one process suffer much more from other processes on a 2-core machine than two single-thread workers
(a parallel region waits for its slowest thread), so on a busy machine the ratio drops well below what a quiet one
gives; compare rounds with their load, and prefer more rounds (--rounds 5) on a quiet machine.

``--smoke`` (tests/test_benches.py): 1 round of 2 trials of 1 + 1 epochs on 200 training images at 8 px, the one
worker on 1 thread (two threads spin against whatever else runs on a busy machine): seconds, the code paths only.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autokd.space import dimensions, space_from_dict  # noqa: E402

NAME = "bench-workers"


def bench_space(*, trials: int, epochs: int, finetune_epochs: int, image_size: int,
                limit: int | None = None) -> dict[str, Any]:
    """spaces/mobilenet.yaml, smaller: no KD (no teacher, no twins), no early stopping, a few epochs, ``trials``
    trials."""
    space = yaml.safe_load((REPO / "spaces" / "mobilenet.yaml").read_text())
    space["name"] = NAME
    space["dataset"]["image_size"] = image_size
    if limit is not None:
        space["dataset"]["limit"] = limit
    space["distill"] = {"kd": False}
    space["train"]["epochs"] = epochs
    space["compress"]["finetune_epochs"] = finetune_epochs
    space["search"].update(n_trials=trials, sampler="random")
    space["search"].pop("startup_trials", None)
    space["search"].pop("design", None)  # no KD, no twins: nothing to design
    # Early stopping is on by default when KD is not searched: it would stop (PRUNED) some enqueued trials, and the
    # arms would no longer run the same trials to their end.
    space["search"]["early_stop"] = False
    return space


def draw_configs(space: Any, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` distinct parameter sets of the searched dimensions of ``space``, drawn with ``seed``."""
    rng = random.Random(seed)
    seen: set[tuple] = set()
    out: list[dict[str, Any]] = []
    dims = dimensions(space)
    for _ in range(1000 * n):
        params: dict[str, Any] = {}
        for d in dims:
            if d.choices is not None:
                params[d.path] = rng.choice(d.choices)
            elif d.is_int:
                params[d.path] = rng.randrange(d.low, d.high + 1, d.step or 1)
            else:
                params[d.path] = rng.uniform(d.low, d.high)
        key = tuple(sorted((k, repr(v)) for k, v in params.items()))
        if key not in seen:
            seen.add(key)
            out.append(params)
            if len(out) == n:
                return out
    raise SystemExit(f"the space has fewer than {n} distinct configurations")


def _key(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def run_arm(space_path: Path, space: Any, configs: list[dict[str, Any]], workers: int, folder: Path,
            threads: int = 2) -> dict:
    """One timed run of an arm on a fresh study holding ``configs`` as queued trials (one worker: ``threads``
    torch threads)."""
    import optuna
    from optuna.trial import TrialState

    from autokd.study import create_or_load_study, quiet_optuna

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    url = f"sqlite:///{folder / 'study.db'}"
    study = create_or_load_study(space, storage=url)
    with quiet_optuna():
        for params in configs:
            study.enqueue_trial(params)
    del study
    cmd = [sys.executable, "-m", "autokd", "search", str(space_path), "--storage", url, "--device", "cpu",
           "--cache-dir", str(folder / "teachers")]
    cmd += ["--workers", "1", "--threads", str(threads)] if workers == 1 else ["--workers", str(workers)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(NO_COLOR="1", COLUMNS="160")
    log = folder / "log.txt"
    start_wall = time.time()
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{workers} worker(s): exit code {proc.returncode}; see {log}:\n" + log.read_text()[-3000:])
    with quiet_optuna():
        trials = optuna.load_study(study_name=NAME, storage=url).get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    wanted = {_key(p) for p in configs}
    done: dict[tuple, int] = {}
    for t in complete:
        done[_key(t.params)] = done.get(_key(t.params), 0) + 1
    missing = [k for k in wanted if done.get(k, 0) != 1]
    extra = [t for t in complete if _key(t.params) not in wanted]
    running = [t.number for t in trials if t.state == TrialState.RUNNING]
    if missing or running or len(extra) > workers - 1:
        raise SystemExit(f"{workers} worker(s): the study is not the one asked for (enqueued configurations not "
                         f"COMPLETE exactly once: {len(missing)}, extra COMPLETE trials: {len(extra)}, RUNNING: "
                         f"{running}); see {log}")
    last = max(t.datetime_complete for t in complete if _key(t.params) in wanted)
    trial_s = sum(t.user_attrs.get("seconds", 0.0) for t in complete if _key(t.params) in wanted)
    return {"seconds": seconds, "to_target": last.timestamp() - start_wall, "extra": len(extra),
            "trial_s": trial_s, "log": log}


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds of both arms (alternated A B, B A, ...)")
    ap.add_argument("--trials", type=int, default=16, help="configurations enqueued (search.n_trials)")
    ap.add_argument("--epochs", type=int, default=6, help="train.epochs of every trial")
    ap.add_argument("--finetune-epochs", type=int, default=2, help="compress.finetune_epochs of every trial")
    ap.add_argument("--image-size", type=int, default=16, help="dataset.image_size (digits)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the drawn configurations")
    ap.add_argument("--keep", type=Path, default=None, help="keep the studies and logs in this folder")
    ap.add_argument("--smoke", action="store_true",
                    help="1 round, 2 trials of 1 + 1 epochs, 200 images at 8 px: checks that the bench runs")
    args = ap.parse_args(argv)
    threads = 2
    if args.smoke:
        args.rounds, args.trials, args.epochs, args.finetune_epochs, args.image_size, threads = 1, 2, 1, 1, 8, 1

    data = bench_space(trials=args.trials, epochs=args.epochs, finetune_epochs=args.finetune_epochs,
                       image_size=args.image_size, limit=200 if args.smoke else None)
    space = space_from_dict(data)
    configs = draw_configs(space, args.trials, args.seed)
    root = Path(tempfile.mkdtemp(prefix="autokd-bench-workers-")) if args.keep is None else args.keep.resolve()
    root.mkdir(parents=True, exist_ok=True)
    space_path = root / "space.yaml"
    space_path.write_text(yaml.safe_dump(data, sort_keys=False))
    print(f"{args.trials} configurations of {len(dimensions(space))} searched fields, digits {args.image_size}px, "
          f"{args.epochs}+{args.finetune_epochs} epochs, no KD; {os.cpu_count()} cores; {args.rounds} rounds; "
          f"load average {load()}", flush=True)
    times: dict[int, list[float]] = {1: [], 2: []}
    to_target: dict[int, list[float]] = {1: [], 2: []}
    ratios, target_ratios, trial_ratios, extras = [], [], [], 0
    start = time.perf_counter()
    try:
        for r in range(args.rounds):
            order = (1, 2) if r % 2 == 0 else (2, 1)
            got = {}
            for w in order:
                got[w] = run_arm(space_path, space, configs, w, root / f"round{r}-w{w}", threads)
                times[w].append(got[w]["seconds"])
                to_target[w].append(got[w]["to_target"])
                print(f"round {r + 1} {f'1 worker x {threads} threads' if w == 1 else '2 workers x 1 thread'}: "
                      f"{got[w]['seconds']:6.1f}s (last enqueued trial COMPLETE at {got[w]['to_target']:6.1f}s, "
                      f"sum of trial times {got[w]['trial_s']:6.1f}s, extra trials {got[w]['extra']}; "
                      f"load {load()})", flush=True)
            extras += got[2]["extra"]
            ratios.append(got[2]["seconds"] / got[1]["seconds"])
            target_ratios.append(got[2]["to_target"] / got[1]["to_target"])
            trial_ratios.append(got[2]["trial_s"] / 2 / got[1]["trial_s"])
            print(f"round {r + 1}: ratio 2 workers / 1 worker {ratios[-1]:.3f} (to the last enqueued trial "
                  f"{target_ratios[-1]:.3f}, trial times {trial_ratios[-1]:.3f})", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"ratios {' '.join(f'{x:.3f}' for x in ratios)}; median {statistics.median(ratios):.3f}; "
          f"{time.perf_counter() - start:.0f}s in all; load average {load()}")
    print(f"workers2_time_ratio={statistics.median(ratios):.3f} rounds={args.rounds} "
          f"one_worker_s={statistics.median(times[1]):.1f} two_workers_s={statistics.median(times[2]):.1f} "
          f"to_target_ratio={statistics.median(target_ratios):.3f} "
          f"trial_time_ratio={statistics.median(trial_ratios):.3f} extra_trials={extras}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
