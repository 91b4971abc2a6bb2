"""The KD section of the report on synthetic optuna studies with known effects (trials made with ``create_trial``
and read back with ``trial_records``): a constant gain "adds" with a CI that covers it and every technique
orthogonal; a gain that depends on the bit width makes compress.bits "interact"; no gain says so; each shown trial
names its twin; the teacher and the margin reach the KD section; the rich rendering shows the per-technique table,
the teacher line, the warnings and the verdict."""

from __future__ import annotations

import re

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from rich.console import Console

from autokd.report import study_report
from autokd.report.render import render_kd, render_report
from autokd.study import trial_records

DISTS = {"distill.kd": CategoricalDistribution([True, False]),
         "compress.bits": CategoricalDistribution([4, 8, 32]),
         "model.width_mult": CategoricalDistribution([0.25, 0.5])}
DIRECTIONS = ["maximize", "minimize"]
METRICS = ["val_accuracy", "flops"]


TEACHER = {"train_accuracy": 0.99, "val_accuracy": 0.97, "test_accuracy": 0.96, "view_accuracy": 0.80,
           "augmented": False, "members": 1, "source": "trained", "key": "abc"}


def add_trial(study, *, kd: bool, bits: int, width: float, acc: float, seed: int, **attrs) -> int:
    flops = 1e6 * width * (bits / 32 + 0.5)
    metrics = {"val_accuracy": acc, "test_accuracy": acc - 0.01, "flops": flops, "bitops": flops * bits}
    study.add_trial(create_trial(
        state=TrialState.COMPLETE, values=[acc, flops], distributions=DISTS,
        params={"distill.kd": kd, "compress.bits": bits, "model.width_mult": width},
        user_attrs={"metrics": metrics, "settings": {"train": {"seed": seed}, "distill": {"kd": kd}}, **attrs}))
    return len(study.trials) - 1


def make_study(gain, *, replicates: int = 4, noise: float = 0.004, rng_seed: int = 0, link: bool = True):
    """Twins for every (replicate seed, bits, width): gain(bits) + centred noise; the second trial of each twin
    records ``twin_of`` (unless ``link`` is False). Returns (study, {number: twin})."""
    rng = np.random.default_rng(rng_seed)
    configs = [(seed, bits, width) for seed in range(replicates) for bits in (4, 8, 32) for width in (0.25, 0.5)]
    eps = rng.normal(0, noise, len(configs))
    eps -= eps.mean()  # the mean gain is exactly the mean of gain(bits)
    study = optuna.create_study(directions=DIRECTIONS)
    twin_of = {}
    for i, ((seed, bits, width), e) in enumerate(zip(configs, eps)):
        base = 0.70 + 0.1 * width + 0.002 * bits + rng.normal(0, 0.01)
        on, off = base + gain(bits) + e, base
        # alternate which side runs first, as a study's sampler would
        kd_first = i % 2 == 0
        a = add_trial(study, kd=kd_first, bits=bits, width=width, acc=on if kd_first else off, seed=seed)
        b = add_trial(study, kd=not kd_first, bits=bits, width=width, acc=off if kd_first else on, seed=seed,
                      **({"twin_of": a} if link else {}))
        twin_of[a], twin_of[b] = b, a
    return study, twin_of


def kd_of(study, **kw):
    return study_report(trial_records(study), directions=DIRECTIONS, metric_names=METRICS, **kw)["kd"]


def factor(kd: dict, name: str) -> dict:
    (f,) = [f for f in kd["factors"] if f["factor"] == name]
    return f


@pytest.fixture(scope="module")
def constant():
    return make_study(lambda bits: 0.02)


@pytest.fixture(scope="module")
def by_bits():
    return make_study(lambda bits: {4: 0.06, 8: 0.02, 32: 0.0}[bits])


def test_constant_gain_is_found_and_no_factor_is_flagged(constant):
    study, _ = constant
    kd = kd_of(study)
    assert kd["n_pairs"] == 24 and kd["n_unpaired"] == 0 and kd["metric"] == "val_accuracy"
    g = kd["gain"]["val_accuracy"]
    assert g["n_pairs"] == 24
    assert g["mean"] == pytest.approx(0.02)
    assert g["ci_low"] < 0.02 < g["ci_high"]
    assert g["ci_low"] > 0.01 and g["ci_high"] < 0.03
    assert g["win_rate"] == 1.0 and g["p_sign"] < 0.001
    assert kd["gain"]["test_accuracy"]["mean"] == pytest.approx(0.02)
    assert {f["factor"] for f in kd["factors"]} == {"compress.bits", "model.width_mult"}
    for f in kd["factors"]:
        assert f["p_adjusted"] is not None and f["p_adjusted"] >= 0.05, f
        assert f["verdict"] == "orthogonal", f
    assert kd["overall"] == "adds"
    assert kd["verdict"].startswith("KD adds +2.0 pts (95% CI"), kd["verdict"]
    assert "over 24 pairs" in kd["verdict"]
    assert "orthogonal to KD within ±1.0 pts: bits, width_mult." in kd["verdict"]
    assert "interacts" not in kd["verdict"]
    assert all(p["linked"] for p in kd["pairs"])


