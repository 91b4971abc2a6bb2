"""The default demo's trial time: the code of this working tree against a pinned baseline commit.

    python bench/demo_time.py [--rounds 2] [--baseline REV] [--threads 2] [--space spaces/mobilenet.yaml] [--smoke]

Target (issue): the default demo's 24 trials take <= 0.75x the trial time of the baseline, with the same
accuracies within noise.

The two arms:

    baseline: ``git worktree add --detach TMP/baseline BASELINE_COMMIT`` (``--baseline REV`` overrides the pinned
              commit), removed at the end (``git worktree remove --force``, also after an error);
    current:  this working tree (the folder above ``bench/``), uncommitted changes included.

Each arm runs its own code in its own process: ``python -c`` with the arm's folder first on ``sys.path`` (and as
PYTHONPATH and cwd), so the editable install of autokd in the venv does not shadow the baseline's package; every
process asserts that ``autokd.__file__`` lies in its arm's folder (printed once per arm by the check run).
Both arms use the same interpreter (this one) and the same ``--threads`` (torch intra-op threads; 2 by default).

The configurations: 12 distinct configurations with ``distill.kd`` true, drawn once with a seeded
``random.Random(--seed)`` over ``autokd.space.dimensions(space)`` (no sampler: numeric differences between the
arms would otherwise steer TPE to other model sizes), each followed by its KD twin (the same settings with kd
false, enqueued with ``user_attrs={"twin_of": n}`` as the search enqueues twins) -- 24 trials, the demo's count.
For every (arm, round) a fresh study is created in a fresh SQLite file by the arm's own
``autokd.study.create_or_load_study`` (its space hash and attributes), the 24 parameter sets are enqueued, and the
arm's ``autokd search SPACE --storage ... --device cpu --threads T --cache-dir TMP/cache-<arm>`` runs them (the
search target is 24 COMPLETE trials, so it runs exactly the enqueued trials). Checked afterwards: exactly 24
COMPLETE trials, whose parameters are exactly the 24 enqueued, and no trial in any other state.

Each arm reads its own copy of the space file with ``--set search.n_trials=24`` and, where the arm's file has a
``search.design`` (the current demo space runs a 24-point design first; the baseline's code predates the field and
cannot read it), ``--set search.design=null``: both arms run exactly the enqueued trials, nothing else. The study
setup loads the space with the same overrides (the same space hash as the search).

Untimed, once per arm before the rounds: a warm-up search of one trial (``search.kd_twins=false``, a throwaway
study) that trains and caches the teacher ensemble in the arm's cache folder and prints ``autokd.__file__``.

The measure: the sum of the 24 trials' ``seconds`` user attribute (each trial's own perf_counter time around its
training and evaluation: the "trial time"); the process's wall time (start-up, data, cached teacher, report
included) is printed beside it. Rounds alternate the order (baseline first, then current first, ...). Each round
prints both sums, their ratio, the mean val accuracy of each arm and the mean absolute per-configuration
difference of val accuracy between the arms.

Last line: ``demo_time_ratio=<median over rounds of current / baseline trial-time sums, 3 decimals> rounds=<n>
baseline_s=<median> current_s=<median> val_acc_baseline=<mean> val_acc_current=<mean> val_acc_diff_pts=<mean
per-configuration difference, current - baseline, round 0> diff_ci_pts=<its 95% Student-t interval>``.

``--smoke`` (tests/test_benches.py): no baseline worktree -- the current arm alone, its numbers standing in for the
baseline's (ratio 1 by construction) -- 2 configurations + twins, 1 round, 1 thread, students 1 + 1 epochs and one
teacher of 1 epoch on 200 training images at 8 px: seconds, the code paths only (warm-up, setup, search, checks,
the last line).
"""

from __future__ import annotations

import argparse
import json
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

import scipy.stats
import yaml

REPO = Path(__file__).resolve().parents[1]
# The last commit before any speed work (git rev-parse 53e2d05).
BASELINE_COMMIT = "53e2d05828573afd746953a403a25f2254d90155"
N_CONFIGS = 12  # each with its KD twin: 24 trials
SMOKE_CONFIGS = 2
SMOKE_SETS = ["train.epochs=1", "compress.finetune_epochs=1", "distill.teacher.epochs=1",
              "distill.teacher.ensemble=1", "dataset.image_size=8", "dataset.limit=200"]
KD = "distill.kd"

# Run inside an arm's process: import that arm's autokd, check where it came from, then run its code.
PRELUDE = """
import sys, os
root = os.path.realpath(sys.argv[1])
sys.path.insert(0, root)
import autokd
where = os.path.realpath(autokd.__file__)
assert where.startswith(root + os.sep), f"autokd imported from {where}, not from {root}"
"""

CLI = PRELUDE + """
if os.environ.get("DEMO_TIME_SHOW_WHERE"):
    print("autokd.__file__ =", where, flush=True)
from autokd.cli import main
sys.exit(main(sys.argv[2:]))
"""

