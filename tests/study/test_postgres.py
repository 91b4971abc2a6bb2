"""A real PostgreSQL storage (the one workers on many machines share): opening it, creating and loading a study
(also by two workers at once), a tiny search with its KD twins and its resume, and a wrong URL as one ``--storage``
line.

The server comes from ``$AUTOKD_TEST_POSTGRES`` (``.ci/run`` starts a throw-away one; README "Many workers" says
how to start one by hand): without it these tests skip with the reason, and fail under ``CI=true``. Each test works
in a study of its own (``postgres_study``), so reruns against the same database never collide."""

from __future__ import annotations

import copy
import importlib.util
import json
import socket
import threading

import optuna
import pytest
from optuna.trial import TrialState

from autokd.errors import StudyError
from autokd.space import space_from_dict, space_hash
from autokd.study import ATTR_HASH, create_or_load_study, load_study, open_storage, run_search, twin_params

# study.ask() on a storage with a heartbeat warns that heartbeats are meant for optimize(); harmless here
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


def free_port() -> int:
    """A local TCP port nobody listens on (bound and released at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_open_storage_on_postgres(postgres_url):
    store = open_storage(postgres_url)
    try:
        assert isinstance(store, optuna.storages.RDBStorage)
        assert store.engine.name == "postgresql"
        assert store.get_heartbeat_interval() is not None  # dead workers on other machines are found
    finally:
        store.engine.dispose()


def test_create_then_load_the_same_study(postgres_url, postgres_study, tiny_space):
    sp = space_from_dict(tiny_space)
    first = create_or_load_study(sp, storage=postgres_url, study_name=postgres_study)
    assert first.study_name == postgres_study
    assert first.user_attrs[ATTR_HASH] == space_hash(sp)
    again = create_or_load_study(space_from_dict(tiny_space, overrides=["search.n_trials=40"]), storage=postgres_url,
                                 study_name=postgres_study)
    assert again._study_id == first._study_id  # the same study (private id: no public equivalent)
    loaded, loaded_space = load_study(storage=postgres_url, study_name=postgres_study)
    assert loaded._study_id == first._study_id and space_hash(loaded_space) == space_hash(sp)
    with pytest.raises(StudyError, match="different space"):
        create_or_load_study(space_from_dict(tiny_space, overrides=["train.epochs=2"]), storage=postgres_url,
                             study_name=postgres_study)


def test_two_workers_creating_the_study_at_once_share_it(postgres_url, postgres_study, tiny_space):
    sp = space_from_dict(tiny_space)
    start = threading.Barrier(2)
    studies: list[optuna.Study] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait(timeout=30)
            studies.append(create_or_load_study(sp, storage=postgres_url, study_name=postgres_study))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(studies) == 2 and studies[0]._study_id == studies[1]._study_id
    assert optuna.get_all_study_names(postgres_url).count(postgres_study) == 1
    assert studies[0].user_attrs[ATTR_HASH] == space_hash(sp)


def test_tiny_search_with_twins_on_postgres(postgres_url, postgres_study, tiny_space, tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)  # trial models go to studies/<study>/artifacts under the cwd
    data = copy.deepcopy(tiny_space)
    data["dataset"]["limit"] = 200  # quick trials (the teacher is trained once per session)
    data["train"]["lr"] = {"low": 0.01, "high": 0.1, "log": True}  # two sampled trials never share parameters
    data["compress"] = {"finetune_epochs": 0}
    data["search"] = {"n_trials": 2, "sampler": "random", "kd_twins": True}
    sp = space_from_dict(data)

    result = run_search(sp, storage=postgres_url, study_name=postgres_study, device="cpu")
    assert (result.complete, result.ran_this_run, result.stopped) == (2, 2, "done")
    trials = result.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert [t.user_attrs.get("twin_of") for t in trials] == [None, 0]
    assert trials[1].params == twin_params(trials[0].params)

    # a new run (as a worker on another machine would do) finds the study done and runs nothing
    again = run_search(sp, storage=postgres_url, study_name=postgres_study, device="cpu")
    assert (again.complete, again.ran_this_run) == (2, 0)
    assert [t.values for t in again.study.get_trials()] == [t.values for t in trials]

    res = cli("studies", "--storage", postgres_url, "--json")
    assert res.code == 0, res.err
    (row,) = [r for r in json.loads(res.out) if r["study"] == postgres_study]  # a shared server may hold others
    assert row["states"] == {"COMPLETE": 2} and row["autokd"] is True


def test_wrong_postgres_url_is_one_storage_line(cli, space_file, tiny_space):
    """Needs no server: nobody listens on the port (a missing psycopg is one line too)."""
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/autokd_test"
    with pytest.raises(StudyError) as exc:
        open_storage(url)
    (line,) = exc.value.lines
    assert line.startswith(f"--storage: cannot open {url}: ")
    if importlib.util.find_spec("psycopg") is not None:
        assert "Connection refused" in line

    res = cli("search", space_file(tiny_space), "--storage", url, "--device", "cpu")
    assert res.code == 2
    assert res.err_lines == [f"error: {line}"]
    assert "Traceback" not in res.err + res.out
