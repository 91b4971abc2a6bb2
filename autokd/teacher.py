"""The KD teacher, trained once and cached.

A teacher is keyed by what determines it — the dataset block, the teacher block, ``train.seed`` and
``train.batch_size`` — and stored as ``<cache_dir>/<key>.pt`` together with its accuracy and its logits on every
training image. Every trial, study and rerun that asks for the same teacher reuses the file, and KD trials read the
cached logits instead of running the teacher per batch. Files are written atomically (temp file + rename); a file
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
    """A ready teacher: its model (eval mode), accuracy, and logits on the training images."""

    model: nn.Module
    train_logits: torch.Tensor
    val_accuracy: float
    test_accuracy: float
    source: str  # "cache" | "trained" | "checkpoint"
    key: str
    path: Path | None


def teacher_key(space: Any) -> str:
    """What determines a trained teacher (and nothing else: searched student fields never change it)."""
    payload = {
        "format": CACHE_FORMAT,
        "dataset": space.dataset.model_dump(mode="json"),
        "teacher": space.distill.teacher.model_dump(mode="json", exclude={"checkpoint"}),
        "seed": space.train.seed,
        "batch_size": space.train.batch_size,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


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


def _load_cached(path: Path, key: str, model: nn.Module, n_train: int, num_classes: int) -> dict:
    """Load and check a cache file; raise ValueError saying what is wrong with it."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/garbled files
        raise ValueError(f"unreadable ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != CACHE_FORMAT or blob.get("key") != key:
        raise ValueError("not a teacher file of this version/key")
    logits = blob.get("train_logits")
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (n_train, num_classes) \
            or not torch.isfinite(logits).all():
        raise ValueError("cached logits have the wrong shape or are not finite")
    try:
        model.load_state_dict(blob["state_dict"])
    except Exception as exc:
        raise ValueError(f"weights do not fit the architecture ({type(exc).__name__})") from None
    return blob


def get_teacher(space: Any, data: Splits, *, cache_dir: str | Path | None = None, device: str | torch.device = "cpu",
                progress: ProgressCallback = silent) -> Teacher:
    """Load the teacher from its checkpoint or the cache, or train it once and cache it."""
    spec = space.distill.teacher
    key = teacher_key(space)
    model = build_teacher(spec, num_classes=data.num_classes, in_channels=data.in_channels)

    if spec.checkpoint:
        ckpt = Path(spec.checkpoint)
        if not ckpt.is_file():
            raise CacheError(Problem(f"no such file: {ckpt}", "distill.teacher.checkpoint"))
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            model.load_state_dict(state)
        except Exception as exc:
            raise CacheError(Problem(f"{ckpt} is not a state_dict of a {spec.family} teacher with width "
                                     f"{spec.width} and depth {spec.depth} ({type(exc).__name__})",
                                     "distill.teacher.checkpoint")) from None
        model.to(device).eval()
        teacher = Teacher(model, predict(model, data.train_x), accuracy(model, data.val_x, data.val_y),
                          accuracy(model, data.test_x, data.test_y), "checkpoint", key, ckpt)
        progress("teacher.done", source="checkpoint", val_accuracy=teacher.val_accuracy,
                 test_accuracy=teacher.test_accuracy, path=str(ckpt))
        return teacher

    path = resolve_cache_dir(cache_dir) / f"{key}.pt"
    if path.exists():
        try:
            blob = _load_cached(path, key, model, len(data.train_y), data.num_classes)
            model.to(device).eval()
            teacher = Teacher(model, blob["train_logits"].to(device), float(blob["val_accuracy"]),
                              float(blob["test_accuracy"]), "cache", key, path)
            progress("teacher.done", source="cache", val_accuracy=teacher.val_accuracy,
                     test_accuracy=teacher.test_accuracy, path=str(path))
            return teacher
        except ValueError as exc:
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            progress("teacher.corrupt", path=str(path), reason=str(exc), moved_to=str(aside))
            model = build_teacher(spec, num_classes=data.num_classes, in_channels=data.in_channels)

    torch.manual_seed(space.train.seed)
    model = build_teacher(spec, num_classes=data.num_classes, in_channels=data.in_channels).to(device)
    opt = Optim(epochs=spec.epochs, lr=spec.lr, batch_size=space.train.batch_size)
    progress("teacher.start", key=key, epochs=spec.epochs)
    fit(model, data.train_x, data.train_y, opt, seed=space.train.seed,
        on_epoch=lambda e, n, loss: progress("teacher.epoch", epoch=e, epochs=n, loss=loss))
    model.eval()
    teacher = Teacher(model, predict(model, data.train_x), accuracy(model, data.val_x, data.val_y),
                      accuracy(model, data.test_x, data.test_y), "trained", key, path)
    _atomic_save({"format": CACHE_FORMAT, "key": key, "family": spec.family,
                  "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                  "train_logits": teacher.train_logits.cpu(), "val_accuracy": teacher.val_accuracy,
                  "test_accuracy": teacher.test_accuracy}, path)
    progress("teacher.done", source="trained", val_accuracy=teacher.val_accuracy,
             test_accuracy=teacher.test_accuracy, path=str(path))
    return teacher
