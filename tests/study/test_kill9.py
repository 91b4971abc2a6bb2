"""kill -9 of a real search worker at seeded random moments (bench/kill9.py): the teacher's training and save, a
trial's training, its save and upload, start-up, between trials. The search is then run to its end: its target is
reached, no COMPLETE trial was lost or changed, nothing is left RUNNING, every model loads, every KD pair is whole,
the teacher cache loads and no temp file is left in the cache or the artifact folder."""

from __future__ import annotations

import pytest

from tests.conftest import load_bench


def _bench():
    return load_bench("kill9")


def check(r: dict, n_trials: int) -> None:
    detail = {k: r[k] for k in ("landings", "states", "lost_trials", "changed_trials", "unreadable_models",
                                "broken_pair_trials", "teacher_set_aside", "tmp_left", "workdir")}
    assert r["final_exit"] == 0, detail
    assert r["lost"] == 0 and r["changed"] == 0, detail
    assert r["running"] == 0, detail
    assert r["complete"] >= n_trials, detail
    assert r["models_load"] == r["complete"], detail
    assert r["broken_pairs"] == 0 and r["trained_twice"] == 0, detail
    assert r["teacher_cache"] == "loads", detail
    assert r["kd_teacher_hashes"] == [r["teacher_hash"]], detail  # every KD trial learnt from the cached teacher
    assert r["tmp_left"] == [], detail


def test_two_kills_then_the_search_finishes(tmp_path):
    """The mechanism, cheaply: one kill during the teacher's training, one during a trial."""
    r = _bench().run(kills=2, seed=0, workdir=tmp_path, n_trials=2, teacher_epochs=6, say=lambda line: None)
    assert r["kills"] == 2, r["landings"]
    check(r, 2)
    assert r["kills_during_teacher"] == 1 and r["kills_mid_trial"] == 1, r["landings"]
    assert r["retries"] >= 1  # the killed trial was queued again and ran


@pytest.mark.slow
def test_ten_kills_then_the_search_finishes(tmp_path):
    r = _bench().run(kills=10, seed=0, workdir=tmp_path, ask_kills=1, say=print)  # one as a trial begins
    assert r["kills"] == 10, r["landings"]
    check(r, 8)
    assert r["kills_during_teacher"] >= 2 and r["kills_mid_trial"] >= 3, r["landings"]
