"""Create, load, resume and run the Optuna study of a space.

- Storage: any Optuna storage URL; the default is ``sqlite:///studies/<name>.db``. RDB storages get a heartbeat so
  that trials of a worker that died on another machine are failed and retried.
- Resume: ``search.n_trials`` counts COMPLETE trials, so rerunning the same command finishes the rest. Trials left
  RUNNING by a process of this host that no longer exists (``kill -9``, a crash) are failed at once and their
  parameters enqueued again, instead of waiting for a heartbeat grace period.
- Space identity: a canonical hash of the space (budget fields left out) is stored in the study; a different space
  is refused unless ``allow_space_change``.
- KD twins: with ``search.kd_twins``, every COMPLETE trial's twin (same settings and seed, ``distill.kd``
  flipped) is enqueued unless it exists, and runs next; a resumed study completes missing twins first.
- Seeds: the sampler's seed is derived from ``search.seed`` and the number of trials already in the study, so a
  resumed study does not re-propose the first trials' parameters.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from autokd import __version__, worker
from autokd.data import load_dataset
from autokd.errors import AutokdError, Problem, StudyError, hint
from autokd.objective import OBJECTIVE_METRICS, Objective, prepare_inputs, view_pool
from autokd.progress import ProgressCallback, silent
from autokd.space import Space, dimensions, kd_twins_enabled, space_from_dict, space_hash, to_dict
from autokd.teacher import get_teacher, resolve_cache_dir

STUDIES_DIR = Path("studies")
ATTR_SPACE = "autokd.space"
ATTR_HASH = "autokd.space_hash"
ATTR_VERSION = "autokd.version"
CREATE_WAIT_SECONDS = 10.0  # how long a loader waits for a just-created study's autokd attributes
MAX_DUPLICATES_IN_A_ROW = 50  # proposals that repeat a trial before the space is taken as exhausted
ATTR_TEACHER = "autokd.teacher"  # the teacher's accuracies (clean train/val/test and over the view pool)


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Keep Optuna's experimental/deprecation warnings and per-trial log lines off the user's terminal."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"optuna\..*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"optuna\..*")
        level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        try:
            yield
        finally:
            optuna.logging.set_verbosity(level)


def default_storage(name: str) -> str:
    return f"sqlite:///{STUDIES_DIR / name}.db"


def artifacts_dir(storage_url: str, study_name: str) -> Path:
    """Where trial models go: beside a SQLite file (``studies/<study>/``), else ``studies/<study>/``."""
    if storage_url.startswith("sqlite:///"):
        db = Path(storage_url.removeprefix("sqlite:///"))
        return db.parent / study_name
    return STUDIES_DIR / study_name


def open_storage(url: str, *, create: bool = True) -> optuna.storages.BaseStorage:
    """Open an Optuna storage URL, turning every failure into one ``--storage`` line."""
    if "://" not in url:
        raise StudyError(Problem(f"{url!r} is not a storage URL (e.g. sqlite:///studies/x.db, "
                                 "postgresql://user@host/db)", file="--storage"))
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        if not create and not db.exists():
            raise StudyError(Problem(f"no study database at {db}", file="--storage"))
        if db.exists() and db.is_dir():
            raise StudyError(Problem(f"{db} is a directory, not a SQLite file", file="--storage"))
        if create:
            ensure_writable(db.parent, "--storage")
    try:
        with quiet_optuna():
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=30, grace_period=120,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
                engine_kwargs={"connect_args": {"timeout": 30}} if url.startswith("sqlite") else None)
    except Exception as exc:  # sqlalchemy/optuna raise many kinds for bad URLs, drivers and files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StudyError(Problem(f"cannot open {url}: {reason}", file="--storage")) from None


def ensure_writable(folder: Path, where: str) -> None:
    """Create ``folder`` if needed and prove a file can be written there; else one located line (``where``: the
    option or field that chose it). Run before any training, so nothing computed is lost to a bad path."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".autokd-write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise StudyError(Problem(f"cannot write to {folder}: {reason}", file=where)) from None


