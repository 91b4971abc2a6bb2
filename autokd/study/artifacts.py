"""Trial models in Optuna's artifact store: any worker, ``autokd.load_trial_model`` and optuna-dashboard find them.

Each COMPLETE trial's model is uploaded with :func:`optuna.artifacts.upload_artifact` (recorded on the trial, where
optuna-dashboard lists it, and as the user attribute ``model_artifact``). The store is a folder
(``--artifacts DIR``; default ``studies/<study>/artifacts`` beside a SQLite file, and the same local folder for
other storages, with a warning: workers on other machines need a shared folder) or any Optuna artifact store object
given to :func:`autokd.run_search` (e.g. ``optuna.artifacts.Boto3ArtifactStore`` for S3).

The saved model is data (see :mod:`autokd.models.saved`): read back with ``weights_only=True``. Trials of searches
made before the artifact store carry ``model_path`` (a local file holding a pickled module); those load with
``load_trial_model(path_or_trial, trust_pickle=True)``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import optuna
from optuna.artifacts import FileSystemArtifactStore
from torch import nn

from autokd.errors import Problem, StudyError
from autokd.models.saved import read_model
from autokd.objective import MODEL_ATTR
from autokd.study.storage import STUDIES_DIR, ensure_writable

ATTR_ARTIFACTS = "autokd.artifacts"  # study user attribute: the folder of a local artifact store


class AtomicFileSystemArtifactStore(FileSystemArtifactStore):
    """Optuna's folder store, writing each artifact to a temporary file renamed into place.

    Optuna's own ``write`` opens the final path directly, so a full disk leaves a truncated artifact that looks
    whole; here a failed write leaves nothing (and the trial fails with the reason)."""

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        final = self._get_filepath(artifact_id)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                while chunk := content_body.read(1 << 20):
                    f.write(chunk)
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def default_artifacts_dir(storage_url: str, study_name: str) -> Path:
    """``<folder of the SQLite file>/<study>/artifacts``, else ``studies/<study>/artifacts`` (machine-local)."""
    if storage_url.startswith("sqlite:///"):
        return Path(storage_url.removeprefix("sqlite:///")).parent / study_name / "artifacts"
    return STUDIES_DIR / study_name / "artifacts"


def open_artifact_store(folder: str | Path, *, where: str = "--artifacts") -> AtomicFileSystemArtifactStore:
    """A folder artifact store, created and proven writable first (else one located line, exit 2)."""
    folder = Path(folder)
    ensure_writable(folder, where)
    return AtomicFileSystemArtifactStore(folder)


def read_artifact(store: Any, artifact_id: str) -> bytes:
    with store.open_reader(artifact_id) as f:
        return f.read()


def study_artifact_store(study: optuna.Study | None, artifacts: Any = None) -> Any:
    """The store of ``study``'s models: ``artifacts`` (a folder or a store object), else the folder the search
    recorded on the study; None when neither says."""
    if artifacts is None and study is not None:
        artifacts = study.user_attrs.get(ATTR_ARTIFACTS)
    if isinstance(artifacts, (str, Path)):
        return AtomicFileSystemArtifactStore(Path(artifacts))
    return artifacts


def load_trial_model(source: Any, *, artifacts: Any = None, study: optuna.Study | None = None,
                     trust_pickle: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Load a trial's trained model: ``(model in eval mode, record with params/settings/metrics)``.

    ``source`` is a trial (``FrozenTrial``: its model is read from the artifact store, ``artifacts`` = the folder or
    store, default the one recorded on ``study``) or a file (a downloaded artifact, or an old ``model_path``).
    Files are read with ``weights_only=True``; an old-format file (a pickled module) needs ``trust_pickle=True``.
    """
    if isinstance(source, optuna.trial.FrozenTrial):
        artifact_id = source.user_attrs.get(MODEL_ATTR)
        if artifact_id is not None:
            store = study_artifact_store(study, artifacts)
            if store is None:
                raise StudyError(Problem(f"trial {source.number}'s model is artifact {artifact_id}: say where the "
                                         "artifact store is (artifacts=DIR or a store object)", file="--artifacts"))
            return read_model(read_artifact(store, artifact_id), trust_pickle=trust_pickle)
        path = source.user_attrs.get("model_path")
        if path is None:
            raise StudyError(Problem(f"trial {source.number} has no saved model (state {source.state.name})",
                                     file="--trial"))
        return read_model(path, trust_pickle=trust_pickle)
    return read_model(source, trust_pickle=trust_pickle)



ATTR_TEACHER_ARTIFACTS = "autokd.teacher_artifacts"  # study user attribute: {teacher cache key: artifact id}


def member_keys(space: Any, pool: Any) -> list[str]:
    """The cache keys of the teacher's members (what :func:`autokd.teacher.get_teacher` reads or trains)."""
    from autokd.teacher import augment_policy, teacher_key

    policy = augment_policy(space, pool)
    return [teacher_key(space, i, policy) for i in range(space.distill.teacher.ensemble)]


def fetch_teacher(study: optuna.Study | None, store: Any, space: Any, pool: Any, cache_dir: Path) -> list[str]:
    """Copy teacher members another machine's worker shared (see :func:`share_teacher`) into the local cache
    when it lacks them, so this worker loads them instead of training again; returns the keys fetched.

    The copy is checked like any cache file when loaded (format, key, data fingerprint)."""
    if study is None or store is None or space.distill.teacher.checkpoint:
        return []
    shared = study.user_attrs.get(ATTR_TEACHER_ARTIFACTS, {})
    fetched = []
    for key in member_keys(space, pool):
        path = cache_dir / f"{key}.pt"
        if key not in shared or path.exists():
            continue
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(read_artifact(store, shared[key]))
            os.replace(tmp, path)
            fetched.append(key)
        except Exception:  # a missing or unreadable artifact: the worker trains the teacher itself
            continue
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return fetched


def share_teacher(study: optuna.Study, store: Any, space: Any, pool: Any, cache_dir: Path) -> list[str]:
    """Upload the local cache files of the teacher's members to the study's artifact store (once per key), so
    workers on other machines fetch them instead of training the teacher again; returns the keys uploaded."""
    if store is None or space.distill.teacher.checkpoint:
        return []
    shared = dict(study.user_attrs.get(ATTR_TEACHER_ARTIFACTS, {}))
    uploaded = []
    for key in member_keys(space, pool):
        path = cache_dir / f"{key}.pt"
        if key in shared or not path.is_file():
            continue
        shared[key] = optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path),
                                                       study_or_trial=study, mimetype="application/octet-stream")
        uploaded.append(key)
    if uploaded:
        # Two workers may upload the same key at once: either copy is the same teacher (training is deterministic
        # and both are checked when loaded); the last writer's ids stand.
        study.set_user_attr(ATTR_TEACHER_ARTIFACTS, {**study.user_attrs.get(ATTR_TEACHER_ARTIFACTS, {}), **shared})
    return uploaded
