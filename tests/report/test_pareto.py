"""Pareto selection from plain trial records, the report command over a stored study, exact 2-D hypervolume and
the KD-on vs KD-off front comparison."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from autokd.report import dominates, pareto_front, pareto_info
from autokd.report.pareto import front_comparison, hypervolume_2d
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


# --- hypervolume and the KD-on vs KD-off fronts (moved here from test_kd_gain.py) ---------------------------


def kd_trial(number, kd, *, acc, flops, state="COMPLETE", kd_in_params=True):
    params = {"model.width_mult": 0.5, **({"distill.kd": kd} if kd_in_params else {})}
    metrics = {"val_accuracy": acc, "test_accuracy": acc - 0.01, "flops": flops, "bitops": 8 * flops} \
        if state == "COMPLETE" else {}
    return {"number": number, "state": state, "params": params, "metrics": metrics,
            "settings": {"distill": {"kd": kd}, "train": {"seed": 0}}}


def test_pareto_front_and_hypervolume_by_hand():
    points = [(0.9, 10.0), (0.8, 5.0), (0.85, 12.0), (0.7, 5.0)]
    assert pareto_front(points, directions=DIRS) == [0, 1]
    # boxes [0, 0.9] x [10, 20] (area 9) and [0, 0.8] x [5, 20] (area 12) overlap by 8
    assert hypervolume_2d(points, directions=DIRS, reference=[0.0, 20.0]) == pytest.approx(13.0)

    staircase = [(1, 3), (2, 2), (3, 1)]
    both_min = ["minimize", "minimize"]
    assert hypervolume_2d(staircase, directions=both_min, reference=[4, 4]) == pytest.approx(6.0)
    extra = staircase + [(3, 3), (5, 0), (2, 2)]  # dominated, outside the reference, duplicate
    assert hypervolume_2d(extra, directions=both_min, reference=[4, 4]) == pytest.approx(6.0)
    assert pareto_front(extra, directions=both_min) == [0, 1, 2, 4, 5]
    assert hypervolume_2d([], directions=both_min, reference=[4, 4]) == 0.0


def test_hypervolume_matches_a_grid_count():
    rng = np.random.default_rng(0)
    both_min = ["minimize", "minimize"]
    for _ in range(20):
        pts = rng.integers(0, 10, size=(8, 2))
        cells = sum(any(px <= x and py <= y for px, py in pts) for x in range(10) for y in range(10))
        assert hypervolume_2d(pts, directions=both_min, reference=(10, 10)) == pytest.approx(cells)
        front = pts[pareto_front(pts, directions=both_min)]
        assert hypervolume_2d(front, directions=both_min, reference=(10, 10)) == pytest.approx(cells)


@pytest.mark.parametrize("kwargs", [
    {"points": [(1, 2)], "directions": ["up", "minimize"]},
    {"points": [(1, 2, 3)], "directions": DIRS},
    {"points": [(1, float("nan"))], "directions": DIRS},
    {"points": [(1, 2)], "directions": "maximize"},
])
def test_pareto_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        pareto_front(**kwargs)


def test_hypervolume_needs_two_objectives():
    with pytest.raises(ValueError, match="2 objectives"):
        hypervolume_2d([(1, 2, 3)], directions=["minimize"] * 3, reference=[4, 4, 4])


def test_front_comparison_with_a_dominating_kd_front():
    trials = []
    for i, (acc, flops) in enumerate([(0.70, 1e6), (0.80, 2e6), (0.85, 4e6)]):
        trials.append(kd_trial(2 * i, True, acc=acc + 0.05, flops=flops))
        trials.append(kd_trial(2 * i + 1, False, acc=acc, flops=flops))
    trials.append(kd_trial(99, False, acc=0.99, flops=1e9, state="FAIL"))
    result = front_comparison(trials)
    assert set(result) == {"metric", "cost_metric", "reference", "hv_kd_on", "hv_kd_off", "dominated_share",
                           "front_kd_on", "front_kd_off", "n_kd_on", "n_kd_off"}
    assert result["metric"] == "val_accuracy" and result["cost_metric"] == "flops"
    assert result["reference"] == pytest.approx([0.0, 4.4e6])  # the FAIL trial's cost does not count
    assert result["front_kd_on"] == [0, 2, 4] and result["front_kd_off"] == [1, 3, 5]
    assert result["n_kd_on"] == 3 and result["n_kd_off"] == 3
    assert result["dominated_share"] == 1.0
    # by hand: KD-off front area = 0.70 * 3.4e6 + 0.10 * 2.4e6 + 0.05 * 0.4e6
    assert result["hv_kd_off"] == pytest.approx(2.64e6)
    assert result["hv_kd_on"] == pytest.approx(0.75 * 3.4e6 + 0.10 * 2.4e6 + 0.05 * 0.4e6)

    same = [dict(t, metrics=dict(t["metrics"], val_accuracy=0.8)) if t["metrics"] else t for t in trials]
    equal = front_comparison(same)
    assert equal["dominated_share"] == 0.0
    assert equal["hv_kd_on"] == pytest.approx(equal["hv_kd_off"])


def test_front_comparison_metric_cost_and_kd_from_settings():
    trials = [kd_trial(0, True, acc=0.9, flops=2e6, kd_in_params=False),
              kd_trial(1, False, acc=0.8, flops=1e6, kd_in_params=False)]
    result = front_comparison(trials, cost_metric="bitops", metric="test_accuracy")
    assert result["cost_metric"] == "bitops" and result["metric"] == "test_accuracy"
    assert result["reference"] == pytest.approx([0.0, 1.1 * 16e6])
    assert result["front_kd_on"] == [0] and result["front_kd_off"] == [1]
    assert result["hv_kd_on"] == pytest.approx(0.89 * (17.6e6 - 16e6))
    assert result["dominated_share"] == 0.0  # cheaper KD-off point is not dominated


def test_front_comparison_without_usable_trials():
    result = front_comparison([kd_trial(0, True, acc=0.9, flops=1e6, state="FAIL")])
    assert result["reference"] is None and result["hv_kd_on"] is None and result["hv_kd_off"] is None
    assert result["front_kd_on"] == [] and result["dominated_share"] is None
    only_on = front_comparison([kd_trial(0, True, acc=0.9, flops=1e6)])
    assert only_on["hv_kd_off"] == 0.0 and only_on["dominated_share"] is None
    assert only_on["hv_kd_on"] == pytest.approx(0.9 * 0.1e6)
