"""The KD forest plot (``autokd report --plot-kd``): its rows are the report's numbers, selected and never
recomputed; the PNG draws exactly them (points, interval bars, the ±margin band around the overall gain, a line at
0, n per row, the verdict per technique); a level too small for an interval gets a point and no bar; the HTML
carries the same numbers in a plotly figure; other suffixes and a study with no pairs are one located refusal."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from autokd.errors import AutokdError
from autokd.report import study_report
from autokd.report.plot import kd_forest_rows, write_kd_forest
from autokd.study import trial_records

DISTS = {"distill.kd": CategoricalDistribution([True, False]),
         "compress.bits": CategoricalDistribution([4, 8, 32]),
         "model.width_mult": CategoricalDistribution([0.25, 0.5]),
         "train.augment": CategoricalDistribution([True, False])}
DIRECTIONS = ["maximize", "minimize"]
METRICS = ["val_accuracy", "flops"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def kd_section(configs, gain, *, noise: float = 0.004, seed: int = 0) -> dict:
    """The report's KD section of a study with one KD twin per config ``(bits, width, augment)``; KD's gain is
    ``gain(bits)`` + noise."""
    rng = np.random.default_rng(seed)
    study = optuna.create_study(directions=DIRECTIONS)
    for i, (bits, width, augment) in enumerate(configs):
        base = 0.7 + 0.1 * width + 0.002 * bits + rng.normal(0, 0.01)
        first = None
        for kd, acc in ((True, base + gain(bits) + rng.normal(0, noise)), (False, base)):
            flops = 1e6 * width * (bits / 32 + 0.5)
            study.add_trial(create_trial(
                state=TrialState.COMPLETE, values=[acc, flops], distributions=DISTS,
                params={"distill.kd": kd, "compress.bits": bits, "model.width_mult": width, "train.augment": augment},
                user_attrs={"metrics": {"val_accuracy": acc, "test_accuracy": acc - 0.01, "flops": flops},
                            "settings": {"train": {"seed": i}, "distill": {"kd": kd}},
                            **({} if first is None else {"twin_of": first})}))
            first = len(study.trials) - 1
    return study_report(trial_records(study), directions=DIRECTIONS, metric_names=METRICS, margin=1.0)["kd"]


FULL = [(bits, width, augment) for _ in range(3) for bits in (4, 8, 32) for width in (0.25, 0.5)
        for augment in (True, False)]


@pytest.fixture(scope="module")
def kd():
    """36 pairs; the gain depends on the bit width (a real interaction); width and augment do not matter."""
    return kd_section(FULL, lambda bits: {4: 0.04, 8: 0.02, 32: 0.015}[bits])


@pytest.fixture(scope="module")
def small_level():
    """One augment=True pair among eleven: too few for that level's interval (and the model merges it away)."""
    configs = [(bits, width, False) for _ in range(2) for bits in (4, 8, 32) for width in (0.25, 0.5)][:10]
    return kd_section(configs + [(8, 0.5, True)], lambda bits: 0.02)


def test_rows_are_the_report_numbers(kd):
    rows = kd_forest_rows(kd)
    g = kd["gain"]["val_accuracy"]
    assert rows["metric"] == kd["metric"] == "val_accuracy"
    assert rows["margin"] == kd["margin"] == 0.01
    assert rows["overall"] == {"mean": g["mean"], "ci_low": g["ci_low"], "ci_high": g["ci_high"],
                               "n": g["n_pairs"], "confidence": g["confidence"], "method": g["method"],
                               "word": kd["overall"]}
    assert rows["overall"]["n"] == 36 and rows["overall"]["ci_low"] is not None
    assert [t["factor"] for t in rows["techniques"]] == [f["factor"] for f in kd["factors"]]
    for t, f in zip(rows["techniques"], kd["factors"]):
        assert t["verdict"] == f["verdict"]
        assert t["max_difference"] == f["max_difference"]
        assert [(lv["level"], lv["mean"], lv["ci_low"], lv["ci_high"], lv["adjusted"], lv["n"]) for lv in t["levels"]] \
            == [(lv["level"], lv["mean"], lv["ci_low"], lv["ci_high"], lv["adjusted"], lv["n_pairs"])
                for lv in f["levels"]]
    verdicts = {t["name"]: t["verdict"] for t in rows["techniques"]}
    assert verdicts["bits"] == "interacts", verdicts
    assert {t["name"] for t in rows["techniques"]} == {"bits", "width_mult", "augment"}
    (augment,) = [t for t in rows["techniques"] if t["name"] == "augment"]
    assert [lv["label"] for lv in augment["levels"]] == ["off", "on"]  # as the terminal table names bool levels


def _artists(fig, prefix: str) -> dict:
    ax = fig.axes[0]
    return {a.get_gid().split(":", 1)[1]: a for a in ax.get_children()
            if isinstance(a.get_gid(), str) and a.get_gid().startswith(prefix)}


