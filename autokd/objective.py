"""One trial: sampling -> (repeat r: build -> dense training -> prune -> quantize -> fine-tune (QAT) -> measure)
-> record, with KD (when on) in both training phases.

With ``train.repeats: R`` a trial trains its configuration R times, each repeat with its own random streams
(initialization, data order, views, pruning calibration) derived from (``train.seed``, repeat, phase); it reports
the mean metrics to the sampler and keeps each repeat's metrics under ``metrics["repeats"]``. The saved model is
repeat 0's (``model_repeat: 0`` on the trial).

:func:`run_config` is the pipeline as a plain function of a resolved :class:`~autokd.sampling.TrialConfig`
(usable without Optuna); :class:`Objective` wraps it for ``study.optimize``: it samples the configuration, records
every setting and metric as user attributes, saves the trained model, and returns the objective values.

Early stopping (``search.early_stop``, rule in :mod:`autokd.early_stop`): the objective records every trial's
learning curve (``learning_curve``) and, after each epoch, compares the trial with the study's COMPLETE trials at its
planned cost (:func:`planned_costs`); a trial that cannot reach the front there raises ``optuna.TrialPruned`` with
``stopped_reason``, ``stopped_epoch``, ``stopped_at`` and ``stopped_by`` recorded, and the progress event
``trial.stopped`` (number, reason, epochs, phase, epoch, phase_epochs, val_accuracy, bound, by, seconds).
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from torch import nn

from autokd import worker
from autokd.errors import StorageUnavailable
from autokd.compress import prune_model, quantize_model
from autokd.distill import FEATURE_METHODS, FeatureDistiller, method_settings
from autokd.data import FLIP_DATASETS, Splits, augment_pool, dataset_key
from autokd.early_stop import (CURVE_ATTR, STOPPED_AT_ATTR, STOPPED_BY_ATTR, STOPPED_EPOCH_ATTR, STOPPED_REASON_ATTR,
                               STOPPED_VALUES_ATTR, CurvePoint, EarlyStopWatch, EpochWatch, Reference, Stopped, StopRule)
from autokd.measure import accuracy, cost_metrics
from autokd.models import build_student
from autokd.models.saved import architecture, model_bytes
from autokd.progress import ProgressCallback, silent
from autokd.sampling import DESIGN_POINT_ATTR, TrialConfig, sample
from autokd.space import Choices, Space
from autokd.teacher import Teacher, ViewPool, augment_policy, pool_logits, view_accuracy
from autokd.trial_index import claim, duplicate_of
from autokd.train import Distillation, Optim, fit, stream_seed

# search.objectives name -> metric key (the second and later objective values, all minimized)
OBJECTIVE_METRICS = {"flops": "flops", "bitops": "bitops", "size": "size_bytes", "params": "params"}
# How a new study tells Optuna its cost objectives. Costs span decades (BitOps: five on the default space), and a
# model-based sampler models the values it is told: Optuna's GPSampler found less than random search on raw BitOps
# and the most of all samplers on log10(BitOps) (bench/samplers.py). log10 is increasing, so Pareto fronts, and
# early stopping's "costs no more", are the same on either scale; metrics keep the raw counts.
COST_SCALE = "log10"
COST_SCALES = ("log10", "linear")
MODEL_ATTR = "model_artifact"  # trial user attribute: the artifact id of the trial's saved model
# The training numerics of a trial (user attribute ``numerics``, on every trial): bumped when a change makes the same
# configuration and seeds train a different model, even by float rounding only -- that diverges like another seed.
# 1: before channels_last training and the mean global pool; 2: since. The attribute came later than 2 did, so a
# trial without it is 1 or 2 (unknown). KD twins from different numerics (a study resumed across such an upgrade)
# differ by more than KD, and the report says so, or that it cannot tell (kd.warnings).
NUMERICS, NUMERICS_ATTR = 2, "numerics"
CALIBRATION_IMAGES = 256  # images whose gradients rank channels for Taylor pruning


@dataclass
class TrialInputs:
    """What every trial of a search shares, prepared once: the data, the teacher, and (when augmentation can be
    on) the fixed view pool with the teacher's logits over it."""

    data: Splits
    teacher: Teacher | None = None
    pool: torch.Tensor | None = None
    pool_logits: torch.Tensor | None = None


