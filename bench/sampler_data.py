"""Really trained configurations of a space, for the accuracy surrogate of ``bench/samplers.py``.

    python bench/sampler_data.py [--space spaces/mobilenet.yaml] [--out bench/data/mobilenet_digits_trials.csv]
                                 [--n 400] [--seed 0] [--threads 1] [--fix distill.kd=true] [--cache-dir DIR]
                                 [--smoke]

Every configuration of the space's discrete dimensions (``autokd.space.dimensions``), with the ``--fix`` params
held at their value (default: ``distill.kd`` true), is listed and shuffled once with ``random.Random(--seed)``:
the first ``--n`` of that order are a uniform random draw of distinct configurations. Each is trained exactly as
a search trial trains it, repeat 0: ``run_config(TrialConfig(resolve(space, params), params), inputs)`` with
``inputs = prepare_inputs(space, data, teacher=get_teacher(...))`` -- the space's own epochs, fine-tune, seeds
and every other setting; the teacher ensemble is trained once and cached (``--cache-dir``, default
``$AUTOKD_CACHE_DIR`` or ``studies/teachers``).

Resumable: a row is appended (and flushed) after each configuration; a configuration already in the CSV is
skipped, so an interruption loses at most the one being trained, and a rerun with a larger ``--n`` extends the
same draw. Columns: every searched param (dotted name), ``val_accuracy``, ``test_accuracy``, the cost metrics
(``flops``, ``bitops``, ``size_bytes``, ``params``), ``train_images_per_s``, ``seconds`` (the whole
``run_config``), ``val_curve`` (val accuracy after each epoch of the dense phase then the fine-tune phase,
``;``-separated) and ``loss_curve`` (each epoch's mean training loss, same order). The committed data were made
with ``--n 400`` then ``--n 80 --repeat 1`` (torch 1 thread; 1.3-31 s, median 4.3 s, a
configuration on 2 cores shared with other work).

``--repeat R`` trains the same draw as repeat R instead (its own initialization, data order, views and
calibration streams, as ``train.repeats`` would) into ``--out`` (default ``..._repeat<R>.csv`` beside the
trials file): the first configurations trained twice give the noise between repeats that the surrogate's error
is compared with.

The per-epoch val accuracy is measured by wrapping the ``on_epoch`` callback that ``run_config`` hands to
``autokd.train.fit`` (``predict`` in eval mode restores train mode and consumes no random stream);
``--check-hook`` trains one configuration with and without the wrapper and asserts identical metrics.

Last line: ``rows=<configurations in the CSV> trained=<trained by this run> seconds=<this run's wall time>``.

``--smoke`` (tests/test_benches.py): 1 configuration into a CSV in a temporary folder (not ``bench/data``), with a
teacher of 1 epoch cached there too, students trained 1 + 1 epochs on 200 training images at 8 px: seconds, the
code paths only.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CSV = REPO / "bench" / "data" / "mobilenet_digits_trials.csv"
SMOKE_SETS = ["train.epochs=1", "compress.finetune_epochs=1", "distill.teacher.epochs=1",
              "distill.teacher.ensemble=1", "dataset.image_size=8", "dataset.limit=200"]
METRICS = ["val_accuracy", "test_accuracy", "flops", "bitops", "size_bytes", "params", "train_images_per_s",
           "seconds", "val_curve", "loss_curve"]


def all_configs(space: Any, fixed: dict[str, Any], seed: int) -> tuple[list[str], list[dict[str, Any]]]:
    """(param names, every configuration with ``fixed`` held, in the seeded shuffled order)."""
    from autokd.space import dimensions

    dims = dimensions(space)
    if any(d.choices is None for d in dims):
        raise SystemExit("sampler_data: the space has a continuous dimension; only discrete spaces are listed")
    names = [d.path for d in dims]
    grids = [(fixed[d.path],) if d.path in fixed else d.choices for d in dims]
    configs = [dict(zip(names, values)) for values in itertools.product(*grids)]
    random.Random(seed).shuffle(configs)
    return names, configs


def key_of(params: dict[str, Any], names: list[str]) -> tuple[str, ...]:
    """A configuration's identity as CSV text (the same for a param read back from the file)."""
    return tuple(str(params[n]) for n in names)


def parse_fix(items: list[str]) -> dict[str, Any]:
    from autokd.space import parse_yaml_value

    out = {}
    for item in items:
        name, _, value = item.partition("=")
        out[name] = parse_yaml_value(value)
    return out


