"""One trial: sampling -> build -> train (with KD when on) -> measure, and the record it leaves in the study.

:func:`run_config` is the pipeline as a plain function of a resolved :class:`~autokd.sampling.TrialConfig`
(usable without Optuna); :class:`Objective` wraps it for ``study.optimize``: it samples the configuration, records
every setting and metric as user attributes, saves the trained model, and returns the objective values.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autokd.data import Splits
from autokd.measure import accuracy, count_params, flops
from autokd.models import build_student
from autokd.progress import ProgressCallback, silent
from autokd.sampling import TrialConfig, sample
from autokd.space import Space
from autokd.teacher import Teacher
from autokd.train import Distillation, Optim, fit

# search.objectives name -> metric key (the second and later objective values, all minimized)
OBJECTIVE_METRICS = {"flops": "flops", "params": "params"}
TRIAL_FORMAT = 1


@dataclass
class TrialOutcome:
    model: nn.Module
    metrics: dict[str, float]


def run_config(cfg: TrialConfig, data: Splits, *, teacher: Teacher | None = None, device: str | torch.device = "cpu",
               progress: ProgressCallback = silent) -> TrialOutcome:
    """Build, train and measure the model that ``cfg`` describes.

    ``teacher`` is required when ``cfg.distill.kd`` is true; its cached logits stand in for running it per batch.
    """
    use_kd = bool(cfg.distill.kd)
    if use_kd and teacher is None:
        raise ValueError("distill.kd is true but no teacher was given")
    torch.manual_seed(cfg.train.seed)
    model = build_student(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels).to(device)
    distill = Distillation(teacher.train_logits, cfg.distill.temperature, cfg.distill.alpha) if use_kd else None

    opt = Optim.from_train(cfg.train)
    progress("trial.phase", phase="train", epochs=opt.epochs)
    fit(model, data.train_x, data.train_y, opt, seed=cfg.train.seed, distill=distill,
        on_epoch=lambda e, n, loss: progress("trial.epoch", phase="train", epoch=e, epochs=n, loss=loss))

    model.eval()
    shape = tuple(data.train_x.shape[1:])
    metrics = {
        "val_accuracy": accuracy(model, data.val_x, data.val_y),
        "test_accuracy": accuracy(model, data.test_x, data.test_y),
        "flops": float(flops(model, shape)),
        "params": float(count_params(model)),
    }
    return TrialOutcome(model, metrics)


def save_trial_model(path: Path, model: nn.Module, *, number: int, params: dict, settings: dict,
                     metrics: dict) -> None:
    """Save a trained trial (whole module, so pruned/quantized shapes survive) with its settings, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": TRIAL_FORMAT, "number": number, "params": params, "settings": settings,
                "metrics": metrics, "model": model.cpu()}, tmp)
    os.replace(tmp, path)


def load_trial_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model saved by a search: ``(model in eval mode, record with params/settings/metrics)``.

    The file holds a pickled module, so only load files you (or your search) wrote.
    """
    blob = torch.load(Path(path), map_location="cpu", weights_only=False)
    model = blob.pop("model")
    model.eval()
    return model, blob


class Objective:
    """The callable given to ``study.optimize``: one trial end to end."""

    def __init__(self, space: Space, data: Splits, *, teacher: Teacher | None, device: str | torch.device,
                 artifacts: Path | None, progress: ProgressCallback = silent):
        self.space, self.data, self.teacher = space, data, teacher
        self.device, self.artifacts, self.progress = device, artifacts, progress

    def __call__(self, trial: Any) -> list[float]:
        cfg = sample(self.space, trial)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("settings", cfg.settings())
        self.progress("trial.start", number=trial.number, params=cfg.params)
        start = time.perf_counter()
        try:
            outcome = run_config(cfg, self.data, teacher=self.teacher, device=self.device, progress=self.progress)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("fail_reason", reason)
            self.progress("trial.fail", number=trial.number, reason=reason)
            raise
        seconds = time.perf_counter() - start
        metrics = outcome.metrics
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("seconds", round(seconds, 3))
        if self.teacher is not None and cfg.distill.kd:
            trial.set_user_attr("teacher", self.teacher.key)
        if self.artifacts is not None:
            path = self.artifacts / "trials" / f"{trial.number}.pt"
            save_trial_model(path, outcome.model, number=trial.number, params=cfg.params, settings=cfg.settings(),
                             metrics=metrics)
            trial.set_user_attr("model_path", str(path))
        self.progress("trial.done", number=trial.number, metrics=metrics, seconds=seconds, params=cfg.params)
        return [metrics["val_accuracy"]] + [metrics[OBJECTIVE_METRICS[o]] for o in self.space.search.objectives]