def test_png_draws_exactly_the_rows(kd, tmp_path):
    path, fig = write_kd_forest(tmp_path / "sub" / "kd.png", kd, title="t")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 20_000
    rows = kd_forest_rows(kd)
    points, bars, adjusted = _artists(fig, "point:"), _artists(fig, "interval:"), _artists(fig, "adjusted:")
    expected = {"KD overall": rows["overall"]}
    expected.update({f"{t['name']} = {lv['label']}": lv for t in rows["techniques"] for lv in t["levels"]})
    assert set(points) == set(bars) == set(expected)
    for label, row in expected.items():
        (x,), _ = points[label].get_data()
        assert x == pytest.approx(100 * row["mean"], abs=1e-9), label
        (seg,) = bars[label].get_segments()
        assert [p[0] for p in seg] == pytest.approx([100 * row["ci_low"], 100 * row["ci_high"]], abs=1e-9), label
        if label != "KD overall":
            (xa,), _ = adjusted[label].get_data()
            assert xa == pytest.approx(100 * row["adjusted"], abs=1e-9), label
    assert points["KD overall"].get_marker() == "D"  # the overall gain stands out
    ax = fig.axes[0]
    (band,) = [p for p in ax.patches if p.get_gid() == "margin-band"]
    xs = [band.get_x(), band.get_x() + band.get_width()]  # axvspan: a Rectangle in data x, axes y
    centre = 100 * rows["overall"]["mean"]
    assert min(xs) == pytest.approx(centre - 1.0) and max(xs) == pytest.approx(centre + 1.0)
    (zero,) = [ln for ln in ax.lines if ln.get_gid() == "zero"]
    assert list(zero.get_xdata()) == [0, 0]
    texts = [t.get_text() for t in ax.texts]
    for t in rows["techniques"]:
        assert _artists(fig, "verdict:")[t["name"]].get_text() == t["verdict"]
        for lv in t["levels"]:
            assert str(lv["n"]) in texts
    g = rows["overall"]
    assert any(s.startswith(f"{100 * g['mean']:+.1f} [{100 * g['ci_low']:+.1f} … {100 * g['ci_high']:+.1f}]")
               for s in texts), texts
    caption = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert "95% Student-t interval over 36 pairs" in caption and "margin (1.0 pts)" in caption


def test_a_level_too_small_for_an_interval_is_a_point_without_a_bar(small_level, tmp_path):
    rows = kd_forest_rows(small_level)
    (augment,) = [t for t in rows["techniques"] if t["name"] == "augment"]
    on = {lv["label"]: lv for lv in augment["levels"]}["on"]
    assert on["n"] == 1 and on["ci_low"] is None and on["mean"] is not None
    _, fig = write_kd_forest(tmp_path / "kd.svg", small_level)
    assert (tmp_path / "kd.svg").read_text(encoding="utf-8").lstrip().startswith("<?xml")
    assert "augment = on" in _artists(fig, "point:")
    assert "augment = on" not in _artists(fig, "interval:")
    assert any("n too small for an interval" in t.get_text() for t in fig.axes[0].texts)


def test_two_pairs_draw_the_overall_point_only(tmp_path):
    kd = kd_section([(4, 0.25, True), (8, 0.5, False)], lambda bits: 0.02)
    assert kd["gain"]["val_accuracy"]["ci_low"] is None
    _, fig = write_kd_forest(tmp_path / "kd.png", kd)
    assert "KD overall" in _artists(fig, "point:") and "KD overall" not in _artists(fig, "interval:")


def test_html_is_a_plotly_figure_of_the_same_numbers(kd, tmp_path):
    path, fig = write_kd_forest(tmp_path / "kd.html", kd)
    html = path.read_text(encoding="utf-8")
    assert "<html" in html.lower() and "plotly" in html.lower() and "KD overall" in html
    rows = kd_forest_rows(kd)
    by_name = {tr.name: tr for tr in fig.data}
    overall = by_name["KD overall"]
    g = rows["overall"]
    assert list(overall.x) == pytest.approx([100 * g["mean"]])
    assert list(overall.error_x.array) == pytest.approx([100 * (g["ci_high"] - g["mean"])])
    assert list(overall.error_x.arrayminus) == pytest.approx([100 * (g["mean"] - g["ci_low"])])
    levels = [lv for t in rows["techniques"] for lv in t["levels"]]
    assert list(by_name["KD gain at a level"].x) == pytest.approx([100 * lv["mean"] for lv in levels])
    (band,) = [s for s in fig.layout.shapes if s.type == "rect"]
    assert (band.x0, band.x1) == pytest.approx((100 * g["mean"] - 1.0, 100 * g["mean"] + 1.0))
    notes = " ".join(a.text for a in fig.layout.annotations)
    for t in rows["techniques"]:
        assert t["verdict"] in notes


@pytest.mark.parametrize("name", ["kd.txt", "kd"])
def test_other_suffixes_are_refused(kd, tmp_path, name):
    with pytest.raises(AutokdError, match="--plot-kd: cannot draw"):
        write_kd_forest(tmp_path / name, kd)
    assert not (tmp_path / name).exists()


def test_no_pairs_is_refused(tmp_path):
    kd = study_report([], directions=DIRECTIONS, metric_names=METRICS)["kd"]
    with pytest.raises(AutokdError, match="no complete KD pairs"):
        write_kd_forest(tmp_path / "kd.png", kd)
    assert not (tmp_path / "kd.png").exists()