def can_augment(space: Space) -> bool:
    """Whether any trial of the space trains on augmented views."""
    aug = space.train.augment
    return True in aug.choices if isinstance(aug, Choices) else bool(aug)


def view_pool(space: Space, data: Splits) -> ViewPool | None:
    """The fixed pool of augmented views (None when no trial of the space augments).

    The pool is data: drawn once from ``train.seed`` (not per repeat), so the teacher can be trained on it and its
    logits over it cached; each repeat draws its own view per image per epoch from its own stream."""
    if not can_augment(space):
        return None
    views, seed, flip = space.train.augment_views, space.train.seed, data.name in FLIP_DATASETS
    shift = max(1, round(min(data.train_x.shape[-2:]) / 8))
    x = augment_pool(data.train_x, views=views, seed=seed, flip=flip, max_shift=shift)
    return ViewPool(x, {"views": views, "shift": shift, "flip": flip, "seed": seed})


def prepare_inputs(space: Space, data: Splits, *, teacher: Teacher | None = None, pool: ViewPool | None = None,
                   progress: ProgressCallback = silent) -> TrialInputs:
    """The view pool (built here unless given) and the teacher's cached logits over it; sets the teacher's
    ``view_accuracy``."""
    if pool is None:
        pool = view_pool(space, data)
    if teacher is not None and teacher.source != "checkpoint" and teacher.augmented != (
            augment_policy(space, pool) is not None):
        raise ValueError("the teacher was trained for another augmentation policy than this space asks for: "
                         "pass the same pool to get_teacher(..., pool=view_pool(space, data))")
    if pool is None:
        return TrialInputs(data, teacher)
    logits = None
    if teacher is not None:
        pool_key = f"{dataset_key(space.dataset)}-{pool.key}"
        logits = pool_logits(teacher, pool.views, pool_key=pool_key, progress=progress)
        teacher.view_accuracy = view_accuracy(logits, data.train_y)
        progress("teacher.views_done", view_accuracy=teacher.view_accuracy, train_accuracy=teacher.train_accuracy,
                 augmented=teacher.augmented)
    return TrialInputs(data, teacher, pool.views, logits)


@dataclass
class TrialOutcome:
    model: nn.Module
    metrics: dict[str, float]


def run_config(cfg: TrialConfig, inputs: TrialInputs | Splits, *, repeat: int = 0,
               device: str | torch.device = "cpu", progress: ProgressCallback = silent,
               watch: EpochWatch | None = None) -> TrialOutcome:
    """Build, train, compress, fine-tune and measure the model that ``cfg`` describes, as repeat ``repeat``.

    Every configuration trains ``train.epochs`` dense epochs plus ``compress.finetune_epochs`` fine-tune epochs,
    whether or not it prunes or quantizes, so accuracy differences come from the techniques and not from extra
    training. KD (when on) is used in both phases, from the teacher's cached logits. Each random stream is
    :func:`~autokd.train.stream_seed` of (``train.seed``, ``repeat``, phase), so repeats never share one and a KD
    trial and its twin share all of them.

    ``watch`` (optional), when given, is called after every epoch of both phases with a :class:`CurvePoint` (the
    validation accuracy of the model as it stands; measuring it changes nothing in training: evaluation mode,
    no gradient, no random draw); an exception it raises stops the trial there (early stopping raises
    :class:`~autokd.early_stop.Stopped`). Without it nothing extra is measured.
    """
    if isinstance(inputs, Splits):
        inputs = TrialInputs(inputs)
    data, c = inputs.data, cfg.compress
    use_kd, augment = bool(cfg.distill.kd), bool(cfg.train.augment)
    if use_kd and inputs.teacher is None:
        raise ValueError("distill.kd is true but no teacher was given")
    if augment and inputs.pool is None:
        raise ValueError("train.augment is true but no view pool was prepared (use prepare_inputs)")
    x = inputs.pool if augment else data.train_x

    def seed_of(phase: str) -> int:
        return stream_seed(cfg.train.seed, repeat, phase, cfg.replicate)

    torch.manual_seed(seed_of("init"))
    model = build_student(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels).to(device)
    distill, features = None, None
    if use_kd:
        d = cfg.distill
        if d.method in FEATURE_METHODS:  # the teacher runs on each batch; its regressors (if any) drawn after the
            features = FeatureDistiller(  # student, from the same init stream
                d.method, model, inputs.teacher.models[d.feature_member], image_shape=tuple(data.train_x.shape[1:]),
                label_smoothing=cfg.train.label_smoothing, settings=method_settings(d))
            distill = Distillation(None, d.temperature, d.alpha, method=d.method, features=features)
        else:
            logits = inputs.pool_logits if augment else inputs.teacher.train_logits
            distill = Distillation(logits, d.temperature, d.alpha, method=d.method, settings=method_settings(d))
    try:
        return _train_measure(cfg, model, x, inputs, distill, features, seed_of=seed_of, repeat=repeat,
                              progress=progress, watch=watch)
    finally:
        if features is not None:
            features.close()  # no hook stays on the student (saved, exported) or on the shared teacher


