"""Pareto-aware early stopping (``search.early_stop``): the rule on planted curves, and real tiny searches where a
trial is stopped (PRUNED, with its reason and epoch), does not count toward ``n_trials``, is not run again, and a
KD twin of a completed trial is never stopped; the default follows whether KD is searched; the report says when
the KD pairs are conditioned on survival."""

from __future__ import annotations

import copy
import json
import re

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

import autokd.study
from autokd.data import load_dataset
from autokd.early_stop import (CurvePoint, EarlyStopWatch, Reference, Stopped, StopRule, add_point, curve_value,
                               decide)
from autokd.objective import Objective, TrialInputs, planned_costs, run_config, told_cost
from autokd.sampling import TrialConfig
from autokd.space import early_stop_enabled, resolve, space_from_dict
from autokd.study import create_or_load_study, run_search

DIRS = ["maximize", "minimize"]


def flat(acc: float, train: int = 6, finetune: int = 3) -> list:
    return [{"train": [acc] * train, "finetune": [acc] * finetune}]


def rising(final: float, start: float, train: int = 6, finetune: int = 3) -> list:
    """A curve from ``start`` to ``final`` over the train phase, flat in the fine-tune phase."""
    step = (final - start) / (train - 1)
    return [{"train": [start + i * step for i in range(train)], "finetune": [final] * finetune}]


def refs(*specs: tuple[float, float, list]) -> list[Reference]:
    return [Reference(i, (cost,), (final,), curve) for i, (final, cost, curve) in enumerate(specs)]


AT_3 = dict(repeat=0, phase="train", epoch=3, epochs=6)


# ------------------------------------------------------------------------------------------------------------------
# The rule on planted curves


def test_a_trial_a_cheaper_one_dominates_even_optimistically_is_stopped():
    # six completed curves that rose from 0.5 to 0.9; a cheap one ended at 0.95
    done = refs(*[(0.9, 10.0, rising(0.9, 0.5)) for _ in range(5)], (0.95, 1.0, rising(0.95, 0.5)))
    gain = 0.95 - done[5].curve[0]["train"][2]  # the best gain from epoch 3 on (0.68 -> 0.95: the cheap one)
    d = decide(CurvePoint(val_accuracy=0.55, **AT_3), [5.0], done, StopRule(mode="extrapolate", margin=0.0, width=0.2))
    assert d is not None and d.by == 5 and d.by_final == 0.95
    assert d.bound == pytest.approx(0.55 + gain)
    assert "train epoch 3/6" in d.reason and "trial 5" in d.reason and "at most 82.0%" in d.reason


@pytest.mark.parametrize("mode", ["rung", "extrapolate"])
def test_the_decision_carries_the_stopping_trials_mean_final_over_repeats(mode):
    # repeat 1 is judged against repeat 1 (0.95), but the sampler is told the mean over repeats, as for COMPLETE
    done = [Reference(i, (10.0,), (0.9, 0.9), rising(0.9, 0.5) * 2) for i in range(5)]
    done.append(Reference(5, (1.0,), (0.99, 0.95), rising(0.95, 0.5) * 2))
    d = decide(CurvePoint(val_accuracy=0.55, **{**AT_3, "repeat": 1}), [5.0], done,
               StopRule(mode=mode, margin=0.0, width=0.2))
    assert d is not None and d.by == 5 and d.by_final == 0.95 and d.by_mean == pytest.approx(0.97)


def test_a_promising_trial_is_not_stopped():
    done = refs(*[(0.9, 10.0, rising(0.9, 0.5)) for _ in range(5)], (0.95, 1.0, rising(0.95, 0.5)))
    assert decide(CurvePoint(val_accuracy=0.70, **AT_3), [5.0], done, StopRule(mode="extrapolate", margin=0.0, width=0.2)) is None
    assert decide(CurvePoint(val_accuracy=0.70, **AT_3), [5.0], done) is None  # the rung rule: ahead of them all


def test_a_trial_nobody_undercuts_is_never_stopped():
    done = refs(*[(0.99, 10.0, flat(0.99)) for _ in range(6)])
    assert decide(CurvePoint(val_accuracy=0.1, **AT_3), [5.0], done) is None  # the front has no point at its cost
    assert decide(CurvePoint(val_accuracy=0.1, **AT_3), [10.0], done) is not None  # same cost: dominated


