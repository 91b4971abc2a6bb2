"""A proposal that repeats a trial that already ran is PRUNED with ``duplicate_of`` and never trains; a sampler
that proposes only duplicates stops the search instead of spinning."""

from __future__ import annotations

import copy

import optuna
from optuna.trial import TrialState

import autokd.study
from autokd.space import space_from_dict
from autokd.study import run_search


def test_duplicates_are_pruned_untrained_and_end_an_exhausted_search(tiny_space, tmp_path, monkeypatch):
    monkeypatch.setattr(autokd.study.runner, "MAX_DUPLICATES_IN_A_ROW", 3)
    s = copy.deepcopy(tiny_space)
    s["model"]["width_mult"] = 0.25  # only distill.kd is searched: two configurations in all
    s["search"]["n_trials"] = 4
    url = f"sqlite:///{tmp_path}/d.db"
    result = run_search(space_from_dict(s), storage=url, device="cpu")
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert result.stopped == "duplicates" and result.complete == 2
    assert sorted(t.params["distill.kd"] for t in complete) == [False, True]
    assert len(pruned) == 3
    by_params = {tuple(sorted(t.params.items())): t.number for t in complete}
    for t in pruned:
        assert t.user_attrs["duplicate_of"] == by_params[tuple(sorted(t.params.items()))]
        assert "metrics" not in t.user_attrs and "fail_reason" not in t.user_attrs  # never trained
    assert result.failed_this_run == 0 and result.ran_this_run == 2


def test_the_cli_says_why_it_stopped(cli, space_file, tiny_space, tmp_path, monkeypatch):
    monkeypatch.setattr(autokd.study.runner, "MAX_DUPLICATES_IN_A_ROW", 2)
    s = copy.deepcopy(tiny_space)
    s["model"]["width_mult"] = 0.25
    s["search"]["n_trials"] = 4
    res = cli("search", space_file(s), "--storage", f"sqlite:///{tmp_path}/c.db", "--device", "cpu")
    assert res.code == 0, res.err
    assert "same settings as trial" in res.out
    assert "Stopped with 2/4 complete trials" in res.out and "nearly exhausted" in res.out
    assert "Done:" not in res.out