def _train_measure(cfg: TrialConfig, model: nn.Module, x: torch.Tensor, inputs: TrialInputs,
                   distill: Distillation | None, features: FeatureDistiller | None, *, seed_of, repeat: int,
                   progress: ProgressCallback, watch: EpochWatch | None) -> TrialOutcome:
    """:func:`run_config` once the student is built: dense training, compression, fine-tuning, measuring."""
    data, c = inputs.data, cfg.compress

    trained = {"images": 0, "seconds": 0.0, "watching": 0.0}

    def phase(name: str, opt: Optim) -> None:
        progress("trial.phase", phase=name, epochs=opt.epochs, repeat=repeat, repeats=cfg.train.repeats)
        torch.manual_seed(seed_of(name))  # dropout draws from the global stream: one per (repeat, phase)
        start = time.perf_counter()

        def on_epoch(e: int, n: int, loss: float) -> None:
            progress("trial.epoch", phase=name, epoch=e, epochs=n, loss=loss)
            if watch is None:
                return
            t0 = time.perf_counter()  # measuring the curve and deciding is not training: kept out of throughput
            try:
                watch(CurvePoint(repeat=repeat, phase=name, epoch=e, epochs=n,
                                 val_accuracy=accuracy(model, data.val_x, data.val_y)))
            finally:
                trained["watching"] += time.perf_counter() - t0

        fit(model, x, data.train_y, opt, seed=seed_of(name), distill=distill, on_epoch=on_epoch)
        # fit reads each epoch's loss back from the device, so the clock stops after the work is done
        trained["seconds"] += time.perf_counter() - start - trained["watching"]
        trained["watching"] = 0.0
        trained["images"] += opt.epochs * len(data.train_y)

    phase("train", Optim.from_train(cfg.train))
    if c.prune_ratio > 0:
        gen = torch.Generator().manual_seed(seed_of("prune"))
        pick = torch.randperm(len(data.train_y), generator=gen)[:CALIBRATION_IMAGES].to(data.train_y.device)
        calib = (data.train_x[pick], data.train_y[pick])
        torch.manual_seed(seed_of("prune"))  # the "random" criterion draws from the global stream
        removed: dict[int, list[int]] = {}
        model = prune_model(model, ratio=c.prune_ratio, method=c.prune_method, example_input=data.train_x[:1],
                            round_to=c.round_to, calibration=calib, removed=removed)
        if features is not None:
            features.pruned(removed)  # FitNets' regressors read only the channels the student kept
    if c.bits != 32:
        model = quantize_model(model, bits=c.bits, act_bits=c.act_bits, keep_first_last=c.keep_first_last,
                                   quantizer=c.quantizer)
        if features is not None:
            features.attach(model)  # quantization replaced the hooked modules
    if c.finetune_epochs:
        lr = c.finetune_lr if c.finetune_lr is not None else cfg.train.lr / 2
        phase("finetune", Optim.from_train(cfg.train, epochs=c.finetune_epochs, lr=lr))

    model.eval()
    metrics = {"val_accuracy": accuracy(model, data.val_x, data.val_y),
               "test_accuracy": accuracy(model, data.test_x, data.test_y),
               **cost_metrics(model, tuple(data.train_x.shape[1:]))}
    if trained["seconds"] > 0:  # training throughput (dense + fine-tune), a measurement of this machine
        metrics["train_images_per_s"] = trained["images"] / trained["seconds"]
    return TrialOutcome(model, metrics)