def test_guards_min_complete_and_min_epoch():
    done = refs(*[(0.99, 1.0, flat(0.99)) for _ in range(6)])
    low = dict(AT_3, val_accuracy=0.1)
    assert decide(CurvePoint(**low), [5.0], done[:5]) is None  # fewer than min_complete peers
    assert decide(CurvePoint(**{**low, "epoch": 1}), [5.0], done) is None  # before min_epoch
    assert decide(CurvePoint(**low), [5.0], done) is not None
    # another schedule (8 train epochs) has no peers here
    assert decide(CurvePoint(**{**low, "epochs": 8}), [5.0], done) is None


def test_the_extrapolation_uses_the_gains_of_curves_that_stood_where_the_trial_stands():
    # slow starters (0.3 at epoch 3) gained 0.6; fast ones (0.8) gained 0.05
    slow = [(0.9, 1.0, [{"train": [0.1, 0.2, 0.3, 0.5, 0.7, 0.9], "finetune": [0.9] * 3}]) for _ in range(3)]
    fast = [(0.85, 1.0, [{"train": [0.5, 0.7, 0.8, 0.82, 0.84, 0.85], "finetune": [0.85] * 3}]) for _ in range(3)]
    done, rule = refs(*slow, *fast), StopRule(mode="extrapolate", margin=0.0)
    assert decide(CurvePoint(val_accuracy=0.3, **AT_3), [5.0], done, rule) is None  # may still reach 0.9
    d = decide(CurvePoint(val_accuracy=0.78, **AT_3), [5.0], done, rule)  # like the fast ones: at most 0.83
    assert d is not None and d.bound == pytest.approx(0.83) and d.by_final == 0.9


def test_the_rung_rule_compares_with_the_same_epoch_and_the_end():
    done = refs(*[(0.9, 1.0, rising(0.9, 0.5)) for _ in range(6)])
    d = decide(CurvePoint(val_accuracy=0.6, **AT_3), [5.0], done)  # they stood at 0.66 >= 0.6 + margin 0.02
    assert d is not None and d.by_at == pytest.approx(0.66) and d.by == 0
    assert d.reason.startswith("stopped early after train epoch 3/6 at val accuracy 60.0%: trial 0")
    assert decide(CurvePoint(val_accuracy=0.65, **AT_3), [5.0], done) is None  # within the margin
    # a cheaper trial that was ahead at epoch 3 but ended low (quantized hard) does not stop it
    collapsed = refs(*[(0.61, 1.0, rising(0.9, 0.5)) for _ in range(6)])
    assert decide(CurvePoint(val_accuracy=0.6, **AT_3), [5.0], collapsed) is None
    with pytest.raises(ValueError, match="unknown early-stopping mode"):
        StopRule(mode="asha")


def test_curves_and_references_from_plain_records():
    curve: list = []
    for p in [CurvePoint(0, "train", 1, 2, 0.5), CurvePoint(0, "train", 2, 2, 0.7), CurvePoint(1, "train", 1, 2, 0.4)]:
        add_point(curve, p)
    assert curve == [{"train": [0.5, 0.7]}, {"train": [0.4]}]
    assert curve_value(curve, CurvePoint(0, "train", 2, 2, 0.0)) == 0.7
    assert curve_value(curve, CurvePoint(1, "train", 1, 2, 0.0)) is None  # repeat 1's train phase is not whole
    ref = Reference.from_record({"number": 3, "state": "COMPLETE", "values": [0.9, 5.0],
                                 "metrics": {"repeats": [{"val_accuracy": 0.88}, {"val_accuracy": 0.92}]},
                                 "learning_curve": curve})
    assert ref.costs == (5.0,) and ref.finals == (0.88, 0.92) and ref.final(1) == 0.92
    assert Reference.from_record({"number": 4, "state": "PRUNED", "values": None}) is None
    assert Reference.from_record({"number": 5, "state": "COMPLETE", "values": [float("nan"), 1.0]}) is None


def test_the_watch_never_stops_a_protected_trial_nor_at_its_last_epoch():
    done = refs(*[(0.99, 1.0, flat(0.99, 2, 1)) for _ in range(6)])
    kw = dict(references=lambda: done, costs=lambda: [5.0])
    low = CurvePoint(0, "train", 2, 2, 0.1)
    EarlyStopWatch(**kw, may_stop=False)(low)  # a twin of a completed trial
    last = EarlyStopWatch(**kw, total=1)
    last(low)  # its only (so its last) epoch: the trial completes
    with pytest.raises(Stopped) as stop:
        EarlyStopWatch(**kw, total=3)(low)
    assert stop.value.epochs_trained == 1 and stop.value.decision.by == 0