def test_gain_that_depends_on_bits_flags_compress_bits(by_bits):
    study, _ = by_bits
    kd = kd_of(study)
    bits = factor(kd, "compress.bits")
    assert bits["p_adjusted"] < 0.05 and bits["verdict"] == "interacts"
    assert factor(kd, "model.width_mult")["p_adjusted"] >= 0.05
    assert factor(kd, "model.width_mult")["verdict"] != "interacts"
    means = {lv["level"]: lv["mean"] for lv in bits["levels"]}
    assert set(means) == {"4", "8", "32"}
    assert means["4"] == pytest.approx(0.06, abs=0.005)
    assert means["8"] == pytest.approx(0.02, abs=0.005)
    assert means["32"] == pytest.approx(0.0, abs=0.005)
    assert all(lv["n_pairs"] == 8 for lv in bits["levels"])
    v = kd["verdict"]
    assert v.startswith("KD adds"), v
    assert "interacts: KD adds 6." in v and "pts more at bits 4 than at 32" in v
    assert "interacts: width_mult" not in v


def test_no_gain_is_no_clear_gain():
    study, _ = make_study(lambda bits: 0.0)
    kd = kd_of(study)
    g = kd["gain"]["val_accuracy"]
    assert g["ci_low"] < 0 < g["ci_high"]
    assert abs(g["mean"]) < 1e-12
    assert kd["overall"] == "no_clear_gain"
    assert kd["verdict"].startswith("No clear KD gain"), kd["verdict"]


def test_negative_gain_is_kd_hurts():
    study, _ = make_study(lambda bits: -0.03)
    kd = kd_of(study)
    assert kd["gain"]["val_accuracy"]["ci_high"] < 0
    assert kd["overall"] == "hurts"
    assert kd["verdict"].startswith("KD hurts: -3.0 pts"), kd["verdict"]


def test_too_few_pairs_refuses_to_judge():
    study, _ = make_study(lambda bits: 0.05, replicates=1)
    records = trial_records(study)[:6]  # 3 pairs
    kd = study_report(records, directions=DIRECTIONS, metric_names=METRICS)["kd"]
    assert kd["n_pairs"] == 3
    assert kd["overall"] == "too_few_pairs"
    assert kd["gain"]["val_accuracy"]["mean"] == pytest.approx(0.05, abs=0.01)  # the numbers are still shown
    assert kd["verdict"].startswith("Too few KD pairs to judge (3 pairs; need at least 10): mean gain +"), \
        kd["verdict"]


@pytest.mark.parametrize("include_all", [False, True])
def test_each_shown_trial_names_its_twin(constant, include_all):
    study, twin_of = constant
    info = study_report(trial_records(study), directions=DIRECTIONS, metric_names=METRICS, include_all=include_all)
    shown = info["trials"]
    assert len(shown) == (48 if include_all else len(info["pareto"]))
    assert shown
    for t in shown:
        assert t["twin"] == twin_of[t["number"]], t["number"]
    pairs = {(p["on"], p["off"]) for p in info["kd"]["pairs"]}
    assert len(pairs) == 24
    for on, off in pairs:
        assert twin_of[on] == off
        assert study.trials[on].params["distill.kd"] is True and study.trials[off].params["distill.kd"] is False


def test_unpaired_and_failed_trials(constant):
    study, _ = constant
    records = trial_records(study)
    lone = dict(records[0], number=100, params={**records[0]["params"], "compress.bits": 8, "model.width_mult": 0.25},
                settings={"train": {"seed": 99}})
    failed = {"number": 101, "state": "FAIL", "values": None, "params": dict(records[1]["params"]), "metrics": {},
              "settings": {}, "seconds": None, "fail_reason": "boom"}
    info = study_report(records + [lone, failed], directions=DIRECTIONS, metric_names=METRICS, include_all=True)
    kd = info["kd"]
    assert kd["n_pairs"] == 24 and kd["n_unpaired"] == 1
    shown = {t["number"]: t for t in info["trials"]}
    assert shown[100]["twin"] is None
    assert shown[101]["state"] == "FAIL" and shown[101]["twin"] is None


def test_without_kd_the_report_has_no_kd_section(constant):
    study, _ = constant
    info = study_report(trial_records(study), directions=DIRECTIONS, metric_names=METRICS, with_kd=False)
    assert "kd" not in info
    assert all("twin" not in t for t in info["trials"])


def test_fronts_use_the_first_cost_metric(constant):
    study, _ = constant
    kd = kd_of(study)
    fr = kd["fronts"]
    assert fr["metric"] == "val_accuracy" and fr["cost_metric"] == "flops"
    assert fr["n_kd_on"] == fr["n_kd_off"] == 24
    assert fr["hv_kd_on"] > fr["hv_kd_off"]  # KD on is 2 points better everywhere
    assert fr["dominated_share"] == 1.0
    other = study_report(trial_records(study), directions=DIRECTIONS, metric_names=["val_accuracy", "bitops"])
    assert other["kd"]["fronts"]["cost_metric"] == "bitops"


def test_the_report_is_deterministic(by_bits):
    study, _ = by_bits
    assert kd_of(study) == kd_of(study)