def planned_costs(cfg: TrialConfig, data: Splits) -> dict[str, float]:
    """The cost metrics (:func:`~autokd.measure.cost_metrics`) the trial will end with, measured before any training
    on an untrained copy of its final architecture.

    Costs depend only on the configuration: pruning is uniform per group (``global_pruning=False``), so the channel
    counts it leaves do not depend on the weights, whichever criterion ranks them (the l1 criterion stands in for
    all); bit widths are settings. ``tests/test_planned_costs.py`` checks equality with trained trials'.
    """
    c = cfg.compress
    # Building the copy draws from torch's global stream, which dropout of a trial in training draws from too:
    # forked, so that asking for the costs mid-training (early stopping) changes nothing in the trial.
    with torch.random.fork_rng(devices=[]):
        model = build_student(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels)
        if c.prune_ratio > 0:
            model = prune_model(model, ratio=c.prune_ratio, method="l1", example_input=data.train_x[:1].cpu(),
                                round_to=c.round_to)
        if c.bits != 32:
            model = quantize_model(model, bits=c.bits, act_bits=c.act_bits, keep_first_last=c.keep_first_last,
                                   quantizer=c.quantizer)
        model.eval()
        return cost_metrics(model, tuple(data.train_x.shape[1:]))


def saved_model(model: nn.Module, cfg: TrialConfig, data: Splits, *, number: int, metrics: dict,
                repeat: int = 0) -> bytes:
    """The saved form of a trained trial (see :mod:`autokd.models.saved`): weights, the layer table that rebuilds
    the pruned/quantized model, and the trial's params, settings and metrics (``repeat``: whose weights)."""
    arch = cfg.model.model_dump(mode="json")
    family = arch.pop("family")
    rebuild = architecture(model, family=family, arch=arch, num_classes=data.num_classes,
                           in_channels=data.in_channels)
    return model_bytes(model, arch=rebuild, record={"number": number, "params": dict(cfg.params),
                                                     "settings": cfg.settings(), "metrics": metrics,
                                                     "repeat": repeat})


def upload_bytes(store: Any, trial: Any, data: bytes, filename: str) -> str:
    """Upload ``data`` as the artifact ``filename`` of ``trial`` into an Optuna artifact store; returns its id.
    The temporary file Optuna's upload reads from is removed whatever happens."""
    with tempfile.TemporaryDirectory(prefix="autokd-upload-") as tmp:
        path = Path(tmp) / filename
        path.write_bytes(data)
        return optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial,
                                                mimetype="application/octet-stream")


def stop_references(study: Any) -> list[Reference]:
    """The study's COMPLETE trials as :class:`~autokd.early_stop.Reference` (objective values, per-repeat final
    accuracies, learning curves), from one read of the study."""
    refs = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        ref = Reference.from_record({"number": t.number, "state": "COMPLETE", "values": t.values,
                                     "metrics": t.user_attrs.get("metrics"),
                                     CURVE_ATTR: t.user_attrs.get(CURVE_ATTR)})
        if ref is not None:
            refs.append(ref)
    return refs


