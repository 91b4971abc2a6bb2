"""Benchmark of the compression stage on digits: accuracy and cost of pruning x quantization.

    python bench/compress.py [--epochs 6] [--finetune-epochs 2] [--seeds 0 1 2] [--method l1] [--quantizers-only]
                             [--smoke]

Pipeline per seed (the one a trial runs): dense training of the default student -> prune -> QAT wrappers (when
bits < 32) -> fine-tune. The dense model is trained once per seed and copied for every (bits, prune) cell, so the
cells of a seed differ only in their compression. The unpruned 32-bit cell is fine-tuned too, so every cell has
the same number of epochs. Costs are ratios to the dense 32-bit model (FLOPs, BitOps, parameter bytes).

It answers two questions from the issue: is 8-bit within 1 point of 32-bit, and is 2-bit well above chance?
A second table compares the quantizers (``minmax``: min/max ranges; ``lsq``: learned step sizes) at W4A4, W2A4 and
W2A2 (weight and activation bits; first conv and classifier at 8), unpruned, on the same dense models: does LSQ fix
2-bit activations, i.e. bring W2A2 well above chance and within 5 points of W2A4 (the cost of the activations' last
two bits)? The last line is ``name=value`` pairs of that comparison.

``--smoke`` (tests/test_benches.py): 1 seed, 1 + 1 epochs, 200 training images at 8 px: seconds, the code paths
only.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch

from autokd.compress import prune_model, quantize_model
from autokd.data import load_dataset
from autokd.measure import accuracy, cost_metrics
from autokd.models import build_model
from autokd.space import DatasetSpec
from autokd.train import Optim, fit

BITS = (32, 8, 4, 2)
QUANTIZER_CELLS = ((4, 4), (2, 4), (2, 2))  # (weight bits, activation bits)
QUANTIZERS = ("minmax", "lsq")
RATIOS = (0.0, 0.5, 0.75)
STUDENT = dict(width_mult=0.5, depth_mult=1.0, kernel_size=3, expand_ratio=4, conv="depthwise", stages="small")


def mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6, help="dense training epochs (lr 0.05)")
    ap.add_argument("--finetune-epochs", type=int, default=3, help="fine-tune / QAT epochs after compression")
    ap.add_argument("--finetune-lr", type=float, default=0.025, help="the pipeline's default: train.lr / 2")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--method", default="l1", help="pruning importance (l1, l2, random, taylor, bn_scale; "
                    "with NNI: nni-l1, nni-l2, nni-fpgm, nni-taylor)")
    ap.add_argument("--quantizers-only", action="store_true",
                    help="only the minmax vs lsq table (skip the bits x prune grid)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1 is fastest for these tiny models on a shared 2-core machine)")
    ap.add_argument("--smoke", action="store_true",
                    help="1 seed, 1 + 1 epochs, 200 images at 8 px: checks that the bench runs (seconds)")
    args = ap.parse_args(argv)
    image_size, limit = 16, None
    if args.smoke:
        args.epochs, args.finetune_epochs, args.seeds, image_size, limit = 1, 1, [0], 8, 200
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    data = load_dataset(DatasetSpec(name="digits", image_size=image_size, limit=limit))
    shape = tuple(data.train_x.shape[1:])
    calib = (data.train_x[:128], data.train_y[:128])
    print(f"digits {shape[-1]}px: {data.sizes}; student {STUDENT}; dense {args.epochs} ep @ 0.05, "
          f"fine-tune {args.finetune_epochs} ep @ {args.finetune_lr}; pruning '{args.method}'; seeds {args.seeds}; "
          f"{torch.get_num_threads()} thread(s)")

    acc: dict[tuple[int, float], dict[str, list[float]]] = {(b, r): {"val": [], "test": []} for b in BITS
                                                              for r in RATIOS}
    costs: dict[tuple[int, float], dict[str, float]] = {}
    diverged = {cell: 0 for cell in acc}
    dense_cost: dict[str, float] = {}
    t_dense, t_prune, t_ft_epoch = [], [], {b: [] for b in BITS}  # t_ft_epoch: unpruned cells only
    qacc = {(wb, ab, q): {"val": [], "test": []} for wb, ab in QUANTIZER_CELLS for q in QUANTIZERS}
    qdiverged = dict.fromkeys(qacc, 0)
    qcosts: dict[tuple[int, int], dict[str, float]] = {}
    for seed in args.seeds:
        torch.manual_seed(seed)
        dense = build_model("mobilenetv2", num_classes=data.num_classes, in_channels=data.in_channels, **STUDENT)
        t0 = time.perf_counter()
        fit(dense, data.train_x, data.train_y, Optim(epochs=args.epochs, lr=0.05), seed=seed)
        t_dense.append(time.perf_counter() - t0)
        dense_cost = cost_metrics(dense, shape)
        print(f"seed {seed}: dense val {accuracy(dense, data.val_x, data.val_y):.3f} "
              f"({t_dense[-1]:.1f} s)", flush=True)
        for wb, ab in QUANTIZER_CELLS:
            for quantizer in QUANTIZERS:
                torch.manual_seed(seed)
                model = quantize_model(copy.deepcopy(dense), bits=wb, act_bits=ab, quantizer=quantizer)
                qcosts[wb, ab] = cost_metrics(model, shape)
                try:
                    fit(model, data.train_x, data.train_y,
                        Optim(epochs=args.finetune_epochs, lr=args.finetune_lr), seed=seed + 1000)
                except FloatingPointError as exc:
                    qdiverged[wb, ab, quantizer] += 1
                    print(f"  seed {seed} W{wb}A{ab} {quantizer}: {exc}", flush=True)
                    continue
                qacc[wb, ab, quantizer]["val"].append(accuracy(model, data.val_x, data.val_y))
                qacc[wb, ab, quantizer]["test"].append(accuracy(model, data.test_x, data.test_y))
        if args.quantizers_only:
            continue
        for ratio in RATIOS:
            torch.manual_seed(seed)
            pruned = copy.deepcopy(dense)
            t0 = time.perf_counter()
            prune_model(pruned, ratio=ratio, method=args.method, example_input=data.train_x[:1],
                        calibration=calib if args.method in ("taylor", "nni-taylor") else None)
            if ratio > 0:
                t_prune.append(time.perf_counter() - t0)
            for bits in BITS:
                model = quantize_model(copy.deepcopy(pruned), bits=bits)
                costs[bits, ratio] = cost_metrics(model, shape)  # the same for every seed
                t0 = time.perf_counter()
                try:
                    fit(model, data.train_x, data.train_y,
                        Optim(epochs=args.finetune_epochs, lr=args.finetune_lr), seed=seed + 1000)
                except FloatingPointError as exc:  # a trial would fail the same way (FAIL in the study)
                    diverged[bits, ratio] += 1
                    print(f"  seed {seed} bits {bits} prune {ratio}: {exc}", flush=True)
                    continue
                if ratio == 0 and args.finetune_epochs > 0:
                    t_ft_epoch[bits].append((time.perf_counter() - t0) / args.finetune_epochs)
                acc[bits, ratio]["val"].append(accuracy(model, data.val_x, data.val_y))
                acc[bits, ratio]["test"].append(accuracy(model, data.test_x, data.test_y))

    print()
    head = f"{'cell':>5} {'quantizer':>9} | {'val acc %':>13} {'test acc %':>13} | {'BitOps':>7} {'size':>6}"
    print(head)
    print("-" * len(head))
    qmeans: dict[tuple[int, int, str], float] = {}
    for wb, ab in QUANTIZER_CELLS:
        for quantizer in QUANTIZERS:
            cell = (wb, ab, quantizer)
            (vm, vs), (tm, ts) = (mean_sd([100 * a for a in qacc[cell][k]]) for k in ("val", "test"))
            qmeans[cell] = (vm + tm) / 2
            c = qcosts[wb, ab]
            note = f"  ({qdiverged[cell]} of {len(args.seeds)} seeds diverged)" if qdiverged[cell] else ""
            print(f"W{wb}A{ab:<3} {quantizer:>9} | {vm:6.1f} ± {vs:4.1f} {tm:6.1f} ± {ts:4.1f} | "
                  f"{c['bitops'] / dense_cost['bitops']:7.4f} {c['size_bytes'] / dense_cost['size_bytes']:6.3f}{note}")
    print("(unpruned; first conv and classifier at 8 bits; same costs for both quantizers: LSQ's step sizes are "
          "scales, not counted in size)")
    chance = 100.0 / data.num_classes
    w2a2_lsq, w2a2_minmax, w2a4_lsq = qmeans[2, 2, "lsq"], qmeans[2, 2, "minmax"], qmeans[2, 4, "lsq"]
    rescues = w2a2_lsq >= 3 * chance and w2a2_lsq - w2a2_minmax >= 10
    fixes = rescues and w2a4_lsq - w2a2_lsq <= 5
    print(f"W2A2: lsq {w2a2_lsq:.1f}% vs minmax {w2a2_minmax:.1f}% (chance {chance:.0f}%): LSQ "
          f"{'rescues' if rescues else 'does NOT rescue'} 2-bit activations from collapse (>= {3 * chance:.0f}% and "
          f">= 10 points over minmax); W2A4 lsq {w2a4_lsq:.1f}%, {w2a4_lsq - w2a2_lsq:.1f} points above W2A2 lsq -> "
          f"LSQ {'fixes' if fixes else 'does NOT fix'} 2-bit activations (within 5 points of 4-bit ones)")
    if not args.quantizers_only:
        print()
        head = (f"{'bits':>4} {'prune':>5} | {'val acc %':>13} {'test acc %':>13} | "
                f"{'FLOPs':>6} {'BitOps':>7} {'size':>6}")
        print(head)
        print("-" * len(head))
        means: dict[tuple[int, float], float] = {}
        for bits in BITS:
            for ratio in RATIOS:
                (vm, vs), (tm, ts) = (mean_sd([100 * a for a in acc[bits, ratio][k]]) for k in ("val", "test"))
                means[bits, ratio] = (vm + tm) / 2
                c = costs[bits, ratio]
                n_div = diverged[bits, ratio]
                note = f"  ({n_div} of {len(args.seeds)} seeds diverged)" if n_div else ""
                print(f"{bits:>4} {ratio:>5.2f} | {vm:6.1f} ± {vs:4.1f} {tm:6.1f} ± {ts:4.1f} | "
                      f"{c['flops'] / dense_cost['flops']:6.3f} {c['bitops'] / dense_cost['bitops']:7.4f} "
                      f"{c['size_bytes'] / dense_cost['size_bytes']:6.3f}{note}")
        print("(accuracy: mean ± sd over the seeds that finished; costs: ratio to the dense 32-bit model; "
              "size = parameter bytes)")

        print()
        for ratio in RATIOS:
            gap = means[8, ratio] - means[32, ratio]
            print(f"prune {ratio:.2f}: 8-bit minus 32-bit accuracy (mean of val and test): {gap:+.1f} points -> "
                  f"{'within' if abs(gap) <= 1.0 else 'NOT within'} 1 point")
        chance = 100.0 / data.num_classes
        for ratio in RATIOS:
            a2 = means[2, ratio]
            print(f"prune {ratio:.2f}: 2-bit {a2:.1f}% vs chance {chance:.0f}% -> "
                  f"{'well above' if a2 >= 3 * chance else 'NOT well above'} chance (>= {3 * chance:.0f}%)")

    total = time.perf_counter() - t_start
    f32 = statistics.fmean(t_ft_epoch[32]) if t_ft_epoch[32] else float("nan")
    if not args.quantizers_only:
        print()
        print(f"timing: dense training {statistics.fmean(t_dense):.2f} s/seed ({args.epochs} ep); "
              f"prune_model {1000 * statistics.fmean(t_prune):.0f} ms/call (mean of {len(t_prune)})")
        print("fine-tune epoch (unpruned): " + ", ".join(
            f"{b}-bit {statistics.fmean(t_ft_epoch[b]):.2f} s ({statistics.fmean(t_ft_epoch[b]) / f32:.2f}x)"
            for b in BITS if t_ft_epoch[b]))
    print(f"total {total:.0f} s")
    print(" ".join(f"w{wb}a{ab}_{q}={qmeans[wb, ab, q]:.1f}" for wb, ab in QUANTIZER_CELLS for q in QUANTIZERS)
          + f" lsq_rescues_w2a2={'yes' if rescues else 'no'} lsq_fixes_w2a2={'yes' if fixes else 'no'}"
          f" seeds={len(args.seeds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
