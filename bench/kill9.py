"""kill -9 of a search worker at random moments of one search; then the search is run to its end and checked.

    python bench/kill9.py [--kills 10] [--seed 0] [--trials 8] [--teacher-epochs 16] [--keep DIR] [--smoke]

A small KD space (digits at 8 px, MobileNetV2 students trained 2 + 2 epochs, ``distill.kd`` searched so every
trial has its KD twin, augmentation on so the teacher's logits over the view pool are cached too, a ResNet teacher
trained ``--teacher-epochs`` epochs) is searched by

    python -m autokd search SPACE --storage sqlite:///.../kill9.db --cache-dir .../teachers --device cpu
           --threads 1 --progress-json

which is started again and again and killed with SIGKILL each time (``--progress-json`` is what each worker of
``--workers N`` runs: its JSON progress events say when to kill). Each kill has a seeded random target:

* ``teacher``: inside a random epoch of the teacher's training (the first kills, while it is not cached);
* ``teacher-save``: just after the teacher's last epoch (its logits, accuracy and atomic save);
* ``trial``: inside a random epoch of the first or second trial the worker runs;
* ``save``: just after that trial's last epoch (evaluation, measurement, model upload, the tell);
* ``random``: a random moment after the process started (``0.5 + uniform(0, T)``, T its start-up and 3 trials);
* ``ask`` (only with ``--ask-kills N``): the moment Optuna has made a trial RUNNING and autokd has not yet recorded
  its worker (the SQLite file is polled for it): a trial killed there is never recovered (see the report of this
  bench); off by default.

Kills are placed from the worker's events (the epoch, then a random part of an epoch's usual length), so that
load on the machine does not move them out of their phase; the moments are seeded (``--seed``).

Where each kill landed is read from the last event the worker wrote before it died (and, from the study, which
trial it left RUNNING). Between kills every COMPLETE trial is recorded (number, parameters, values, metrics,
``model_artifact`` and the sha256 of the artifact's file) and every trial COMPLETE before must be COMPLETE and
unchanged. After the kills the command is run to its end (exit 0) and checked: COMPLETE >= n_trials, nothing
RUNNING, every COMPLETE trial's model loads (``autokd.study.load_trial_model``, weights only), every KD pair is
whole (each COMPLETE trial's twin is COMPLETE), the teacher and its view-pool logits load from the cache (the
search's own ``get_teacher`` / ``prepare_inputs`` calls, nothing retrained), no ``*.tmp`` file is left in the cache
or the artifact folder; ``*.corrupt`` / ``*.stale`` cache files, left lock files and upload temp folders (the
workers' TMPDIR is a folder of the run) are reported.

Last line: ``kills=<n> lost=<n> changed=<n> running_left=<n> teacher_cache=<loads|...> complete=<n>`` and more
counts (``tmp_left``, ``broken_pairs``, ``retries``, ``models_load``). ``run()`` is what tests/study/test_kill9.py
calls.

``--smoke`` (tests/test_benches.py): 1 kill (aimed at the start of the teacher's training: ``--seed`` 309 unless
given), 2 trials, a teacher of 2 epochs, 200 training images: the code paths only, in seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

NAME = "kill9"
TRIAL_EPOCHS = 4  # train.epochs + compress.finetune_epochs of the space below
RUN_TIMEOUT = 300.0  # seconds: a worker that reaches no kill target by then is a failure of the bench
# --smoke's seed: its one kill is aimed at the very start of the teacher's training (u = 0.06, v = 0.00), which a
# teacher of 2 epochs on 200 images does not outrun (seed 0 aims 57 ms into its second epoch: past its save).
SMOKE_SEED = 309


def kill_space(*, n_trials: int = 8, teacher_epochs: int = 16, limit: int | None = None) -> dict[str, Any]:
    return {
        "version": 1,
        "name": NAME,
        "dataset": {"name": "digits", "image_size": 8, **({"limit": limit} if limit else {})},
        "model": {"family": "mobilenetv2", "width_mult": {"choices": [0.25, 0.5, 0.75, 1.0]}},
        "distill": {"kd": {"choices": [True, False]},
                    "teacher": {"family": "resnet", "width": 16, "epochs": teacher_epochs}},
        "train": {"epochs": 2, "augment": True, "augment_views": 2},
        "compress": {"prune_ratio": {"choices": [0.0, 0.25, 0.5]}, "finetune_epochs": 2},
        "search": {"n_trials": n_trials, "sampler": "random", "kd_twins": True},
    }


def kill_plan(kills: int, rng: random.Random, ask_kills: int = 0) -> list[tuple[str, float, float, int]]:
    """(target, u, v, k) per kill: the teacher first (while it is not cached), then a shuffled mix of the other
    targets. u in [0, 1) picks the epoch (teacher, trial), v in [0, 1) the delay after it; ``trial`` and ``save``
    aim at the k-th trial (1 or 2) the worker runs, so that a retried trial (queued first) is not always the one
    killed again. ``ask_kills`` of the kills (not in the head) are ``ask`` targets."""
    head = ["teacher", "teacher", "teacher-save"] if kills >= 5 else ["teacher"]
    head = head[:kills]
    cycle = ["trial", "save", "random"]
    asks = min(ask_kills, kills - len(head))
    rest = [cycle[i % 3] for i in range(kills - len(head) - asks)] + ["ask"] * asks
    rng.shuffle(rest)
    return [(kind, rng.random(), rng.random(), rng.choice((1, 2))) for kind in head + rest]


class Estimates:
    """How long things took so far (seconds), to place the next kill inside them; defaults before any was seen."""

    def __init__(self) -> None:
        self.startup = 5.0  # process start to its first event
        self.teacher_epoch = 0.15  # between two teacher epochs
        self.teacher_save = 0.06  # last teacher epoch to teacher.done (logits, accuracy, atomic save)
        self.epoch = 0.3  # between two epochs of a trial
        self.trial = 2.0  # trial.start to trial.done
        self.trial_save = 0.15  # last epoch of a trial to trial.done (evaluation, measurement, upload)

    def learn(self, events: list[tuple[float, dict]], t0: float) -> None:
        if events:
            self.startup = events[0][0] - t0
        start = last = None
        for t, e in events:
            name = e["event"]
            if name in ("teacher.start", "trial.start"):
                start, last = t, None
            elif name == "teacher.epoch":
                if last is not None:
                    self.teacher_epoch = t - last
                last = t
            elif name == "teacher.done" and last is not None and e.get("source") == "trained":
                self.teacher_save = max(0.02, t - last)
            elif name == "trial.epoch":
                if last is not None:
                    self.epoch = t - last
                last = t
            elif name == "trial.done" and start is not None and last is not None:
                self.trial, self.trial_save = t - start, max(0.02, t - last)


def params_key(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def spared(url: str) -> frozenset:
    """Configurations whose next death would be their last allowed one in a row.

    The runner queues a dead worker's configuration again at most ``MAX_RETRIES`` times in a row (it may be what
    kills the worker, e.g. out of memory) and then gives it up; a KD twin given up leaves its pair broken for good
    (by design, see the report of this bench). Seeded random kills that happen to hit one configuration that often
    would test that rule instead of kill -9 safety, so such a configuration is not killed again."""
    import optuna
    from optuna.trial import TrialState

    from autokd.study import quiet_optuna
    from autokd.study.recovery import MAX_RETRIES

    if not Path(url.removeprefix("sqlite:///")).exists():  # opening it would create it
        return frozenset()
    storage = optuna.storages.RDBStorage(url)
    try:
        with quiet_optuna():
            if NAME not in optuna.get_all_study_names(storage):
                return frozenset()
            trials = optuna.load_study(study_name=NAME, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.remove_session()
        storage.engine.dispose()
    out = set()
    for t in trials:
        deaths = int(t.user_attrs.get("retry_count", 0))
        if t.state == TrialState.RUNNING:  # left by the last kill: its retry will carry one more death
            deaths += 1
            params = t.params
        elif t.state == TrialState.WAITING:
            params = t.system_attrs.get("fixed_params", {})
        else:
            continue
        if deaths >= MAX_RETRIES and params:
            out.add(params_key(params))
    return frozenset(out)


UNCLAIMED = ("SELECT t.number FROM trials t WHERE t.state = 'RUNNING' AND t.trial_id NOT IN "
             "(SELECT trial_id FROM trial_user_attributes WHERE key = 'worker_id')")


def unclaimed_running(db: Path) -> set[int]:
    """The RUNNING trials whose worker_id is not recorded (yet) (``ask`` target)."""
    import sqlite3

    if not db.exists():
        return set()
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05) as con:
            return {row[0] for row in con.execute(UNCLAIMED)}
    except sqlite3.Error:
        return set()


def _last_epoch(e: dict) -> bool:
    return e["event"] == "trial.epoch" and e["phase"] == "finetune" and e["epoch"] == e["epochs"]


def kill_at(kind: str, u: float, v: float, k: int, events: list[tuple[float, dict]], t0: float, est: Estimates,
            teacher_epochs: int, trial_epochs: int, spare: frozenset = frozenset()) -> tuple[float | None, str]:
    """When to kill (monotonic time; None: not known yet) for target ``kind``, and the target in force (a teacher
    target falls back to ``trial`` once the teacher came from the cache).

    Placed from the worker's events, so that load on the machine does not move a kill out of its phase:
    ``teacher``: half an epoch at most after the start of teacher epoch 1 + floor(u * epochs) (never the save);
    ``teacher-save``: v * 1.5 * the save's usual time after the last teacher epoch; ``trial``: half an epoch at
    most after the start of epoch 1 + floor(u * epochs) of the k-th trial of this run (train and fine-tune epochs
    counted together); ``save``: v * 1.3 * the usual evaluation-and-upload time after the k-th trial's last epoch
    (some land after trial.done, before the tell); ``random``: 0.5 + v * (start-up + 3 trials) after the start.

    ``spare``: configurations (:func:`params_key`) not to kill again (see :func:`spared`): trials of them are not
    counted, and a ``random`` target becomes ``trial`` (a random moment could land in one of them)."""
    if kind in ("teacher", "teacher-save") and any(
            (e["event"] == "teacher.done" and e.get("source") == "cache") or e["event"] == "trial.start"
            for _, e in events):
        kind = "trial"  # nothing to train: the teacher is cached
    if kind == "random" and spare:
        kind = "trial"
    if kind == "random":
        return t0 + 0.5 + v * (est.startup + 3 * est.trial), kind
    if kind == "teacher":
        points = [t for t, e in events if e["event"] == "teacher.start"
                  or (e["event"] == "teacher.epoch" and e["epoch"] < e["epochs"])]
        j = int(u * teacher_epochs)
        return (points[j] + v * 0.5 * est.teacher_epoch if len(points) > j else None), kind
    if kind == "teacher-save":
        ends = [t for t, e in events if e["event"] == "teacher.epoch" and e["epoch"] == e["epochs"]]
        return (ends[0] + v * 1.5 * est.teacher_save if ends else None), kind
    trials, points, spared_now = 0, [], False
    for t, e in events:
        if e["event"] == "trial.start":
            spared_now = params_key(e["params"]) in spare
            trials += not spared_now
        if trials != k or spared_now:
            continue
        if kind == "save" and _last_epoch(e):
            return t + v * 1.3 * est.trial_save, kind
        if kind == "trial" and (e["event"] == "trial.start" or (e["event"] == "trial.epoch" and not _last_epoch(e))):
            points.append(t)
    j = int(u * trial_epochs)
    if kind == "trial" and len(points) > j:
        return points[j] + v * 0.5 * est.epoch, kind
    return None, kind


def landed(events: list[dict]) -> str:
    """Where a kill landed, from the last event the worker wrote before it died."""
    if not events:
        return "startup"  # imports, data, opening the study
    last = events[-1]
    name = last["event"]
    if name == "teacher.start" or (name == "teacher.epoch" and last["epoch"] < last["epochs"]):
        return "teacher"
    if name == "teacher.epoch":
        return "teacher-save"
    if name == "teacher.views":
        return "teacher-views"
    if name in ("trial.start", "trial.phase") or (name == "trial.epoch" and not (
            last["phase"] == "finetune" and last["epoch"] == last["epochs"])):
        return "mid-trial"
    if name == "trial.epoch":
        return "trial-save"
    if name == "trial.done":
        return "after-upload"
    if name == "teacher.wait":
        return "teacher-wait"
    return "between"  # after the teacher, around the study and its queue, between trials


def _file_sha(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def snapshot(url: str, artifacts: Path) -> tuple[dict[int, dict], Counter, dict[int, Any]]:
    """(COMPLETE trials: number -> what must never change, count of states, RUNNING trials: number -> worker pid)."""
    import optuna
    from optuna.trial import TrialState

    from autokd.study import quiet_optuna

    if not Path(url.removeprefix("sqlite:///")).exists():  # opening it would create it
        return {}, Counter(), {}
    storage = optuna.storages.RDBStorage(url)
    try:
        with quiet_optuna():
            if NAME not in optuna.get_all_study_names(storage):
                return {}, Counter(), {}
            trials = optuna.load_study(study_name=NAME, storage=storage).get_trials()
    finally:
        storage.remove_session()
        storage.engine.dispose()
    complete = {}
    for t in trials:
        if t.state != TrialState.COMPLETE:
            continue
        art = t.user_attrs.get("model_artifact")
        complete[t.number] = {"params": t.params, "values": t.values, "metrics": t.user_attrs.get("metrics"),
                              "model_artifact": art,
                              "artifact_sha256": _file_sha(artifacts / art) if art else None}
    running = {t.number: (t.user_attrs.get("worker_id") or {}).get("pid") for t in trials
               if t.state == TrialState.RUNNING}
    return complete, Counter(t.state.name for t in trials), running


def compare(before: dict[int, dict], now: dict[int, dict]) -> tuple[list[int], list[int]]:
    """(lost, changed): trials COMPLETE before that are no longer COMPLETE, or whose record differs."""
    lost = [n for n in before if n not in now]
    changed = [n for n in before if n in now and now[n] != before[n]]
    return lost, changed


def _reader(proc: subprocess.Popen, events: list[tuple[float, dict]], raw: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            event = json.loads(line)
            if not isinstance(event, dict) or "event" not in event:
                raise ValueError
        except ValueError:
            raw.append(line.rstrip("\n"))
            continue
        events.append((time.monotonic(), event))


def run(kills: int = 10, seed: int = 0, workdir: str | Path | None = None, *, n_trials: int = 8,
        teacher_epochs: int = 16, ask_kills: int = 0, limit: int | None = None, say: Any = print) -> dict[str, Any]:
    """Kill a search ``kills`` times at seeded random moments, run it to its end, check it; returns the counts.

    ``workdir``: where the space, study, cache and logs go (a temporary folder, removed afterwards, if None);
    ``limit``: the space's ``dataset.limit`` (training images; None: all of them)."""
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="autokd-kill9-")) if own else Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(kills, seed, work, n_trials=n_trials, teacher_epochs=teacher_epochs, ask_kills=ask_kills,
                    limit=limit, say=say)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def _run(kills: int, seed: int, work: Path, *, n_trials: int, teacher_epochs: int, ask_kills: int,
         limit: int | None = None, say: Any) -> dict[str, Any]:
    from autokd.study import default_artifacts_dir

    started = time.monotonic()
    rng = random.Random(seed)
    space_path = work / "space.yaml"
    space_path.write_text(yaml.safe_dump(kill_space(n_trials=n_trials, teacher_epochs=teacher_epochs, limit=limit),
                                         sort_keys=False))
    db = work / f"{NAME}.db"
    url = f"sqlite:///{db}"
    cache = work / "teachers"
    artifacts = default_artifacts_dir(url, NAME)
    tmpdir = work / "tmp"  # the workers' TMPDIR: upload folders a kill leaves behind are counted
    tmpdir.mkdir(exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "autokd", "search", str(space_path), "--storage", url, "--cache-dir", str(cache),
           "--device", "cpu", "--threads", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "COLUMNS": "160", "TMPDIR": str(tmpdir),
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("AUTOKD_CACHE_DIR", None)

    est = Estimates()
    plan = kill_plan(kills, rng, ask_kills)
    record: dict[int, dict] = {}  # every trial ever seen COMPLETE, as first seen
    lost: set[int] = set()
    changed: set[int] = set()
    landings: list[dict] = []
    for i, (kind, u, v, k) in enumerate(plan):
        spare = spared(url)
        unclaimed_before = unclaimed_running(db) if kind == "ask" else set()
        events: list[tuple[float, dict]] = []
        raw: list[str] = []
        with open(logs / f"run{i}.err", "w") as err:
            t0 = time.monotonic()
            proc = subprocess.Popen([*cmd, "--progress-json"], stdout=subprocess.PIPE, stderr=err, text=True,
                                    env=env, cwd=work)
            reader = threading.Thread(target=_reader, args=(proc, events, raw), daemon=True)
            reader.start()
            target, when = kind, None
            try:
                while proc.poll() is None:
                    if kind == "ask" and unclaimed_running(db) - unclaimed_before:
                        when = time.monotonic()
                    elif when is None and kind != "ask":
                        when, target = kill_at(kind, u, v, k, list(events), t0, est, teacher_epochs, TRIAL_EPOCHS,
                                               spare)
                    if when is not None and time.monotonic() >= when:
                        proc.send_signal(signal.SIGKILL)
                        break
                    if time.monotonic() - t0 > RUN_TIMEOUT:
                        proc.kill()
                        raise RuntimeError(f"run {i}: no kill target ({kind}) reached in {RUN_TIMEOUT:.0f}s; see "
                                           f"{logs / f'run{i}.err'}")
                    time.sleep(0.001 if kind == "ask" else 0.005)
                at = time.monotonic() - t0
                proc.wait()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            reader.join(timeout=10)
        evs = [e for _, e in events]
        (logs / f"run{i}.events").write_text("\n".join(json.dumps(e, default=str) for e in evs) + "\n")
        killed = proc.returncode == -signal.SIGKILL
        est.learn(events, t0)
        complete, states, running = snapshot(url, artifacts)
        lo, ch = compare(record, complete)
        lost.update(lo)
        changed.update(ch)
        for n, rec in complete.items():
            record.setdefault(n, rec)
        mine = sorted(n for n, pid in running.items() if pid == proc.pid)
        unclaimed = sorted(n for n, pid in running.items() if pid is None)
        where = landed(evs) if killed else f"exited {proc.returncode}"
        if where == "between" and (mine or unclaimed):
            where = "trial-setup"  # a trial is RUNNING but did not start training (sampling, recording its worker)
        db_state = ("no study yet" if not states else
                    f"trial {', '.join(map(str, mine))} RUNNING" if mine else
                    f"trial {', '.join(map(str, unclaimed))} RUNNING, no worker_id" if unclaimed else
                    "study, no trial of it RUNNING")
        if target in ("trial", "save"):
            target += f"#{k}"
        if spare:
            target += "(spare)"
        landings.append({"kill": i + 1, "target": target, "at": at, "landed": where, "db": db_state,
                         "killed": killed, "complete": len(complete)})
        say(f"kill {i + 1:2}/{len(plan)}: target {target:<14} at {at:6.2f}s -> {where:<13} db: {db_state:<30} "
            f"COMPLETE {len(complete):2}  lost {len(lo)} changed {len(ch)}")
        if not killed:
            say(f"  the worker ended by itself (exit {proc.returncode}) before its kill; stderr: {logs}/run{i}.err")
            break

    # The same command, run to its end (the plain CLI, with its rich progress and report).
    t0 = time.monotonic()
    with open(logs / "final.out", "w") as out:
        final = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work, timeout=900)
    say(f"final run: exit {final.returncode} in {time.monotonic() - t0:.1f}s (output: {logs / 'final.out'})")
    complete, states, running = snapshot(url, artifacts)
    lo, ch = compare(record, complete)
    lost.update(lo)
    changed.update(ch)
    checks = _final_checks(url, space_path, cache)
    files = _leftovers(work, cache, artifacts, tmpdir)
    phases = Counter(x["landed"] for x in landings if x["killed"])
    result = {
        "kills": sum(x["killed"] for x in landings),
        "kills_during_teacher": phases["teacher"] + phases["teacher-save"],
        "kills_mid_trial": sum(1 for x in landings if x["killed"] and "RUNNING" in x["db"]),
        "kills_during_save": phases["trial-save"] + phases["after-upload"],
        "phases": dict(phases),
        "landings": landings,
        "final_exit": final.returncode,
        "complete": len(complete),
        "n_trials": n_trials,
        "states": dict(states),
        "lost": len(lost),
        "changed": len(changed),
        "lost_trials": sorted(lost),
        "changed_trials": sorted(changed),
        "running": len(running),
        **checks,
        **files,
        "seconds": time.monotonic() - started,
        "workdir": str(work),
    }
    return result