def told_cost(value: float, scale: str) -> float:
    """A cost as a study of ``scale`` tells it to Optuna: log10 of the count (floored at 1: a count below one, which
    no real model has, would otherwise have no logarithm), or the count itself."""
    if scale == "log10":
        return math.log10(max(float(value), 1.0))
    if scale == "linear":
        return float(value)
    raise ValueError(f"unknown cost scale {scale!r} (valid: {', '.join(COST_SCALES)})")


def objective_values(metrics: dict[str, Any], objectives: Sequence[str], scale: str) -> list[float]:
    """The values a trial returns to Optuna: validation accuracy, then each cost objective of
    ``search.objectives`` told on the study's ``scale`` (see :data:`COST_SCALE`)."""
    return [float(metrics["val_accuracy"])] + [told_cost(metrics[OBJECTIVE_METRICS[o]], scale) for o in objectives]


def mean_metrics(per_repeat: list[dict[str, float]]) -> dict[str, Any]:
    """The mean of each metric over the repeats, plus ``"repeats"``: every repeat's own metrics (in order)."""
    keys = per_repeat[0].keys()
    mean = {k: float(sum(m[k] for m in per_repeat) / len(per_repeat)) for k in keys}
    return {**mean, "repeats": [dict(m) for m in per_repeat]}


