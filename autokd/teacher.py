"""The KD teacher, trained once and cached.

A teacher is keyed by what determines it — the dataset block, the teacher block, ``train.seed`` and
``train.batch_size`` and, when it trains on the students' view pool, the augmentation policy — and stored as ``<cache_dir>/<key>.pt`` together with its accuracy and its logits on every
training image. Every trial, study and rerun that asks for the same teacher reuses the file, and KD trials read the
cached logits instead of running the teacher per batch.

Consistent teacher: when any trial of a space can augment (and ``distill.teacher.augment`` is ``auto``), each
member trains on the same view pool the students use (one view per image per epoch, as students do) and then
labels that pool. A teacher trained on clean images only is often wrong on the shifted views it would label
(measured on digits: 99% on clean validation images, 76-82% on its views). ``view_accuracy``, the accuracy of its
logits over the pool, is reported beside its clean accuracies so the difference is visible. Files are written
atomically (temp file + rename); a file
that does not load or does not match is moved aside as ``<key>.pt.corrupt`` and rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autokd.data import Splits
from autokd.errors import CacheError, Problem
from autokd.measure import accuracy
from autokd.models import build_teacher
from autokd.progress import ProgressCallback, silent
from autokd.train import Optim, fit, predict

CACHE_FORMAT = 1
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

    def summary(self) -> dict[str, Any]:
        """What the report shows of the teacher (``kd.teacher`` in ``report --json``)."""
        return {"train_accuracy": self.train_accuracy, "val_accuracy": self.val_accuracy,
                "test_accuracy": self.test_accuracy, "view_accuracy": self.view_accuracy,
                "augmented": self.augmented, "members": len(self.models), "source": self.source, "key": self.key}

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


def _atomic_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_checked(path: Path, key: str, check: Any) -> dict:
    """Load a cache file and run ``check(blob)``; raise ValueError saying what is wrong with it."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/garbled files
        raise ValueError(f"unreadable ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != CACHE_FORMAT or blob.get("key") != key:
        raise ValueError("not a cache file of this version/key")
    check(blob)
    return blob


def _check_logits(logits: Any, shape: tuple[int, ...]) -> None:
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != shape or not torch.isfinite(logits).all():
        raise ValueError("cached logits have the wrong shape or are not finite")


def _set_aside(path: Path, reason: str, progress: ProgressCallback) -> None:
    aside = path.with_name(path.name + ".corrupt")
    os.replace(path, aside)
    progress("teacher.corrupt", path=str(path), reason=reason, moved_to=str(aside))


def _member(space: Any, data: Splits, member: int, cache_dir: Path, device: Any, progress: ProgressCallback,
            pool: ViewPool | None, policy: dict[str, Any] | None) -> tuple[nn.Module, torch.Tensor, str, Path]:
    """(model, train logits, "cache" | "trained", path) of one ensemble member; trained on ``pool`` when
    ``policy`` is set (one view per image per epoch, as students do), else on the clean images."""
    spec = space.distill.teacher
    key = teacher_key(space, member, policy)
    path = cache_dir / f"{key}.pt"
    shape = (len(data.train_y), data.num_classes)
    model = build_teacher(spec, num_classes=data.num_classes, in_channels=data.in_channels)
    if path.exists():
        def check(blob: dict) -> None:
            _check_logits(blob.get("train_logits"), shape)
            try:
                model.load_state_dict(blob["state_dict"])
            except Exception as exc:
                raise ValueError(f"weights do not fit the architecture ({type(exc).__name__})") from None

        try:
            blob = _load_checked(path, key, check)
            return model.to(device).eval(), blob["train_logits"].to(device), "cache", path
        except ValueError as exc:
            _set_aside(path, str(exc), progress)

    seed = space.train.seed + member
    torch.manual_seed(seed)
    model = build_teacher(spec, num_classes=data.num_classes, in_channels=data.in_channels).to(device)
    opt = Optim(epochs=spec.epochs, lr=spec.lr, batch_size=space.train.batch_size)
    progress("teacher.start", key=key, epochs=spec.epochs, member=member, augmented=policy is not None)
    x = pool.views if policy is not None else data.train_x
    fit(model, x, data.train_y, opt, seed=seed,
        on_epoch=lambda e, n, loss: progress("teacher.epoch", epoch=e, epochs=n, loss=loss))
    model.eval()
    logits = predict(model, data.train_x)
    _atomic_save({"format": CACHE_FORMAT, "key": key, "family": spec.family,
                  "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                  "train_logits": logits.cpu(), "val_accuracy": accuracy(model, data.val_x, data.val_y)}, path)
    return model, logits, "trained", path


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
    members = [_member(space, data, i, folder, device, progress, pool, policy) for i in range(spec.ensemble)]
    models = [m[0] for m in members]
    train_logits = torch.stack([m[1] for m in members]).mean(0)
    source = "trained" if any(m[2] == "trained" for m in members) else "cache"
    teacher = Teacher(models, train_logits, _accuracy_of(_mean_logits(models, data.val_x), data.val_y),
                      _accuracy_of(_mean_logits(models, data.test_x), data.test_y), source,
                      ensemble_key(space, policy), members[0][3], folder,
                      train_accuracy=_accuracy_of(train_logits, data.train_y), augmented=policy is not None)
    progress("teacher.done", source=source, val_accuracy=teacher.val_accuracy, test_accuracy=teacher.test_accuracy,
             train_accuracy=teacher.train_accuracy, augmented=teacher.augmented, path=str(members[0][3]),
             members=len(models))
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
             test_accuracy=teacher.test_accuracy, path=str(ckpt), members=1)
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
    the teacher as ``<key>-views-<pool_key>.pt``."""
    shape = (*pool.shape[:2], teacher.train_logits.shape[-1])
    path = teacher.cache_dir / f"{teacher.key}-views-{pool_key}.pt" if teacher.cache_dir else None
    key = f"{teacher.key}-views-{pool_key}"
    if path is not None and path.exists():
        try:
            blob = _load_checked(path, key, lambda b: _check_logits(b.get("logits"), shape))
            return blob["logits"].to(pool.device)
        except ValueError as exc:
            _set_aside(path, str(exc), progress)
    progress("teacher.views", views=shape[0])
    logits = torch.stack([_mean_logits(teacher.models, view) for view in pool])
    if path is not None:
        _atomic_save({"format": CACHE_FORMAT, "key": key, "logits": logits.cpu()}, path)
    return logits