def derive_seed(seed: int, n_existing: int, worker_index: int = 0) -> int:
    """A sampler seed for a study that already holds ``n_existing`` trials (same seed, same history -> same seed).

    ``worker_index`` (``--worker-index``) is mixed in so that workers started together do not propose the same
    trials in lockstep; worker 0 keeps the single-worker seed."""
    tag = f"autokd:{seed}:{n_existing}" + (f":w{worker_index}" if worker_index else "")
    digest = hashlib.sha256(tag.encode()).digest()
    return int.from_bytes(digest[:4], "little")


def make_sampler(space: Space, *, n_existing: int = 0, worker_index: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler that ``search.sampler`` names, with its warm-up exposed and a resume-safe seed.

    TPE runs with ``constant_liar``: trials other workers are running count as bad results, so they are not
    proposed again while they run (a single worker is unaffected)."""
    s = space.search
    seed = derive_seed(s.seed, n_existing, worker_index)
    with quiet_optuna():
        if s.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.startup_trials, constant_liar=True)
        if s.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=s.population_size)
        if s.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
    raise StudyError(Problem(f"unknown sampler {s.sampler!r} (valid: tpe, nsga2, random)", "search.sampler"))


def metric_names(space: Space) -> list[str]:
    return ["val_accuracy"] + [OBJECTIVE_METRICS[o] for o in space.search.objectives]


def directions(space: Space) -> list[str]:
    return ["maximize"] + ["minimize"] * len(space.search.objectives)


def open_existing_study(space: Space, *, storage: str | None = None, study_name: str | None = None,
                        allow_space_change: bool = False) -> optuna.Study | None:
    """The study of ``space`` if it exists (checked against the space), else ``None``; creates nothing."""
    name = study_name or space.name
    url = storage or default_storage(name)
    store = open_storage(url)
    with quiet_optuna():
        if name in {s.study_name for s in optuna.study.get_all_study_summaries(store, include_best_trial=False)}:
            return _checked_load(space, store, url, name, allow_space_change, update=True)
    return None


def _checked_load(space: Space, store: Any, url: str, name: str, allow_space_change: bool, *,
                  update: bool) -> optuna.Study:
    study = optuna.load_study(study_name=name, storage=store)
    new_hash = space_hash(space)
    old_hash = study.user_attrs.get(ATTR_HASH)
    # Another worker may have created the study an instant ago and not yet written its attributes: wait for them.
    deadline = time.monotonic() + CREATE_WAIT_SECONDS
    while old_hash is None and not study.trials and time.monotonic() < deadline:
        time.sleep(0.2)
        old_hash = study.user_attrs.get(ATTR_HASH)
    if old_hash is None:
        raise StudyError(Problem(f"study {name!r} in {url} was not made by autokd; choose another name with --study",
                                 file="--study"))
    if [d.name.lower() for d in study.directions] != directions(space):
        raise StudyError(Problem(f"study {name!r} in {url} optimizes {len(study.directions)} objectives, this space "
                                 f"{len(directions(space))}; use --study NEW_NAME", file="search.objectives"))
    if old_hash != new_hash:
        if not allow_space_change:
            raise StudyError(Problem(
                f"study {name!r} in {url} was created from a different space (hash {old_hash}, now {new_hash}); "
                "start a new study with --study NEW_NAME or --storage URL, or continue this one with "
                "--allow-space-change", file=space.source or "space"))
        if update:
            history = list(study.user_attrs.get("autokd.space_history", [])) + [old_hash]
            study.set_user_attr("autokd.space_history", history)
            study.set_user_attr(ATTR_HASH, new_hash)
            study.set_user_attr(ATTR_SPACE, to_dict(space))
    return study


def create_or_load_study(space: Space, *, storage: str | None = None, study_name: str | None = None,
                         allow_space_change: bool = False) -> optuna.Study:
    """The study of ``space``: created on first use, loaded (and checked against the space) afterwards."""
    name = study_name or space.name
    url = storage or default_storage(name)
    store = open_storage(url)
    with quiet_optuna():
        if name in {s.study_name for s in optuna.study.get_all_study_summaries(store, include_best_trial=False)}:
            return _checked_load(space, store, url, name, allow_space_change, update=True)
        try:
            study = optuna.create_study(study_name=name, storage=store, directions=directions(space),
                                        sampler=make_sampler(space))
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it first: use theirs
            return _checked_load(space, store, url, name, allow_space_change, update=True)
        study.set_metric_names(metric_names(space))
        study.set_user_attr(ATTR_SPACE, to_dict(space))
        study.set_user_attr(ATTR_HASH, space_hash(space))
        study.set_user_attr(ATTR_VERSION, __version__)
        return study


def load_study(*, storage: str, study_name: str) -> tuple[optuna.Study, Space]:
    """Load an existing autokd study and the space it was made from (for reports)."""
    store = open_storage(storage, create=False)
    with quiet_optuna():
        names = [s.study_name for s in optuna.study.get_all_study_summaries(store, include_best_trial=False)]
        if study_name not in names:
            raise StudyError(Problem(f"no study {study_name!r} in {storage}{hint(study_name, names)}",
                                     file="--study"))
        study = optuna.load_study(study_name=study_name, storage=store)
    data = study.user_attrs.get(ATTR_SPACE)
    if data is None:
        raise StudyError(Problem(f"study {study_name!r} was not made by autokd", file="--study"))
    return study, space_from_dict(data)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_stale_trials(study: optuna.Study, *, progress: ProgressCallback = silent) -> list[int]:
    """Fail RUNNING trials whose worker process on this host is gone, and enqueue their parameters again."""
    host = socket.gethostname()
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "worker_id" in t.user_attrs:  # host, boot, PID namespace, pid and start time (autokd.worker)
            if worker.is_dead(t.user_attrs["worker_id"]) is not True:
                continue  # alive, or not ours to judge (the heartbeat will)
        else:  # trials of an older autokd: "host:pid" only
            whost, _, pid = t.user_attrs.get("worker", "").rpartition(":")
            if whost != host or not pid.isdigit() or _pid_alive(int(pid)) and int(pid) != os.getpid():
                continue
        with quiet_optuna():
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "worker process died (stale trial)")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            if t.params:
                study.enqueue_trial(t.params, user_attrs=_retry_attrs(t, "worker process died"))
        recovered.append(t.number)
        progress("study.stale", number=t.number)
    return recovered


KD_PARAM = "distill.kd"


def _params_key(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def twin_params(params: dict[str, Any]) -> dict[str, Any]:
    """The same parameters with ``distill.kd`` flipped."""
    if KD_PARAM not in params:
        raise ValueError(f"{KD_PARAM} is not a parameter of this trial")
    return {**params, KD_PARAM: not params[KD_PARAM]}


def enqueue_missing_twins(study: optuna.Study, *, progress: ProgressCallback = silent) -> list[int]:
    """Enqueue the KD twin of every COMPLETE trial that has none (in any state); returns their originals' numbers.

    A twin that FAILED is not enqueued again (a broken configuration would otherwise loop forever); trials that
    died with their worker are re-enqueued by :func:`recover_stale_trials` instead.
    """
    trials = study.get_trials(deepcopy=False)
    seen = {_params_key(t.params) for t in trials}
    seen |= {_params_key(t.system_attrs.get("fixed_params", {})) for t in trials if t.state == TrialState.WAITING}
    done = []
    for t in trials:
        if t.state != TrialState.COMPLETE or KD_PARAM not in t.params:
            continue
        twin = twin_params(t.params)
        if _params_key(twin) in seen:
            continue
        with quiet_optuna():
            study.enqueue_trial(twin, user_attrs={"twin_of": t.number})
        seen.add(_params_key(twin))
        done.append(t.number)
        progress("study.enqueue", number=t.number, reason="twin")
    return done


def count_states(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise AutokdError(Problem("CUDA is not available on this machine (use --device cpu or auto)",
                                  file="--device"))
    if device not in ("cpu", "cuda"):
        raise AutokdError(Problem(f"unknown device {device!r} (valid: auto, cpu, cuda)", file="--device"))
    return torch.device(device)


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
    stopped: str  # "done" | "timeout" | "max_failures" | "duplicates"
    teacher_source: str | None = None
    teacher_accuracy: float | None = None
    last_error: str | None = None
    states: dict[str, int] = field(default_factory=dict)


def run_search(space: Space, *, storage: str | None = None, study_name: str | None = None,
               timeout: float | None = None, device: str = "auto", cache_dir: str | Path | None = None,
               allow_space_change: bool = False, worker_index: int = 0,
               progress: ProgressCallback = silent) -> SearchResult:
    """Run (or resume) the study of ``space`` until it holds ``search.n_trials`` COMPLETE trials.

    ``worker_index`` distinguishes workers started on the same study (their samplers get different seeds)."""
    dev = resolve_device(device)
    name = study_name or space.name
    url = storage or default_storage(name)
    target, twins = space.search.n_trials, kd_twins_enabled(space)
    result = SearchResult(None, url, 0, target, 0, 0, "done")

    def prepare(study: optuna.Study) -> bool:
        """Recover stale trials, queue missing twins, report where the study stands; whether work remains."""
        recover_stale_trials(study, progress=progress)
        if twins:
            enqueue_missing_twins(study, progress=progress)
        result.study, result.states = study, count_states(study)
        result.complete = result.states.get("COMPLETE", 0)
        progress("study.resume", complete=result.complete, target=target, trials=len(study.trials), storage=url,
                 study=name)
        return _work_left(study, target, twins)

    # A finished study returns before any data or teacher is loaded (no teacher retrained for nothing).
    study = open_existing_study(space, storage=url, study_name=name, allow_space_change=allow_space_change)
    if study is not None and not prepare(study):
        return result
    # Unwritable places are found before anything is trained (a teacher or a trial would be lost otherwise).
    if kd_possible(space) and not space.distill.teacher.checkpoint:
        ensure_writable(resolve_cache_dir(cache_dir), "--cache-dir")
    ensure_writable(artifacts_dir(url, name) / "trials", "trial models")
    # Data and teacher problems surface before a new study is created, so a corrected space is not refused later.
    data = load_dataset(space.dataset).to(dev)
    pool = view_pool(space, data)  # before the teacher: with augmentation the teacher trains on it
    teacher = None
    if kd_possible(space):
        teacher = get_teacher(space, data, pool=pool, cache_dir=cache_dir, device=dev, progress=progress)
        result.teacher_source, result.teacher_accuracy = teacher.source, teacher.val_accuracy
    if study is None:
        study = create_or_load_study(space, storage=url, study_name=name, allow_space_change=allow_space_change)
        prepare(study)
    study.set_user_attr("autokd.dataset_sizes", data.sizes)

    study.sampler = make_sampler(space, n_existing=len(study.trials), worker_index=worker_index)
    inputs = prepare_inputs(space, data, teacher=teacher, pool=pool, progress=progress)
    if teacher is not None:
        study.set_user_attr(ATTR_TEACHER, teacher.summary())
    objective = Objective(space, inputs, device=dev, artifacts=artifacts_dir(url, name), progress=progress)
    deadline = None if timeout is None else time.monotonic() + timeout
    duplicates_in_a_row = 0
    with quiet_optuna():
        while _work_left(study, target, twins):
            if deadline is not None and time.monotonic() >= deadline:
                result.stopped = "timeout"
                break
            if result.failed_this_run >= space.search.max_failures:
                result.stopped = "max_failures"
                break
            if duplicates_in_a_row >= MAX_DUPLICATES_IN_A_ROW:
                result.stopped = "duplicates"
                break
            finished: list[optuna.trial.FrozenTrial] = []
            try:
                study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False,
                               callbacks=[lambda _study, trial: finished.append(trial)])
            except KeyboardInterrupt:
                _requeue_interrupted(study, objective.current)
                raise
            if not finished:  # nothing ran (no trial was started)
                continue
            last = finished[-1]  # this worker's own trial, never another worker's latest
            if last.state == TrialState.PRUNED and "duplicate_of" in last.user_attrs:
                duplicates_in_a_row += 1  # skipped, not trained: does not count as a run
                continue
            duplicates_in_a_row = 0
            result.ran_this_run += 1
            if last.state == TrialState.FAIL:
                result.failed_this_run += 1
                result.last_error = last.user_attrs.get("fail_reason")
            if twins and last.state == TrialState.COMPLETE:
                enqueue_missing_twins(study, progress=progress)
    result.states = count_states(study)
    result.complete = result.states.get("COMPLETE", 0)
    return result


def _work_left(study: optuna.Study, target: int, twins: bool) -> bool:
    """Fewer COMPLETE trials than the target, or a queued twin (pairs finish even past the target)."""
    states = count_states(study)
    return states.get("COMPLETE", 0) < target or (twins and states.get("WAITING", 0) > 0)


def _requeue_interrupted(study: optuna.Study, number: int | None) -> None:
    """After Ctrl-C or SIGTERM, put this worker's interrupted trial ``number`` back in the queue so a rerun starts
    with it (another worker's trials are never touched).

    Optuna has already marked the interrupted trial FAIL (finished trials cannot be changed), so the reason goes on
    the re-queued trial.
    """
    trials = study.get_trials(deepcopy=False)
    if number is None or number >= len(trials):
        return
    t = trials[number]
    if t.state == TrialState.RUNNING:
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    if t.state in (TrialState.FAIL, TrialState.RUNNING) and t.params:
        study.enqueue_trial(t.params, user_attrs=_retry_attrs(t, "interrupted (Ctrl-C)"))


def _retry_attrs(t: optuna.trial.FrozenTrial, reason: str) -> dict[str, Any]:
    """User attributes of a retry: what it retries and why, and the twin link of the original, if any."""
    attrs = {"retry_of": t.number, "retry_reason": reason}
    if "twin_of" in t.user_attrs:
        attrs["twin_of"] = t.user_attrs["twin_of"]
    return attrs


def trial_records(study: optuna.Study) -> list[dict[str, Any]]:
    """Plain data of every trial (the input of the report functions)."""
    records = []
    for t in study.get_trials(deepcopy=False):
        records.append({
            "number": t.number,
            "state": t.state.name,
            "values": list(t.values) if t.values is not None else None,
            "params": dict(t.params),
            "metrics": dict(t.user_attrs.get("metrics", {})),
            "settings": dict(t.user_attrs.get("settings", {})),
            "seconds": t.user_attrs.get("seconds"),
            "fail_reason": t.user_attrs.get("fail_reason"),
            "twin_of": t.user_attrs.get("twin_of"),
            "retry_of": t.user_attrs.get("retry_of"),
            "duplicate_of": t.user_attrs.get("duplicate_of"),
            "teacher": t.user_attrs.get("teacher"),
        })
    return records


def kd_searched(space: Space) -> bool:
    return any(d.path == KD_PARAM for d in dimensions(space))


def build_report(study: optuna.Study, space: Space, *, include_all: bool = False,
                 margin: float = 1.0) -> dict[str, Any]:
    """The report data of a study (Pareto front, and the KD section when distill.kd is searched).

    ``margin`` is the orthogonality margin in accuracy points (``--margin``)."""
    from autokd.report import study_report

    return study_report(trial_records(study), directions=[d.name for d in study.directions], study=study.study_name,
                        metric_names=metric_names(space), include_all=include_all,
                        dataset_sizes=study.user_attrs.get("autokd.dataset_sizes"), with_kd=kd_searched(space),
                        teacher=study.user_attrs.get(ATTR_TEACHER), margin=margin)
