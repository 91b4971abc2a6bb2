"""autokd's overhead on one trial: ``run_config`` against a plain hand-written PyTorch loop doing the same work.

    python bench/overhead.py [--rounds 7] [--threads 2] [--epochs N] [--finetune-epochs N] [--profile] [--smoke]

The configuration ("mobilenet-float"): spaces/mobilenet.yaml with every searched field fixed (``FIXED`` below) --
float (compress.bits 32), unpruned (prune_ratio 0), KD off, model.width_mult 1.0, depth_mult 1.0, kernel_size 3,
expand_ratio 4, depthwise convolutions, label_smoothing 0.1 (so the plain loop has to reproduce it), augmentation
off (no view pool) -- and the space's own training settings: train.epochs 6 dense epochs at lr 0.05, then
compress.finetune_epochs 3 fine-tune epochs at compress.finetune_lr 0.025 (lr / 2: every trial fine-tunes,
compressed or not), SGD (momentum 0.9, Nesterov, weight decay 5e-4), per-step cosine schedule, batch 64, gradient
norm clipped at 5, train.seed 0, repeat 0. ``--epochs`` / ``--finetune-epochs`` shorten both arms for a quick check
(the default, the space's epochs, takes about a minute in all on 2 cores).

The two arms, each timed with ``time.perf_counter`` around one call:

    autokd: run_config(cfg, data, repeat=0, device="cpu")  -- the whole call, as a trial runs it: seeding the
            streams, build_student, fit (dense), fit (fine-tune at lr / 2), model.eval(), accuracy on val and test
            (autokd.measure.accuracy), cost_metrics (FLOPs via FlopCounterMode, BitOps, size, parameters) and the
            training-throughput bookkeeping.
    plain:  a hand-written loop in this file using torch only, plus autokd.models.build_model to build the same
            MobileNetV2 object (the model class is the subject, not the overhead): torch.manual_seed(init seed);
            build; then per phase: torch.manual_seed(phase seed), the model's parameters put in channels_last
            (NHWC, as autokd's fit does on the CPU) and back to the default layout after the phase, a new torch.optim.SGD (same hyperparameters),
            the cosine factor 0.5 * (1 + cos(pi * step / steps)) set on the param group by hand before every step,
            torch.randperm with a torch.Generator seeded with the phase seed for the batch order, a lone straggler
            batch skipped (as fit does), cross entropy with label smoothing, zero_grad(set_to_none=True),
            backward, clip_grad_norm_, step, the epoch's mean loss accumulated on the device and read back once per
            epoch (fit does that and checks it is finite); then eval mode, val and test accuracy under no_grad in
            batches of 1024, and the same four costs computed by hand: FlopCounterMode on one zero image in eval
            mode, BitOps = MACs x 32 x 32 (every layer is float), size = parameters x 4 bytes, parameters.

Outside the timed region (once): loading the space, sampling the configuration with optuna's FixedTrial, loading
and splitting the data (both arms train on the same in-memory tensors), and the stream seeds (the plain arm gets
autokd.train.stream_seed(0, 0, phase) for "init", "train" and "finetune" as three integers), and the plain loop's
settings, read from the resolved configuration as plain numbers (a configuration using what the plain loop does
not implement -- AdamW, one-cycle, KD, augmentation, pruning, quantization -- is refused). Before every timed run:
gc.collect(). Both arms run with the same torch intra-op threads (``--threads``, default 2) in this process.

Rounds alternate the arms (A B, then B A, ...) after one warm-up round that is not counted: the first run in a
process takes about 1.5 s longer on 2 cores whichever arm it is (one-time start-up costs that the later runs of
both arms are spared). Each round prints both times, the ratio autokd / plain and the load average. The two arms
must produce the same model: identical seeds and the same ops in the same order give bitwise-equal weights,
accuracies and costs; every round checks this (``same_accuracy`` compares val and test accuracy exactly; the
weights and costs are compared too and printed).
``--profile`` adds a cProfile of one run of each arm (top functions by own time) before the summary.

Last line: ``overhead_ratio=<median over rounds of autokd / plain, 3 decimals> rounds=<n> autokd_s=<median>
plain_s=<median> same_accuracy=<yes|no>``. Target: overhead_ratio <= 1.05.

``--smoke`` (tests/test_benches.py): 1 round after the warm-up, 1 + 1 epochs on 200 training images at 8 px, 1
thread: seconds, the code paths only (the bitwise comparison included).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import math
import os
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import optuna  # noqa: E402

from autokd.data import Splits, load_dataset  # noqa: E402
from autokd.models import build_model  # noqa: E402
from autokd.objective import run_config  # noqa: E402
from autokd.sampling import TrialConfig, sample  # noqa: E402
from autokd.space import load_space  # noqa: E402
from autokd.train import stream_seed  # noqa: E402

NAME = "mobilenet-float"
SPACE = REPO / "spaces" / "mobilenet.yaml"
FIXED = {"model.width_mult": 1.0, "model.depth_mult": 1.0, "model.kernel_size": 3, "model.expand_ratio": 4,
         "model.conv": "depthwise", "distill.kd": False, "train.label_smoothing": 0.1, "train.augment": False,
         "compress.prune_ratio": 0.0, "compress.bits": 32}
METRICS = ("val_accuracy", "test_accuracy", "flops", "bitops", "size_bytes", "params")


def configuration(epochs: int | None, finetune_epochs: int | None, extra: list[str] = ()) -> TrialConfig:
    overrides = [f"train.epochs={epochs}"] if epochs is not None else []
    overrides += [f"compress.finetune_epochs={finetune_epochs}"] if finetune_epochs is not None else []
    overrides += list(extra)
    space = load_space(SPACE, overrides=overrides + ["search.design=null"])  # every field fixed: nothing to design
    cfg = sample(space, optuna.trial.FixedTrial(FIXED))
    if cfg.params != FIXED:
        raise SystemExit(f"{SPACE} searches other fields than this bench fixes: {sorted(cfg.params)}")
    return cfg


def recipe(cfg: TrialConfig) -> dict[str, Any]:
    """What the plain loop needs, as plain values; refuses what the plain loop does not implement."""
    t, c, m = cfg.train, cfg.compress, cfg.model
    unsupported = {"optimizer": t.optimizer != "sgd", "momentum 0": t.momentum <= 0, "schedule": t.schedule != "cosine",
                   "augment": bool(t.augment), "kd": bool(cfg.distill.kd), "pruning": c.prune_ratio > 0,
                   "quantization": c.bits != 32, "no fine-tune": not c.finetune_epochs}
    if any(unsupported.values()):
        raise SystemExit(f"the plain loop does not implement: {[k for k, v in unsupported.items() if v]}")
    arch = m.model_dump()
    family = arch.pop("family")
    finetune_lr = c.finetune_lr if c.finetune_lr is not None else t.lr / 2
    return {"family": family, "arch": arch, "epochs": t.epochs, "lr": t.lr,
            "finetune_epochs": c.finetune_epochs, "finetune_lr": finetune_lr,
            "batch_size": t.batch_size, "momentum": t.momentum, "weight_decay": t.weight_decay,
            "label_smoothing": t.label_smoothing, "grad_clip": t.grad_clip,
            "seeds": {p: stream_seed(t.seed, 0, p) for p in ("init", "train", "finetune")}}


# ---------------------------------------------------------------------------------------------- the plain arm


def plain_phase(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, r: dict[str, Any], *, epochs: int,
                lr: float, seed: int) -> list[float]:
    torch.manual_seed(seed)
    model.to(memory_format=torch.channels_last)  # trained in NHWC, handed back in the default layout (as fit does)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=r["momentum"],
                          weight_decay=r["weight_decay"], nesterov=True)
    n, bs = len(y), r["batch_size"]
    per_epoch = math.ceil(n / bs)
    steps = epochs * per_epoch
    gen = torch.Generator().manual_seed(seed)
    model.train()
    step, losses = 0, []
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = torch.zeros(())
        for i in range(per_epoch):
            idx = order[i * bs:(i + 1) * bs]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            for group in opt.param_groups:
                group["lr"] = lr * (0.5 * (1 + math.cos(math.pi * step / steps)))
            loss = F.cross_entropy(model(x[idx]), y[idx], label_smoothing=r["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if r["grad_clip"] is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), r["grad_clip"])
            opt.step()
            step += 1
            total += loss.detach() * len(idx)
        losses.append(float(total) / n)
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"diverged: loss {losses[-1]}")
    model.to(memory_format=torch.contiguous_format)
    return losses


@torch.no_grad()
def plain_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    logits = torch.cat([model(x[i:i + 1024]) for i in range(0, len(x), 1024)])
    return float((logits.argmax(1) == y).float().mean())


@torch.no_grad()
def plain_costs(model: torch.nn.Module, shape: tuple[int, ...]) -> dict[str, float]:
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros((1, *shape)))
    flops = counter.get_total_flops()  # 2 x MACs, all of them in Conv2d / Linear layers
    params = sum(p.numel() for p in model.parameters())
    return {"flops": float(flops), "bitops": float(flops // 2 * 32 * 32), "size_bytes": float(params * 4),
            "params": float(params)}


def plain_run(data: Splits, r: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, float]]:
    torch.manual_seed(r["seeds"]["init"])
    model = build_model(r["family"], num_classes=data.num_classes, in_channels=data.in_channels, **r["arch"])
    plain_phase(model, data.train_x, data.train_y, r, epochs=r["epochs"], lr=r["lr"], seed=r["seeds"]["train"])
    plain_phase(model, data.train_x, data.train_y, r, epochs=r["finetune_epochs"], lr=r["finetune_lr"],
                seed=r["seeds"]["finetune"])
    model.eval()
    metrics = {"val_accuracy": plain_accuracy(model, data.val_x, data.val_y),
               "test_accuracy": plain_accuracy(model, data.test_x, data.test_y),
               **plain_costs(model, tuple(data.train_x.shape[1:]))}
    return model, metrics


# ---------------------------------------------------------------------------------------------- the bench


def autokd_run(cfg: TrialConfig, data: Splits) -> tuple[torch.nn.Module, dict[str, float]]:
    out = run_config(cfg, data, repeat=0, device="cpu")
    return out.model, out.metrics


def timed(fn, *args) -> tuple[float, torch.nn.Module, dict[str, float]]:
    gc.collect()
    start = time.perf_counter()
    model, metrics = fn(*args)
    return time.perf_counter() - start, model, metrics


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def profile(label: str, fn, *args, top: int = 15) -> None:
    gc.collect()
    prof = cProfile.Profile()
    prof.enable()
    fn(*args)
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(top)
    lines = [ln for ln in text.getvalue().splitlines() if ln.strip()]
    print(f"profile of one {label} run (top {top} by own time):")
    for ln in lines[lines.index(next(ln for ln in lines if "ncalls" in ln)):]:
        print("  " + ln)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="counted rounds of both arms (alternated A B, B A, ...)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads, the same for both arms")
    ap.add_argument("--epochs", type=int, default=None, help="train.epochs (default: the space's, 6)")
    ap.add_argument("--finetune-epochs", type=int, default=None,
                    help="compress.finetune_epochs (default: the space's, 3)")
    ap.add_argument("--profile", action="store_true", help="also cProfile one run of each arm")
    ap.add_argument("--smoke", action="store_true",
                    help="1 round, 1 + 1 epochs, 200 images at 8 px, 1 thread: checks that the bench runs")
    args = ap.parse_args(argv)
    extra = []
    if args.smoke:
        args.rounds, args.threads, args.epochs, args.finetune_epochs = 1, 1, 1, 1
        extra = ["dataset.image_size=8", "dataset.limit=200"]
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    torch.set_num_threads(args.threads)

    cfg = configuration(args.epochs, args.finetune_epochs, extra)
    r = recipe(cfg)
    data = load_dataset(cfg.dataset)
    arms = {"autokd": (autokd_run, cfg, data), "plain": (plain_run, data, r)}
    print(f"{NAME}: {SPACE.name} with {FIXED}; digits {tuple(data.train_x.shape[1:])}, {len(data.train_y)} training "
          f"images; {r['epochs']} dense epochs @ {r['lr']} + {r['finetune_epochs']} fine-tune epochs @ "
          f"{r['finetune_lr']}; {torch.get_num_threads()} torch thread(s) on {os.cpu_count()} cores; "
          f"{args.rounds} rounds + 1 warm-up; load average {load()}", flush=True)

    times: dict[str, list[float]] = {"autokd": [], "plain": []}
    ratios: list[float] = []
    same_acc = same_w = same_cost = True
    start = time.perf_counter()
    for rnd in range(args.rounds + 1):
        order = ("autokd", "plain") if rnd % 2 == 0 else ("plain", "autokd")
        got = {arm: timed(*arms[arm]) for arm in order}
        (ta, ma, xa), (tp, mp, xp) = got["autokd"], got["plain"]
        acc_ok = all(xa[k] == xp[k] for k in ("val_accuracy", "test_accuracy"))
        w_ok = same_weights(ma, mp)
        cost_ok = all(xa[k] == xp[k] for k in METRICS[2:])
        label = "warm-up" if rnd == 0 else f"round {rnd}"
        print(f"{label} ({' then '.join(order)}): autokd {ta:6.3f}s  plain {tp:6.3f}s  ratio {ta / tp:.3f}  "
              f"val {xa['val_accuracy']:.4f}/{xp['val_accuracy']:.4f} test {xa['test_accuracy']:.4f}/"
              f"{xp['test_accuracy']:.4f} weights {'equal' if w_ok else 'DIFFER'} costs "
              f"{'equal' if cost_ok else 'DIFFER'}; load {load()}", flush=True)
        same_acc, same_w, same_cost = same_acc and acc_ok, same_w and w_ok, same_cost and cost_ok
        if not cost_ok:
            print(f"  costs: autokd {[xa[k] for k in METRICS[2:]]} plain {[xp[k] for k in METRICS[2:]]}")
        if rnd == 0:
            continue
        times["autokd"].append(ta)
        times["plain"].append(tp)
        ratios.append(ta / tp)

    if args.profile:
        for arm in ("autokd", "plain"):
            profile(arm, *arms[arm])
    med = {arm: statistics.median(v) for arm, v in times.items()}
    print(f"ratios {' '.join(f'{x:.3f}' for x in ratios)}; median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}); ratio of the medians {med['autokd'] / med['plain']:.3f}; "
          f"weights {'bitwise equal' if same_w else 'DIFFER'}, costs {'equal' if same_cost else 'DIFFER'} in every "
          f"round; {time.perf_counter() - start:.0f}s in all; load average {load()}")
    print(f"overhead_ratio={statistics.median(ratios):.3f} rounds={len(ratios)} autokd_s={med['autokd']:.3f} "
          f"plain_s={med['plain']:.3f} same_accuracy={'yes' if same_acc else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
