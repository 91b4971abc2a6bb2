"""The KD section of the report on synthetic studies with known effects: a constant gain is found with a CI that
covers it and no factor flagged; a gain that depends on the bit width flags compress.bits; no gain says so; each
shown trial names its twin; the rich rendering shows the verdict."""

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


def add_trial(study, *, kd: bool, bits: int, width: float, acc: float, seed: int) -> int:
    flops = 1e6 * width * (bits / 32 + 0.5)
    metrics = {"val_accuracy": acc, "test_accuracy": acc - 0.01, "flops": flops, "bitops": flops * bits}
    study.add_trial(create_trial(
        state=TrialState.COMPLETE, values=[acc, flops], distributions=DISTS,
        params={"distill.kd": kd, "compress.bits": bits, "model.width_mult": width},
        user_attrs={"metrics": metrics, "settings": {"train": {"seed": seed}, "distill": {"kd": kd}}}))
    return len(study.trials) - 1


def make_study(gain, *, replicates: int = 4, noise: float = 0.004, rng_seed: int = 0):
    """Twins for every (replicate seed, bits, width): gain(bits) + centred noise. Returns (study, {number: twin})."""
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
        b = add_trial(study, kd=not kd_first, bits=bits, width=width, acc=off if kd_first else on, seed=seed)
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
    assert kd["verdict"].startswith("KD adds +2.0 pts (95% CI"), kd["verdict"]
    assert "over 24 pairs" in kd["verdict"]
    assert "no factor changes the gain significantly" in kd["verdict"]
    assert "compress.bits" not in kd["verdict"]


def test_gain_that_depends_on_bits_flags_compress_bits(by_bits):
    study, _ = by_bits
    kd = kd_of(study)
    bits = factor(kd, "compress.bits")
    assert bits["p_adjusted"] < 0.05
    assert factor(kd, "model.width_mult")["p_adjusted"] >= 0.05
    means = {lv["level"]: lv["mean"] for lv in bits["levels"]}
    assert set(means) == {"4", "8", "32"}
    assert means["4"] == pytest.approx(0.06, abs=0.005)
    assert means["8"] == pytest.approx(0.02, abs=0.005)
    assert means["32"] == pytest.approx(0.0, abs=0.005)
    assert all(lv["n_pairs"] == 8 for lv in bits["levels"])
    v = kd["verdict"]
    assert v.startswith("KD adds"), v
    assert "the gain depends on compress.bits (corrected p" in v
    assert "model.width_mult" not in v


def test_no_gain_is_no_clear_gain():
    study, _ = make_study(lambda bits: 0.0)
    kd = kd_of(study)
    g = kd["gain"]["val_accuracy"]
    assert g["ci_low"] < 0 < g["ci_high"]
    assert abs(g["mean"]) < 1e-12
    assert kd["verdict"].startswith("No clear KD gain"), kd["verdict"]


def test_negative_gain_is_kd_hurts():
    study, _ = make_study(lambda bits: -0.03)
    kd = kd_of(study)
    assert kd["gain"]["val_accuracy"]["ci_high"] < 0
    assert kd["verdict"].startswith("KD hurts: -3.0 pts"), kd["verdict"]


def test_too_few_pairs_refuses_to_judge():
    study, _ = make_study(lambda bits: 0.05, replicates=1)
    records = trial_records(study)[:6]  # 3 pairs
    kd = study_report(records, directions=DIRECTIONS, metric_names=METRICS)["kd"]
    assert kd["n_pairs"] == 3
    assert kd["verdict"].startswith("Too few KD pairs to tell (3 pairs"), kd["verdict"]


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


def test_render_kd_shows_the_tables_and_the_verdict(by_bits):
    study, _ = by_bits
    kd = kd_of(study)
    console = Console(record=True, width=120, color_system=None)
    console.print(render_kd(kd))
    text = console.export_text()
    assert "95% CI" in text
    assert "KD gain, paired twins" in text
    assert "compress.bits" in text and "model.width_mult" in text
    assert _flat("Verdict: " + kd["verdict"]) in _flat(text)
    g = kd["gain"]["val_accuracy"]
    assert f"{100 * g['mean']:+.1f}" in text
    assert re.search(r"val_accuracy\s+│\s+24\s+│", text), text


def test_render_report_includes_the_kd_section(constant):
    study, _ = constant
    info = study_report(trial_records(study), directions=DIRECTIONS, metric_names=METRICS, study="synthetic")
    console = Console(record=True, width=200, color_system=None)
    console.print(render_report(info))
    text = console.export_text()
    assert "Pareto front of synthetic" in text and "twin" in text
    assert _flat(info["kd"]["verdict"]) in _flat(text)
