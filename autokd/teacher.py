"""The KD teacher, trained once and cached.

A teacher is keyed by what determines it — the dataset block (for an image folder also which folder and what it
holds), the teacher block, ``train.seed`` and ``train.batch_size`` and, when it trains on the students' view pool,
the augmentation policy — and stored as ``<cache_dir>/<key>.pt`` together with its accuracy and its logits on every
training image. Every trial, study and rerun that asks for the same teacher reuses the file, and KD trials read the
cached logits instead of running the teacher per batch.

Consistent teacher: when any trial of a space can augment (and ``distill.teacher.augment`` is ``auto``), each
member trains on the same view pool the students use (one view per image per epoch, as students do) and then
labels that pool. A teacher trained on clean images only is often wrong on the shifted views it would label
(measured on digits: 99% on clean validation images, 76-82% on its views). ``view_accuracy``, the accuracy of its
logits over the pool, is reported beside its clean accuracies so the difference is visible.

The cache (mechanics in :mod:`autokd.teacher_cache`): each file is checked, built and written under a file lock
on its key, so concurrent workers train a teacher once (the others report ``teacher.wait`` and load it); files
are written atomically (temp file + rename). Teacher files and view-pool logits carry the
:func:`~autokd.data.data_fingerprint` of the images and labels they were computed on (view-pool logits also the
teacher's weights hash); a file that does not load or does not match is moved aside as ``<key>.pt.corrupt``, one
computed on other data as ``<key>.pt.stale``, and rebuilt, never trusted. ``Teacher.weights_hash`` identifies the
weights, so KD trials can record which teacher they learnt from. A teacher whose loss or weights become
non-finite, or whose loss blew up and that ends no better than chance, raises :class:`~autokd.errors.TeacherError` at
``distill.teacher.lr`` and is not cached.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autokd.data import Splits, data_fingerprint, dataset_source
from autokd.errors import CacheError, Problem, TeacherError
from autokd.measure import accuracy
from autokd.models import build_teacher
from autokd.progress import ProgressCallback, silent
from autokd.teacher_cache import (CACHE_FORMAT, atomic_save, cache_lock, check_logits, load_checked, set_aside,
                                  weights_hash)
from autokd.train import Optim, fit, predict

DEFAULT_CACHE_DIR = Path("studies") / "teachers"


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` if given, else ``$AUTOKD_CACHE_DIR``, else ``studies/teachers``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("AUTOKD_CACHE_DIR")
    return Path(env) if env else DEFAULT_CACHE_DIR


@dataclass
class Teacher:
    """A ready teacher (or ensemble): models in eval mode, accuracy of the mean logits, and those logits on the
    training images."""

    models: list[nn.Module]
    train_logits: torch.Tensor
    val_accuracy: float
    test_accuracy: float
    source: str  # "cache" | "trained" | "checkpoint" ("trained" if any member was trained now)
    key: str
    path: Path | None
    cache_dir: Path | None = None
    train_accuracy: float | None = None  # of its (mean) logits on the clean training images
    view_accuracy: float | None = None  # of its logits over the view pool (set when the pool is labelled)
    augmented: bool = False  # trained on the view pool
    # (pool, its version, its fingerprint) of the view pool it trained on: saves pool_logits hashing it again
    _pool_fingerprint: tuple[torch.Tensor, int | None, str] | None = field(default=None, init=False, repr=False,
                                                                    compare=False)

    @functools.cached_property
    def weights_hash(self) -> str:
        """SHA-256 (16 hex digits) of every member's weights in order (see :func:`autokd.teacher_cache.weights_hash`):
        the same for the teacher just trained, loaded from the cache or on another device."""
        return weights_hash(self.models)

    def summary(self) -> dict[str, Any]:
        """What the report shows of the teacher (``kd.teacher`` in ``report --json``)."""
        return {"train_accuracy": self.train_accuracy, "val_accuracy": self.val_accuracy,
                "test_accuracy": self.test_accuracy, "view_accuracy": self.view_accuracy,
                "augmented": self.augmented, "members": len(self.models), "source": self.source, "key": self.key,
                "weights_hash": self.weights_hash}

    @property
    def model(self) -> nn.Module:
        return self.models[0]


def teacher_key(space: Any, member: int = 0, policy: dict[str, Any] | None = None) -> str:
    """What determines one trained teacher (and nothing else: searched student fields never change it).

    Member ``i`` of an ensemble is trained with seed ``train.seed + i``; member 0 is the single teacher, so growing
    ``distill.teacher.ensemble`` reuses the teachers already cached. ``policy`` (from :func:`augment_policy`) is
    the view pool the teacher trains on: views, shift, flip and the pool's seed; a clean teacher has none (and
    keeps the key it had before teachers could augment).
    """
    payload = {
        "format": CACHE_FORMAT,
        "dataset": space.dataset.model_dump(mode="json", exclude={"root", "download"}),  # where, not what
        "teacher": space.distill.teacher.model_dump(mode="json", exclude={"checkpoint", "ensemble", "augment"}),
        "seed": space.train.seed + member,
        "batch_size": space.train.batch_size,
    }
    if policy is not None:
        payload["augment"] = policy
    source = dataset_source(space.dataset)  # an image folder: which one, and what it holds
    if source is not None:
        payload["dataset_source"] = source
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def ensemble_key(space: Any, policy: dict[str, Any] | None = None) -> str:
    keys = [teacher_key(space, i, policy) for i in range(space.distill.teacher.ensemble)]
    return keys[0] if len(keys) == 1 else hashlib.sha256("+".join(keys).encode()).hexdigest()[:20]


def augment_policy(space: Any, pool: ViewPool | None) -> dict[str, Any] | None:
    """The augmentation policy the teacher trains with: the pool's policy when there is a pool (some trial can
    augment) and ``distill.teacher.augment`` is ``auto``; ``None`` (clean images) otherwise."""
    if pool is None or space.distill.teacher.augment is False:
        return None
    return dict(pool.policy)


def _member(space: Any, data: Splits, member: int, cache_dir: Path, device: Any, progress: ProgressCallback,
            pool: ViewPool | None, policy: dict[str, Any] | None,
            fingerprint: str) -> tuple[nn.Module, torch.Tensor, str, Path]:
    """(model, train logits, "cache" | "trained", path) of one ensemble member; trained on ``pool`` when
    ``policy`` is set (one view per image per epoch, as students do), else on the clean images.

    Checked, trained and written under the lock of its cache file, so concurrent workers train it once: the
    ones that waited find the file written. ``fingerprint`` is that of the data it is computed on (the training
    images and labels, and the view pool it trains on: see :func:`get_teacher`); a file computed on other data is
    set aside and rebuilt."""
    spec = space.distill.teacher
    key = teacher_key(space, member, policy)
    path = cache_dir / f"{key}.pt"
    with cache_lock(path, progress=progress, what="teacher", key=key):
        if path.exists():
            loaded = _load_member(space, data, path, key, fingerprint, progress)
            if loaded is not None:
                return loaded[0].to(device).eval(), loaded[1].to(device), "cache", path
        model, logits = _train_member(space, data, member, key, device, progress, pool, policy)
        atomic_save({"format": CACHE_FORMAT, "key": key, "family": spec.family, "data_fingerprint": fingerprint,
                     "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                     "train_logits": logits.cpu(), "val_accuracy": accuracy(model, data.val_x, data.val_y)}, path)
    return model, logits, "trained", path


def _load_member(space: Any, data: Splits, path: Path, key: str, fingerprint: str,
                 progress: ProgressCallback) -> tuple[nn.Module, torch.Tensor] | None:
    """(model, train logits) from a cache file; None after setting aside a file that cannot be trusted."""
    spec = space.distill.teacher
    model = build_teacher(spec, num_classes=data.num_classes, in_channels=data.in_channels)

    def check(blob: dict) -> None:
        check_logits(blob.get("train_logits"), (len(data.train_y), data.num_classes))
        try:
            model.load_state_dict(blob["state_dict"])
        except Exception as exc:
            raise ValueError(f"weights do not fit the architecture ({type(exc).__name__})") from None

    try:
        blob = load_checked(path, key, check, expect={"data_fingerprint": fingerprint})
    except ValueError as exc:
        set_aside(path, exc, progress)
        return None
    return model, blob["train_logits"]


def _train_member(space: Any, data: Splits, member: int, key: str, device: Any, progress: ProgressCallback,
                  pool: ViewPool | None, policy: dict[str, Any] | None) -> tuple[nn.Module, torch.Tensor]:
    """Train one member; raise :class:`TeacherError` (at ``distill.teacher.lr``) when it diverged."""
    spec = space.distill.teacher
    seed = space.train.seed + member
    torch.manual_seed(seed)
    model = build_teacher(spec, num_classes=data.num_classes, in_channels=data.in_channels).to(device)
    opt = Optim(epochs=spec.epochs, lr=spec.lr, batch_size=space.train.batch_size)
    progress("teacher.start", key=key, epochs=spec.epochs, member=member, augmented=policy is not None)
    x = pool.views if policy is not None else data.train_x
    done = []

    def on_epoch(e: int, n: int, loss: float) -> None:
        done.append(loss)
        progress("teacher.epoch", epoch=e, epochs=n, loss=loss)

    try:
        losses = fit(model, x, data.train_y, opt, seed=seed, on_epoch=on_epoch)
    except FloatingPointError:  # fit stops at the first epoch whose mean loss is not finite
        losses = [*done, math.nan]
    model.eval()
    logits = predict(model, data.train_x)
    symptom = _divergence(model, logits, data.train_y, losses, spec.epochs)
    if symptom is not None:
        who = f"teacher (ensemble member {member + 1} of {spec.ensemble})" if spec.ensemble > 1 else "teacher"
        raise TeacherError(Problem(f"the {who} diverged at lr {spec.lr:g}: {symptom}; lower distill.teacher.lr, "
                                   f"e.g. to {spec.lr / 10:g}", "distill.teacher.lr"))
    return model, logits


def _divergence(model: nn.Module, logits: torch.Tensor, y: torch.Tensor, losses: list[float],
                epochs: int) -> str | None:
    """What shows that a freshly trained teacher diverged (None if nothing does).

    - an epoch's mean loss is not finite (the losses ``fit`` returns: no per-step synchronisation);
    - its weights or its logits on the training images are not finite;
    - its accuracy on its own training images is no better than chance and its loss blew up: some epoch's mean
      loss was at least 1.5 times that of guessing the class frequencies without looking at the images (the
      entropy of the labels, ln K for balanced classes). Chance is the share of the most common class (what a
      network collapsed onto one class scores, the usual end of a too large learning rate under gradient
      clipping) plus one standard error of an accuracy at that rate over N images (what random guesses may score
      by luck). A network that learned nothing but did not blow up stays near the blind loss (fresh teachers on
      digits: 2.2-2.4 against 2.30 in their first epoch), so a weak or undertrained teacher is not called
      diverged; at lr 3 or 10 the first epoch's loss is 4-8.5.
    """
    for epoch, loss in enumerate(losses, 1):
        if not math.isfinite(loss):
            return f"its loss became {loss} in epoch {epoch} of {epochs}"
    floats = [v for v in model.state_dict().values() if v.is_floating_point()]
    if floats and not bool(torch.stack([torch.isfinite(v).all() for v in floats]).all()):
        return f"its weights are not finite after {_epochs(epochs)}"
    if not bool(torch.isfinite(logits).all()):
        return f"its logits are not finite after {_epochs(epochs)}"
    n = len(y)
    if n == 0:
        return None
    acc = _accuracy_of(logits, y)
    shares = torch.bincount(y).double() / n
    chance = float(shares.max())
    blind = float(-(shares[shares > 0] * shares[shares > 0].log()).sum())  # the loss of guessing frequencies
    se = math.sqrt(chance * (1 - chance) / n)
    if acc <= chance + se and max(losses) >= 1.5 * blind:
        return (f"its loss rose to {max(losses):.3g} (guessing the class frequencies scores {blind:.3g}) and after "
                f"{_epochs(epochs)} its accuracy on its training images is {100 * acc:.1f}%, no better than chance "
                f"({100 * chance:.1f}% ± {100 * se:.1f})")
    return None


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def _mean_logits(models: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    return torch.stack([predict(m, x) for m in models]).mean(0)


def _accuracy_of(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(-1) == y).float().mean()) if len(y) else float("nan")


def view_accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of the teacher's logits over a view pool (V, N, K) against the labels (N,) of the images."""
    return _accuracy_of(logits, y.to(logits.device).expand(logits.shape[0], -1))


