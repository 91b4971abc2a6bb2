"""How much memory a space's data needs, estimated without loading it, and how much this machine has.

:func:`estimate_memory` mirrors :mod:`autokd.data` and the search (``autokd.study.runner``): every split is held as
float32 ``N×C×S×S`` tensors after the seeded split and ``dataset.limit``; when any trial can augment, the view pool
holds ``train.augment_views`` float32 copies of the training images; when any trial can distil, the teacher's
logits (``N×K``, and ``V×N×K`` over the pool) are kept too. That is the *steady state*: what a search holds from
its first trial to its last. Loading and drawing the pool briefly need more (copies at the native size, the
normalization, the padded images the pool is cut from): :attr:`MemoryEstimate.peak` is a rough figure for that
moment. Labels (8 bytes an image), models and optimizer state are left out.

The check (:func:`check_memory`, run by ``autokd validate``, ``autokd search`` and ``load_space``) refuses a space
whose steady state exceeds :data:`MEMORY_SHARE` of the memory available (``MemAvailable`` in ``/proc/meminfo``,
or what a container's cgroup limit still allows where that is less; without either, the machine's physical memory).
The environment variable ``AUTOKD_MEMORY_LIMIT_BYTES`` replaces that limit with a number of bytes, or turns the
check off with ``off``.

It is host memory that is compared: the data is always loaded (and cached) in host memory first; with
``--device cuda`` the view pool and the logits live on the GPU instead, so the estimate is an upper bound there.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autokd.errors import Problem, SpaceError

from autokd.space.schema import Choices, Space

#: The share of the available memory the steady state may use (the rest covers loading peaks, models, Python).
MEMORY_SHARE = 0.8
#: Environment variable: the limit in bytes (``2e9`` is allowed), or ``off`` to skip the check.
MEMORY_LIMIT_ENV = "AUTOKD_MEMORY_LIMIT_BYTES"
FLOAT32 = 4


@dataclass(frozen=True)
class KnownDataset:
    """What a dataset's loader returns, without loading it."""

    trainval: int  # images before the validation split (all images where there is no official test split)
    test: int | None  # the official test split (None: carved out of trainval by test_fraction)
    channels: int
    side: int  # native image side in pixels
    classes: int
    native_itemsize: int  # bytes per pixel value as the loader returns it (float32 4, uint8 1)