def _flat(text: str) -> str:
    return " ".join(text.split())


def _render(kd: dict) -> str:
    console = Console(record=True, width=200, color_system=None)
    console.print(render_kd(kd))
    return console.export_text()


def _row(text: str, name: str) -> list[str]:
    """The cells of the table row that starts with ``name``."""
    rows = [line for line in text.splitlines() if re.match(rf"│\s*{re.escape(name)}\s*│", line)]
    assert len(rows) == 1, (name, text)
    return [cell.strip() for cell in rows[0].strip("│").split("│")]


def test_render_kd_shows_the_tables_the_teacher_the_warnings_and_the_verdict(by_bits):
    study, _ = by_bits
    kd = kd_of(study, teacher=TEACHER)
    text = _render(kd)
    assert "KD gain, paired twins" in text and "95% CI" in text
    g = kd["gain"]["val_accuracy"]
    assert f"{100 * g['mean']:+.1f}" in text
    # the per-technique table: one row per factor, ending with its verdict word
    for f in kd["factors"]:
        cells = _row(text, f["factor"].rsplit(".", 1)[-1])
        assert cells[-1] == f["verdict"], cells
    assert _row(text, "bits")[-1] == "interacts" and _row(text, "width_mult")[-1] == "orthogonal"
    # the teacher line, the suspect-views warning, the verdict
    (teacher_line,) = [line for line in text.splitlines() if line.startswith("Teacher")]
    assert "train 99.0%" in teacher_line and "augmented views 80.0%" in teacher_line
    (warning,) = kd["warnings"]
    assert _flat("Warning: " + warning) in _flat(text)
    assert "less accurate on its augmented views" in warning
    assert _flat("Verdict: " + kd["verdict"]) in _flat(text)
    assert "24 pairs of twins" in text and "0 lost pairs" in text


def test_render_kd_without_teacher_or_warnings(constant):
    study, _ = constant
    kd = kd_of(study, teacher={**TEACHER, "view_accuracy": 0.97})
    assert kd["warnings"] == []
    text = _render(kd)
    assert "Warning" not in text
    assert "Teacher" in text and "augmented views 97.0%" in text
    assert "Teacher" not in _render(kd_of(study))
    assert _row(text, "bits")[-1] == "orthogonal"


def test_teacher_and_margin_reach_the_kd_section(constant):
    study, _ = constant
    kd = kd_of(study, teacher=TEACHER, margin=2.0)
    assert kd["margin"] == pytest.approx(0.02)
    assert kd["teacher"] == TEACHER
    assert any("augmented views" in w for w in kd["warnings"])
    assert "within ±2.0 pts" in kd["verdict"]
    assert kd_of(study)["margin"] == pytest.approx(0.01)
    assert [f["verdict"] for f in kd_of(study, margin=0.02)["factors"]] == ["undetermined", "undetermined"]


def test_unlinked_twins_pair_by_params_and_seed():
    linked, _ = make_study(lambda bits: 0.02, replicates=2)
    unlinked, _ = make_study(lambda bits: 0.02, replicates=2, link=False)
    a, b = kd_of(linked), kd_of(unlinked)
    assert [(p["on"], p["off"]) for p in a["pairs"]] == [(p["on"], p["off"]) for p in b["pairs"]]
    assert all(p["linked"] for p in a["pairs"]) and not any(p["linked"] for p in b["pairs"])
    assert a["gain"] == b["gain"]


def test_a_failed_twin_is_a_lost_pair_in_the_report(constant):
    study, _ = constant
    records = trial_records(study)
    original = dict(records[0], number=200, settings={"train": {"seed": 77}, "distill": {"kd": True}})
    failed = {"number": 201, "state": "FAIL", "values": None,
              "params": {**records[0]["params"], "distill.kd": False}, "metrics": {},
              "settings": {"train": {"seed": 77}, "distill": {"kd": False}}, "seconds": None,
              "fail_reason": "RuntimeError: out of memory", "twin_of": 200, "retry_of": None, "duplicate_of": None}
    info = study_report(records + [original, failed], directions=DIRECTIONS, metric_names=METRICS, include_all=True)
    kd = info["kd"]
    assert kd["n_lost_pairs"] == 1 and kd["n_pairs"] == 24 and kd["n_unpaired"] == 0
    assert kd["lost_pairs"] == [{"original": 200, "twin": 201, "failed_side": "kd_off",
                                 "reason": "RuntimeError: out of memory"}]
    assert " 1 pair lost. " in kd["verdict"]
    text = _render(kd)
    assert "1 lost pair" in text and "Warning: 1 pair lost" in _flat(text)


def test_render_report_includes_the_kd_section(constant):
    study, _ = constant
    info = study_report(trial_records(study), directions=DIRECTIONS, metric_names=METRICS, study="synthetic")
    console = Console(record=True, width=200, color_system=None)
    console.print(render_report(info))
    text = console.export_text()
    assert "Pareto front of synthetic" in text and "twin" in text
    assert _row(text, "bits")[-1] == "orthogonal"
    assert _flat(info["kd"]["verdict"]) in _flat(text)
