"""The storage that outlasts a database blip (:mod:`autokd.study.retry`), in process, on SQLite files held locked
by another connection: calls wait and go on, the budget ends in :class:`StorageUnavailable`, a lost answer to a
commit is not repeated, the heartbeat survives, and only errors of the connection are retried."""

from __future__ import annotations

import sqlite3
import threading
import time

import optuna
import pytest
import sqlalchemy.exc as sa
from optuna.trial import TrialState

from autokd.errors import StorageUnavailable
from autokd.study import retry as retry_mod
from autokd.study import storage as storage_mod
from autokd.study.retry import RetryingRDBStorage, is_retriable, mask_url

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    # SQLite's own lock wait and the first backoff, short: a test waits seconds, not minutes
    monkeypatch.setattr(storage_mod, "SQLITE_BUSY_SECONDS", 0.2)
    monkeypatch.setattr(retry_mod, "BACKOFF_FIRST", 0.05)
    monkeypatch.setattr(retry_mod, "BACKOFF_CAP", 0.3)


def _hold_lock(db, seconds: float) -> threading.Thread:
    """Another connection takes SQLite's exclusive lock on ``db`` for ``seconds`` (readers and writers wait)."""
    taken = threading.Event()

    def hold() -> None:
        con = sqlite3.connect(db, isolation_level=None, timeout=10)
        con.execute("BEGIN EXCLUSIVE")
        taken.set()
        time.sleep(seconds)
        con.execute("COMMIT")
        con.close()

    t = threading.Thread(target=hold)
    t.start()
    assert taken.wait(10)
    return t


def _study(tmp_path, retry_seconds: float, events: list | None = None):
    db = tmp_path / "s.db"
    store = storage_mod.open_storage(f"sqlite:///{db}", retry_seconds=retry_seconds,
                                     on_event=(lambda e, **d: events.append((e, d))) if events is not None else None)
    with storage_mod.quiet_optuna():
        study = optuna.create_study(study_name="s", storage=store, directions=["maximize"])
    return db, store, study


def test_a_call_waits_for_a_locked_sqlite_file_and_goes_on(tmp_path):
    events: list = []
    db, store, study = _study(tmp_path, retry_seconds=30, events=events)
    trial = study.ask()
    holder = _hold_lock(db, 1.5)
    start = time.monotonic()
    study.tell(trial, 0.5)  # waits out the lock
    waited = time.monotonic() - start
    holder.join()
    assert waited >= 1.0
    assert study.trials[0].state == TrialState.COMPLETE and study.trials[0].value == 0.5
    names = [e for e, _ in events]
    assert names == ["storage.wait", "storage.back"], events
    assert "locked" in events[0][1]["reason"] and events[0][1]["budget"] == 30
    assert events[1][1]["seconds"] >= 1.0


def test_past_the_budget_a_call_raises_and_later_calls_fail_fast(tmp_path):
    db, store, study = _study(tmp_path, retry_seconds=0.6)
    trial = study.ask()
    holder = _hold_lock(db, 3.0)
    start = time.monotonic()
    with pytest.raises(StorageUnavailable, match=r"did not answer for 0\.6 s") as info:
        study.tell(trial, 0.5)
    assert time.monotonic() - start < 2.5
    assert info.value.exit_code == 75 and len(info.value.lines) == 1
    assert info.value.lines[0].startswith("--storage: the storage sqlite:///")
    start = time.monotonic()
    with pytest.raises(StorageUnavailable):
        store.get_all_studies()  # the budget is spent: no second wait
    assert time.monotonic() - start < 0.2
    holder.join()


def test_the_heartbeat_survives_an_outage(tmp_path):
    db, store, study = _study(tmp_path, retry_seconds=0.5)
    trial = study.ask()
    holder = _hold_lock(db, 1.5)
    store.record_heartbeat(trial._trial_id)  # past its budget: quiet, no exception (the thread would die)
    assert not store.gave_up  # the main thread decides whether the worker stops
    holder.join()
    store.record_heartbeat(trial._trial_id)