def _final_checks(url: str, space_path: Path, cache: Path) -> dict[str, Any]:
    """Models, KD pairs, retries, and the teacher cache of the finished study."""
    from optuna.trial import TrialState

    from autokd.data import load_dataset
    from autokd.objective import prepare_inputs, view_pool
    from autokd.progress import EventLog
    from autokd.space import load_space
    from autokd.study import load_study, load_trial_model, quiet_optuna, twin_params
    from autokd.teacher import get_teacher

    with quiet_optuna():
        study, _ = load_study(storage=url, study_name=NAME)
        trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    keys = Counter(tuple(sorted(t.params.items())) for t in complete)
    broken = [t.number for t in complete if keys[tuple(sorted(twin_params(t.params).items()))] == 0]
    twice = [k for k, n in keys.items() if n > 1]
    unreadable = []
    for t in complete:
        try:
            load_trial_model(t, study=study)
        except Exception as exc:  # any failure to read a model back is what this counts
            unreadable.append((t.number, f"{type(exc).__name__}: {exc}"))
    # The teacher exactly as the search gets it (runner.run_search): same space, data, view pool and cache.
    space = load_space(space_path)
    data = load_dataset(space.dataset)
    pool = view_pool(space, data)
    log = EventLog()
    teacher = get_teacher(space, data, pool=pool, cache_dir=cache, device="cpu", progress=log)
    prepare_inputs(space, data, teacher=teacher, pool=pool, progress=log)
    if teacher.source != "cache":
        how = f"not cached ({teacher.source})"
    elif "teacher.views" in log.names():
        how = "views-recomputed"
    else:
        how = "loads"
    kd_hashes = {t.user_attrs.get("teacher_hash") for t in complete if t.params.get("distill.kd")}
    # Artifact files: of COMPLETE trials or of the study (e.g. a shared teacher), of other trials (a worker killed
    # after its upload and before the tell: the model stays recorded on the FAIL trial), or of nothing at all.
    where = study.user_attrs.get("autokd.artifacts")
    folder = Path(where) if where else None
    files = ({f.name for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")}
             if folder is not None and folder.is_dir() else set())
    kept = {t.user_attrs.get("model_artifact") for t in complete}
    kept |= {k.removeprefix("artifacts:") for k in study._storage.get_study_system_attrs(study._study_id)
             if k.startswith("artifacts:")}
    recorded = {k.removeprefix("artifacts:") for t in trials for k in t.system_attrs if k.startswith("artifacts:")}
    return {
        "artifacts_of_unfinished_trials": len((files & recorded) - kept),
        "unrecorded_artifacts": sorted(files - recorded - kept),
        "retries": sum(1 for t in trials if "retry_of" in t.user_attrs),
        "broken_pairs": len(broken),
        "broken_pair_trials": broken,
        "trained_twice": len(twice),
        "models_load": len(complete) - len(unreadable),
        "unreadable_models": unreadable,
        "teacher_cache": how,
        "teacher_set_aside": [d["reason"] for d in log.of("teacher.corrupt")],
        "kd_teacher_hashes": sorted(h for h in kd_hashes if h),
        "teacher_hash": teacher.weights_hash,
        "failed": sum(1 for t in trials if t.state == TrialState.FAIL),
    }


def _leftovers(work: Path, cache: Path, artifacts: Path, tmpdir: Path) -> dict[str, list[str]]:
    def rel(paths: Any) -> list[str]:
        return sorted(str(p.relative_to(work)) for p in paths)

    places = [p for p in (cache, artifacts) if p.exists()]
    return {
        "tmp_left": rel(p for d in places for p in d.rglob("*.tmp")),
        "corrupt": rel(p for d in places for p in d.rglob("*.corrupt")),
        "stale": rel(p for d in places for p in d.rglob("*.stale")),
        "locks_left": rel(cache.rglob("*.lock")) if cache.exists() else [],
        "upload_dirs_left": rel(tmpdir.glob("autokd-upload-*")),
    }


def summary_line(r: dict[str, Any]) -> str:
    return (f"kills={r['kills']} lost={r['lost']} changed={r['changed']} running_left={r['running']} "
            f"teacher_cache={r['teacher_cache']} complete={r['complete']} tmp_left={len(r['tmp_left'])} "
            f"broken_pairs={r['broken_pairs']} retries={r['retries']} models_load={r['models_load']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=None,
                    help=f"seed of the kill targets and moments [default 0; {SMOKE_SEED} with --smoke]")
    ap.add_argument("--trials", type=int, default=8, help="search.n_trials (KD twins included)")
    ap.add_argument("--teacher-epochs", type=int, default=16)
    ap.add_argument("--ask-kills", type=int, default=0,
                    help="kills aimed at a trial RUNNING before its worker is recorded (a known gap; off)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the study, cache and logs in this folder")
    ap.add_argument("--smoke", action="store_true",
                    help="1 kill, 2 trials, a teacher of 2 epochs, 200 images: checks that the bench runs")
    args = ap.parse_args(argv)
    limit = None
    if args.smoke:
        args.kills, args.trials, args.teacher_epochs, args.ask_kills, limit = 1, 2, 2, 0, 200
    if args.seed is None:
        args.seed = SMOKE_SEED if args.smoke else 0
    if args.keep is not None and args.keep.exists():
        shutil.rmtree(args.keep)
    print(f"{args.kills} kills (seed {args.seed}) of a search of {args.trials} trials with KD twins; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    r = run(args.kills, args.seed, args.keep, n_trials=args.trials, teacher_epochs=args.teacher_epochs,
            ask_kills=args.ask_kills, limit=limit, say=lambda line: print(line, flush=True))
    print(f"phases {r['phases']}; states {r['states']}; retries {r['retries']}; failed {r['failed']}; "
          f"models load {r['models_load']}/{r['complete']}; KD trials' teacher hashes {r['kd_teacher_hashes']} "
          f"(cached teacher {r['teacher_hash']}); models of trials that did not complete kept: "
          f"{r['artifacts_of_unfinished_trials']}; final exit {r['final_exit']}")
    for key in ("lost_trials", "changed_trials", "broken_pair_trials", "unreadable_models", "teacher_set_aside",
                "tmp_left", "corrupt", "stale", "locks_left", "upload_dirs_left", "unrecorded_artifacts"):
        if r[key]:
            print(f"{key}: {r[key]}")
    print(f"{r['seconds']:.0f}s; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(summary_line(r))
    ok = (r["lost"] == r["changed"] == r["running"] == 0 and r["teacher_cache"] == "loads"
          and r["complete"] >= r["n_trials"] and r["final_exit"] == 0 and not r["tmp_left"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