def test_watching_the_curve_does_not_change_training(tiny_space_data):
    s = copy.deepcopy(tiny_space_data)
    s["distill"]["kd"] = False
    s["search"]["kd_twins"] = False
    s["train"]["epochs"] = 2
    s["compress"] = {"finetune_epochs": 1, "bits": 8}
    sp = space_from_dict(s)
    data = load_dataset(sp.dataset)
    cfg = TrialConfig(resolve(sp, {"model.width_mult": 0.25}), {"model.width_mult": 0.25})
    torch.set_num_threads(1)
    points: list[CurvePoint] = []
    watched, plain = run_config(cfg, data, watch=points.append), run_config(cfg, data)
    assert [(p.phase, p.epoch) for p in points] == [("train", 1), ("train", 2), ("finetune", 1)]
    assert points[-1].val_accuracy == pytest.approx(watched.metrics["val_accuracy"])
    for key in ("val_accuracy", "test_accuracy", "flops"):
        assert watched.metrics[key] == plain.metrics[key]
    for a, b in zip(watched.model.state_dict().values(), plain.model.state_dict().values()):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------------------------
# Real tiny searches


def es_space(tiny: dict, **search) -> dict:
    """The tiny space with KD fixed (early stopping on by default), 2 train + 1 fine-tune epochs."""
    s = copy.deepcopy(tiny)
    s["distill"]["kd"] = False
    s["train"]["epochs"] = 2
    s["compress"] = {"finetune_epochs": 1}
    s["search"].update(search)
    return s


def plant_front(study: optuna.Study, n: int = 6) -> None:
    """``n`` COMPLETE trials that nothing can beat: 99.9% for 1 FLOP (log10 1 = 0), with flat learning curves."""
    for _ in range(n):
        study.add_trial(create_trial(values=[0.999, 0.0], params={}, distributions={},
                                     user_attrs={"metrics": {"val_accuracy": 0.999},
                                                 "learning_curve": flat(0.999, 2, 1)}))


def test_the_default_follows_whether_kd_is_searched(tiny_space):
    assert not early_stop_enabled(space_from_dict(tiny_space))  # KD searched: pairs must not be conditioned
    assert early_stop_enabled(space_from_dict(es_space(tiny_space)))
    assert not early_stop_enabled(space_from_dict(es_space(tiny_space, early_stop=False)))
    on = copy.deepcopy(tiny_space)
    on["search"]["early_stop"] = True
    assert early_stop_enabled(space_from_dict(on))


def test_a_search_stops_dominated_trials_which_do_not_count_and_resumes(cli, space_file, tiny_space, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setattr(autokd.study.runner, "MAX_DUPLICATES_IN_A_ROW", 3)
    s = es_space(tiny_space, n_trials=7)  # 6 planted + 1: both configurations are stopped, so never reached
    url = f"sqlite:///{tmp_path}/es.db"
    plant_front(create_or_load_study(space_from_dict(s), storage=url))
    path = space_file(s)
    res = cli("search", path, "--storage", url, "--device", "cpu")
    assert res.code == 0, res.err
    assert "stopped early after train epoch 2/2 at val accuracy" in res.out and "does not count" in res.out
    assert "Stopped with 6/7 complete trials" in res.out  # the stopped trials did not count
    assert re.search(r"\(2 stopped early, \d+ duplicates\)", res.out)
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    stopped = [t for t in trials if "stopped_reason" in t.user_attrs]
    assert len(stopped) == 2 and {t.params["model.width_mult"] for t in stopped} == {0.25, 0.5}
    for t in stopped:
        assert t.state == TrialState.PRUNED
        assert t.user_attrs["stopped_epoch"] == 2
        assert t.user_attrs["stopped_at"] == {"repeat": 0, "phase": "train", "epoch": 2, "epochs": 2}
        assert t.user_attrs["stopped_by"] in range(6)
        assert "stood at 99.9% there and ended at 99.9%" in t.user_attrs["stopped_reason"]
        # what the GP sampler is told: the stopping trial's final accuracy at this trial's own log10 FLOPs
        by_final, cost = t.user_attrs["stopped_values"]
        assert by_final == 0.999 and 4 < cost < 8
        assert len(t.user_attrs["learning_curve"][0]["train"]) == 2 and "metrics" not in t.user_attrs
    # a stopped configuration proposed again is not run again
    dups = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert dups and {t.user_attrs["duplicate_of"] for t in dups} <= {t.number for t in stopped}
    # resume: nothing is re-run, the stopped trials stay as they were
    again = cli("search", path, "--storage", url, "--device", "cpu")
    assert again.code == 0, again.err
    assert "Stopped with 6/7 complete trials" in again.out
    after = optuna.load_study(study_name="tiny", storage=url).get_trials()
    assert [t.number for t in after if "stopped_reason" in t.user_attrs] == [t.number for t in stopped]
    assert sum(t.state == TrialState.COMPLETE for t in after) == 6
    # turned off on resume (a space change), the stopped configurations run to their end
    off = cli("search", path, "--set", "search.early_stop=false", "--allow-space-change", "--storage", url,
              "--device", "cpu")
    assert off.code == 0, off.err
    last = optuna.load_study(study_name="tiny", storage=url).get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in last) == 7
    assert [t.number for t in last if "stopped_reason" in t.user_attrs] == [t.number for t in stopped]
    report = cli("report", path, "--storage", url, "--json")
    assert report.code == 0 and json.loads(report.out)["stopped"] == 2