def test_a_lost_answer_to_a_tell_is_not_told_twice(tmp_path, monkeypatch):
    db, store, study = _study(tmp_path, retry_seconds=10)
    trial = study.ask()
    real = optuna.storages.RDBStorage.set_trial_state_values
    calls = []

    def commit_then_lose_the_answer(self, trial_id, state, values=None):
        calls.append(state)
        done = real(self, trial_id, state, values)
        if len(calls) == 1:
            raise optuna.exceptions.StorageInternalError("lost") from sa.OperationalError(
                "COMMIT", {}, Exception("server closed the connection unexpectedly"))
        return done

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", commit_then_lose_the_answer)
    study.tell(trial, 0.25)  # without the re-read, the repeat would raise UpdateFinishedTrialError
    assert calls == [TrialState.COMPLETE]  # settled by re-reading the trial: not repeated
    assert study.trials[0].state == TrialState.COMPLETE and study.trials[0].value == 0.25


def test_a_lost_answer_to_a_trial_creation_leaves_no_double(tmp_path, monkeypatch):
    db, store, study = _study(tmp_path, retry_seconds=10)
    real = optuna.storages.RDBStorage._create_new_trial
    calls = []

    def create_then_lose_the_answer(self, study_id, template_trial=None):
        calls.append(1)
        made = real(self, study_id, template_trial)
        if len(calls) == 1:
            raise optuna.exceptions.StorageInternalError("lost") from sa.OperationalError(
                "INSERT", {}, Exception("connection reset"))
        return made

    monkeypatch.setattr(optuna.storages.RDBStorage, "_create_new_trial", create_then_lose_the_answer)
    study.enqueue_trial({"x": 1.0})
    assert len(calls) == 1  # the retry found the trial its lost first try made: not made again
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 1 and trials[0].state == TrialState.WAITING
    trial = study.ask()  # pops the queued trial
    assert trial.number == 0 and len(study.get_trials(deepcopy=False)) == 1
    calls.clear()
    study.ask()  # a new trial: its first try's answer is lost too
    assert len(calls) == 1 and len(study.get_trials(deepcopy=False)) == 2


def test_which_errors_are_an_outage():
    locked = sa.OperationalError("SELECT", {}, sqlite3.OperationalError("database is locked"))
    schema = sa.OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: trials"))
    refused = sa.OperationalError("SELECT", {}, Exception("connection refused"))  # a server's driver
    integrity = sa.IntegrityError("INSERT", {}, Exception("duplicate key"))
    wrapped = optuna.exceptions.StorageInternalError("x")
    wrapped.__cause__ = refused
    assert is_retriable(locked) and is_retriable(refused) and is_retriable(wrapped)
    assert not is_retriable(schema) and not is_retriable(integrity)
    assert not is_retriable(ValueError("bad value")) and not is_retriable(KeyError("k"))
    assert is_retriable(sa.InterfaceError("SELECT", {}, Exception("connection already closed")))


def test_a_password_never_shows():
    assert mask_url("postgresql+psycopg://bob:s3cret@db.example:5432/x") == \
        "postgresql+psycopg://bob:***@db.example:5432/x"
    assert mask_url("sqlite:///studies/a.db") == "sqlite:///studies/a.db"


def test_the_grace_outlasts_the_budget():
    assert retry_mod.heartbeat_grace(600, 30, 120) > 600
    assert retry_mod.heartbeat_grace(0, 30, 120) == 120


def test_open_storage_retries_and_keeps_optuna_cache(tmp_path):
    store = storage_mod.open_storage(f"sqlite:///{tmp_path}/x.db", retry_seconds=42)
    assert isinstance(store, RetryingRDBStorage) and store.retry_seconds == 42
    assert store.grace_period > 42
    cached = optuna.storages.get_storage(store)
    assert type(cached).__name__ == "_CachedStorage"  # Optuna still wraps it in its cache
