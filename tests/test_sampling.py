"""Sampling a space with Optuna, replaying a trial with FixedTrial, and a deterministic trial pipeline."""

from __future__ import annotations

import json

import optuna
import pytest
import torch

from autokd.data import load_dataset
from autokd.models import build_student
from autokd.objective import run_config
from autokd.sampling import TrialConfig, sample
from autokd.space import Choices, dimensions, is_resolved, space_from_dict

NAS = {
    "version": 1, "name": "nas",
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"family": "mobilenetv2", "width_mult": {"choices": [0.25, 0.5, 1.0]},
              "depth_mult": {"choices": [0.5, 1.0]}, "kernel_size": {"low": 3, "high": 7, "step": 2},
              "expand_ratio": {"choices": [2, 4, 6]}, "conv": {"choices": ["depthwise", "standard"]},
              "dropout": {"low": 0.0, "high": 0.5}},
    "distill": {"kd": {"choices": [True, False]}, "teacher": {"width": 8, "epochs": 1}},
    "train": {"epochs": 1, "lr": {"low": 0.01, "high": 0.1, "log": True}},
}


def shapes(model: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def live_trials(space, n: int, seed: int = 0):
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((trial, sample(space, trial)))
    return out


def test_live_trial_suggests_every_dimension_by_its_dotted_name():
    sp = space_from_dict(NAS)
    ((trial, cfg),) = live_trials(sp, 1)
    assert set(cfg.params) == {d.path for d in dimensions(sp)} == set(trial.params)
    dist = trial.distributions
    assert isinstance(dist["model.width_mult"], optuna.distributions.CategoricalDistribution)
    assert isinstance(dist["model.kernel_size"], optuna.distributions.IntDistribution)
    assert dist["model.kernel_size"].step == 2
    assert isinstance(dist["train.lr"], optuna.distributions.FloatDistribution) and dist["train.lr"].log
    assert 3 <= cfg.params["model.kernel_size"] <= 7 and cfg.params["model.kernel_size"] % 2 == 1
    assert 0.01 <= cfg.params["train.lr"] <= 0.1


def test_config_is_fully_resolved():
    sp = space_from_dict(NAS)
    for _, cfg in live_trials(sp, 5):
        assert isinstance(cfg, TrialConfig)
        assert is_resolved(cfg.space)
        assert cfg.model.width_mult == cfg.params["model.width_mult"]
        assert cfg.model.kernel_size == cfg.params["model.kernel_size"]
        assert cfg.train.lr == cfg.params["train.lr"]
        assert cfg.distill.kd is cfg.params["distill.kd"]
        assert cfg.train.epochs == 1  # fixed fields read through
        assert not isinstance(cfg.model.conv, Choices)
        settings = cfg.settings()
        json.dumps(settings)
        assert settings["model"]["width_mult"] == cfg.params["model.width_mult"]
        assert settings["train"]["lr"] == cfg.params["train.lr"]


def test_fixed_trial_replays_the_architecture():
    sp = space_from_dict(NAS)
    for trial, live in live_trials(sp, 6, seed=7):
        replay = sample(sp, optuna.trial.FixedTrial(dict(trial.params)))
        assert replay.params == live.params
        assert replay.settings() == live.settings()
        a = build_student(live.model, num_classes=10, in_channels=1)
        b = build_student(replay.model, num_classes=10, in_channels=1)
        assert shapes(a) == shapes(b)


def test_different_params_give_a_different_architecture():
    sp = space_from_dict(NAS)
    base = {"model.width_mult": 0.25, "model.depth_mult": 0.5, "model.kernel_size": 3, "model.expand_ratio": 2,
            "model.conv": "depthwise", "model.dropout": 0.0, "distill.kd": False, "train.lr": 0.05}
    a = build_student(sample(sp, optuna.trial.FixedTrial(base)).model, num_classes=10, in_channels=1)
    for key, value in [("model.width_mult", 0.5), ("model.kernel_size", 5), ("model.conv", "standard"),
                       ("model.depth_mult", 1.0), ("model.expand_ratio", 4)]:
        b = build_student(sample(sp, optuna.trial.FixedTrial({**base, key: value})).model, num_classes=10,
                          in_channels=1)
        assert shapes(a) != shapes(b), key


def test_fixed_trial_missing_a_param_fails():
    sp = space_from_dict(NAS)
    with pytest.raises(ValueError):
        sample(sp, optuna.trial.FixedTrial({"model.width_mult": 0.25}))


# --- the pipeline ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(request):
    sp = space_from_dict({**NAS, "model": {"family": "mobilenetv2", "width_mult": {"choices": [0.25, 0.5]}},
                          "train": {"epochs": 1}})
    return sp, load_dataset(sp.dataset)


def _inputs(space, data, teacher):
    """The per-search inputs of run_config (data, teacher, view pool)."""
    from autokd.objective import prepare_inputs

    return prepare_inputs(space, data, teacher=teacher)


def computed(metrics: dict) -> dict:
    """The metrics a configuration determines (training throughput is a measurement of the machine)."""
    assert metrics["train_images_per_s"] > 0
    return {k: v for k, v in metrics.items() if k != "train_images_per_s"}


def test_run_config_is_deterministic_without_kd(tiny):
    sp, data = tiny
    cfg = sample(sp, optuna.trial.FixedTrial({"model.width_mult": 0.25, "distill.kd": False}))
    a, b = run_config(cfg, data), run_config(cfg, data)
    assert computed(a.metrics) == computed(b.metrics)
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    m = a.metrics
    assert 0.0 <= m["val_accuracy"] <= 1.0 and 0.0 <= m["test_accuracy"] <= 1.0
    assert m["flops"] > 0 and m["params"] == sum(p.numel() for p in a.model.parameters())


def test_run_config_is_deterministic_with_kd(tiny):
    from autokd.teacher import get_teacher

    sp, data = tiny
    teacher = get_teacher(sp, data)  # the session's cache
    cfg = sample(sp, optuna.trial.FixedTrial({"model.width_mult": 0.25, "distill.kd": True}))
    inputs = _inputs(sp, data, teacher)
    a, b = run_config(cfg, inputs), run_config(cfg, inputs)
    assert computed(a.metrics) == computed(b.metrics)
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(va, vb), ka
    # KD changes what is learned (the KD-off twin starts from the same weights and batches)
    off = run_config(sample(sp, optuna.trial.FixedTrial({"model.width_mult": 0.25, "distill.kd": False})), inputs)
    assert any(not torch.equal(va, vb) for va, vb in zip(a.model.state_dict().values(),
                                                          off.model.state_dict().values()))


def test_kd_without_a_teacher_is_refused(tiny):
    sp, data = tiny
    cfg = sample(sp, optuna.trial.FixedTrial({"model.width_mult": 0.25, "distill.kd": True}))
    with pytest.raises(ValueError, match="teacher"):
        run_config(cfg, data)
