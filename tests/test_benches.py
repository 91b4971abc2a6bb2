"""Benches cannot rot: every ``bench/*.py`` runs its ``--smoke`` mode (tiny sizes, seconds, on the CPU) as a
subprocess from the repository root, exits 0 and ends with its usual last line: ``name=value`` pairs with exactly the
keys of a full run, each value a number (``nan``/``inf`` included) or the non-numeric value its docstring names.

The scripts are found by glob, so a new bench fails here until it has a ``--smoke`` mode and its keys are listed
in ``LAST_LINE`` below."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHES = sorted(p.stem for p in (REPO / "bench").glob("*.py"))
TIMEOUT = 300  # seconds per bench; each smoke run takes seconds, this only catches a hang


def number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def one_of(*words: str):
    return lambda value: value in words


def matches(pattern: str):
    return lambda value: re.fullmatch(pattern, value) is not None


def number_or_more_than(value: str) -> bool:
    """samplers.py's trial counts: a median number of trials, or ``>BUDGET`` when most runs never got there."""
    return number(value) or re.fullmatch(r">\d+", value) is not None


NUM = number
YES_NO = one_of("yes", "no")
INTERVAL = matches(r"[+-]?\d+\.\d+\.\.[+-]?\d+\.\d+")  # demo_time.py's diff_ci_pts: low..high
DESIGN = {k: NUM for k in ("design_coverage_min", "design_overall_coverage_min", "design_reached_min",
                           "design_false_orthogonal", "design_undetermined5", "sampler_pairs_ratio")}
SAMPLERS = ("tpe", "nsga2", "random", "gp")

# bench -> {key of its last line: check of the value}
LAST_LINE: dict[str, dict] = {
    "compress": {**{f"w{w}a{a}_{q}": NUM for w, a in ((4, 4), (2, 4), (2, 2)) for q in ("minmax", "lsq")},
                 "lsq_rescues_w2a2": YES_NO, "lsq_fixes_w2a2": YES_NO, "seeds": NUM},
    "demo_time": {"demo_time_ratio": NUM, "rounds": NUM, "baseline_s": NUM, "current_s": NUM,
                  "val_acc_baseline": NUM, "val_acc_current": NUM, "val_acc_diff_pts": NUM, "diff_ci_pts": INTERVAL},
    "early_stop": {k: NUM for k in ("epoch_ratio", "hv_ratio", "kd_bias", "epoch_ratio_without_stopping",
                                    "epoch_ratio_log", "epoch_ratio_log_without_stopping", "hv_ratio_log", "seeds",
                                    "seconds")},
    "gpu": {**{k: NUM for k in ("student_images_per_s", "kd_images_per_s", "teacher_images_per_s", "trial_hours",
                                "study_days", "channels_last_ratio", "bf16_ratio")},
            "deterministic": YES_NO, "device": matches(r"[a-z]+")},
    "kd_cost": {"kd_cost_ratio": NUM, "teacher_per_batch_ratio": NUM,
                **{f"ratio_{m}": NUM for m in ("dist", "logit_std", "at", "fitnets", "pkt")},
                **{f"peak_mb_{m}": NUM for m in ("off", "hinton", "dist", "logit_std", "at", "fitnets", "pkt")},
                "configs": NUM, "repeats": NUM},
    "kill9": {**{k: NUM for k in ("kills", "lost", "changed", "running_left", "complete", "tmp_left",
                                  "broken_pairs", "retries", "models_load")},
              "teacher_cache": matches(r"[a-z-]+")},
    "orthogonality": {**{k: NUM for k in ("coverage_min", "false_blame", "false_orthogonal", "power40",
                                          "orthogonal_null40")}, **DESIGN},
    "orthogonality_design": DESIGN,
    "overhead": {"overhead_ratio": NUM, "rounds": NUM, "autokd_s": NUM, "plain_s": NUM, "same_accuracy": YES_NO},
    "sampler_data": {"rows": NUM, "trained": NUM, "seconds": NUM},
    "scale": {k: NUM for k in ("bookkeeping_ratio_10k", "ask_s_1000", "ask_s_3000", "report_s_5000",
                               "hv_ratio_capped")},
    "samplers": {"trials_to_random100": number_or_more_than, "best": one_of(*SAMPLERS),
                 **{s: number_or_more_than for s in SAMPLERS}, **{f"ratio_{s}": NUM for s in SAMPLERS}},
    "workers": {k: NUM for k in ("workers2_time_ratio", "rounds", "one_worker_s", "two_workers_s", "to_target_ratio",
                                 "trial_time_ratio", "extra_trials")},
}


def parse_last_line(line: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for pair in line.split():
        key, sep, value = pair.partition("=")
        assert sep and key and value, f"not name=value: {pair!r} in {line!r}"
        assert key not in fields, f"{key} twice in {line!r}"
        fields[key] = value
    return fields


def test_every_bench_is_listed():
    assert BENCHES, "no bench/*.py found"
    assert sorted(LAST_LINE) == BENCHES, "a bench was added or removed: list its last line's keys in LAST_LINE"


def test_parse_last_line():
    assert parse_last_line("a=1 b=yes c=-0.45..+0.59") == {"a": "1", "b": "yes", "c": "-0.45..+0.59"}
    assert NUM("nan") and NUM("inf") and NUM("+0.07") and not NUM("yes")
    assert INTERVAL("-0.45..+0.59") and not INTERVAL("0.1")
    assert number_or_more_than(">100") and number_or_more_than("34") and not number_or_more_than("many")


# What a smoke run must also show (beyond its keys): the properties a bench exists to check, where its tiny run
# can show them.
VALUES: dict[str, dict[str, str]] = {
    "gpu": {"deterministic": "yes"},  # same seeds, same weights, bit for bit
    "kill9": {"lost": "0", "changed": "0", "running_left": "0", "tmp_left": "0", "broken_pairs": "0",
              "teacher_cache": "loads"},
}

_RUNS: dict[str, Future] = {}
_POOL = ThreadPoolExecutor(max_workers=2)  # two smoke runs at a time on 2 cores: most of each is imports


def _smoke(name: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "160", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, f"bench/{name}.py", "--smoke"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


def smoke_run(name: str) -> subprocess.CompletedProcess:
    """``bench/<name>.py --smoke``; the first call starts every bench's (two at a time), so they overlap."""
    if not _RUNS:
        for bench in BENCHES:
            _RUNS[bench] = _POOL.submit(_smoke, bench)
    return _RUNS[name].result(timeout=TIMEOUT * len(BENCHES))


@pytest.mark.parametrize("name", BENCHES)
def test_bench_smoke(name: str):
    expected = LAST_LINE.get(name)
    assert expected is not None, f"bench/{name}.py: list its last line's keys in LAST_LINE of {Path(__file__).name}"
    proc = smoke_run(name)
    tail = f"\n--- stdout (end) ---\n{proc.stdout[-3000:]}\n--- stderr (end) ---\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"bench/{name}.py --smoke exited {proc.returncode}{tail}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"bench/{name}.py --smoke printed nothing{tail}"
    fields = parse_last_line(lines[-1])
    assert set(fields) == set(expected), (f"bench/{name}.py: keys {sorted(fields)}, expected {sorted(expected)}"
                                          f"{tail}")
    bad = {k: v for k, v in fields.items() if not expected[k](v)}
    assert not bad, f"bench/{name}.py: values that are not what its docstring says: {bad}{tail}"
    wrong = {k: fields[k] for k, v in VALUES.get(name, {}).items() if fields[k] != v}
    assert not wrong, f"bench/{name}.py: {wrong}, expected {VALUES[name]}{tail}"