def get_teacher(space: Any, data: Splits, *, pool: ViewPool | None = None, cache_dir: str | Path | None = None,
                device: str | torch.device = "cpu", progress: ProgressCallback = silent) -> Teacher:
    """Load the teacher from its checkpoint or the cache, or train it (each ensemble member) once and cache it.

    ``pool`` is the students' view pool (None when no trial augments): with ``distill.teacher.augment: auto`` the
    teacher trains on it (see :func:`augment_policy`)."""
    spec = space.distill.teacher
    if spec.checkpoint:
        return _from_checkpoint(space, data, device, progress)
    folder = resolve_cache_dir(cache_dir)
    policy = augment_policy(space, pool)
    fingerprint = data_fingerprint(data.train_x, data.train_y)
    pool_fingerprint = None
    if policy is not None:  # it trains on the pool: the pool is part of what it was computed on
        pool_fingerprint = _views_fingerprint(None, pool.views)
        fingerprint += "+" + pool_fingerprint
    members = [_member(space, data, i, folder, device, progress, pool, policy, fingerprint)
               for i in range(spec.ensemble)]
    models = [m[0] for m in members]
    train_logits = torch.stack([m[1] for m in members]).mean(0)
    source = "trained" if any(m[2] == "trained" for m in members) else "cache"
    teacher = Teacher(models, train_logits, _accuracy_of(_mean_logits(models, data.val_x), data.val_y),
                      _accuracy_of(_mean_logits(models, data.test_x), data.test_y), source,
                      ensemble_key(space, policy), members[0][3], folder,
                      train_accuracy=_accuracy_of(train_logits, data.train_y), augmented=policy is not None)
    if pool_fingerprint is not None:
        teacher._pool_fingerprint = (pool.views, _version(pool.views), pool_fingerprint)
    progress("teacher.done", source=source, val_accuracy=teacher.val_accuracy, test_accuracy=teacher.test_accuracy,
             train_accuracy=teacher.train_accuracy, augmented=teacher.augmented, path=str(members[0][3]),
             members=len(models), weights_hash=teacher.weights_hash)
    return teacher


