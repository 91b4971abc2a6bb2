"""Workers on several machines share one teacher through the study's artifact store (each machine has its own
teacher cache folder; the artifact folder and the storage are shared)."""

from __future__ import annotations

from optuna.trial import TrialState

from autokd.progress import EventLog
from autokd.space import space_from_dict
from autokd.study import run_search
from autokd.study.artifacts import ATTR_TEACHER_ARTIFACTS


def test_a_second_machine_fetches_the_teacher_instead_of_training_it(tmp_path, tiny_space):
    url, store = f"sqlite:///{tmp_path}/s.db", tmp_path / "shared-artifacts"
    first = EventLog()
    run_search(space_from_dict(tiny_space, overrides=["search.n_trials=2"]), storage=url, device="cpu",
               cache_dir=tmp_path / "machine-a", artifacts=store, progress=first)
    assert [d["source"] for e, d in first.events if e == "teacher.done"] == ["trained"]
    second = EventLog()
    result = run_search(space_from_dict(tiny_space, overrides=["search.n_trials=4"]), storage=url, device="cpu",
                        cache_dir=tmp_path / "machine-b", artifacts=store, progress=second)
    names = [e for e, _ in second.events]
    assert "teacher.fetched" in names and "teacher.start" not in names  # not trained again
    assert [d["source"] for e, d in second.events if e == "teacher.done"] == ["cache"]
    (key,) = result.study.user_attrs[ATTR_TEACHER_ARTIFACTS]
    assert (tmp_path / "machine-b" / f"{key}.pt").is_file()
    kd = [t for t in result.study.get_trials(states=(TrialState.COMPLETE,)) if t.params["distill.kd"]]
    assert len(kd) >= 2
    hashes = {t.user_attrs["teacher_hash"] for t in kd}
    assert len(hashes) == 1  # every KD trial, on either machine, distilled from the same weights


def test_a_broken_shared_teacher_is_trained_locally(tmp_path, tiny_space):
    url, store = f"sqlite:///{tmp_path}/s.db", tmp_path / "shared-artifacts"
    result = run_search(space_from_dict(tiny_space), storage=url, device="cpu", cache_dir=tmp_path / "a",
                        artifacts=store)
    (artifact,) = result.study.user_attrs[ATTR_TEACHER_ARTIFACTS].values()
    (store / artifact).write_bytes(b"garbage")
    log = EventLog()
    run_search(space_from_dict(tiny_space, overrides=["search.n_trials=4"]), storage=url, device="cpu",
               cache_dir=tmp_path / "b", artifacts=store, progress=log)
    assert [d["source"] for e, d in log.events if e == "teacher.done"] == ["trained"]
    assert "teacher.corrupt" in [e for e, _ in log.events]  # the fetched copy was checked and set aside
