"""A storage that outlasts a database blip: every call waits and retries while the database does not answer.

A PostgreSQL restart, a network drop, a failover or a SQLite file held locked by another process make every
storage call raise for a while. Optuna raises them as they come: the tell of a trial fails, the ``get_trial`` in
``_run_trial``'s except-branch fails too and its ``finally`` reads an unset variable; ``ask``, attribute writes and
``fail_stale_trials`` fail as well, and the heartbeat thread dies on its first failed beat. Wrapping
``study.optimize`` cannot help (the trial is lost by then), so the storage itself retries:
:class:`RetryingRDBStorage` is an :class:`optuna.storages.RDBStorage` (``optuna.storages.get_storage`` still wraps
it in Optuna's cache) whose calls retry with bounded exponential backoff and full jitter on errors of the
connection (``OperationalError``, ``InterfaceError``, an invalidated connection, SQLite's "database is locked"),
never on integrity or data errors, for up to ``retry_seconds`` per outage (``--storage-retry``).

The calls that are not idempotent are made safe to repeat:

- creating a trial (ask, enqueue) carries a token in its system attributes; after a failure the retry first looks
  for a trial with that token (the first try may have committed before its answer was lost), so a retry leaves no
  orphan and no double;
- a tell (``set_trial_state_values``) that failed is re-read before it is repeated: a trial already in the asked
  state with these values was this call's own commit; any other finished state is refused as Optuna would;
- taking a queued trial (WAITING -> RUNNING) whose answer was lost is ambiguous (this worker or another may hold
  it): it is reported as not taken; a trial this worker took and does not run has no worker record and is re-queued
  by the orphan check (:mod:`autokd.study.recovery`).

Past the budget the call raises :class:`StorageUnavailable` (exit code 75, EX_TEMPFAIL) and the storage fails fast
from then on, so the process stops at once, leaving its trial RUNNING for the next worker to re-queue. Written by
hand because neither Optuna nor SQLAlchemy retries a failed call (SQLAlchemy's ``pool_pre_ping`` only replaces a
dead pooled connection, which is also turned on here).
"""

from __future__ import annotations

import math
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from autokd.errors import Problem, StorageUnavailable

RETRY_SECONDS = 600.0  # default budget per outage (--storage-retry)
BACKOFF_FIRST, BACKOFF_CAP = 0.5, 30.0  # seconds: the first wait, and the longest one
TOKEN_ATTR = "autokd:create_token"  # system attribute of a created trial: finds it again after a lost answer
EX_TEMPFAIL = 75

# SQLite raises OperationalError for its schema and syntax errors too: only these messages are an outage.
_SQLITE_TRANSIENT = ("database is locked", "database table is locked", "busy", "disk i/o error",
                     "unable to open database file")


def mask_url(url: str) -> str:
    """``url`` with its password hidden (as SQLAlchemy renders it), for messages."""
    try:
        import sqlalchemy

        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: say nothing of it beyond the scheme
        return url.split("://", 1)[0] + "://..." if "://" in url else "the storage"


def is_retriable(exc: BaseException) -> bool:
    """Whether ``exc`` (or the error it wraps: Optuna raises ``StorageInternalError from`` SQLAlchemy's) is an
    outage of the database connection rather than something wrong with the data or the request."""
    import sqlalchemy.exc as sa

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (sa.IntegrityError, sa.DataError, sa.ProgrammingError, sa.NotSupportedError)):
            return False
        if isinstance(e, sa.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, (sa.DisconnectionError, sa.TimeoutError, sa.InterfaceError)):
            return True
        if isinstance(e, sa.OperationalError):
            if type(e.orig).__module__.startswith("sqlite3"):
                return any(s in str(e.orig).lower() for s in _SQLITE_TRANSIENT)
            return True  # PostgreSQL/MySQL: a dropped or refused connection, a server shutting down, a deadlock
        e = e.__cause__ or e.__context__
    return False


