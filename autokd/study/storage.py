"""Storages and studies: open any Optuna storage URL, create or load a study race-free, check it against the space.

- Storage: any Optuna storage URL; the default is ``sqlite:///studies/<name>.db``. RDB storages get a heartbeat so
  that trials of a worker that died on another machine are failed and retried (see :mod:`autokd.study.recovery`).
- Space identity: a canonical hash of the space (budget fields left out) is stored in the study; a different space
  is refused unless ``allow_space_change``.
- Creation is race-free: a worker that loses the race to create the study loads the winner's, and a loader waits
  for the creator's attributes.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna

from autokd import __version__
from autokd.errors import Problem, StudyError, hint
from autokd.objective import COST_SCALE, OBJECTIVE_METRICS
from autokd.study.retry import RETRY_SECONDS, EventCallback, RetryingRDBStorage, heartbeat_grace, mask_url
from autokd.space import Space, legacy_space_hashes, space_from_dict, space_hash, to_dict


STUDIES_DIR = Path("studies")


ATTR_SPACE = "autokd.space"


ATTR_HASH = "autokd.space_hash"


ATTR_VERSION = "autokd.version"


# How the study's cost objective values are told to Optuna (and so to its sampler): "log10" for studies made
# since it was added, "linear" (absent) before -- see autokd.objective.objective_values.
ATTR_COST_SCALE = "autokd.cost_scale"


HEARTBEAT_SECONDS, GRACE_SECONDS = 30, 120  # a RUNNING trial without a heartbeat for 2 min is a dead worker's
SQLITE_BUSY_SECONDS = 5.0  # SQLite's own wait for a lock (then the storage's retry takes over, and says so)
SCHEMA_RACE_ATTEMPTS = 5  # tries to open a storage whose tables another worker is creating
CREATE_WAIT_SECONDS = 10.0  # how long a loader waits for a just-created study's autokd attributes


ATTR_TEACHER = "autokd.teacher"  # the teacher's accuracies (clean train/val/test and over the view pool)


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Keep Optuna's experimental/deprecation warnings and per-trial log lines off the user's terminal."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"optuna\..*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"optuna\..*")
        level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        try:
            yield
        finally:
            optuna.logging.set_verbosity(level)


STUDY_NAME_RE = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"  # the space's ``name:`` pattern: a plain folder name, never . or ..


def check_study_name(name: str, where: str = "--study") -> None:
    """A study name that becomes a file or folder name (``studies/NAME.db``, ``studies/NAME/artifacts``) must be a
    plain folder name: letters, digits, ``.``, ``_``, ``-``, starting with a letter or digit (so never ``.`` or
    ``..``, never a path). Else one located line, before anything is created."""
    import re

    if not re.fullmatch(STUDY_NAME_RE, name) or len(name) > 100:
        raise StudyError(Problem(f"{name!r} is not a plain study name: use letters, digits, '.', '_' and '-' "
                                 "(starting with a letter or digit, at most 100 characters); it names the study's "
                                 "files and folders", file=where))


def default_storage(name: str) -> str:
    return f"sqlite:///{STUDIES_DIR / name}.db"


def open_storage(url: str, *, create: bool = True, retry_seconds: float = RETRY_SECONDS,
                 on_event: EventCallback | None = None) -> optuna.storages.BaseStorage:
    """Open an Optuna storage URL, turning every failure into one ``--storage`` line.

    The storage retries every call through a database outage for up to ``retry_seconds``
    (:class:`~autokd.study.retry.RetryingRDBStorage`; ``on_event`` hears ``storage.wait`` / ``storage.back``)."""
    if "://" not in url:
        raise StudyError(Problem(f"{url!r} is not a storage URL (e.g. sqlite:///studies/x.db, "
                                 "postgresql://user@host/db)", file="--storage"))
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        if not create and not db.exists():
            raise StudyError(Problem(f"no study database at {db}", file="--storage"))
        if db.exists() and db.is_dir():
            raise StudyError(Problem(f"{db} is a directory, not a SQLite file", file="--storage"))
        if create:
            ensure_writable(db.parent, "--storage")
    from autokd.study.recovery import stale_trial_callback  # recovery.py imports this module

    # SQLite waits this long for a lock itself; a longer one is an outage, retried (and said) like any other.
    # Elsewhere a pooled connection is checked before use, so one that a server restart killed is replaced.
    engine: dict[str, Any] = ({"connect_args": {"timeout": SQLITE_BUSY_SECONDS}} if url.startswith("sqlite")
                              else {"pool_pre_ping": True})
    for attempt in range(SCHEMA_RACE_ATTEMPTS):
        try:
            with quiet_optuna():
                # The heartbeat finds workers dead on other machines; the one retry mechanism is autokd's re-queue
                # (not also Optuna's RetryHeartbeatStaleTrialCallback, which would enqueue a second copy). Its
                # grace outlasts the retry budget: a worker waiting out an outage is not taken for dead.
                return RetryingRDBStorage(
                    url, retry_seconds=retry_seconds, on_event=on_event, heartbeat_interval=HEARTBEAT_SECONDS,
                    grace_period=int(math.ceil(heartbeat_grace(retry_seconds, HEARTBEAT_SECONDS, GRACE_SECONDS))),
                    heartbeat_stale_trial_callback=stale_trial_callback, engine_kwargs=engine)
        except Exception as exc:  # sqlalchemy/optuna raise many kinds for bad URLs, drivers and files
            if _schema_race(exc) and attempt + 1 < SCHEMA_RACE_ATTEMPTS:
                time.sleep(0.2 * (attempt + 1))  # another worker is creating the tables: they exist in a moment
                continue
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StudyError(Problem(f"cannot open {mask_url(url)}: {reason}", file="--storage")) from None
    raise AssertionError("unreachable")


def _schema_race(exc: Exception) -> bool:
    """Two workers opening a new database at once both create Optuna's tables: the loser's INSERT of the schema
    version (or CREATE TABLE) fails although the database is fine (measured: 2 workers on a new SQLite file)."""
    import sqlalchemy.exc

    text = str(exc)
    return isinstance(exc, sqlalchemy.exc.IntegrityError) or "already exists" in text or (
        "alembic_version" in text)


def ensure_writable(folder: Path, where: str) -> None:
    """Create ``folder`` if needed and prove a file can be written there; else one located line (``where``: the
    option or field that chose it). Run before any training, so nothing computed is lost to a bad path."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".autokd-write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise StudyError(Problem(f"cannot write to {folder}: {reason}", file=where)) from None