def kd_space(tiny: dict) -> dict:
    s = copy.deepcopy(tiny)
    s["model"]["width_mult"] = 0.25
    s["train"]["epochs"] = 2
    s["compress"] = {"finetune_epochs": 1}
    s["search"]["early_stop"] = True  # turned on with KD twins
    return s


def test_a_twin_of_a_completed_trial_is_never_stopped(tiny_space, tmp_path):
    """KD searched, early stopping turned on: the first trial is stopped; a queued twin of a completed trial (here
    one with the stopped trial's very settings) runs to its end and is no duplicate of it."""
    sp = space_from_dict(kd_space(tiny_space))
    study = optuna.create_study(directions=DIRS)
    plant_front(study)
    data = load_dataset(sp.dataset)
    from autokd.teacher import get_teacher

    teacher = get_teacher(sp, data)
    objective = Objective(sp, TrialInputs(data, teacher), device="cpu", early_stop=True)
    kd = {"distill.kd": True}
    dist = {"distill.kd": CategoricalDistribution([True, False])}
    study.add_trial(create_trial(values=[0.9, told_cost(5e4, "log10")], params={"distill.kd": False},
                                 distributions=dist))  # trial 6
    study.enqueue_trial(kd)
    study.optimize(objective, n_trials=1)
    first = study.trials[-1]
    assert first.state == TrialState.PRUNED and "stopped_reason" in first.user_attrs
    study.enqueue_trial(kd, user_attrs={"twin_of": 6})
    study.optimize(objective, n_trials=1)
    twin = study.trials[-1]
    assert twin.state == TrialState.COMPLETE and "duplicate_of" not in twin.user_attrs
    assert len(twin.user_attrs["learning_curve"][0]["finetune"]) == 1  # its curve is kept: a reference for others
    study.enqueue_trial(kd)  # the same settings proposed again (not a twin): not run again
    study.optimize(objective, n_trials=1)
    assert study.trials[-1].state == TrialState.PRUNED and study.trials[-1].user_attrs["duplicate_of"] in (
        first.number, twin.number)


@pytest.mark.parametrize("scale", ["log10", "linear"])
def test_the_watch_compares_costs_on_the_scale_of_the_study(tiny_space, scale):
    """The references' costs are the study's objective values, so the trial's planned costs must be told on the
    same scale: a reference dearer than the trial (by 1.5x) stops nothing, one cheaper (by 1.5x) stops it."""
    sp = space_from_dict(es_space(tiny_space))
    data = load_dataset(sp.dataset)
    cfg = TrialConfig(resolve(sp, {"model.width_mult": 0.25}), {"model.width_mult": 0.25})
    flops = planned_costs(cfg, data)["flops"]
    for factor, stops in ((1.5, False), (1 / 1.5, True)):
        refs = [Reference(i, (told_cost(flops * factor, scale),), (0.999,), flat(0.999, 2, 1)) for i in range(6)]
        objective = Objective(sp, TrialInputs(data, None), device="cpu", early_stop=True, cost_scale=scale)
        watch = objective._watch(optuna.trial.FixedTrial({}), cfg, False)
        assert watch.costs() == [pytest.approx(told_cost(flops, scale))]
        watch.references, watch.may_stop = (lambda refs=refs: refs), True
        point = CurvePoint(repeat=0, phase="train", epoch=2, epochs=2, val_accuracy=0.2)
        if stops:
            with pytest.raises(Stopped):
                watch(point)
        else:
            watch(point)