SETUP = PRELUDE + """
import json
from autokd.space import load_space
from autokd.study import create_or_load_study
from autokd.study.storage import quiet_optuna
space = load_space(sys.argv[2], overrides=json.loads(sys.argv[5]))
study = create_or_load_study(space, storage=sys.argv[3])
with quiet_optuna():
    for pair in json.loads(sys.argv[4]):
        first = len(study.trials)
        study.enqueue_trial(pair[0])
        study.enqueue_trial(pair[1], user_attrs={"twin_of": first})
print(len(study.trials), "trials enqueued", flush=True)
"""


def draw_configs(space_path: Path, seed: int, n: int = N_CONFIGS) -> list[list[dict[str, Any]]]:
    """``n`` distinct configurations with kd on, each with its twin (kd off), drawn with a seeded RNG (no TPE)."""
    sys.path.insert(0, str(REPO))
    from autokd.space import dimensions, load_space

    dims = dimensions(load_space(space_path))
    paths = [d.path for d in dims]
    if KD not in paths:
        raise SystemExit(f"{space_path}: {KD} is not searched")
    for d in dims:
        if d.choices is None:
            raise SystemExit(f"{space_path}: {d.path} is not categorical; this bench draws categorical fields only")
    rng = random.Random(seed)
    seen: set[tuple] = set()
    pairs = []
    while len(pairs) < n:
        params = {d.path: (True if d.path == KD else rng.choice(list(d.choices))) for d in dims}
        key = tuple(sorted((k, repr(v)) for k, v in params.items()))
        if key in seen:
            continue
        seen.add(key)
        pairs.append([params, {**params, KD: False}])
    return pairs


def arm_sets(space_file: Path, n_trials: int, extra: list[str] = ()) -> list[str]:
    """The ``--set`` overrides under which an arm's own space file runs exactly the enqueued trials: the budget
    ``n_trials`` and, when the file has a ``search.design``, no design (the baseline's code cannot read the field,
    so it is named only where the file has it); then ``extra``."""
    data = yaml.safe_load(space_file.read_text(encoding="utf-8")) or {}
    design = "design" in (data.get("search") or {})
    return (["search.design=null"] if design else []) + [f"search.n_trials={n_trials}", *extra]


