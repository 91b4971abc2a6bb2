"""Pareto selection from plain trial records, and the report command over a stored study."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from autokd.report import dominates, pareto_front, pareto_info
from autokd.study import trial_records

DIRS = ["maximize", "minimize"]

# (accuracy, flops); None = a FAIL trial
POINTS = [
    (0.90, 100.0),  # 0 front
    (0.80, 50.0),   # 1 front
    (0.85, 120.0),  # 2 dominated by 0
    (0.70, 40.0),   # 3 front
    (0.80, 60.0),   # 4 dominated by 1 (equal accuracy, more FLOPs)
    (0.95, 300.0),  # 5 front
    (0.90, 100.0),  # 6 duplicate of 0: kept
    None,           # 7 FAIL
    (0.60, 45.0),   # 8 dominated by 3
    (0.99, 20.0),   # 9 best accuracy and fewest FLOPs: dominates every other trial
]
DIST = {"model.width_mult": CategoricalDistribution([0.25, 0.5, 1.0]),
        "distill.kd": CategoricalDistribution([True, False])}


def make_trials(points=POINTS):
    trials = []
    for i, p in enumerate(points):
        params = {"model.width_mult": [0.25, 0.5, 1.0][i % 3], "distill.kd": i % 2 == 0}
        settings = {"model": {"width_mult": params["model.width_mult"]}, "distill": {"kd": params["distill.kd"]}}
        if p is None:
            trials.append(create_trial(state=TrialState.FAIL, params=params, distributions=DIST,
                                       user_attrs={"settings": settings, "fail_reason": "RuntimeError: boom"}))
            continue
        acc, flops = p
        metrics = {"val_accuracy": acc, "test_accuracy": acc - 0.01, "flops": flops, "params": 1000.0 + i}
        trials.append(create_trial(state=TrialState.COMPLETE, values=[acc, flops], params=params,
                                   distributions=DIST, user_attrs={"metrics": metrics, "settings": settings}))
    return trials


POINTS_WITHOUT_9 = POINTS[:9]
FRONT_WITHOUT_9 = [0, 1, 3, 5, 6]


@pytest.mark.parametrize("points,front", [(POINTS_WITHOUT_9, FRONT_WITHOUT_9), (POINTS, [9])])
def test_pareto_of_an_in_memory_study(points, front):
    study = optuna.create_study(directions=DIRS)
    study.add_trials(make_trials(points))
    info = pareto_info(trial_records(study), directions=DIRS)
    assert info["pareto"] == front
    assert [t["number"] for t in info["trials"]] == front
    # Optuna agrees
    assert sorted(t.number for t in study.best_trials) == front


def test_directions_may_be_optuna_objects():
    study = optuna.create_study(directions=DIRS)
    study.add_trials(make_trials(POINTS_WITHOUT_9))
    assert pareto_info(trial_records(study), directions=study.directions)["pareto"] == FRONT_WITHOUT_9


def test_include_all_and_states():
    study = optuna.create_study(directions=DIRS)
    study.add_trials(make_trials(POINTS_WITHOUT_9))
    info = pareto_info(trial_records(study), directions=DIRS, include_all=True, study="s",
                       metric_names=["val_accuracy", "flops"], dataset_sizes={"train": 1, "val": 2, "test": 3})
    assert [t["number"] for t in info["trials"]] == list(range(9))
    assert info["pareto"] == FRONT_WITHOUT_9
    assert info["states"] == {"COMPLETE": 8, "FAIL": 1}
    assert info["study"] == "s" and info["metric_names"] == ["val_accuracy", "flops"]
    assert info["directions"] == DIRS
    failed = info["trials"][7]
    assert failed["state"] == "FAIL" and failed["fail_reason"] == "RuntimeError: boom"
    assert info["trials"][0]["metrics"]["flops"] == 100.0
    assert info["trials"][0]["settings"] == {"model": {"width_mult": 0.25}, "distill": {"kd": True}}


def test_opposite_directions_flip_the_front():
    points = [(0.9, 100.0), (0.8, 50.0), (0.7, 400.0), (0.95, 300.0)]
    assert pareto_front(points, directions=["maximize", "minimize"]) == [0, 1, 3]
    assert pareto_front(points, directions=["minimize", "maximize"]) == [2]
    assert pareto_front(points, directions=["maximize", "maximize"]) == [2, 3]
    assert pareto_front(points, directions=["minimize", "minimize"]) == [1, 2]


def test_three_objectives():
    points = [(0.9, 100, 10), (0.9, 100, 5), (0.8, 50, 20), (0.7, 60, 30)]
    assert pareto_front(points, directions=["maximize", "minimize", "minimize"]) == [1, 2]


def test_empty_and_single():
    assert pareto_front([], directions=DIRS) == []
    assert pareto_front([(0.5, 1.0)], directions=DIRS) == [0]
    info = pareto_info([], directions=DIRS)
    assert info["pareto"] == [] and info["trials"] == [] and info["states"] == {}


def test_dominates():
    assert dominates((0.9, 10), (0.8, 20), directions=DIRS)
    assert dominates((0.9, 10), (0.9, 20), directions=DIRS)
    assert not dominates((0.9, 10), (0.9, 10), directions=DIRS)
    assert not dominates((0.9, 30), (0.8, 20), directions=DIRS)
    assert not dominates((0.8, 20), (0.9, 10), directions=DIRS)


def test_bad_directions_and_points():
    with pytest.raises(ValueError, match="maximize"):
        pareto_front([(1, 2)], directions=["up", "down"])
    with pytest.raises(ValueError):  # a point with three values for two directions
        pareto_front([(1, 2, 3)], directions=DIRS)


# --- the report command over a stored study -------------------------------------------------------


@pytest.fixture
def stored(tmp_path, monkeypatch, tiny_space):
    """A study made by autokd in a SQLite file, holding the synthetic trials (no training)."""
    from autokd.space import space_from_dict
    from autokd.study import create_or_load_study

    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path}/s.db"
    study = create_or_load_study(space_from_dict(tiny_space), storage=url)
    study.add_trials(make_trials(POINTS_WITHOUT_9))
    return url, study.study_name


def test_report_json(cli, stored):
    url, name = stored
    res = cli("report", "--storage", url, "--study", name, "--json")
    assert res.code == 0, res.err
    info = json.loads(res.out)
    assert {"study", "directions", "pareto", "trials"} <= set(info)
    assert info["study"] == name
    assert info["directions"] == DIRS
    assert info["pareto"] == FRONT_WITHOUT_9
    assert [t["number"] for t in info["trials"]] == FRONT_WITHOUT_9
    for t in info["trials"]:
        assert {"number", "state", "params", "metrics", "settings"} <= set(t)
        assert t["state"] == "COMPLETE"
        assert t["params"]["model.width_mult"] in (0.25, 0.5, 1.0)
        assert t["metrics"]["flops"] == POINTS[t["number"]][1]
        assert t["settings"]["distill"]["kd"] == t["params"]["distill.kd"]


def test_report_json_all(cli, stored):
    url, name = stored
    res = cli("report", "--storage", url, "--study", name, "--json", "--all")
    assert res.code == 0, res.err
    info = json.loads(res.out)
    assert [t["number"] for t in info["trials"]] == list(range(9))
    assert info["pareto"] == FRONT_WITHOUT_9
    assert info["trials"][7]["state"] == "FAIL"
    assert info["trials"][7]["fail_reason"] == "RuntimeError: boom"


def test_report_from_the_space_file(cli, stored, space_file, tiny_space):
    url, _ = stored
    res = cli("report", str(space_file(tiny_space)), "--storage", url, "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out)["pareto"] == FRONT_WITHOUT_9


def test_report_table(runner, stored, monkeypatch):
    from autokd.cli import app

    url, name = stored
    monkeypatch.setenv("COLUMNS", "200")
    res = runner.invoke(app, ["report", "--storage", url, "--study", name])
    assert res.exit_code == 0, res.output
    assert f"Pareto front of {name}" in res.output
    assert "Pareto-optimal: 5" in res.output
    lines = res.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"Pareto front of {name}"))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("└"))
    rows = [line for line in lines[start:end] if line.startswith("│")]
    assert len(rows) == len(FRONT_WITHOUT_9)
    # rows are sorted by cost: trial 3 (40 FLOPs) first, trial 5 (300 FLOPs) last
    assert rows[0].split("│")[1].strip() == "3" and rows[-1].split("│")[1].strip() == "5"
    res = runner.invoke(app, ["report", "--storage", url, "--study", name, "--all"])
    assert res.exit_code == 0
    assert "All trials" in res.output and "[FAIL]" in res.output and "* = on the Pareto front" in res.output


def test_report_of_an_empty_study(cli, tmp_path, tiny_space, monkeypatch):
    from autokd.space import space_from_dict
    from autokd.study import create_or_load_study

    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path}/e.db"
    create_or_load_study(space_from_dict(tiny_space), storage=url)
    res = cli("report", "--storage", url, "--study", "tiny", "--json")
    assert res.code == 0, res.err
    info = json.loads(res.out)
    assert info["pareto"] == [] and info["trials"] == []
    res = cli("report", "--storage", url, "--study", "tiny")
    assert res.code == 0 and "Trials: none" in res.out
