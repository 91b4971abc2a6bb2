"""``autokd report`` with the KD section: JSON equal to ``build_report`` with the overall word, the teacher, lost
pairs, the margin, per-technique verdicts and heterogeneity (trials with repeats); ``--margin`` (and a one-line
exit 2 for a bad one); the verdict line; ``--plot`` to PNG and HTML (and a clear error for other suffixes); and no
KD section (and no plot) when distill.kd is not searched."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from autokd.space import space_from_dict
from autokd.study import ATTR_TEACHER, build_report, create_or_load_study, load_study

N_PAIRS = 12
REPEATS = 2
TEACHER = {"train_accuracy": 0.99, "val_accuracy": 0.97, "test_accuracy": 0.96, "view_accuracy": 0.80,
           "augmented": False, "members": 1, "source": "trained", "key": "k"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def report_space(tiny: dict, *, kd_searched: bool = True) -> dict:
    data = copy.deepcopy(tiny)
    data["name"] = "kdrep" if kd_searched else "nokd"
    data["train"]["lr"] = {"low": 0.01, "high": 0.1, "log": True}
    if not kd_searched:
        data["distill"]["kd"] = True
    return data


def fill(study, *, kd_searched: bool, n_pairs: int = N_PAIRS) -> None:
    """``n_pairs`` KD twins (KD on 1.5 points better, with noise; trial 2i+1 is the recorded twin of 2i; each trial
    keeps its ``REPEATS`` per-repeat metrics), or plain trials without the KD parameter."""
    rng = np.random.default_rng(3)
    dists = {"model.width_mult": CategoricalDistribution([0.25, 0.5]),
             "train.lr": FloatDistribution(0.01, 0.1, log=True)}
    if kd_searched:
        dists["distill.kd"] = CategoricalDistribution([True, False])
    for i in range(n_pairs):
        width = (0.25, 0.5)[i % 2]
        lr = float(np.exp(rng.uniform(np.log(0.01), np.log(0.1))))
        base = 0.6 + 0.2 * width + rng.normal(0, 0.02)
        flops = 1e6 * width * (1 + i / 10)
        sides = ([(True, base + 0.015 + rng.normal(0, 0.003)), (False, base)] if kd_searched else [(None, base)])
        spread = rng.normal(0, 0.004, REPEATS)
        for side, (kd, acc) in enumerate(sides):
            params = {"model.width_mult": width, "train.lr": lr}
            if kd is not None:
                params["distill.kd"] = kd
            reps = acc + spread - spread.mean() + (rng.normal(0, 0.001, REPEATS) if side else 0.0)
            reps += acc - reps.mean()
            metrics = {"val_accuracy": acc, "test_accuracy": acc - 0.01, "flops": flops,
                       "repeats": [{"val_accuracy": float(a), "test_accuracy": float(a) - 0.01, "flops": flops}
                                   for a in reps]}
            attrs = {"twin_of": len(study.trials) - 1} if side else {}
            study.add_trial(create_trial(
                state=TrialState.COMPLETE, values=[acc, flops], params=params, distributions=dists,
                user_attrs={"metrics": metrics, "settings": {"train": {"seed": 0}, "distill": {"kd": kd is not False}},
                            **attrs}))


@pytest.fixture(scope="module")
def stored(tmp_path_factory, tiny_space_data):
    """Two studies in one SQLite file: 'kdrep' (KD searched, twins) and 'nokd' (KD fixed)."""
    folder = tmp_path_factory.mktemp("kdreport")
    url = f"sqlite:///{folder}/r.db"
    for kd_searched in (True, False):
        study = create_or_load_study(space_from_dict(report_space(tiny_space_data, kd_searched=kd_searched)),
                                     storage=url)
        fill(study, kd_searched=kd_searched)
        if kd_searched:
            study.set_user_attr(ATTR_TEACHER, TEACHER)
    return folder, url


def test_json_has_the_kd_section_of_build_report(cli, stored):
    _, url = stored
    res = cli("report", "--storage", url, "--study", "kdrep", "--json")
    assert res.code == 0, res.err
    data = json.loads(res.out)
    kd = data["kd"]
    assert {"n_pairs", "pairs", "gain", "factors", "fronts", "verdict", "overall", "teacher", "lost_pairs",
            "n_lost_pairs", "margin", "heterogeneity"} <= set(kd)
    assert kd["n_pairs"] == N_PAIRS and len(kd["pairs"]) == N_PAIRS
    assert [(p["on"], p["off"]) for p in kd["pairs"]] == [(2 * i, 2 * i + 1) for i in range(N_PAIRS)]
    assert all(p["linked"] and len(p["repeat_gains"]) == REPEATS for p in kd["pairs"])
    study, space = load_study(storage=url, study_name="kdrep")
    expected = build_report(study, space)
    assert kd == expected["kd"]
    assert data["pareto"] == expected["pareto"]
    assert kd["gain"]["val_accuracy"]["mean"] == pytest.approx(0.015, abs=0.003)
    assert kd["overall"] == "adds"
    assert kd["verdict"].startswith("KD adds"), kd["verdict"]
    assert kd["margin"] == 0.01
    assert kd["teacher"] == TEACHER
    assert any("augmented views" in w for w in kd["warnings"])
    assert kd["lost_pairs"] == [] and kd["n_lost_pairs"] == 0
    assert {f["factor"] for f in kd["factors"]} >= {"model.width_mult"}
    for f in kd["factors"]:
        assert f["verdict"] in {"orthogonal", "interacts", "undetermined"}, f
    het = kd["heterogeneity"]
    assert het["n_configurations"] == N_PAIRS and het["repeats"] == REPEATS and het["tau"] is not None
    assert f"over {N_PAIRS} configurations" in kd["verdict"]
    for t in data["trials"]:
        assert t["twin"] == t["number"] ^ 1  # 2i <-> 2i+1


def test_margin_option(cli, stored):
    _, url = stored
    res = cli("report", "--storage", url, "--study", "kdrep", "--json", "--margin", "2")
    assert res.code == 0, res.err
    kd = json.loads(res.out)["kd"]
    assert kd["margin"] == pytest.approx(0.02)
    study, space = load_study(storage=url, study_name="kdrep")
    assert kd == build_report(study, space, margin=2.0)["kd"]
    default = build_report(study, space)["kd"]
    assert "within ±2.0 pts" in kd["verdict"] and "within ±1.0 pts" in default["verdict"]
    # a wider margin is easier to show equivalence within
    assert [f["factor"] for f in kd["factors"]] == [f["factor"] for f in default["factors"]]
    for wide, narrow in zip(kd["factors"], default["factors"]):
        assert wide["p_equivalence"] < narrow["p_equivalence"], (wide, narrow)


@pytest.mark.parametrize("value", ["-1", "x", "0", "1e9"])
def test_a_bad_margin_is_exit_2_with_one_line(cli, stored, value):
    _, url = stored
    res = cli("report", "--storage", url, "--study", "kdrep", "--json", "--margin", value)
    assert res.code == 2, (res.out, res.err)
    assert "Traceback" not in res.out + res.err
    assert len(res.err_lines) == 1, res.err
    assert res.err_lines[0].startswith("error: ") and "--margin" in res.err_lines[0], res.err_lines[0]
    assert res.out == ""


def test_human_report_prints_the_verdict_line(cli, stored):
    _, url = stored
    res = cli("report", "--storage", url, "--study", "kdrep", "--all")
    assert res.code == 0, res.err
    study, space = load_study(storage=url, study_name="kdrep")
    verdict = build_report(study, space)["kd"]["verdict"]
    lines = [line.strip() for line in res.out.splitlines()]
    assert f"Verdict: {verdict}" in lines, res.out
    assert "KD gain, paired twins" in res.out
    assert "95% CI" in res.out
    assert f"{N_PAIRS} pairs of twins, 0 lost pairs" in res.out and "0 unpaired trials" in res.out
    assert any(line.startswith("Teacher") and "augmented views 80.0%" in line for line in lines), res.out
    assert any(line.startswith("Warning: The teacher is 19.0 pts less accurate") for line in lines), res.out
    (row,) = [line for line in lines if line.startswith("│ width_mult ")]
    assert row.rstrip("│ ").split("│")[-1].strip() in {"orthogonal", "interacts", "undetermined"}


def test_plot_png(cli, stored, tmp_path):
    _, url = stored
    out = tmp_path / "plots" / "out.png"
    res = cli("report", "--storage", url, "--study", "kdrep", "--plot", out)
    assert res.code == 0, res.err
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000
    assert f"Plot written to {out}." in " ".join(res.out.split())
    assert "Verdict: " in res.out


def test_plot_html_with_json(cli, stored, tmp_path):
    _, url = stored
    out = tmp_path / "out.html"
    res = cli("report", "--storage", url, "--study", "kdrep", "--plot", out, "--json")
    assert res.code == 0, res.err
    json.loads(res.out)  # stdout stays one JSON object
    html = out.read_text(encoding="utf-8")
    assert "plotly" in html.lower()
    assert "<html" in html.lower()
    assert "KD on" in html and "KD off" in html


def test_plot_of_an_unknown_format_is_exit_2(cli, stored, tmp_path):
    _, url = stored
    out = tmp_path / "out.txt"
    res = cli("report", "--storage", url, "--study", "kdrep", "--plot", out)
    assert res.code == 2, (res.out, res.err)
    assert "Traceback" not in res.out + res.err
    assert len(res.err_lines) == 1, res.err
    assert res.err_lines[0].startswith("error: --plot: cannot draw out.txt"), res.err_lines[0]
    assert not out.exists()


def test_no_kd_section_without_a_kd_dimension(cli, stored):
    _, url = stored
    res = cli("report", "--storage", url, "--study", "nokd", "--all")
    assert res.code == 0, res.err
    assert "Verdict" not in res.out and "KD gain" not in res.out
    assert "twin" not in res.out
    js = cli("report", "--storage", url, "--study", "nokd", "--json")
    assert js.code == 0, js.err
    data = json.loads(js.out)
    assert "kd" not in data
    assert all("twin" not in t for t in data["trials"])


@pytest.mark.parametrize("suffix", ["png", "html"])
def test_plot_without_a_kd_dimension_is_exit_2(cli, stored, tmp_path, suffix):
    _, url = stored
    out = tmp_path / f"out.{suffix}"
    res = cli("report", "--storage", url, "--study", "nokd", "--plot", out)
    assert res.code == 2, (res.out, res.err)
    assert len(res.err_lines) == 1, res.err
    assert res.err_lines[0].startswith("error: --plot: "), res.err_lines[0]
    assert "distill.kd" in res.err_lines[0]
    assert not out.exists()


def test_report_of_a_kd_study_with_no_trials_yet(cli, tmp_path, tiny_space):
    url = f"sqlite:///{tmp_path}/empty.db"
    create_or_load_study(space_from_dict(report_space(tiny_space)), storage=url)
    res = cli("report", "--storage", url, "--study", "kdrep", "--json")
    assert res.code == 0, res.err
    kd = json.loads(res.out)["kd"]
    assert kd["n_pairs"] == 0 and kd["pairs"] == []
    assert kd["overall"] == "too_few_pairs" and kd["heterogeneity"] is None and kd["teacher"] is None
    assert kd["verdict"].startswith("No complete KD pairs yet"), kd["verdict"]
    human = cli("report", "--storage", url, "--study", "kdrep")
    assert human.code == 0, human.err
    assert "Verdict: No complete KD pairs yet" in human.out
    html = cli("report", "--storage", url, "--study", "kdrep", "--plot", tmp_path / "empty.html", "--json")
    # nothing to draw: one located refusal, for .html as for .png, and no file
    assert html.code == 2 and html.err.startswith("error: --plot: "), html.err
    assert not (tmp_path / "empty.html").exists()


def test_png_plot_of_a_kd_study_with_no_complete_trial(cli, tmp_path, tiny_space):
    url = f"sqlite:///{tmp_path}/empty.db"
    create_or_load_study(space_from_dict(report_space(tiny_space)), storage=url)
    out = tmp_path / "empty.png"
    res = cli("report", "--storage", url, "--study", "kdrep", "--plot", out)
    assert "internal error" not in res.err, res.err
    if res.code == 0:  # an empty plot
        assert out.read_bytes()[:8] == PNG_MAGIC
    else:  # or a clear, located refusal
        assert res.code == 2 and len(res.err_lines) == 1 and res.err_lines[0].startswith("error: --plot: "), res.err