# Sizes as the loaders in autokd.data return them (scikit-learn's digits; torchvision's CIFAR; the IDX files).
KNOWN_DATASETS: dict[str, KnownDataset] = {
    "digits": KnownDataset(1797, None, 1, 8, 10, FLOAT32),
    "mnist": KnownDataset(60000, 10000, 1, 28, 10, 1),
    "fashion_mnist": KnownDataset(60000, 10000, 1, 28, 10, 1),
    "cifar10": KnownDataset(50000, 10000, 3, 32, 10, FLOAT32),
    "cifar100": KnownDataset(50000, 10000, 3, 32, 100, FLOAT32),
}
IMAGEFOLDER_SIDE = 64  # the imagefolder loader's size when dataset.image_size is not set
#: torchvision's ImageFolder: the extensions it reads (torchvision.datasets.folder.IMG_EXTENSIONS).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Directory entries looked at when counting an imagefolder's images; past it the count is a lower bound.
COUNT_CAP = 200_000


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes the data of a space holds during a search (steady state), by part, and a rough peak while loading.

    ``parts``: ``images`` (train, validation and test splits), ``view pool`` (when a trial can augment),
    ``teacher logits`` (over the training images) and ``pool logits`` (over the view pool), when a trial can
    distil; a part that is not held is 0. ``lower_bound`` is true when an imagefolder had more files than
    :data:`COUNT_CAP` entries let us count."""

    total: int
    parts: dict[str, int]
    peak: int
    splits: dict[str, int] = field(default_factory=dict)  # images per split: train, val, test
    image_shape: tuple[int, int, int] = (0, 0, 0)  # (C, S, S) as held
    lower_bound: bool = False

    def describe(self) -> str:
        """``~X GB (images A, view pool B, ...)``."""
        parts = ", ".join(f"{name} {format_bytes(n)}" for name, n in self.parts.items() if n)
        return f"~{format_bytes(self.total)}" + (f" ({parts})" if parts else "")


def format_bytes(n: float) -> str:
    """Decimal units, as people read them: ``950 kB``, ``12 MB``, ``1.2 GB``, ``3.4 TB``."""
    for unit, size in (("TB", 1e12), ("GB", 1e9)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    if n >= 1e6:
        return f"{n / 1e6:.0f} MB"
    return f"{max(n, 0) / 1e3:.0f} kB"


def _test_count(n: int, fraction: float) -> int:
    # scikit-learn's train_test_split with a float test_size: ceil(test_size * n) go to the second part.
    return math.ceil(fraction * n)


def split_sizes(dataset: Any, trainval: int, test: int | None) -> tuple[int, int, int]:
    """(train, val, test) image counts as :func:`autokd.data._load_cached` splits them."""
    if test is None:  # no official test split: a stratified test_fraction is carved out first
        test = _test_count(trainval, dataset.test_fraction)
        trainval -= test
    val_share = (dataset.val_fraction if dataset.name not in ("digits", "imagefolder")
                 else dataset.val_fraction / (1.0 - dataset.test_fraction))
    val = _test_count(trainval, val_share)
    train = trainval - val
    if dataset.limit and dataset.limit < train:
        train -= _test_count(train, 1.0 - dataset.limit / train)
    return max(train, 0), max(val, 0), max(test, 0)


def count_imagefolder(root: str | Path) -> tuple[int, int, bool] | None:
    """(images, classes, complete) under an ImageFolder root, counted as torchvision finds them (one folder per
    class, files with an image extension, links followed); None when the root is not a readable folder. Counting
    stops after :data:`COUNT_CAP` directory entries (``complete`` is then false: the count is a lower bound)."""
    root = Path(root)  # as autokd.data reads it: no ~ expansion
    try:
        if not root.is_dir():
            return None
        classes = sorted(e.path for e in os.scandir(root) if e.is_dir())
    except OSError:
        return None
    seen = images = 0
    for folder in classes:
        for _, dirs, files in os.walk(folder, followlinks=True):
            seen += len(dirs) + len(files)
            images += sum(1 for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
            if seen > COUNT_CAP:
                return images, len(classes), False
    return images, len(classes), True


def can_augment(space: Space) -> bool:
    """Whether any trial trains on augmented views (as ``autokd.objective.can_augment``)."""
    aug = space.train.augment
    return True in aug.choices if isinstance(aug, Choices) else bool(aug)


def kd_possible(space: Space) -> bool:
    """Whether any trial distils, so that a teacher and its logits are kept (as ``autokd.study.runner``)."""
    kd = space.distill.kd
    return True in kd.choices if isinstance(kd, Choices) else bool(kd)


def estimate_memory(space: Space) -> MemoryEstimate | None:
    """The memory the data of ``space`` needs, from known dataset sizes (no data is loaded).

    ``imagefolder`` images are counted under ``dataset.root`` (at most :data:`COUNT_CAP` entries); without an
    existing root there is nothing to count and the answer is None (no estimate)."""
    d = space.dataset
    lower_bound = False
    if d.name == "imagefolder":
        counted = count_imagefolder(d.root) if d.root else None
        if counted is None:  # nothing to count yet: the loader reports a missing root itself
            return None
        images, classes, complete = counted
        side = d.image_size or IMAGEFOLDER_SIDE  # the loader resizes to this
        known = KnownDataset(images, None, 3, side, classes, FLOAT32)  # ImageFolder converts to RGB
        lower_bound = not complete
    else:
        known = KNOWN_DATASETS[d.name]
    train, val, test = split_sizes(d, known.trainval, known.test)
    side = d.image_size or known.side
    image = known.channels * side * side * FLOAT32
    resized = side != known.side or known.native_itemsize != FLOAT32
    views = space.train.augment_views if can_augment(space) else 0
    kd = kd_possible(space)

    parts = {"images": (train + val + test) * image,
             "view pool": views * train * image,
             "teacher logits": train * known.classes * FLOAT32 if kd else 0,
             "pool logits": views * train * known.classes * FLOAT32 if kd else 0}
    total = sum(parts.values())
    # The moment loading peaks: the loader's arrays at the native size (about two copies: the split copies what it
    # keeps), the float tensors at the final size and their normalized copies, one split's temporary.
    native = (known.trainval + (known.test or 0)) * known.channels * known.side ** 2 * known.native_itemsize
    loading = 2 * native + (2 if resized else 1) * parts["images"] + max(train, val, test) * image
    peak = max(total, loading)
    if views:  # drawing the pool: zero-padded training images and one view's temporary beside the pool
        shift = max(1, round(side / 8))
        padded = train * known.channels * (side + 2 * shift) ** 2 * FLOAT32
        peak = max(peak, total + padded + train * image)
    return MemoryEstimate(total, parts, peak, {"train": train, "val": val, "test": test},
                          (known.channels, side, side), lower_bound)


# --------------------------------------------------------------------------------------------
# How much this machine has


@dataclass(frozen=True)
class MemoryLimit:
    """The bytes the data may use, and how to say where that number comes from."""

    bytes: int
    text: str


#: Where the cgroup (v2, then v1) files are: a container's memory limit is not in /proc/meminfo.
CGROUP_ROOT = Path("/sys/fs/cgroup")
_CGROUP_FILES = (("memory.max", "memory.current", "inactive_file"),
                 ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "total_inactive_file"))


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


def cgroup_headroom(root: Path | None = None) -> int | None:
    """Bytes this process's cgroup may still use (its limit less its usage, reclaimable file cache not counted as
    used); None without a limit. Only the cgroup mounted at ``root`` (the container's own) is read."""
    root = CGROUP_ROOT if root is None else root
    for limit_file, usage_file, inactive_key in _CGROUP_FILES:
        limit, usage = _read(root / limit_file), _read(root / usage_file)
        if limit is None or usage is None:
            continue
        try:
            limit_bytes, used = int(limit), int(usage)
        except ValueError:  # "max": no limit
            return None
        if limit_bytes >= 2**60:  # cgroup v1 writes "no limit" as a huge number
            return None
        stat = _read(root / Path(limit_file).parent / "memory.stat") or ""
        for line in stat.splitlines():
            key, _, value = line.partition(" ")
            if key == inactive_key and value.strip().isdigit():
                used -= int(value)
        return max(0, limit_bytes - max(used, 0))
    return None


def available_memory() -> tuple[int, str] | None:
    """(bytes, what they are): ``MemAvailable`` from ``/proc/meminfo`` (or, lower, what the container's cgroup
    still allows), else the physical memory (``os.sysconf``), else None."""
    found: tuple[int, str] | None = None
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found = int(line.split()[1]) * 1024, "available on this machine"
                    break
    except (OSError, ValueError, IndexError):
        pass
    if found is None:
        try:
            found = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "of memory in this machine"
        except (AttributeError, ValueError, OSError):
            pass
    headroom = cgroup_headroom()
    if headroom is not None and (found is None or headroom < found[0]):
        return headroom, "this container may still use"
    return found


def memory_limit() -> MemoryLimit | None:
    """``$AUTOKD_MEMORY_LIMIT_BYTES`` if set (``off``: None), else :data:`MEMORY_SHARE` of
    :func:`available_memory` (None when that is unknown)."""
    raw = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if raw:
        if raw.lower() in ("off", "none", "no", "false"):
            return None
        try:
            value = float(raw.replace("_", ""))
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise SpaceError(Problem(f"{raw!r} is not a number of bytes > 0 (or 'off' to skip the memory check)",
                                     file=f"${MEMORY_LIMIT_ENV}"))
        return MemoryLimit(int(value), f"the limit of {format_bytes(value)} set by {MEMORY_LIMIT_ENV}")
    found = available_memory()
    if found is None:
        return None
    avail, what = found
    return MemoryLimit(int(avail * MEMORY_SHARE),
                       f"{MEMORY_SHARE:.0%} of the {format_bytes(avail)} {what}")