def train_one(cfg: Any, inputs: Any, repeat: int = 0) -> dict[str, Any]:
    """``run_config`` of ``cfg`` (as repeat ``repeat``) with the val accuracy after each epoch recorded."""
    import autokd.objective as objective
    from autokd.measure import accuracy

    data, val_curve, loss_curve = inputs.data, [], []
    real_fit = objective.fit

    def fit(model, x, y, opt, *, seed, distill=None, on_epoch=None):
        def hook(epoch, epochs, loss):
            val_curve.append(accuracy(model, data.val_x, data.val_y))
            loss_curve.append(loss)
            if on_epoch is not None:
                on_epoch(epoch, epochs, loss)
        return real_fit(model, x, y, opt, seed=seed, distill=distill, on_epoch=hook)

    objective.fit = fit
    try:
        start = time.perf_counter()
        outcome = objective.run_config(cfg, inputs, repeat=repeat)
        seconds = time.perf_counter() - start
    finally:
        objective.fit = real_fit
    m = dict(outcome.metrics)
    m["seconds"] = round(seconds, 3)
    m["val_curve"] = ";".join(f"{v:.4f}" for v in val_curve)
    m["loss_curve"] = ";".join(f"{v:.4f}" for v in loss_curve)
    return m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default=str(REPO / "spaces" / "mobilenet.yaml"))
    ap.add_argument("--out", default=None, help=f"CSV to extend [default {DEFAULT_CSV.relative_to(REPO)}]")
    ap.add_argument("--repeat", type=int, default=0, help="train the draw as this repeat (noise between repeats)")
    ap.add_argument("--n", type=int, default=400, help="configurations wanted in the CSV (the first N of the draw)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fix", action="append", default=None, help="NAME=VALUE held fixed (default distill.kd=true)")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--check-hook", action="store_true", help="check the val-curve hook changes nothing, then exit")
    ap.add_argument("--smoke", action="store_true",
                    help="1 configuration, tiny training, CSV and teacher cache in a temporary folder: checks that "
                         "the bench runs (seconds)")
    args = ap.parse_args(argv)
    if not args.smoke:
        return _main(args, [])
    tmp = Path(tempfile.mkdtemp(prefix="autokd-sampler-data-"))
    try:
        args.n, args.out, args.cache_dir = 1, str(tmp / "trials.csv"), str(tmp / "teachers")
        return _main(args, SMOKE_SETS)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _main(args: argparse.Namespace, overrides: list[str]) -> int:
    began = time.perf_counter()

    import torch

    from autokd.data import load_dataset
    from autokd.objective import prepare_inputs, run_config, view_pool
    from autokd.sampling import TrialConfig
    from autokd.space import load_space, resolve
    from autokd.teacher import get_teacher

    torch.set_num_threads(args.threads)
    space = load_space(args.space, overrides=overrides)
    fixed = parse_fix(args.fix if args.fix is not None else ["distill.kd=true"])
    names, configs = all_configs(space, fixed, args.seed)
    data = load_dataset(space.dataset)
    pool = view_pool(space, data)
    teacher = get_teacher(space, data, pool=pool, cache_dir=args.cache_dir) if fixed.get("distill.kd", True) \
        else None
    inputs = prepare_inputs(space, data, teacher=teacher, pool=pool)

    if args.check_hook:
        params = next(c for c in configs if c.get("compress.bits") != 32 and c.get("compress.prune_ratio"))
        cfg = TrialConfig(resolve(space, params), params)
        plain = run_config(cfg, inputs).metrics
        hooked = train_one(cfg, inputs)
        same = all(plain[k] == hooked[k] for k in plain if k != "train_images_per_s")
        print(f"check-hook params={params} plain={plain['val_accuracy']:.4f} hooked={hooked['val_accuracy']:.4f} "
              f"curve={hooked['val_curve']} identical={same}")
        return 0 if same else 1

    out = Path(args.out) if args.out else DEFAULT_CSV.with_name(
        DEFAULT_CSV.stem + (f"_repeat{args.repeat}" if args.repeat else "") + DEFAULT_CSV.suffix)
    out.parent.mkdir(parents=True, exist_ok=True)
    done: set[tuple[str, ...]] = set()
    if out.exists() and out.stat().st_size:
        with out.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != names + METRICS:
                raise SystemExit(f"sampler_data: {out} has other columns than {names + METRICS}")
            done = {key_of(row, names) for row in reader}
    wanted = configs[:args.n]
    todo = [c for c in wanted if key_of(c, names) not in done]
    print(f"sampler_data: {len(configs)} configurations, {len(done)} in {out}, {len(todo)} to train", flush=True)
    new = not (out.exists() and out.stat().st_size)
    with out.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names + METRICS)
        if new:
            writer.writeheader()
            f.flush()
        for i, params in enumerate(todo):
            cfg = TrialConfig(resolve(space, params), params)
            m = train_one(cfg, inputs, args.repeat)
            writer.writerow({**params, **{k: m[k] for k in METRICS}})
            f.flush()
            print(f"[{len(done) + i + 1}/{len(wanted)}] {m['seconds']:.1f}s val={m['val_accuracy']:.4f} "
                  f"bitops={m['bitops']:.3g} {params}", flush=True)
    with out.open(newline="") as f:
        rows = sum(1 for _ in csv.DictReader(f))
    print(f"rows={rows} trained={len(todo)} seconds={time.perf_counter() - began:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
