"""The command line end to end: search (and its resume rules), validate, studies, report."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from autokd.objective import NUMERICS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def searched(tmp_path_factory, main_runner, tiny_space_data):
    """One tiny search run through the CLI, in a temporary working folder: (folder, url, args, first result)."""
    folder = tmp_path_factory.mktemp("search")
    (folder / "space.yaml").write_text(yaml.safe_dump(tiny_space_data, sort_keys=False))
    url = f"sqlite:///{folder}/x.db"
    args = ["search", "space.yaml", "--set", "search.n_trials=2", "--set", "train.epochs=1", "--storage", url,
            "--device", "cpu"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("COLUMNS", "1000")
        mp.setenv("NO_COLOR", "1")
        first = main_runner(*args)
        yield folder, url, args, first


@pytest.fixture
def in_search_folder(searched, monkeypatch):
    monkeypatch.chdir(searched[0])
    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.setenv("NO_COLOR", "1")
    return searched


@pytest.fixture
def _main(main_runner):
    return main_runner


def trials_of(url: str, name: str = "tiny"):
    return optuna.load_study(study_name=name, storage=url).get_trials()


def test_search_exits_0_and_reports(searched):
    _, url, _, res = searched
    assert res.code == 0, res.err
    assert "Traceback" not in res.out + res.err
    assert "New study tiny" in res.out
    assert "Teacher trained and cached" in res.out or "Teacher loaded from the cache" in res.out
    assert "trial   0:" in res.out and "trial   1:" in res.out
    assert "Pareto front of tiny" in res.out
    assert f"Done: 2 complete trials (target 2) in {url}" in res.out


def test_search_stores_two_complete_trials_with_settings_and_metrics(searched):
    _, url, _, _ = searched
    trials = trials_of(url)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        assert set(t.params) == {"model.width_mult", "distill.kd"}
        m = t.user_attrs["metrics"]
        assert 0.0 <= m["val_accuracy"] <= 1.0 and 0.0 <= m["test_accuracy"] <= 1.0
        assert 1e4 < m["flops"] < 1e8 and 1e3 < m["params"] < 1e7
        assert t.values == [m["val_accuracy"], math.log10(m["flops"])]  # a new study tells log10 costs
        assert t.user_attrs["numerics"] == NUMERICS
        s = t.user_attrs["settings"]
        assert s["model"]["width_mult"] == t.params["model.width_mult"]
        assert s["distill"]["kd"] == t.params["distill.kd"]
        assert s["train"]["epochs"] == 1 and s["dataset"]["image_size"] == 8
        if t.params["distill.kd"]:
            assert t.user_attrs["teacher"]


def test_search_saves_the_trained_models_in_the_artifact_store(searched, tiny_space_data):
    import optuna

    from autokd.data import load_dataset
    from autokd.measure import accuracy, flops
    from autokd.space import space_from_dict
    from autokd.study import load_study, load_trial_model

    folder, url, _, _ = searched
    data = load_dataset(space_from_dict(tiny_space_data).dataset)
    study, _ = load_study(storage=url, study_name="tiny")
    assert Path(study.user_attrs["autokd.artifacts"]) == folder / "tiny" / "artifacts"
    for t in trials_of(url):
        artifact = t.user_attrs["model_artifact"]
        assert (folder / "tiny" / "artifacts" / artifact).is_file()
        # recorded as an Optuna artifact of the trial (what optuna-dashboard lists)
        (meta,) = optuna.artifacts.get_all_artifact_meta(t, storage=study._storage)
        assert meta.artifact_id == artifact and meta.filename == f"trial-{t.number}.pt"
        model, record = load_trial_model(t, study=study)
        assert record["number"] == t.number and record["params"] == t.params
        assert record["metrics"] == t.user_attrs["metrics"]
        assert flops(model, (1, 8, 8)) == t.user_attrs["metrics"]["flops"]
        assert accuracy(model, data.val_x, data.val_y) == pytest.approx(t.user_attrs["metrics"]["val_accuracy"])


def test_search_writes_only_into_its_folder(searched):
    folder, _, _, _ = searched
    assert sorted(p.name for p in folder.iterdir()) == ["space.yaml", "tiny", "x.db"]
    assert [p.name for p in (folder / "tiny").iterdir()] == ["artifacts"]


def test_rerun_runs_no_new_trial(in_search_folder, _main):
    _, url, args, _ = in_search_folder
    before = trials_of(url)
    res = _main(*args)
    assert res.code == 0, res.err
    assert "Resuming study tiny" in res.out and "2/2 complete trials" in res.out
    after = trials_of(url)
    assert len(after) == 2
    assert [t.values for t in after] == [t.values for t in before]


def test_rerun_with_another_space_is_refused(in_search_folder, _main):
    _, url, args, _ = in_search_folder
    res = _main(*args, "--set", "train.epochs=2")
    assert res.code == 2
    errors = [line for line in res.err.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: space.yaml: ")
    assert "--study" in errors[0] and "--allow-space-change" in errors[0]
    assert len(trials_of(url)) == 2


def test_report_after_search(in_search_folder, _main):
    _, url, _, _ = in_search_folder
    res = _main("report", "space.yaml", "--storage", url, "--json", "--all")
    assert res.code == 0, res.err
    info = json.loads(res.out)
    assert [t["number"] for t in info["trials"]] == [0, 1]
    assert info["dataset_sizes"] == {"train": 1077, "val": 360, "test": 360}
    assert set(info["pareto"]) <= {0, 1} and info["pareto"]


def test_studies_lists_the_study(in_search_folder, _main):
    _, url, _, _ = in_search_folder
    res = _main("studies", "--storage", url, "--json")
    assert res.code == 0, res.err
    rows = json.loads(res.out)
    assert rows == [{"study": "tiny", "storage": url, "states": {"COMPLETE": 2}, "n_trials": 2, "autokd": True}]
    table = _main("studies", "--storage", url)
    assert table.code == 0 and "tiny" in table.out


def test_studies_in_the_default_folder(cli, tmp_path, monkeypatch, tiny_space):
    from autokd.space import space_from_dict
    from autokd.study import create_or_load_study

    monkeypatch.chdir(tmp_path)
    res = cli("studies")
    assert res.code == 0 and "No studies found" in res.out
    create_or_load_study(space_from_dict(tiny_space))  # default storage: studies/tiny.db under the cwd
    assert (tmp_path / "studies" / "tiny.db").is_file()
    rows = json.loads(cli("studies", "--json").out)
    assert [(r["study"], r["storage"]) for r in rows] == [("tiny", "sqlite:///studies/tiny.db")]


# --- validate --------------------------------------------------------------------------------------


def test_validate_prints_the_dimensions(cli, space_file, tiny_space):
    from autokd.space import load_space, space_hash

    path = space_file(tiny_space)
    res = cli("validate", str(path))
    assert res.code == 0, res.err
    assert f"{path}: valid" in res.out
    assert space_hash(load_space(path)) in res.out
    assert "model.width_mult" in res.out and "{0.25, 0.5}" in res.out
    assert "distill.kd" in res.out and "{true, false}" in res.out
    assert "2 searched dimensions; discrete part: 4 configurations" in res.out
    assert "Budget: 2 complete trials" in res.out


def test_validate_json_with_overrides(cli, space_file, tiny_space):
    res = cli("validate", str(space_file(tiny_space)), "--json", "--set", "train.lr={low: 0.01, high: 0.1, log: true}",
              "--set", "model.width_mult={choices: [0.25]}")
    assert res.code == 0, res.err
    info = json.loads(res.out)
    dims = {d["name"]: d for d in info["dimensions"]}
    assert set(dims) == {"model.width_mult", "distill.kd", "train.lr"}
    assert dims["train.lr"]["size"] is None and dims["model.width_mult"]["size"] == 1
    assert (info["discrete_size"], info["continuous"]) == (2, 1)
    assert info["space"]["train"]["lr"] == {"low": 0.01, "high": 0.1, "step": None, "log": True}


def test_validate_with_cli_runner(runner, space_file, tiny_space):
    from autokd.cli import app

    res = runner.invoke(app, ["validate", str(space_file(tiny_space))])
    assert res.exit_code == 0, res.output
    assert "valid" in res.output and "model.width_mult" in res.output


def test_help_lists_the_commands(runner):
    from autokd.cli import app

    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for command in ("search", "validate", "report", "studies"):
        assert command in res.output


def test_example_space_validates(cli):
    res = cli("validate", str(REPO / "spaces" / "mobilenet.yaml"))
    assert res.code == 0, res.err


# --- interruptions and failures ---------------------------------------------------------------------


def test_ctrl_c_before_the_trials_exits_130_with_the_resume_command(cli, space_file, tiny_space, tmp_path,
                                                                    monkeypatch):
    import autokd.study

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(autokd.study.runner, "get_teacher", interrupt)
    path = space_file(tiny_space)
    url = f"sqlite:///{tmp_path}/i.db"
    res = cli("search", str(path), "--storage", url, "--device", "cpu")
    assert res.code == 130
    assert "interrupted" in res.err
    assert f"resume with: autokd search {path} --storage {url} --device cpu" in res.err
    assert "Traceback" not in res.err


def test_ctrl_c_during_a_trial_exits_130_and_requeues(cli, space_file, tiny_space, tmp_path, monkeypatch):
    import autokd.objective

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(autokd.objective, "run_config", interrupt)
    url = f"sqlite:///{tmp_path}/i.db"
    res = cli("search", str(space_file(tiny_space)), "--storage", url, "--device", "cpu")
    assert res.code == 130, res.err
    assert "resume with: autokd search" in res.err
    states = [t.state for t in trials_of(url)]
    assert states == [TrialState.FAIL, TrialState.WAITING]


def test_failing_trials_exit_1(cli, space_file, tiny_space, tmp_path, monkeypatch):
    import autokd.objective

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(autokd.objective, "run_config", boom)
    url = f"sqlite:///{tmp_path}/f.db"
    res = cli("search", str(space_file(tiny_space)), "--storage", url, "--device", "cpu",
              "--set", "search.max_failures=2")
    assert res.code == 1
    assert "Traceback" not in res.err
    assert "stopped after 2 failed trials" in res.err and "RuntimeError: boom" in res.err
    assert [t.state for t in trials_of(url)] == [TrialState.FAIL] * 2


def test_timeout_prints_the_command_that_resumes(cli, space_file, tiny_space, tmp_path, monkeypatch):
    import sys

    import itertools
    import types

    import autokd.study

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["caller", "--unrelated"])
    # The search's clock moves 0.6 s each time it is read: the deadline (1 s) passes after exactly one trial,
    # however fast this machine trains (a tiny trial can take less than a second).
    clock = itertools.count(0.0, 0.6)
    monkeypatch.setattr(autokd.study.runner, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    path = space_file(tiny_space)
    url = f"sqlite:///{tmp_path}/t.db"
    args = ["search", str(path), "--storage", url, "--device", "cpu", "--timeout", "1"]
    res = cli(*args)
    assert res.code == 0, res.err
    assert "Stopped at --timeout with 1/2 complete trials" in res.out
    assert "autokd --unrelated" not in res.out  # the caller's sys.argv
    resume = f"rerun to continue: autokd search {path} --storage {url} --timeout 1 --device cpu"
    assert resume in res.out
    assert "Done:" not in res.out  # it stopped, it is not done


def test_search_that_trains_an_ensemble_teacher_first_completes_its_trials(cli, space_file, tiny_space, tmp_path,
                                                                            monkeypatch):
    # Regression: the rich display removed the teachers' bars before the study bar existed, then looked the study
    # bar up by list index; with several teacher bars every trial failed after it had finished.
    monkeypatch.setenv("AUTOKD_CACHE_DIR", str(tmp_path / "fresh-cache"))
    space = copy.deepcopy(tiny_space)
    space["distill"]["teacher"]["ensemble"] = 2
    space["compress"] = {"finetune_epochs": 0}
    url = f"sqlite:///{tmp_path}/ens.db"
    res = cli("search", space_file(space), "--storage", url)
    assert res.code == 0, res.err
    assert res.out.count("Teacher trained and cached") == 1
    states = [t.state for t in trials_of(url)]
    assert states and all(s == TrialState.COMPLETE for s in states), states


def test_a_failing_trial_records_why(cli, space_file, tiny_space, tmp_path, monkeypatch):
    import autokd.objective

    def broken(*args, **kwargs):
        raise RuntimeError("boom in measure")

    monkeypatch.setattr(autokd.objective, "cost_metrics", broken)
    space = copy.deepcopy(tiny_space)
    space["compress"] = {"finetune_epochs": 0}
    space["search"]["max_failures"] = 1
    url = f"sqlite:///{tmp_path}/fail.db"
    res = cli("search", space_file(space), "--storage", url)
    assert res.code == 1
    assert "RuntimeError: boom in measure" in res.err
    (trial,) = trials_of(url)
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == "RuntimeError: boom in measure"


def test_search_help_shows_every_default(cli):
    """Help texts must not use [square brackets]: rich reads them as markup and drops them."""
    res = cli("search", "--help")
    text = " ".join(res.out.split())
    for shown in ("default: sqlite:///studies/<study>.db", "default: the space's name", "default: studies/teachers",
                  "default: studies/<study>/artifacts", "cores / N with --workers N"):
        assert shown in text, shown
