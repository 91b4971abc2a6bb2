"""``autokd search SPACE --workers N``: N worker processes on this machine, one progress view, one report.

Processes, not threads: a trial holds the GIL in Python code between torch kernels, and a worker that crashes must
not take the others with it. Each worker is ``autokd search ... --worker-index i --threads T --progress-json`` in a
session of its own (so a Ctrl-C at the terminal reaches this process only, and is passed on once to each worker:
a second SIGINT could interrupt a worker while it re-queues its trial). The CPU cores are split between the
workers (``--threads``, default cores // N): N workers each with torch's default of all cores were measured ~10x
slower per trial than one on a 2-core machine. The workers' JSON progress events drive one rich view; when all
have ended, the study's report is printed once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from autokd.cli import terminated
from autokd.cli.search import RichProgress, SearchOptions, finish, make_bars

INTERRUPTED, TERMINATED, EXIT_TEMPFAIL = 130, 143, 75


@dataclass
class Worker:
    index: int
    process: subprocess.Popen
    view: RichProgress
    result: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)


def split_threads(workers: int, threads: int | None, cores: int | None = None) -> int:
    """Threads per worker: ``threads`` if given, else the cores shared evenly (at least one each)."""
    if threads is not None:
        return threads
    if cores is None:  # the cores this process may use (taskset, container CPU sets), not the machine's
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // workers)


def worker_command(options: SearchOptions, index: int, threads: int) -> list[str]:
    """The command line of worker ``index``: this command's options, its index and threads, JSON progress."""
    mine = dataclasses.replace(options, worker_index=index, threads=threads)
    return [sys.executable, "-m", "autokd", "search", *mine.search_args(), "--progress-json"]


def _pump(w: Worker, lock: threading.Lock) -> None:
    """Read one worker's JSON events into its view (stdout); anything else it prints is shown as is."""
    assert w.process.stdout is not None
    for line in w.process.stdout:
        line = line.rstrip("\n")
        try:
            event = json.loads(line)
            name = event.pop("event")
        except (ValueError, KeyError, AttributeError, TypeError):
            with lock:
                w.view.log(line)
            continue
        with lock:
            if name == "search.result":
                w.result = event
            else:
                w.view(name, **event)


def _collect_errors(w: Worker) -> None:
    assert w.process.stderr is not None
    for line in w.process.stderr:
        if line.strip():
            w.errors.append(line.rstrip("\n"))


def run_workers(space: Any, options: SearchOptions, n: int) -> int:
    """Start ``n`` workers on the study of ``space``, show their progress, print one report; the exit code."""
    from autokd.study import default_storage, open_storage

    console = Console()
    # Open (and on first use create) the storage here, once: a bad URL is one line, not one per worker, and the
    # workers do not all race to create Optuna's tables.
    open_storage(options.storage or default_storage(options.study or space.name))
    threads = split_threads(n, options.threads)
    if options.worker_index:
        console.print(f"[yellow]--worker-index {options.worker_index} is ignored with --workers: the workers are "
                      f"0..{n - 1}.[/]")
    bars, shared, lock = make_bars(console), {}, threading.Lock()
    console.print(f"Starting {n} workers on this machine, {threads} CPU thread(s) each.")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    workers: list[Worker] = []
    pumps: list[threading.Thread] = []
    with bars:
        try:
            for i in range(n):
                proc = subprocess.Popen(worker_command(options, i, threads), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
                w = Worker(i, proc, RichProgress(console, bars=bars, prefix=f"w{i} ", shared=shared))
                workers.append(w)
                for target in (_pump, _collect_errors):
                    t = threading.Thread(target=target, args=(w, lock) if target is _pump else (w,), daemon=True)
                    t.start()
                    pumps.append(t)
            _wait(workers)
        except KeyboardInterrupt:
            _stop(workers, signal.SIGTERM if terminated.is_set() else signal.SIGINT)
            raise
        for t in pumps:
            t.join(timeout=5)
    return _conclude(space, options, console, workers, n)


def _wait(workers: list[Worker]) -> None:
    """Wait for every worker; SIGTERM to this process (a flag set by the CLI) is passed on to them."""
    while any(w.process.poll() is None for w in workers):
        if terminated.is_set():
            raise KeyboardInterrupt
        time.sleep(0.2)


def _stop(workers: list[Worker], sig: int) -> None:
    """Pass ``sig`` once to each running worker and wait for them (each re-queues its own trial)."""
    for w in workers:
        if w.process.poll() is None:
            w.process.send_signal(sig)
    for w in workers:
        try:
            w.process.wait(timeout=120)
        except subprocess.TimeoutExpired:  # a worker stuck in a kernel: kill it (its trial is recovered later)
            w.process.kill()
            w.process.wait()


def _conclude(space: Any, options: SearchOptions, console: Console, workers: list[Worker], n: int) -> int:
    from optuna.trial import TrialState

    from autokd.study import load_study

    err = Console(stderr=True)
    codes = [w.process.returncode for w in workers]
    said: dict[str, list[int]] = {}  # workers usually fail alike (a bad path): each line once
    for w in workers:
        if w.process.returncode == EXIT_TEMPFAIL:
            continue  # the storage stayed down: said once below, with the command that resumes all of them
        for line in w.errors:
            said.setdefault(line, []).append(w.index)
    for line, who in said.items():
        prefix = "" if len(who) == n else "w" + ",".join(map(str, who)) + ": "
        err.print(prefix + line, markup=False, highlight=False)
    if any(c == 2 for c in codes):
        return 2  # bad input: every worker said the same located lines above
    if any(c == EXIT_TEMPFAIL for c in codes):  # the storage stayed down: nothing to report from
        from autokd.study import default_storage
        from autokd.study.retry import mask_url

        url = mask_url(options.storage or default_storage(options.study or space.name))
        err.print(f"[red]error: --storage: the storage {url} did not answer for {options.storage_retry:g} s "
                  "(--storage-retry); the workers stopped, and their trials are re-queued when the study resumes: "
                  f"{shlex.join(['autokd', 'search', *options.search_args(workers=n)])}[/]", soft_wrap=True,
                  markup=True, highlight=False)
        return EXIT_TEMPFAIL
    if any(c in (INTERRUPTED, TERMINATED) for c in codes):
        raise KeyboardInterrupt  # the CLI prints the resume command and exits 130 (143 after SIGTERM)
    results = [w.result for w in workers if w.result is not None]
    if not results:
        err.print(f"[red]error: no worker finished (exit codes {codes}); run one worker alone to see why: "
                  f"{shlex.join(['autokd', 'search', *options.search_args()])}[/]")
        return 1
    last = max(results, key=lambda r: r["complete"])
    failed = sum(r["failed"] for r in results)
    stopped = next((r["stopped"] for r in results if r["stopped"] in ("max_failures", "duplicates", "timeout")),
                   "done")  # "others": a worker left the last trials to its siblings, which have ended too
    final = load_study(storage=last["storage"], study_name=options.study or space.name)[0]
    complete = sum(t.state == TrialState.COMPLETE for t in final.get_trials(deepcopy=False))
    code = finish(space, options, console, complete=complete, target=last["target"], stopped=stopped,
                  failed=failed, last_error=next((r["last_error"] for r in results if r["last_error"]), None),
                  ran=sum(r["ran"] for r in results), storage_url=last["storage"], workers=n, study=final)
    return code if all(c == 0 for c in codes) else max(code, 1)
