"""Training throughput on a device, from CIFAR-shaped synthetic tensors (no dataset, no network).

    python bench/gpu.py [--device auto|cpu|cuda|cuda:N] [--images N] [--epochs 3] [--threads T] [--smoke]

What is timed, each with autokd's own training loop (``autokd.train.fit``: the loop every trial runs) after one
untimed warm-up epoch, over ``--epochs`` epochs (3) of ``--images`` images (default 50,000 on CUDA -- CIFAR-100's
training split -- and 1,024 on the CPU, so that the CPU run takes minutes; images/s does not depend on it beyond
warm-up effects). Images are ``torch.randn(N, 3, 32, 32)``, labels ``randint(100)``, seeded, on the device:

    student:  the student of ``spaces/cifar100-mobilenet.yaml`` at its largest setting (width 1.0, depth 1.0,
              kernel 5, expand 6, depthwise; dropout 0.1), batch 128, SGD, its lr fixed at 0.05;
    kd:       a ResNet-20 student (resnet width 16, 3 blocks per stage) distilled from a ResNet-56 teacher
              (width 16, 9 blocks per stage): the teacher's logits over the images computed once (timed apart,
              ``teacher_images_per_s``: autokd caches them, see autokd/teacher.py) and the student's KD step
              (``fit`` with ``Distillation``: soft targets at T=4, alpha 0.9), batch 128.

Each is timed in both memory layouts (``channels_last``, autokd's choice on every device, and the default NCHW)
and, on CUDA, in both precisions (``train.precision`` fp32 and bf16). Deterministic settings as a search uses them
(``autokd.device.make_deterministic``), and a check that they hold: the student trained twice for one epoch from
the same seed must end with bitwise-equal weights (``deterministic=yes|no``).

Extrapolated: one trial of the CIFAR-100 space = (train.epochs 120 + compress.finetune_epochs 2) x 45,000 training
images x train.repeats 2 at the student's images/s (fp32, channels_last; data, evaluation and saving left out),
and a 100-trial study = 100 such trials on one device.

Last line: ``student_images_per_s=… kd_images_per_s=… teacher_images_per_s=… trial_hours=… study_days=…
channels_last_ratio=<student time in channels_last / NCHW> bf16_ratio=<bf16 / fp32 time, CUDA only, else nan>
deterministic=yes|no device=…``.

``--smoke`` (tests/test_benches.py): 16 images (unless ``--images`` says otherwise), 1 epoch, 1 CPU thread (unless
``--threads`` says otherwise), on whatever device ``--device`` resolves to (the CPU where there is no CUDA):
seconds, the code paths only.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import autokd.train as train  # noqa: E402
from autokd.device import make_deterministic, resolve_device  # noqa: E402
from autokd.models import build_model  # noqa: E402

CIFAR_TRAIN = 45_000  # CIFAR-100's 50,000 training images less the space's val_fraction 0.1
TRIAL_EPOCHS = 120 + 2  # train.epochs + compress.finetune_epochs (default) of spaces/cifar100-mobilenet.yaml
REPEATS = 2
STUDY_TRIALS = 100
STUDENT = dict(width_mult=1.0, depth_mult=1.0, kernel_size=5, expand_ratio=6, conv="depthwise", dropout=0.1,
               stages="cifar")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_fit(model, x, y, opt: train.Optim, *, distill=None, layout=None) -> float:
    """Seconds for ``opt.epochs`` epochs of fit after one untimed warm-up epoch, in ``layout`` (None: autokd's)."""
    saved = train.training_memory_format
    if layout is not None:
        train.training_memory_format = lambda device: layout
    try:
        warm = train.Optim(**{**opt.__dict__, "epochs": 1})
        train.fit(model, x, y, warm, seed=1, distill=distill)
        sync(x.device)
        start = time.perf_counter()
        train.fit(model, x, y, opt, seed=2, distill=distill)  # reads each epoch's loss back: work is done
        sync(x.device)
        return time.perf_counter() - start
    finally:
        train.training_memory_format = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--smoke", action="store_true", help="16 images, 1 epoch, 1 thread: checks the bench runs")
    args = ap.parse_args()
    if args.smoke:
        args.images, args.epochs, args.threads = args.images or 16, 1, args.threads or 1
    device = resolve_device(args.device)
    make_deterministic(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.images or (50_000 if device.type == "cuda" else 1024)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device {device} = {name}; {n} synthetic 3x32x32 images, 100 classes; 1 warm-up + {args.epochs} epochs",
          flush=True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 100, (n,), generator=gen).to(device)
    precisions = ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]

    def student():
        torch.manual_seed(0)
        return build_model("mobilenetv2", num_classes=100, in_channels=3, **STUDENT).to(device)

    rows: dict[tuple[str, str, str], float] = {}
    layouts = {"channels_last": None, "nchw": torch.contiguous_format}
    for precision in precisions:
        opt = train.Optim(epochs=args.epochs, lr=0.05, batch_size=128, precision=precision)
        for layout_name, layout in layouts.items():
            seconds = timed_fit(student(), x, y, opt, layout=layout)
            rows[("student", precision, layout_name)] = args.epochs * n / seconds
            print(f"student {precision} {layout_name:13s} {rows[('student', precision, layout_name)]:9.1f} images/s",
                  flush=True)

    torch.manual_seed(0)
    teacher = build_model("resnet", num_classes=100, in_channels=3, width=16, depth=9).to(device)
    train.predict(teacher, x[:256])
    sync(device)
    start = time.perf_counter()
    logits = train.predict(teacher, x, batch_size=512)
    sync(device)
    teacher_ips = n / (time.perf_counter() - start)
    print(f"teacher ResNet-56 logits      {teacher_ips:9.1f} images/s", flush=True)
    distill = train.Distillation(logits, temperature=4.0, alpha=0.9)
    for precision in precisions:
        opt = train.Optim(epochs=args.epochs, lr=0.05, batch_size=128, precision=precision)
        torch.manual_seed(0)
        kd_student = build_model("resnet", num_classes=100, in_channels=3, width=16, depth=3).to(device)
        seconds = timed_fit(kd_student, x, y, opt, distill=distill)
        rows[("kd", precision, "channels_last")] = args.epochs * n / seconds
        print(f"kd ResNet-56 -> ResNet-20 {precision} {rows[('kd', precision, 'channels_last')]:9.1f} images/s",
              flush=True)

    # Deterministic: the same seeds twice give bitwise-equal weights (dropout draws from the global stream, which
    # a trial seeds per phase: seeded here the same way).
    one = train.Optim(epochs=1, lr=0.05, batch_size=128)
    a, b = student(), student()
    for model in (a, b):
        torch.manual_seed(3)
        train.fit(model, x, y, one, seed=3)
    same = all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))

    student_ips = rows[("student", "fp32", "channels_last")]
    trial_hours = TRIAL_EPOCHS * CIFAR_TRAIN * REPEATS / student_ips / 3600
    cl_ratio = rows[("student", "fp32", "nchw")] / student_ips  # time ratio = inverse throughput ratio
    bf16_ratio = (student_ips / rows[("student", "bf16", "channels_last")]) if "bf16" in precisions else math.nan
    print(f"one trial of spaces/cifar100-mobilenet.yaml ({TRIAL_EPOCHS} epochs x {CIFAR_TRAIN} images x "
          f"{REPEATS} repeats): {trial_hours:.2f} h; a {STUDY_TRIALS}-trial study: "
          f"{trial_hours * STUDY_TRIALS / 24:.2f} days on this device")
    print(f"student_images_per_s={student_ips:.1f} kd_images_per_s={rows[('kd', 'fp32', 'channels_last')]:.1f} "
          f"teacher_images_per_s={teacher_ips:.1f} trial_hours={trial_hours:.3f} "
          f"study_days={trial_hours * STUDY_TRIALS / 24:.2f} channels_last_ratio={cl_ratio:.3f} "
          f"bf16_ratio={bf16_ratio:.3f} deterministic={'yes' if same else 'no'} device={device.type}")


if __name__ == "__main__":
    main()