def _reason(exc: BaseException) -> str:
    """The first line of the driver's own error behind ``exc`` (Optuna and SQLAlchemy wrap it), for messages."""
    cause = exc.__cause__ or exc
    cause = getattr(cause, "orig", None) or cause
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]


def backoff(attempt: int, rng: random.Random) -> float:
    """Seconds before retry ``attempt`` (0, 1, ...): exponential, capped, with full jitter (workers that lost the
    database together do not all come back in the same instant)."""
    return rng.uniform(0.5, 1.0) * min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** attempt)


EventCallback = Callable[..., None]


def _quiet(event: str, **data: Any) -> None:
    pass


class RetryingRDBStorage(RDBStorage):
    """:class:`optuna.storages.RDBStorage` whose every call retries through an outage (see the module).

    ``retry_seconds``: how long one call waits for the database before :class:`StorageUnavailable`;
    ``on_event(event, **data)`` hears ``storage.wait`` (url, reason, budget) once when an outage starts and
    ``storage.back`` (url, seconds) when it ends."""

    def __init__(self, url: str, *, retry_seconds: float = RETRY_SECONDS, on_event: EventCallback | None = None,
                 **kwargs: Any) -> None:
        self.retry_seconds = float(retry_seconds)
        self.on_event: EventCallback = on_event or _quiet
        self.gave_up = False
        self._outage_since: float | None = None
        self._outage_lock = threading.Lock()
        self._local = threading.local()
        self._rng = random.Random()
        super().__init__(url, **kwargs)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        for key in ("_outage_lock", "_local", "on_event"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._outage_lock, self._local, self.on_event = threading.Lock(), threading.local(), _quiet

    # -- the retry loop ---------------------------------------------------------------------------------------

    def _retry(self, call: Callable[[], Any], *, settled: Callable[[], tuple[bool, Any]] | None = None,
               give_up: bool = True) -> Any:
        """Run ``call`` until it does not raise a retriable error, or the budget is spent.

        ``settled``: after a failed try, asked before the next one whether that try took effect anyway
        (``(True, result)``), so a call that is not idempotent is not done twice. ``give_up``: whether spending the
        budget makes every later call fail fast (not for the heartbeat thread: the main thread decides)."""
        if getattr(self._local, "depth", 0):
            return call()  # a call made inside a retried call: the outer one retries
        if self.gave_up:
            raise self._unavailable(None)
        self._local.depth = 1
        start: float | None = None
        attempt = 0
        try:
            while True:
                try:
                    if start is not None and settled is not None:
                        done, result = settled()
                        if done:
                            break
                    result = call()
                    break
                except Exception as exc:
                    if not is_retriable(exc):
                        raise
                    now = time.monotonic()
                    if start is None:
                        start = now
                        self._outage_began(exc)
                    if now - start >= self.retry_seconds or self.gave_up:
                        if give_up:
                            self.gave_up = True
                        raise self._unavailable(exc) from exc
                    time.sleep(min(backoff(attempt, self._rng), max(0.0, start + self.retry_seconds - now)))
                    attempt += 1
            if start is not None:
                self._outage_ended()
            return result
        finally:
            self._local.depth = 0

    def _outage_began(self, exc: BaseException) -> None:
        with self._outage_lock:
            if self._outage_since is not None:
                return  # another thread of this process already said so
            self._outage_since = time.monotonic()
        self.on_event("storage.wait", url=mask_url(self.url), reason=_reason(exc)[:200], budget=self.retry_seconds)

    def _outage_ended(self) -> None:
        with self._outage_lock:
            since, self._outage_since = self._outage_since, None
        if since is not None:
            self.on_event("storage.back", url=mask_url(self.url), seconds=time.monotonic() - since)

    def _unavailable(self, exc: BaseException | None) -> StorageUnavailable:
        why = f" (last error: {_reason(exc)[:160]})" if exc is not None else ""
        return StorageUnavailable(Problem(
            f"the storage {mask_url(self.url)} did not answer for {self.retry_seconds:g} s{why}; this worker "
            "stopped, and the next worker that starts re-queues its trial (raise the wait with --storage-retry "
            "SECONDS)", file="--storage"))

    # -- calls that are not idempotent ------------------------------------------------------------------------

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        token = uuid.uuid4().hex
        template = _tagged(template_trial, token)
        parent = super()._create_new_trial

        def settled() -> tuple[bool, Any]:
            for t in RDBStorage.get_all_trials(self, study_id, deepcopy=False, states=(template.state,)):
                if t.system_attrs.get(TOKEN_ATTR) == token:
                    return True, t
            return False, None

        return self._retry(lambda: parent(study_id, template), settled=settled)

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Any = None) -> bool:
        parent = super().set_trial_state_values

        def settled() -> tuple[bool, Any]:
            t = RDBStorage.get_trial(self, trial_id)
            if state == TrialState.RUNNING:
                # A lost answer to "take this queued trial": taken by this worker or another, one cannot tell.
                return (t.state != TrialState.WAITING), False
            if t.state == state and _same_values(t.values, values):
                return True, True  # the lost answer was this call's own commit
            return False, None  # still RUNNING (repeat), or finished otherwise (Optuna refuses it, as it should)

        return self._retry(lambda: parent(trial_id, state, values), settled=settled)

    def record_heartbeat(self, trial_id: int) -> None:
        # The heartbeat thread survives an outage: it retries like any call, and past the budget stays quiet
        # (the main thread of the worker decides whether to stop).
        if self.gave_up:
            return
        parent = super().record_heartbeat
        try:
            self._retry(lambda: parent(trial_id), give_up=False)
        except StorageUnavailable:
            pass