def metric_names(space: Space) -> list[str]:
    """The metric keys of the objectives: ``val_accuracy`` then the cost metrics (``bitops``, ``flops``, ...)."""
    return ["val_accuracy"] + [OBJECTIVE_METRICS[o] for o in space.search.objectives]


def objective_names(space: Space, scale: str = COST_SCALE) -> list[str]:
    """The names Optuna (and its dashboard) shows for the objective values: the metric keys, a cost told on the
    log10 scale prefixed ``log10_``."""
    first, *costs = metric_names(space)
    return [first] + [f"log10_{c}" if scale == "log10" else c for c in costs]


def cost_scale(study: optuna.Study) -> str:
    """How ``study`` tells its cost objectives: ``"log10"``, or ``"linear"`` for a study made before the scale was
    recorded (its values stay as they were: one study, one scale)."""
    return str(study.user_attrs.get(ATTR_COST_SCALE, "linear"))


def directions(space: Space) -> list[str]:
    return ["maximize"] + ["minimize"] * len(space.search.objectives)


def open_existing_study(space: Space, *, storage: str | None = None, study_name: str | None = None,
                        allow_space_change: bool = False, retry_seconds: float = RETRY_SECONDS,
                        on_event: EventCallback | None = None) -> optuna.Study | None:
    """The study of ``space`` if it exists (checked against the space), else ``None``; creates nothing.
    ``retry_seconds``, ``on_event``: how its storage rides out an outage (:func:`open_storage`)."""
    name = study_name or space.name
    url = storage or default_storage(name)
    store = open_storage(url, retry_seconds=retry_seconds, on_event=on_event)
    with quiet_optuna():
        # names only: Optuna's study summaries read every trial (4 s at 2,000 trials on SQLite, at every start)
        if name in optuna.study.get_all_study_names(store):
            return _checked_load(space, store, url, name, allow_space_change, update=True)
    return None


