"""Run one worker of a study until it holds ``search.n_trials`` COMPLETE trials.

- Resume: ``search.n_trials`` counts COMPLETE trials, so rerunning the same command finishes the rest.
- A worker acts only on trials it ran (the ``optimize`` callback hands it its own trial; never ``trials[-1]``).
- KD twins: with ``search.kd_twins``, every COMPLETE trial's twin (same settings and seed, ``distill.kd``
  flipped) is enqueued unless it exists, and runs next; a resumed study completes missing twins first.
- Design phase (``search.design``, :mod:`autokd.study.design`): its points are enqueued before anything is
  sampled, one replicate at a time; a worker waits (rather than samples) while the next replicate is due on trials
  other workers are finishing (the pilot of ``replicates: auto``).
- Early stopping (``search.early_stop``, :mod:`autokd.early_stop`): a stopped trial ends PRUNED and does not count
  toward ``search.n_trials`` (the worker goes on with a new trial); a configuration already stopped is not run
  again (``duplicate_of``), except as the KD twin of a completed trial, which is queued and never stopped.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from autokd import worker
from autokd.data import load_dataset
from autokd.device import make_deterministic, resolve_device
from autokd.objective import Objective, prepare_inputs, view_pool
from autokd.progress import ProgressCallback, silent
from autokd.early_stop import STOPPED_REASON_ATTR, StopRule
from autokd.space import Space, dimensions, early_stop_enabled, kd_twins_enabled
from autokd.study import recovery
from autokd.study.recovery import _requeue_interrupted, orphan_age, recover_stale_trials
from autokd.study.sampler import make_sampler
from autokd.study.artifacts import (ATTR_ARTIFACTS, default_artifacts_dir, fetch_teacher, open_artifact_store,
                                    share_teacher)
from autokd.study.storage import (ATTR_TEACHER, check_study_name, cost_scale, count_states, create_or_load_study, default_storage,
                                  ensure_writable, open_existing_study, quiet_optuna)
from autokd.study.design import enqueue_design
from autokd.errors import StorageUnavailable
from autokd.study.retry import RETRY_SECONDS
from autokd.study.twins import enqueue_missing_twins, kd_methods
from autokd.trial_index import index_of
from autokd.teacher import get_teacher, resolve_cache_dir


ORPHAN_POLL_SECONDS = 2.0  # how often a worker waiting for an orphan trial to age looks again
MAX_DUPLICATES_IN_A_ROW = 50  # proposals that repeat a trial before the space is taken as exhausted


def kd_possible(space: Space) -> bool:
    """Whether any trial of the space can distil (so the teacher is needed before trial 0)."""
    for d in dimensions(space):
        if d.path == "distill.kd":
            return True in d.choices
    return bool(space.distill.kd)


@dataclass
class SearchResult:
    study: optuna.Study | None
    storage: str
    complete: int
    target: int
    failed_this_run: int
    ran_this_run: int
    stopped: str  # "done" | "timeout" | "max_failures" | "duplicates" | "others" (other workers finish it)
    teacher_source: str | None = None
    teacher_accuracy: float | None = None
    last_error: str | None = None
    states: dict[str, int] = field(default_factory=dict)
    early_stopped: int = 0  # trials of this run that early stopping stopped (PRUNED; not counted as complete)


def run_search(space: Space, *, storage: str | None = None, study_name: str | None = None,
               timeout: float | None = None, device: str = "auto", cache_dir: str | Path | None = None,
               allow_space_change: bool = False, worker_index: int = 0, artifacts: Any = None,
               threads: int | None = None, progress: ProgressCallback = silent,
               stop_rule: StopRule | None = None, storage_retry: float = RETRY_SECONDS) -> SearchResult:
    """Run (or resume) one worker of the study of ``space`` until the study holds ``search.n_trials`` COMPLETE
    trials (and every KD pair is whole).

    ``worker_index`` distinguishes workers started on the same study (their samplers get different seeds);
    ``artifacts`` is where trial models go (a folder, or an Optuna artifact store object; default
    ``studies/<study>/artifacts``); ``threads`` sets torch's intra-op threads of this worker; ``stop_rule`` the
    settings of early stopping when ``search.early_stop`` is on (default :class:`~autokd.early_stop.StopRule`);
    ``storage_retry`` how many seconds a storage call waits out a database outage (then
    :class:`~autokd.study.retry.StorageUnavailable`; the trial being trained is kept meanwhile).

    Many workers: each runs queued trials (twins, retries) first, and starts a new sampled trial only while the
    COMPLETE and RUNNING trials together are fewer than the target; otherwise it stops (``stopped="others"``:
    the others' running trials take the study to its target). The study ends with between ``n_trials`` and
    ``n_trials + 2 * workers - 1`` COMPLETE trials: the last sampled trials in flight bring their KD twins."""
    if study_name is not None:
        check_study_name(study_name)  # it names files and folders: refused before anything is created
    try:
        return _run_search(space, storage=storage, study_name=study_name, timeout=timeout, device=device,
                           cache_dir=cache_dir, allow_space_change=allow_space_change, worker_index=worker_index,
                           artifacts=artifacts, threads=threads, progress=progress, stop_rule=stop_rule,
                           storage_retry=storage_retry)
    except StorageUnavailable:
        # The trial this worker was training stays RUNNING (the storage cannot be told); the next worker on this
        # host re-queues it, and this note makes that retry not count against the configuration.
        worker.note_exit(f"the storage did not answer for {storage_retry:g} s (exit 75)")
        raise


def _run_search(space: Space, *, storage: str | None, study_name: str | None, timeout: float | None, device: str,
                cache_dir: str | Path | None, allow_space_change: bool, worker_index: int, artifacts: Any,
                threads: int | None, progress: ProgressCallback, stop_rule: StopRule | None,
                storage_retry: float) -> SearchResult:
    if threads is not None:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    make_deterministic(dev)  # CUDA: twins differ only by KD
    name = study_name or space.name
    url = storage or default_storage(name)
    target, twins, methods = space.search.n_trials, kd_twins_enabled(space), kd_methods(space)
    result = SearchResult(None, url, 0, target, 0, 0, "done")

    def prepare(study: optuna.Study) -> bool:
        """Recover stale trials, queue missing twins, report where the study stands; whether work remains."""
        recover_stale_trials(study, progress=progress)
        with quiet_optuna():  # RDB storages: trials of workers elsewhere whose heartbeat stopped
            optuna.storages.fail_stale_trials(study)
        enqueue_design(study, space, progress=progress)
        if twins:
            enqueue_missing_twins(study, methods=methods, progress=progress)
        result.study, result.states = study, count_states(study)
        result.complete = result.states.get("COMPLETE", 0)
        progress("study.resume", complete=result.complete, target=target, trials=sum(result.states.values()),
                 storage=url, study=name)
        return Standing.of(study).work_left(target, twins)

    # A finished study returns before any data or teacher is loaded (no teacher retrained for nothing).
    held = {"retry_seconds": storage_retry, "on_event": progress}  # how the storage rides out an outage
    study = open_existing_study(space, storage=url, study_name=name, allow_space_change=allow_space_change, **held)
    if study is not None and not prepare(study):
        return result
    # Unwritable places are found before anything is trained (a teacher or a trial would be lost otherwise).
    if kd_possible(space) and not space.distill.teacher.checkpoint:
        ensure_writable(resolve_cache_dir(cache_dir), "--cache-dir")
    store, folder = _artifact_store(artifacts, url, name, progress)
    # Data and teacher problems surface before a new study is created, so a corrected space is not refused later.
    data = load_dataset(space.dataset).to(dev)
    pool = view_pool(space, data)  # before the teacher: with augmentation the teacher trains on it
    teacher = None
    if kd_possible(space):
        # A teacher a worker on another machine trained and shared is fetched into the local cache first.
        if fetch_teacher(study, store, space, pool, resolve_cache_dir(cache_dir)):
            progress("teacher.fetched", storage=url)
        teacher = get_teacher(space, data, pool=pool, cache_dir=cache_dir, device=dev, progress=progress)
        result.teacher_source, result.teacher_accuracy = teacher.source, teacher.val_accuracy
    if study is None:
        study = create_or_load_study(space, storage=url, study_name=name, allow_space_change=allow_space_change,
                                     **held)
        prepare(study)
    study.set_user_attr("autokd.dataset_sizes", data.sizes)
    if folder is not None:
        study.set_user_attr(ATTR_ARTIFACTS, str(folder))
    _say_neighbours(study, threads, progress)

    # (counted without copying every trial: ``study.trials`` deep-copies them)
    study.sampler = make_sampler(space, n_existing=len(study.get_trials(deepcopy=False)), worker_index=worker_index)
    inputs = prepare_inputs(space, data, teacher=teacher, pool=pool, progress=progress)
    if teacher is not None:
        study.set_user_attr(ATTR_TEACHER, teacher.summary())
        share_teacher(study, store, space, pool, resolve_cache_dir(cache_dir))
    objective = Objective(space, inputs, device=dev, artifacts=store, progress=progress,
                          early_stop=early_stop_enabled(space), stop_rule=stop_rule or StopRule(),
                          cost_scale=cost_scale(study))
    deadline = None if timeout is None else time.monotonic() + timeout
    duplicates_in_a_row = 0
    with quiet_optuna():
        while True:
            trials = study.get_trials(deepcopy=False)  # one read of the study per round
            design = enqueue_design(study, space, progress=progress, trials=trials)
            if design is not None and design.added:
                trials = study.get_trials(deepcopy=False)
            now = Standing.of(study, trials)
            if not now.work_left(target, twins):
                if now.old_orphans:  # became old since the last look: recover it now, or it is left RUNNING
                    recover_stale_trials(study, progress=progress)
                    continue
                if not now.young_orphans:
                    break
                time.sleep(ORPHAN_POLL_SECONDS)  # only a trial whose worker died as it began: wait it out
                recover_stale_trials(study, progress=progress)
                continue
            if deadline is not None and time.monotonic() >= deadline:
                result.stopped = "timeout"
                break
            if result.failed_this_run >= space.search.max_failures:
                result.stopped = "max_failures"
                break
            if duplicates_in_a_row >= MAX_DUPLICATES_IN_A_ROW:
                result.stopped = "duplicates"
                break
            if design is not None and design.pending and now.waiting == 0:
                # The next replicate is due once the pilot (or the replicate before) is done, which other
                # workers are running: wait for it rather than spend the design's trials on the sampler.
                progress("design.wait", running=now.running)
                time.sleep(ORPHAN_POLL_SECONDS)
                recover_stale_trials(study, progress=progress)
                optuna.storages.fail_stale_trials(study)  # a pilot trial of a worker elsewhere that went silent
                continue
            if now.others_cover(target):
                result.stopped = "others"
                break
            finished: list[optuna.trial.FrozenTrial] = []
            objective.current = None
            try:
                study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False,
                               callbacks=[lambda _study, trial: finished.append(trial)])
            except KeyboardInterrupt as exc:
                _requeue_interrupted(study, objective.current, getattr(exc, "reason", "interrupted (Ctrl-C)"))
                raise
            except Exception as exc:
                outage = _outage(exc)
                if outage is not None:  # Optuna's own bookkeeping failed on top of it: say the outage, not that
                    raise outage from None
                # Optuna: "Cannot tell a FAIL trial": someone failed this worker's trial meanwhile
                if not isinstance(exc, ValueError) or not _failed_by_another(study, objective.current, progress):
                    raise
                continue
            if not finished:  # nothing ran (no trial was started)
                continue
            last = finished[-1]  # this worker's own trial, never another worker's latest
            if last.state == TrialState.PRUNED and "duplicate_of" in last.user_attrs:
                duplicates_in_a_row += 1  # skipped, not trained: does not count as a run
                continue
            duplicates_in_a_row = 0
            result.ran_this_run += 1
            if last.state == TrialState.PRUNED and STOPPED_REASON_ATTR in last.user_attrs:
                result.early_stopped += 1  # trained a few epochs, then stopped: not complete, no twin
            if last.state == TrialState.FAIL:
                result.failed_this_run += 1
                result.last_error = last.user_attrs.get("fail_reason")
            if twins and last.state == TrialState.COMPLETE:
                enqueue_missing_twins(study, methods=methods, progress=progress)
    result.states = count_states(study)
    result.complete = result.states.get("COMPLETE", 0)
    return result


def _artifact_store(artifacts: Any, url: str, name: str, progress: ProgressCallback) -> tuple[Any, Path | None]:
    """(store, its folder or None) for ``artifacts``; a folder is proven writable before anything is trained."""
    if artifacts is not None and not isinstance(artifacts, (str, Path)):
        return artifacts, None  # a store object (e.g. Boto3ArtifactStore): used as given
    folder = Path(artifacts) if artifacts is not None else default_artifacts_dir(url, name)
    store = open_artifact_store(folder, where="--artifacts" if artifacts is not None else "trial models")
    if artifacts is None and not url.startswith("sqlite"):
        progress("study.local_artifacts", path=str(folder))
    return store, folder


def _say_neighbours(study: optuna.Study, threads: int | None, progress: ProgressCallback) -> None:
    """Tell a worker started by hand that other live workers of the study share its host (and its cores)."""
    me = worker.identity()
    others = set()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        ident = t.user_attrs.get("worker_id")
        if isinstance(ident, dict) and ident.get("pid") != me["pid"] and worker.is_dead(ident) is False:
            others.add(ident["pid"])
    if others:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        progress("study.neighbours", workers=len(others), threads=threads or torch.get_num_threads(), cores=cores,
                 suggested=max(1, cores // (len(others) + 1)))






def _outage(exc: BaseException) -> StorageUnavailable | None:
    """The storage outage behind ``exc``, if any: past the retry budget Optuna's ``_run_trial`` fails in its
    except-branch and its ``finally`` (an ``UnboundLocalError``), hiding the outage in the exception's context."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, StorageUnavailable):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _failed_by_another(study: optuna.Study, number: int | None, progress: ProgressCallback) -> bool:
    """Whether this worker's trial ``number`` was finished by someone else (e.g. failed as stale); logged."""
    if number is None:
        return False
    t = study.get_trials(deepcopy=False)[number]
    if t.state == TrialState.RUNNING:
        return False
    progress("trial.taken", number=number, state=t.state.name, reason=t.user_attrs.get("fail_reason"))
    return True


@dataclass(frozen=True)
class Standing:
    """Where the study stands, from one read of its trials: what a worker decides its next step from."""

    complete: int
    waiting: int
    running: int  # RUNNING trials whose worker recorded itself (an orphan is not known to make progress)
    young_orphans: int  # RUNNING trials without a worker record, not yet old enough to be declared dead
    old_orphans: int = 0  # ... and those old enough (recover_stale_trials fails and re-queues them)

    @classmethod
    def of(cls, study: optuna.Study, trials: list[optuna.trial.FrozenTrial] | None = None) -> Standing:
        waiting = running = young = old = 0
        index = index_of(study, trials)  # COMPLETE counted as they finish; only unfinished trials looked at
        for t in index.unfinished.values():
            if t.state == TrialState.WAITING:
                waiting += 1
            elif t.state == TrialState.RUNNING:
                age = orphan_age(t)
                if age is None:
                    running += 1
                elif age < recovery.ORPHAN_SECONDS:
                    young += 1
                else:
                    old += 1
        return cls(index.complete, waiting, running, young, old)

    def work_left(self, target: int, twins: bool) -> bool:
        """Fewer COMPLETE trials than the target, or a queued twin or retry (pairs finish even past the target)."""
        return self.complete < target or (twins and self.waiting > 0)

    def others_cover(self, target: int) -> bool:
        """Nothing queued, and the COMPLETE trials plus those other (recorded) workers are running reach the
        target: a new trial would only overshoot it, so this worker stops (a trial of theirs that fails is
        retried by them or by the next run; waiting here instead could hang on a trial nobody will finish)."""
        return self.waiting == 0 and self.running > 0 and self.complete + self.running >= target