def key_of(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def env_for(root: Path, show: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONHASHSEED"] = "0"
    env["COLUMNS"] = "160"
    if show:
        env["DEMO_TIME_SHOW_WHERE"] = "1"
    return env


def run(args: list[str], root: Path, *, show: bool = False, what: str) -> tuple[str, float]:
    start = time.perf_counter()
    p = subprocess.run([sys.executable, *args], cwd=root, env=env_for(root, show), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
        raise SystemExit(f"{what} failed (exit {p.returncode})")
    return p.stdout, wall


def search_args(root: Path, space: Path, storage: str, cache: Path, threads: int, sets: list[str]) -> list[str]:
    return ["-c", CLI, str(root), "search", str(space), "--storage", storage, "--device", "cpu",
            "--threads", str(threads), "--cache-dir", str(cache), *[a for s in sets for a in ("--set", s)]]


def read_trials(db: Path, pairs: list[list[dict[str, Any]]]) -> tuple[float, dict[tuple, float]]:
    """The sum of the trials' seconds and each configuration's val accuracy; checks exactly the 24 ran."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{db}"
    (summary,) = optuna.study.get_all_study_summaries(storage, include_best_trial=False)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    states = sorted({t.state.name for t in trials})
    if states != ["COMPLETE"]:
        raise SystemExit(f"{db}: trial states {states}, expected only COMPLETE")
    want = sorted(key_of(p) for pair in pairs for p in pair)
    got = sorted(key_of(t.params) for t in trials)
    if got != want:
        raise SystemExit(f"{db}: {len(got)} COMPLETE trials whose parameters differ from the {len(want)} enqueued")
    seconds = sum(float(t.user_attrs["seconds"]) for t in trials)
    acc = {key_of(t.params): float(t.user_attrs["metrics"]["val_accuracy"]) for t in trials}
    return seconds, acc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--baseline", default=BASELINE_COMMIT, help="baseline revision (default: the pinned commit)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--space", type=Path, default=REPO / "spaces" / "mobilenet.yaml")
    ap.add_argument("--seed", type=int, default=0, help="seed of the draw of the 12 configurations")
    ap.add_argument("--smoke", action="store_true",
                    help="no baseline worktree (the current arm alone), 2 configurations, 1 round, tiny training: "
                         "checks that the bench runs (seconds)")
    a = ap.parse_args()
    n_configs, extra = N_CONFIGS, []
    if a.smoke:
        a.rounds, a.threads, n_configs, extra = 1, 1, SMOKE_CONFIGS, SMOKE_SETS

    space = a.space.resolve()
    rel = space.relative_to(REPO)  # the same space file inside each arm
    pairs = draw_configs(space, a.seed, n_configs)
    if a.smoke:
        commit = None
        print(f"smoke: no baseline worktree, the current arm ({REPO}) stands in for the baseline; {len(pairs)} "
              f"configurations + twins = {2 * len(pairs)} trials; {a.threads} thread(s); {a.rounds} round(s); "
              f"{' '.join(extra)}", flush=True)
    else:
        commit = subprocess.run(["git", "rev-parse", "--verify", a.baseline + "^{commit}"], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout.strip()
        print(f"baseline {commit}, current {REPO} (working tree); {len(pairs)} configurations + twins = "
              f"{2 * len(pairs)} trials; {a.threads} threads; {a.rounds} rounds", flush=True)
    for i, (p, _) in enumerate(pairs):
        print(f"  config {i:2d}: " + " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in p.items() if k != KD))

    tmp = Path(tempfile.mkdtemp(prefix="demo_time-"))
    worktree = tmp / "baseline"
    added = False
    try:
        if commit is not None:
            subprocess.run(["git", "worktree", "add", "--detach", str(worktree), commit], cwd=REPO, check=True,
                           capture_output=True, text=True)
            added = True
            arms = {"baseline": worktree, "current": REPO}
        else:
            arms = {"current": REPO}
        sets = {}
        for name, root in arms.items():
            if not (root / rel).exists():
                raise SystemExit(f"{name}: {rel} does not exist at {root}")
            sets[name] = arm_sets(root / rel, 2 * len(pairs), extra)
            print(f"{name}: {rel} with --set {' --set '.join(sets[name])}", flush=True)
            # Untimed warm-up: the teacher is trained and cached once per arm; prints where autokd came from.
            out, wall = run(search_args(root, root / rel, f"sqlite:///{tmp}/warmup-{name}.db", tmp / f"cache-{name}",
                                        a.threads, [*sets[name], "search.n_trials=1", "search.kd_twins=false"]),
                            root, show=True, what=f"{name} warm-up")
            print(f"{name}: {out.splitlines()[0]} (warm-up {wall:.1f}s, teacher cached)", flush=True)

        per_round: list[dict[str, Any]] = []
        for r in range(a.rounds):
            order = ["baseline", "current"] if r % 2 == 0 else ["current", "baseline"]
            res: dict[str, Any] = {}
            for name in (n for n in order if n in arms):
                root = arms[name]
                db = tmp / f"r{r}-{name}.db"
                storage = f"sqlite:///{db}"
                run(["-c", SETUP, str(root), str(root / rel), storage, json.dumps(pairs), json.dumps(sets[name])],
                    root, what=f"{name} study setup")
                _, wall = run(search_args(root, root / rel, storage, tmp / f"cache-{name}", a.threads, sets[name]),
                              root, what=f"{name} search (round {r})")
                seconds, acc = read_trials(db, pairs)
                res[name] = {"seconds": seconds, "wall": wall, "acc": acc}
                print(f"round {r} {name:8s}: trial time {seconds:7.1f}s  wall {wall:7.1f}s  "
                      f"mean val acc {100 * statistics.fmean(acc.values()):.2f}%", flush=True)
            if "baseline" not in res:  # --smoke: the current arm stands in for the baseline
                res["baseline"] = res["current"]
            b, c = res["baseline"], res["current"]
            diff = statistics.fmean(abs(c["acc"][k] - b["acc"][k]) for k in b["acc"])
            res["ratio"] = c["seconds"] / b["seconds"]
            print(f"round {r}: ratio current/baseline {res['ratio']:.3f}  (wall {c['wall'] / b['wall']:.3f})  "
                  f"mean |val acc diff| per configuration {100 * diff:.2f} pts  load {os.getloadavg()[0]:.2f}",
                  flush=True)
            per_round.append(res)
    finally:
        if added:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)

    def med(arm: str) -> float:
        return statistics.median(x[arm]["seconds"] for x in per_round)

    def acc(arm: str) -> float:
        return statistics.fmean(v for x in per_round for v in x[arm]["acc"].values())

    # Same accuracies within noise? Each arm is deterministic (every round trains the same 24 models), so the
    # arms differ only where their arithmetic differs (layouts, kernels): the paired per-configuration difference
    # of round 0, its mean and 95% Student-t interval, in points.
    first = per_round[0]
    diffs = [100 * (first["current"]["acc"][k] - first["baseline"]["acc"][k]) for k in first["baseline"]["acc"]]
    mean_diff = statistics.fmean(diffs)
    half = scipy.stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    print(f"val accuracy, current - baseline, per configuration: mean {mean_diff:+.2f} pts, 95% CI "
          f"{mean_diff - half:+.2f} .. {mean_diff + half:+.2f} (n={len(diffs)}; sd {statistics.stdev(diffs):.2f})")
    print(f"demo_time_ratio={statistics.median(x['ratio'] for x in per_round):.3f} rounds={len(per_round)} "
          f"baseline_s={med('baseline'):.1f} current_s={med('current'):.1f} "
          f"val_acc_baseline={acc('baseline'):.4f} val_acc_current={acc('current'):.4f} "
          f"val_acc_diff_pts={mean_diff:+.2f} diff_ci_pts={mean_diff - half:+.2f}..{mean_diff + half:+.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