def _from_checkpoint(space: Any, data: Splits, device: Any, progress: ProgressCallback) -> Teacher:
    spec = space.distill.teacher
    ckpt = Path(spec.checkpoint)
    if not ckpt.is_file():
        raise CacheError(Problem(f"no such file: {ckpt}", "distill.teacher.checkpoint"))
    model = build_teacher(spec, num_classes=data.num_classes, in_channels=data.in_channels)
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        model.load_state_dict(state)
    except Exception as exc:
        raise CacheError(Problem(f"{ckpt} is not a state_dict of a {spec.family} teacher with width "
                                 f"{spec.width} and depth {spec.depth} ({type(exc).__name__})",
                                 "distill.teacher.checkpoint")) from None
    model.to(device).eval()
    key = "ckpt-" + hashlib.sha256(ckpt.read_bytes()).hexdigest()[:16]
    train_logits = predict(model, data.train_x)
    teacher = Teacher([model], train_logits, accuracy(model, data.val_x, data.val_y),
                      accuracy(model, data.test_x, data.test_y), "checkpoint", key, ckpt, None,
                      train_accuracy=_accuracy_of(train_logits, data.train_y))
    progress("teacher.done", source="checkpoint", val_accuracy=teacher.val_accuracy,
             test_accuracy=teacher.test_accuracy, path=str(ckpt), members=1, weights_hash=teacher.weights_hash)
    return teacher