def _same_values(stored: list[float] | None, asked: Any) -> bool:
    if asked is None:
        return True  # FAIL/PRUNED carry no values: the state alone says it
    asked = list(asked)
    if stored is None or len(stored) != len(asked):
        return False
    return all(a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0) for a, b in zip(stored, asked))


def _tagged(template: FrozenTrial | None, token: str) -> FrozenTrial:
    """``template`` (or, for an ask, the RUNNING trial Optuna would create) with the creation token added."""
    import copy
    import datetime

    if template is None:
        return FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, values=None,
                           datetime_start=datetime.datetime.now(), datetime_complete=None, params={},
                           distributions={}, user_attrs={}, system_attrs={TOKEN_ATTR: token},
                           intermediate_values={}, trial_id=-1)
    tagged = copy.copy(template)
    tagged._system_attrs = {**template.system_attrs, TOKEN_ATTR: token}
    return tagged


# Every other call is idempotent (reads; attribute and parameter writes that overwrite or ignore a repeat): it is
# simply repeated. Optuna's cache (_CachedStorage) calls some private methods of the backend directly.
_IDEMPOTENT = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
    "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies", "set_trial_param", "_set_trial_param",
    "get_trial_param", "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials", "_get_trials", "get_best_trial",
    "_get_best_trial_id", "_get_stale_trial_ids", "get_n_trials",
)


def _repeating(name: str) -> Callable[..., Any]:
    parent = getattr(RDBStorage, name)

    def method(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retry(lambda: parent(self, *args, **kwargs))

    method.__name__ = method.__qualname__ = name
    method.__doc__ = parent.__doc__
    return method


for _name in _IDEMPOTENT:
    if hasattr(RDBStorage, _name):
        setattr(RetryingRDBStorage, _name, _repeating(_name))
del _name


def heartbeat_grace(retry_seconds: float, heartbeat: float, grace: float) -> float:
    """The silence after which other workers fail a trial: longer than a worker waits out an outage (its heartbeat
    is silent meanwhile), so a trial whose worker is waiting for the storage is never failed for it."""
    return max(grace, retry_seconds + 2 * heartbeat)


__all__ = ["EX_TEMPFAIL", "RETRY_SECONDS", "RetryingRDBStorage", "StorageUnavailable", "heartbeat_grace",
           "is_retriable", "mask_url"]