def test_the_objective_refuses_an_unknown_cost_scale(tiny_space):
    sp = space_from_dict(es_space(tiny_space))
    with pytest.raises(ValueError, match="log10, linear"):
        Objective(sp, TrialInputs(load_dataset(sp.dataset), None), device="cpu", cost_scale="ln")


def test_a_twin_only_a_stopped_trial_had_the_settings_of_is_queued():
    from autokd.study.twins import enqueue_missing_twins

    study = optuna.create_study(directions=DIRS)
    dist = {"distill.kd": CategoricalDistribution([True, False]), "model.width_mult": CategoricalDistribution([0.25])}
    stopped = create_trial(state=TrialState.PRUNED, params={"distill.kd": True, "model.width_mult": 0.25},
                           distributions=dist, user_attrs={"stopped_reason": "planted"})
    study.add_trial(stopped)
    study.add_trial(create_trial(values=[0.9, 1.0], params={"distill.kd": False, "model.width_mult": 0.25},
                                 distributions=dist))
    enqueue_missing_twins(study)
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].user_attrs["twin_of"] == 1
    enqueue_missing_twins(study)  # idempotent
    assert sum(t.state == TrialState.WAITING for t in study.get_trials()) == 1


def test_a_duplicate_of_a_stopped_trial_does_not_hide_the_twin():
    from autokd.study.twins import enqueue_missing_twins

    study = optuna.create_study(directions=DIRS)
    dist = {"distill.kd": CategoricalDistribution([True, False]), "model.width_mult": CategoricalDistribution([0.25])}
    params = {"distill.kd": True, "model.width_mult": 0.25}
    study.add_trial(create_trial(state=TrialState.PRUNED, params=params, distributions=dist,
                                 user_attrs={"stopped_reason": "planted"}))
    study.add_trial(create_trial(state=TrialState.PRUNED, params=params, distributions=dist,
                                 user_attrs={"duplicate_of": 0}))  # the stopped settings proposed again
    study.add_trial(create_trial(values=[0.9, 1.0], params={"distill.kd": False, "model.width_mult": 0.25},
                                 distributions=dist))
    enqueue_missing_twins(study)
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].user_attrs["twin_of"] == 2


def test_the_search_default_with_kd_searched_keeps_no_curves(tiny_space, tmp_path):
    s = copy.deepcopy(tiny_space)
    s["model"]["width_mult"] = 0.25
    s["search"]["n_trials"] = 1
    url = f"sqlite:///{tmp_path}/kd.db"
    result = run_search(space_from_dict(s), storage=url, device="cpu")
    assert result.complete == 2 and result.early_stopped == 0  # the trial and its twin
    assert all("learning_curve" not in t.user_attrs for t in optuna.load_study(study_name="tiny", storage=url).trials)


# ------------------------------------------------------------------------------------------------------------------
# The report


def test_the_report_says_the_pairs_are_conditioned_on_survival():
    from autokd.report import study_report
    from autokd.report.render import render_report
    from rich.console import Console

    def rec(number, kd, width, *, acc, state="COMPLETE", twin_of=None, **extra):
        return {"number": number, "state": state, "values": [acc, 1e6] if state == "COMPLETE" else None,
                "params": {"distill.kd": kd, "model.width_mult": width},
                "metrics": {"val_accuracy": acc, "test_accuracy": acc, "flops": 1e6} if state == "COMPLETE" else {},
                "settings": {"search": {"early_stop": True}}, "twin_of": twin_of, "duplicate_of": None, **extra}

    records = [rec(0, True, 0.25, acc=0.9), rec(1, False, 0.25, acc=0.88, twin_of=0),
               rec(2, True, 0.5, acc=0.0, state="PRUNED"), rec(3, False, 0.5, acc=0.0, state="PRUNED",
                                                                duplicate_of=2)]
    info = study_report(records, directions=DIRS, metric_names=["val_accuracy", "flops"])
    es = info["kd"]["early_stop"]
    assert es["on"] and es["conditioned_on_survival"] and es["stopped"] == 1
    assert info["stopped"] == 1 and info["duplicates"] == 1
    console = Console(width=300, record=True)
    console.print(render_report(info))
    text = console.export_text()
    assert "conditioned on survival" in text and "1 trial stopped" in text
    assert "2 pruned (1 stopped early, 1 duplicate)" in text
    for r in records:
        r["settings"] = {"search": {"early_stop": None}}  # the default with KD searched: off
    assert study_report(records, directions=DIRS, metric_names=["val_accuracy", "flops"])["kd"]["early_stop"] is None