class Objective:
    """The callable given to ``study.optimize``: one trial end to end."""

    def __init__(self, space: Space, inputs: TrialInputs, *, device: str | torch.device, artifacts: Any = None,
                 progress: ProgressCallback = silent, early_stop: bool = False, stop_rule: StopRule = StopRule(),
                 cost_scale: str = COST_SCALE):
        """``artifacts``: an Optuna artifact store for the trained models (None: models are not kept).
        ``early_stop``: record every trial's learning curve and stop (PRUNED) a trial that cannot reach the front
        at its cost (:mod:`autokd.early_stop`; a KD twin of a completed trial is never stopped).
        ``cost_scale``: how the study tells its cost objectives (:func:`autokd.study.cost_scale` of the study;
        every trial of a study uses its one scale)."""
        if cost_scale not in COST_SCALES:
            raise ValueError(f"cost_scale: {cost_scale!r} is not one of {', '.join(COST_SCALES)}")
        self.space, self.inputs, self.cost_scale = space, inputs, cost_scale
        self.device, self.artifacts, self.progress = device, artifacts, progress
        self.early_stop, self.stop_rule = early_stop, stop_rule
        self.current: int | None = None  # the number of the trial this worker is running (or ran last)

    def __call__(self, trial: Any) -> list[float]:
        self.current = trial.number  # this worker's own trial: an interrupt re-queues this one, no other
        trial.set_user_attr("worker_id", worker.identity())  # first: stale-trial recovery (see autokd.worker)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # for people
        try:
            return self._run(trial)
        except (optuna.TrialPruned, StorageUnavailable):  # the storage is gone: nothing can be recorded on it
            raise
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (the CLI's Terminated carries its own reason)
            trial.set_user_attr("fail_reason", getattr(exc, "reason", "interrupted (Ctrl-C)"))
            raise
        except Exception as exc:  # recorded on the trial whatever stage raised it (Optuna then marks it FAIL)
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("fail_reason", reason)
            self.progress("trial.fail", number=trial.number, reason=reason)
            raise

    def _run(self, trial: Any) -> list[float]:
        cfg = sample(self.space, trial)
        claim(trial)  # every param is written: from here other workers may compare theirs with this trial's
        # A KD twin of a completed trial, and a design point, always run to their end: a pair (a design cell)
        # would be lost otherwise.
        attrs = getattr(trial, "user_attrs", {})
        protected = "twin_of" in attrs or DESIGN_POINT_ATTR in attrs
        twin = duplicate_of(trial, cfg.params, stopped=self.early_stop and not protected, replicate=cfg.replicate)
        if twin is not None:
            # The same settings and seeds would train the same model again: record the link and skip it.
            trial.set_user_attr("duplicate_of", twin)
            self.progress("trial.duplicate", number=trial.number, duplicate_of=twin, params=cfg.params)
            raise optuna.TrialPruned(f"duplicate of trial {twin}")
        trial.set_user_attr("settings", cfg.settings())
        trial.set_user_attr(NUMERICS_ATTR, NUMERICS)
        self.progress("trial.start", number=trial.number, params=cfg.params)
        start = time.perf_counter()
        watch = self._watch(trial, cfg, protected) if self.early_stop else None
        try:
            outcomes = [run_config(cfg, self.inputs, repeat=r, device=self.device, progress=self.progress,
                                   watch=watch) for r in range(cfg.train.repeats)]
        except Stopped as stop:
            self._record_stop(trial, stop, watch, time.perf_counter() - start)
            raise optuna.TrialPruned(stop.decision.reason) from None
        seconds = time.perf_counter() - start
        metrics = mean_metrics([o.metrics for o in outcomes])
        outcome = outcomes[0]
        trial.set_user_attr("metrics", metrics)
        if watch is not None:
            trial.set_user_attr(CURVE_ATTR, watch.curve)
        trial.set_user_attr("model_repeat", 0)
        trial.set_user_attr("seconds", round(seconds, 3))
        if self.inputs.teacher is not None and cfg.distill.kd:
            trial.set_user_attr("teacher", self.inputs.teacher.key)
            # the weights themselves: a study's pairs provably share one teacher, whichever worker trained it
            trial.set_user_attr("teacher_hash", self.inputs.teacher.weights_hash)
        if self.artifacts is not None:  # a failed upload (disk full, ...) fails the trial with the reason
            blob = saved_model(outcome.model, cfg, self.inputs.data, number=trial.number, metrics=metrics)
            trial.set_user_attr(MODEL_ATTR, upload_bytes(self.artifacts, trial, blob, f"trial-{trial.number}.pt"))
        self.progress("trial.done", number=trial.number, metrics=metrics, seconds=seconds, params=cfg.params)
        return objective_values(metrics, self.space.search.objectives, self.cost_scale)

    def _watch(self, trial: Any, cfg: TrialConfig, protected: bool) -> EarlyStopWatch:
        study = getattr(trial, "study", None)
        objectives = self.space.search.objectives

        def costs() -> list[float]:
            planned = planned_costs(cfg, self.inputs.data)
            # on the scale of the references' values (the study's), which keeps "costs no more" as it is
            return [told_cost(planned[OBJECTIVE_METRICS[o]], self.cost_scale) for o in objectives]

        total = cfg.train.repeats * (cfg.train.epochs + cfg.compress.finetune_epochs)
        return EarlyStopWatch(references=lambda: stop_references(study) if study is not None else [], costs=costs,
                              rule=self.stop_rule, may_stop=not protected and study is not None, total=total)

    def _record_stop(self, trial: Any, stop: Stopped, watch: EarlyStopWatch, seconds: float) -> None:
        """The stopped trial's record: its curve so far, why, where and after how many epochs (it ends PRUNED)."""
        d = stop.decision
        trial.set_user_attr(CURVE_ATTR, watch.curve)
        trial.set_user_attr(STOPPED_REASON_ATTR, d.reason)
        trial.set_user_attr(STOPPED_EPOCH_ATTR, stop.epochs_trained)
        trial.set_user_attr(STOPPED_AT_ATTR, {"repeat": d.point.repeat, "phase": d.point.phase,
                                              "epoch": d.point.epoch, "epochs": d.point.epochs})
        trial.set_user_attr(STOPPED_BY_ATTR, d.by)
        if watch.told_costs is not None:
            told = d.by_mean if d.by_mean is not None else d.by_final  # as ``by`` told Optuna: its mean
            trial.set_user_attr(STOPPED_VALUES_ATTR, [told] + list(watch.told_costs))
        trial.set_user_attr("seconds", round(seconds, 3))
        self.progress("trial.stopped", number=trial.number, reason=d.reason, epochs=stop.epochs_trained,
                      phase=d.point.phase, epoch=d.point.epoch, phase_epochs=d.point.epochs,
                      val_accuracy=d.point.val_accuracy, bound=d.bound, by=d.by, seconds=seconds)
