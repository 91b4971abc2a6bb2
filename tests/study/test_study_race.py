"""Two workers creating the same study at once: both end up on one autokd study."""

from __future__ import annotations

import threading

import optuna

import autokd.study
from autokd.space import space_from_dict
from autokd.study import ATTR_HASH, create_or_load_study


def test_a_loader_waits_for_the_creators_attributes(tiny_space, tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/r.db"
    space = space_from_dict(tiny_space)
    # A bare study exists (its creator has not written the autokd attributes yet); they arrive 0.5 s later.
    bare = optuna.create_study(study_name="tiny", storage=url, directions=["maximize", "minimize"])
    timer = threading.Timer(0.5, lambda: create_attrs(bare, space))
    timer.start()
    try:
        study = create_or_load_study(space, storage=url)
    finally:
        timer.join()
    assert study.user_attrs[ATTR_HASH] == autokd.study.storage.space_hash(space)


def create_attrs(study, space):
    study.set_user_attr(autokd.study.ATTR_SPACE, autokd.study.storage.to_dict(space))
    study.set_user_attr(ATTR_HASH, autokd.study.storage.space_hash(space))


def test_a_creator_that_loses_the_race_loads_the_winners_study(tiny_space, tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/r.db"
    space = space_from_dict(tiny_space)
    winner = create_or_load_study(space, storage=url)
    # This worker listed the studies before the winner created it: its create_study now raises.
    monkeypatch.setattr(autokd.study.storage.optuna.study, "get_all_study_summaries", lambda *a, **k: [])
    loser = create_or_load_study(space, storage=url)
    assert loser._study_id == winner._study_id  # the same study (private id: no public equivalent)


def test_workers_opening_a_new_database_at_once_retry_the_schema_race(tmp_path, monkeypatch):
    """Two workers on a new SQLite file both create Optuna's tables; the loser's IntegrityError is retried, not
    reported as a bad --storage (measured with --workers 2 before the retry)."""
    import sqlalchemy.exc

    from autokd.study import open_storage

    real = autokd.study.storage.RetryingRDBStorage
    calls = []

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise sqlalchemy.exc.IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint"))
        return real(*args, **kwargs)

    monkeypatch.setattr(autokd.study.storage, "RetryingRDBStorage", racing)
    open_storage(f"sqlite:///{tmp_path}/s.db")
    assert len(calls) == 2