def _checked_load(space: Space, store: Any, url: str, name: str, allow_space_change: bool, *,
                  update: bool) -> optuna.Study:
    study = optuna.load_study(study_name=name, storage=store)
    new_hash = space_hash(space)
    old_hash = study.user_attrs.get(ATTR_HASH)
    # Another worker may have created the study an instant ago and not yet written its attributes: wait for them.
    deadline = time.monotonic() + CREATE_WAIT_SECONDS
    while old_hash is None and not study.get_trials(deepcopy=False) and time.monotonic() < deadline:
        time.sleep(0.2)
        old_hash = study.user_attrs.get(ATTR_HASH)
    if old_hash is None:
        raise StudyError(Problem(f"study {name!r} in {url} was not made by autokd; choose another name with --study",
                                 file="--study"))
    if [d.name.lower() for d in study.directions] != directions(space):
        raise StudyError(Problem(f"study {name!r} in {url} optimizes {len(study.directions)} objectives, this space "
                                 f"{len(directions(space))}; use --study NEW_NAME", file="search.objectives"))
    if old_hash != new_hash and old_hash in legacy_space_hashes(space):
        if update:  # the same question, hashed before the sampler left the hash: store today's hash
            study.set_user_attr(ATTR_HASH, new_hash)
    elif old_hash != new_hash:
        if not allow_space_change:
            raise StudyError(Problem(
                f"study {name!r} in {url} was created from a different space (hash {old_hash}, now {new_hash}); "
                "start a new study with --study NEW_NAME or --storage URL, or continue this one with "
                "--allow-space-change", file=space.source or "space"))
        if update:
            history = list(study.user_attrs.get("autokd.space_history", [])) + [old_hash]
            study.set_user_attr("autokd.space_history", history)
            study.set_user_attr(ATTR_HASH, new_hash)
            study.set_user_attr(ATTR_SPACE, to_dict(space))
    return study


def create_or_load_study(space: Space, *, storage: str | None = None, study_name: str | None = None,
                         allow_space_change: bool = False, retry_seconds: float = RETRY_SECONDS,
                         on_event: EventCallback | None = None) -> optuna.Study:
    """The study of ``space``: created on first use, loaded (and checked against the space) afterwards."""
    from autokd.study.sampler import make_sampler  # sampler.py imports this module

    existing = open_existing_study(space, storage=storage, study_name=study_name,
                                   allow_space_change=allow_space_change, retry_seconds=retry_seconds,
                                   on_event=on_event)
    if existing is not None:
        return existing
    name = study_name or space.name
    url = storage or default_storage(name)
    store = open_storage(url, retry_seconds=retry_seconds, on_event=on_event)
    with quiet_optuna():
        try:
            study = optuna.create_study(study_name=name, storage=store, directions=directions(space),
                                        sampler=make_sampler(space))
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it first: use theirs
            return _checked_load(space, store, url, name, allow_space_change, update=True)
        study.set_metric_names(objective_names(space, COST_SCALE))
        study.set_user_attr(ATTR_COST_SCALE, COST_SCALE)  # before the hash: a loader waits for the hash
        study.set_user_attr(ATTR_SPACE, to_dict(space))
        study.set_user_attr(ATTR_HASH, space_hash(space))
        study.set_user_attr(ATTR_VERSION, __version__)
        return study


def load_study(*, storage: str, study_name: str) -> tuple[optuna.Study, Space]:
    """Load an existing autokd study and the space it was made from (for reports)."""
    store = open_storage(storage, create=False)
    with quiet_optuna():
        names = optuna.study.get_all_study_names(store)  # not the summaries: they read every trial
        if study_name not in names:
            raise StudyError(Problem(f"no study {study_name!r} in {storage}{hint(study_name, names)}",
                                     file="--study"))
        study = optuna.load_study(study_name=study_name, storage=store)
    data = study.user_attrs.get(ATTR_SPACE)
    if data is None:
        raise StudyError(Problem(f"study {study_name!r} was not made by autokd", file="--study"))
    return study, space_from_dict(data)


def count_states(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts
