"""``autokd report --plot-kd FILE [--margin PTS]``: writes the KD forest plot (PNG, HTML) whose drawn numbers are
the ones ``report --json`` prints in the same run, with the band at the same margin as the verdicts; unknown
suffixes, a space that does not search distill.kd and a study with no pairs are one located line, exit 2, no
file."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

import autokd.report.plot as plot_module
from autokd.space import space_from_dict
from autokd.study import create_or_load_study

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_PAIRS = 14


def space(tiny: dict, name: str, *, kd_searched: bool = True) -> dict:
    data = copy.deepcopy(tiny)
    data["name"] = name
    data["model"]["width_mult"] = {"choices": [0.25, 0.5]}
    if not kd_searched:
        data["distill"]["kd"] = True
    return data


def fill(study, *, kd_searched: bool = True) -> None:
    """``N_PAIRS`` KD twins over width 0.25/0.5 (KD on about 1.5 points better), or plain trials without KD."""
    rng = np.random.default_rng(7)
    dists = {"model.width_mult": CategoricalDistribution([0.25, 0.5])}
    if kd_searched:
        dists["distill.kd"] = CategoricalDistribution([True, False])
    for i in range(N_PAIRS):
        width = (0.25, 0.5)[i % 2]
        base = 0.6 + 0.2 * width + rng.normal(0, 0.02)
        flops = 1e6 * width * (1 + i / 10)
        sides = [(True, base + 0.015 + rng.normal(0, 0.004)), (False, base)] if kd_searched else [(None, base)]
        for side, (kd, acc) in enumerate(sides):
            params = {"model.width_mult": width} | ({} if kd is None else {"distill.kd": kd})
            study.add_trial(create_trial(
                state=TrialState.COMPLETE, values=[acc, flops], params=params, distributions=dists,
                user_attrs={"metrics": {"val_accuracy": acc, "test_accuracy": acc - 0.01, "flops": flops},
                            "settings": {"train": {"seed": 0}, "distill": {"kd": kd is not False}},
                            **({"twin_of": len(study.trials) - 1} if side else {})}))


@pytest.fixture(scope="module")
def url(tmp_path_factory, tiny_space_data):
    """One SQLite file: 'kdplot' (KD twins), 'nokdplot' (KD fixed on) and 'emptykd' (KD searched, no trials)."""
    folder = tmp_path_factory.mktemp("plotkd")
    url = f"sqlite:///{folder}/r.db"
    fill(create_or_load_study(space_from_dict(space(tiny_space_data, "kdplot")), storage=url))
    fill(create_or_load_study(space_from_dict(space(tiny_space_data, "nokdplot", kd_searched=False)), storage=url),
         kd_searched=False)
    create_or_load_study(space_from_dict(space(tiny_space_data, "emptykd")), storage=url)
    return url


@pytest.fixture
def drawn(monkeypatch):
    """The figures ``--plot-kd`` wrote in this test (the renderers' return values)."""
    figures = []
    for name in ("_forest_matplotlib", "_forest_plotly"):
        real = getattr(plot_module, name)

        def keep(*args, _real=real, **kwargs):
            fig = _real(*args, **kwargs)
            figures.append(fig)
            return fig

        monkeypatch.setattr(plot_module, name, keep)
    return figures


def by_gid(fig, prefix: str) -> dict:
    return {a.get_gid().split(":", 1)[1]: a for a in fig.axes[0].get_children()
            if isinstance(a.get_gid(), str) and a.get_gid().startswith(prefix)}


@pytest.mark.parametrize("margin", [None, "2"])
def test_png_draws_the_numbers_report_json_prints(cli, url, tmp_path, drawn, margin):
    out = tmp_path / "figs" / "kd.png"
    extra = [] if margin is None else ["--margin", margin]
    res = cli("report", "--storage", url, "--study", "kdplot", "--json", "--plot-kd", out, *extra)
    assert res.code == 0, res.err
    assert out.read_bytes()[:8] == PNG_MAGIC
    kd = json.loads(res.out)["kd"]  # stdout stays one JSON object
    (fig,) = drawn
    g = kd["gain"][kd["metric"]]
    points, bars = by_gid(fig, "point:"), by_gid(fig, "interval:")
    assert points["KD overall"].get_xdata()[0] == pytest.approx(100 * g["mean"])
    (seg,) = bars["KD overall"].get_segments()
    assert [p[0] for p in seg] == pytest.approx([100 * g["ci_low"], 100 * g["ci_high"]])
    (width,) = [f for f in kd["factors"] if f["factor"] == "model.width_mult"]
    for lv in width["levels"]:
        assert points[f"width_mult = {lv['level']}"].get_xdata()[0] == pytest.approx(100 * lv["mean"])
        (seg,) = bars[f"width_mult = {lv['level']}"].get_segments()
        assert [p[0] for p in seg] == pytest.approx([100 * lv["ci_low"], 100 * lv["ci_high"]])
    assert by_gid(fig, "verdict:")["width_mult"].get_text() == width["verdict"]
    (band,) = [p for p in fig.axes[0].patches if p.get_gid() == "margin-band"]
    half = 100 * kd["margin"]
    assert half == (1.0 if margin is None else 2.0)
    assert band.get_x() == pytest.approx(100 * g["mean"] - half)
    assert band.get_width() == pytest.approx(2 * half)


def test_png_with_the_human_report(cli, url, tmp_path):
    out = tmp_path / "kd.png"
    res = cli("report", "--storage", url, "--study", "kdplot", "--plot-kd", out)
    assert res.code == 0, res.err
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 20_000
    assert f"KD forest plot written to {out}." in " ".join(res.out.split())
    assert "Verdict: " in res.out


def test_html_with_json(cli, url, tmp_path, drawn):
    out = tmp_path / "kd.html"
    res = cli("report", "--storage", url, "--study", "kdplot", "--plot-kd", out, "--json")
    assert res.code == 0, res.err
    kd = json.loads(res.out)["kd"]
    html = out.read_text(encoding="utf-8")
    assert "<html" in html.lower() and "plotly" in html.lower() and "KD overall" in html
    (fig,) = drawn
    (overall,) = [tr for tr in fig.data if tr.name == "KD overall"]
    assert list(overall.x) == pytest.approx([100 * kd["gain"][kd["metric"]]["mean"]])


def test_both_plots_in_one_run(cli, url, tmp_path):
    res = cli("report", "--storage", url, "--study", "kdplot", "--plot", tmp_path / "a.png",
              "--plot-kd", tmp_path / "b.png")
    assert res.code == 0, res.err
    assert (tmp_path / "a.png").read_bytes()[:8] == PNG_MAGIC == (tmp_path / "b.png").read_bytes()[:8]


def one_error_line(res) -> str:
    assert res.code == 2, (res.out, res.err)
    assert "Traceback" not in res.out + res.err
    assert len(res.err_lines) == 1, res.err
    return res.err_lines[0]


def test_an_unknown_suffix_is_exit_2(cli, url, tmp_path):
    out = tmp_path / "kd.txt"
    line = one_error_line(cli("report", "--storage", url, "--study", "kdplot", "--plot-kd", out))
    assert line.startswith("error: --plot-kd: cannot draw kd.txt"), line
    assert not out.exists()


@pytest.mark.parametrize("suffix", ["png", "html"])
def test_a_space_without_kd_is_exit_2(cli, url, tmp_path, suffix):
    out = tmp_path / f"kd.{suffix}"
    line = one_error_line(cli("report", "--storage", url, "--study", "nokdplot", "--plot-kd", out))
    assert line.startswith("error: --plot-kd: ") and "distill.kd" in line, line
    assert not out.exists()


def test_a_study_without_pairs_is_exit_2(cli, url, tmp_path):
    out = tmp_path / "kd.png"
    line = one_error_line(cli("report", "--storage", url, "--study", "emptykd", "--plot-kd", out))
    assert line.startswith("error: --plot-kd: no complete KD pairs"), line
    assert not out.exists()


@pytest.mark.parametrize("option,suffix", [("--plot-kd", "png"), ("--plot-kd", "html"), ("--plot", "png")])
def test_a_picture_that_cannot_be_written_is_exit_2(cli, url, tmp_path, option, suffix):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    out = blocker / f"kd.{suffix}"  # its folder is a file: mkdir fails (NotADirectoryError / FileExistsError)
    line = one_error_line(cli("report", "--storage", url, "--study", "kdplot", option, out))
    assert line.startswith(f"error: {option}: cannot write {out}"), line


def test_reading_a_study_runs_no_machine_checks(cli, url, tmp_path, tiny_space_data, monkeypatch):
    """A study is read where it was not run (a laptop, a machine without NNI): report and export load the space
    file for its name and settings only; the checks of whether this machine can *run* it are validate's."""
    import yaml

    path = tmp_path / "kdplot.yaml"
    path.write_text(yaml.safe_dump(space(tiny_space_data, "kdplot")))
    monkeypatch.setenv("AUTOKD_MEMORY_LIMIT_BYTES", "1000")  # "this machine" has 1 kB: the data cannot fit
    refused = cli("validate", path)
    assert refused.code == 2 and "memory" in refused.err.lower(), refused.err
    ok = cli("report", path, "--storage", url, "--json")
    assert ok.code == 0, ok.err
    missing = cli("export", path, "--storage", url, "--trial", 999, "--format", "state_dict", "-o", tmp_path / "m.pt")
    assert missing.code == 2 and "memory" not in missing.err.lower() and "999" in missing.err, missing.err
