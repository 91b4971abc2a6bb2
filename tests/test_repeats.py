"""``train.repeats``: every configuration trained R times with its own streams, the mean reported, each repeat kept,
twins paired repeat by repeat."""

from __future__ import annotations

import copy

import optuna
import pytest
import torch

from autokd.data import load_dataset
from autokd.objective import Objective, mean_metrics, prepare_inputs, run_config
from autokd.study import load_trial_model, open_artifact_store
from autokd.report.pairing import pair_trials
from autokd.sampling import TrialConfig
from autokd.space import resolve, space_from_dict
from autokd.study import trial_records
from autokd.teacher import get_teacher
from autokd.train import stream_seed


def test_stream_seeds_are_distinct_and_stable():
    seeds = {(r, p): stream_seed(0, r, p) for r in range(8) for p in ("init", "train", "prune", "finetune")}
    assert len(set(seeds.values())) == len(seeds)
    assert stream_seed(0, 1, "train") == stream_seed(0, 1, "train")
    assert stream_seed(1, 0, "train") != stream_seed(0, 0, "train")
    # The collision the old scheme had: fine-tune of repeat 0 used seed + 1, the train phase of "seed + 1".
    assert stream_seed(0, 0, "finetune") != stream_seed(1, 0, "train")
    assert all(0 <= s < 2**63 for s in seeds.values())


def test_mean_metrics_keeps_every_repeat():
    out = mean_metrics([{"val_accuracy": 0.5, "flops": 10.0}, {"val_accuracy": 0.7, "flops": 10.0}])
    assert out["val_accuracy"] == pytest.approx(0.6) and out["flops"] == 10.0
    assert out["repeats"] == [{"val_accuracy": 0.5, "flops": 10.0}, {"val_accuracy": 0.7, "flops": 10.0}]


@pytest.fixture(scope="module")
def setup(tiny_space_data):
    s = copy.deepcopy(tiny_space_data)
    s["model"]["width_mult"] = 0.25
    s["train"]["repeats"] = 2
    s["compress"] = {"prune_ratio": 0.25, "prune_method": "random", "finetune_epochs": 1}
    sp = space_from_dict(s)
    data = load_dataset(sp.dataset)
    teacher = get_teacher(sp, data)
    return sp, prepare_inputs(sp, data, teacher=teacher)


def test_repeats_use_their_own_streams_and_are_reproducible(setup):
    sp, inputs = setup
    params = {"distill.kd": False}
    cfg = TrialConfig(resolve(sp, params), params)
    torch.set_num_threads(1)
    r0, r1, r0_again = (run_config(cfg, inputs, repeat=r) for r in (0, 1, 0))
    w = [next(o.model.parameters()).detach() for o in (r0, r1, r0_again)]
    assert torch.equal(w[0], w[2])  # same repeat, same streams, same weights
    assert not torch.equal(w[0], w[1])  # another repeat: another initialization, order and calibration
    # training throughput: the images of both phases (1 + 1 epochs) over their time, per repeat
    images = 2 * len(inputs.data.train_y)
    for r in (r0, r1):
        seconds = images / r.metrics["train_images_per_s"]
        assert 0.01 < seconds < 60  # a whole tiny training run, not one batch's or one epoch's images


def test_a_trial_reports_the_mean_and_keeps_each_repeat(setup, tmp_path):
    sp, inputs = setup
    study = optuna.create_study(directions=["maximize", "minimize"])
    for kd in (True, False):
        study.enqueue_trial({"distill.kd": kd}, user_attrs={"twin_of": 0} if not kd else None)
    store = open_artifact_store(tmp_path)
    objective = Objective(sp, inputs, device="cpu", artifacts=store)
    study.optimize(objective, n_trials=2)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for t in trials:
        m = t.user_attrs["metrics"]
        assert len(m["repeats"]) == 2
        assert m["val_accuracy"] == pytest.approx(sum(r["val_accuracy"] for r in m["repeats"]) / 2)
        assert t.values[0] == pytest.approx(m["val_accuracy"])  # the sampler sees one value: the mean
        assert t.user_attrs["model_repeat"] == 0
        model, record = load_trial_model(t, artifacts=store)
        assert record["repeat"] == 0 and len(record["metrics"]["repeats"]) == 2
    # Twins pair repeat by repeat: the gain of repeat r is KD-on repeat r minus KD-off repeat r.
    (pair,) = pair_trials(trial_records(study)).pairs
    on, off = (pair.on["metrics"]["repeats"], pair.off["metrics"]["repeats"])
    assert pair.repeat_gains("val_accuracy") == pytest.approx(
        [on[r]["val_accuracy"] - off[r]["val_accuracy"] for r in range(2)])
    assert pair.gain("val_accuracy") == pytest.approx(sum(pair.repeat_gains("val_accuracy")) / 2)


@pytest.mark.parametrize("value", [0, -1, 33, "two"])
def test_bad_repeats_are_refused(tiny_space, value):
    from autokd.errors import SpaceError

    s = copy.deepcopy(tiny_space)
    s["train"]["repeats"] = value
    with pytest.raises(SpaceError, match="train.repeats"):
        space_from_dict(s)
