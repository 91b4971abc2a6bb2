"""The mechanics of the teacher cache: locked, atomic, checked files.

- :func:`cache_lock` holds an exclusive ``fcntl.flock`` on ``<cache_dir>/<name>.lock`` beside a cache file while
  a worker checks, builds and writes it, so concurrent workers that need the same teacher train it once: the
  others wait (reporting ``teacher.wait`` once) and then load what the first one wrote. The lock dies with its
  process, so a killed worker never leaves the cache locked. Lock files are removed by their holder (nothing is
  left beside the cache); it needs a file system with working ``flock`` (local disks do; some network file
  systems do not).
- :func:`atomic_save` writes a temp file and renames it, so a reader sees the old file or the new one, never half.
- :func:`load_checked` trusts a file only when it reads, is of this format and key, was computed on the same
  data (:func:`autokd.data.data_fingerprint`, and the same teacher weights for view-pool logits) and passes its
  own check. Otherwise :func:`set_aside` moves it to ``<file>.corrupt`` (unreadable or malformed) or
  ``<file>.stale`` (computed on other data or weights, or written before files carried fingerprints) and the
  caller rebuilds it; both report ``teacher.corrupt`` with the reason.
- :func:`weights_hash`: SHA-256 over every member's state_dict, so KD trials can record which teacher they used.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autokd.data import update_hash
from autokd.progress import ProgressCallback

try:
    import fcntl
except ImportError:  # not on POSIX: no locking (one worker per cache folder)
    fcntl = None  # type: ignore[assignment]

CACHE_FORMAT = 1


class StaleCache(ValueError):
    """A well-formed cache file computed on other data (or by another teacher) than asked for now."""


def weights_hash(models: list[nn.Module]) -> str:
    """SHA-256 (16 hex digits) over each model's state_dict in order: every entry's name, dtype, shape and bytes.
    Equal for a teacher just trained, the same teacher loaded from the cache, on any device."""
    h = hashlib.sha256()
    for i, model in enumerate(models):
        h.update(f"member {i}\n".encode())
        for name, value in model.state_dict().items():
            h.update(f"{name}\n".encode())
            update_hash(h, value)
    return h.hexdigest()[:16]


def atomic_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checked(path: Path, key: str, check: Callable[[dict], None], *,
                 expect: dict[str, str] | None = None) -> dict:
    """Load a cache file and run ``check(blob)``; raise ValueError saying what is wrong with it, or
    :class:`StaleCache` when one of the ``expect`` entries (``data_fingerprint``, ``weights_hash``) differs."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/garbled files
        raise ValueError(f"unreadable ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != CACHE_FORMAT or blob.get("key") != key:
        raise ValueError("not a cache file of this version/key")
    for field, value in (expect or {}).items():
        if field not in blob:
            raise StaleCache(f"written without a {field.replace('_', ' ')} by an older autokd, so what it was "
                             "computed on cannot be checked")
        if blob[field] != value:
            raise StaleCache(_STALE[field])
    check(blob)
    return blob


_STALE = {"data_fingerprint": "computed on other images or labels (data fingerprint differs)",
          "weights_hash": "computed by another teacher (weights hash differs)"}


def check_logits(logits: Any, shape: tuple[int, ...]) -> None:
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != shape or not torch.isfinite(logits).all():
        raise ValueError("cached logits have the wrong shape or are not finite")


def set_aside(path: Path, exc: ValueError, progress: ProgressCallback) -> None:
    """Move an untrusted file to ``<file>.stale`` or ``<file>.corrupt`` and say so (``teacher.corrupt``: path,
    reason, moved_to, stale)."""
    stale = isinstance(exc, StaleCache)
    aside = path.with_name(path.name + (".stale" if stale else ".corrupt"))
    os.replace(path, aside)
    progress("teacher.corrupt", path=str(path), reason=str(exc), moved_to=str(aside), stale=stale)


@contextmanager
def cache_lock(path: Path, *, progress: ProgressCallback, what: str, key: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a cache file) through ``<stem>.lock`` beside it.

    Tries without blocking first; a worker that has to wait reports ``teacher.wait`` (key, path, what:
    "teacher" | "views") once, then blocks until the holder is done (or dead). The holder removes the lock file
    before it lets go, so a waiter that then gets the lock of a removed file takes the lock again on the file now
    at that path. A cache folder where no lock file can be created (read-only) is used without a lock.

    Files are written under this lock (:func:`atomic_save`: ``<name><random>.tmp``, renamed into place), so once it
    is held a temp file of ``path`` is a dead holder's (``kill -9`` mid-save: found by ``bench/kill9.py``) and is
    removed."""
    fd = _acquire(path, progress=progress, what=what, key=key)
    if fd is not None:
        for stale in path.parent.glob(glob.escape(path.name) + "*.tmp"):
            try:
                stale.unlink()
            except OSError:
                pass
    try:
        yield
    finally:
        if fd is not None:
            try:
                os.unlink(path.with_suffix(".lock"))  # while still holding it (see above)
            except FileNotFoundError:
                pass
            os.close(fd)  # lets go of the lock


def _acquire(path: Path, *, progress: ProgressCallback, what: str, key: str) -> int | None:
    """The descriptor of the locked ``<stem>.lock`` of ``path`` (None: no locking here)."""
    if fcntl is None:
        return None
    lock = path.with_suffix(".lock")
    reported = False
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                return None  # nothing can be written here either: loading needs no lock (saving fails as before)
            raise
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not reported:
                    progress("teacher.wait", key=key, path=str(path), what=what)
                    reported = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, lock):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder removed the file we locked: lock the one at the path now


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)