@dataclass(frozen=True)
class ViewPool:
    """The fixed pool of augmented views every augmenting trial (and the teacher) trains on, and its policy."""

    views: torch.Tensor  # (V, N, C, H, W)
    policy: dict[str, Any]  # {"views", "shift", "flip", "seed"}: what drew it

    @property
    def key(self) -> str:
        p = self.policy
        return f"{p['views']}-{p['seed']}-{int(p['flip'])}-s{p['shift']}"


def pool_logits(teacher: Teacher, pool: torch.Tensor, *, pool_key: str,
                progress: ProgressCallback = silent) -> torch.Tensor:
    """The teacher's (mean) logits over a view pool (V, N, C, H, W) -> (V, N, K), computed once and cached beside
    the teacher as ``<key>-views-<pool_key>.pt`` (under that file's lock). The file carries the fingerprint of the
    views and the teacher's weights hash: logits of other views, or of a teacher since retrained (on other data,
    under the same key), are set aside and recomputed."""
    shape = (*pool.shape[:2], teacher.train_logits.shape[-1])
    if teacher.cache_dir is None:
        progress("teacher.views", views=shape[0])
        return _pool_logits(teacher, pool)
    key = f"{teacher.key}-views-{pool_key}"
    path = teacher.cache_dir / f"{key}.pt"
    expect = {"data_fingerprint": _views_fingerprint(teacher, pool), "weights_hash": teacher.weights_hash}
    with cache_lock(path, progress=progress, what="views", key=key):
        if path.exists():
            try:
                blob = load_checked(path, key, lambda b: check_logits(b.get("logits"), shape), expect=expect)
                return blob["logits"].to(pool.device)
            except ValueError as exc:
                set_aside(path, exc, progress)
        progress("teacher.views", views=shape[0])
        logits = _pool_logits(teacher, pool)
        atomic_save({"format": CACHE_FORMAT, "key": key, **expect, "logits": logits.cpu()}, path)
    return logits


def _pool_logits(teacher: Teacher, pool: torch.Tensor) -> torch.Tensor:
    return torch.stack([_mean_logits(teacher.models, view) for view in pool])


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version  # bumped by every in-place change
    except RuntimeError:  # an inference tensor keeps no version
        return None


def _views_fingerprint(teacher: Teacher | None, views: torch.Tensor) -> str:
    """:func:`data_fingerprint` of a view pool, or the one the teacher took of the same, unchanged tensor when it
    trained on it (a pool of 4 CIFAR views is 2.4 GB: 1.2 s to hash)."""
    memo = teacher._pool_fingerprint if teacher is not None else None
    if memo is not None and memo[0] is views and memo[1] is not None and memo[1] == _version(views):
        return memo[2]
    return data_fingerprint(views)
