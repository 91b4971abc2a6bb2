"""``autokd search``: run or resume the study of a space, with rich progress."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from autokd.cli import Terminated, app, terminated
from autokd.cli.common import CacheDirOpt, MarginOpt, SetOpt, SpaceArg, StorageOpt, StudyOpt
from autokd.space import load_space
from autokd.study.retry import RETRY_SECONDS


def make_bars(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False)


class RichProgress:
    """Turns the stages' progress events into rich bars and a few printed lines.

    With ``--workers N`` one view shows every worker: the workers' views share ``bars`` and the study bar (held
    in ``shared``), and each prefixes its lines and bars with ``prefix`` (e.g. "w1 ")."""

    def __init__(self, console: Console, *, bars: Progress | None = None, prefix: str = "",
                 shared: dict[str, Any] | None = None):
        self.console = console
        self.bars = bars if bars is not None else make_bars(console)
        self.prefix = prefix
        self.shared = shared if shared is not None else {}
        self.inner = None
        self.current: int | None = None
        self.settings = ""

    @property
    def study_task(self) -> Any:
        return self.shared.get("study_task")

    def __enter__(self) -> RichProgress:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bars.__exit__(*exc)

    def _inner(self, description: str, total: int) -> None:
        if self.inner is not None:
            self.bars.remove_task(self.inner)
        self.inner = self.bars.add_task(self.prefix + description, total=total)

    def log(self, line: str) -> None:
        self.bars.console.print(self.prefix + line if self.prefix else line)

    def __call__(self, event: str, **d: Any) -> None:
        log = self.log
        if event == "study.resume":
            if self.study_task is not None:  # another worker of this view already said it
                return
            if d["trials"]:
                log(f"Resuming study [bold]{d['study']}[/] ({d['storage']}): {d['complete']}/{d['target']} "
                    "complete trials.")
            else:
                log(f"New study [bold]{d['study']}[/] in {d['storage']}.")
            self.shared["study_task"] = self.bars.add_task("study", total=d["target"], completed=d["complete"])
        elif event == "study.local_artifacts":
            log(f"[yellow]Trial models go to {d['path']} on this machine: workers on other machines need a shared "
                "folder (--artifacts DIR on a shared file system, the same path everywhere).[/]")
        elif event == "study.neighbours":
            log(f"[yellow]{d['workers']} other worker(s) of this study run on this host ({d['cores']} cores); this "
                f"one uses {d['threads']} thread(s). Give each worker --threads {d['suggested']}, or start them all "
                "with one command: --workers N.[/]")
        elif event == "trial.taken":
            log(f"[yellow]Trial {d['number']} of this worker was marked {d['state']} by another worker "
                f"({d.get('reason') or 'no reason given'}); its retry is queued. Going on.[/]")
        elif event == "teacher.fetched":
            log("The teacher another worker trained was fetched from the study's artifact store.")
        elif event == "teacher.wait":
            log("Another worker is training this teacher; waiting for it (it is trained once).")
        elif event == "study.stale":
            log(f"[yellow]Trial {d['number']} was left running by a process that died; marked FAIL and queued "
                "again.[/]")
        elif event == "teacher.start":
            self._inner("teacher (training once)", d["epochs"])
        elif event == "teacher.epoch":
            self.bars.update(self.inner, completed=d["epoch"])
        elif event == "teacher.corrupt":
            what = "does not match the data" if d.get("stale") else "is unusable"
            log(f"[yellow]Teacher cache file {d['path']} {what} ({d['reason']}); moved to {d['moved_to']} and "
                "computed again.[/]")
        elif event == "teacher.views":
            log(f"Computing the teacher's logits over {d['views']} augmented views per image (once; cached).")
        elif event == "teacher.done":
            how = {"cache": "loaded from the cache", "trained": "trained and cached",
                   "checkpoint": "loaded from its checkpoint"}[d["source"]]
            on = " on the students' augmented views" if d.get("augmented") else ""
            train = f"train acc {100 * d['train_accuracy']:.1f}%, " if d.get("train_accuracy") is not None else ""
            log(f"Teacher{on} {how} ({d['path']}): {train}val acc {100 * d['val_accuracy']:.1f}%, "
                f"test acc {100 * d['test_accuracy']:.1f}%.")
        elif event == "teacher.views_done":
            gap = (d["train_accuracy"] or 0.0) - d["view_accuracy"]
            style = "yellow" if gap > 0.05 else "default"
            log(f"[{style}]Teacher accuracy on its {'training' if d.get('augmented') else 'unseen'} augmented views: "
                f"{100 * d['view_accuracy']:.1f}%"
                + (" (more than 5 pts below its clean accuracy: its soft targets over the views are often wrong)"
                   if gap > 0.05 else "") + ".[/]")
        elif event == "trial.start":
            self.current = d["number"]
            self.settings = " ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in d["params"].items())
        elif event == "trial.phase":
            rep = f" (repeat {d['repeat'] + 1}/{d['repeats']})" if d.get("repeats", 1) > 1 else ""
            self._inner(f"trial {self.current} {d['phase']}{rep}", d["epochs"])
        elif event == "trial.epoch":
            self.bars.update(self.inner, completed=d["epoch"])
        elif event == "trial.done":
            m = d["metrics"]
            log(f"trial {d['number']:>3}: val {100 * m['val_accuracy']:5.1f}%  test {100 * m['test_accuracy']:5.1f}%"
                f"  {m['flops'] / 1e6:7.2f} MFLOPs  {d['seconds']:5.1f}s  [dim]{self.settings}[/]")
            # Progress.tasks is a list (task ids are not indices once tasks were removed): look the task up by id.
            if self.study_task is None:
                return
            task = next(t for t in self.bars.tasks if t.id == self.study_task)
            # A pending KD twin may take the study one trial past its target.
            self.bars.update(self.study_task, advance=1, total=max(task.total or 0, task.completed + 1))
        elif event == "trial.duplicate":
            log(f"[dim]trial {d['number']:>3}: same settings as trial {d['duplicate_of']}: skipped (pruned, not "
                "trained)[/]")
        elif event == "trial.stopped":
            log(f"[dim]trial {d['number']:>3}: {d['reason']} (pruned, does not count)  {d['seconds']:5.1f}s  "
                f"{self.settings}[/]")
        elif event == "trial.fail":
            log(f"[red]trial {d['number']} failed: {d['reason']}[/]")
        elif event == "design.enqueue":
            of = f"of {d['replicates']}" if d.get("planned") else "(the pilot: the plan sizes the rest)"
            log(f"Design: replicate {d['replicate'] + 1} {of} queued ({d['points']} points, each with its KD "
                "twin).")
        elif event == "design.planned":
            log(f"Design sized from the pilot's {d['pilot_pairs']} pairs: {d['replicates']} replicate(s) for a 90% "
                f"half-width of {100 * d['target']:.2g} pts per technique.")
        elif event == "design.topup":
            if d["asked"] > d["planned"]:
                log(f"Design re-planned from its {d['pairs']} pairs: a technique missed the {100 * d['target']:.2g}"
                    f"-pt half-width after {d['planned']} replicate(s); {d['asked']} in all (one top-up).")
            else:
                log(f"Design: the {d['planned']} planned replicate(s) reached the target ({d['pairs']} pairs).")
        elif event == "design.cut":
            log(f"[yellow]Design cut at {d['replicates']} replicate(s) of {d['asked']}: search.n_trials holds "
                f"{d['budget']} replicate(s) of {d.get('trials', 2 * d['points'])} trials (raise it and rerun to run the rest).[/]")
        elif event == "storage.wait":
            log(f"[yellow]waiting for the storage {d['url']} ({d['reason']}); retrying for up to "
                f"{d['budget']:g} s (--storage-retry), the trial in training goes on.[/]")
        elif event == "storage.back":
            log(f"The storage {d['url']} is back after {d['seconds']:.1f} s of waiting; going on.")
        elif event == "design.wait" and not self.shared.get("design_wait"):
            self.shared["design_wait"] = True
            log("Waiting for other workers to finish the design's pilot before the next replicate.")


def stop_on_sigterm(progress: Any) -> Any:
    """``progress`` that first raises :class:`~autokd.cli.Terminated` once SIGTERM has arrived: the search stops
    at its next event (each epoch, each stage), a safe point (see ``autokd.cli._on_sigterm``)."""
    def checked(event: str, **d: Any) -> None:
        if terminated.is_set():
            raise Terminated()
        progress(event, **d)

    return checked


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


@app.command()
def search(
    space: SpaceArg,
    set_: SetOpt = None,
    storage: StorageOpt = None,
    study: StudyOpt = None,
    timeout: Optional[float] = typer.Option(None, "--timeout", metavar="SECONDS", min=1,
                                            help="Stop starting new trials after this many seconds."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE",
                               help="auto (CUDA when there is one), cpu, cuda or cuda:N (deterministic kernels "
                                    "on CUDA)."),
    cache_dir: CacheDirOpt = None,
    allow_space_change: bool = typer.Option(False, "--allow-space-change",
                                            help="Continue a study whose space differs from SPACE."),
    margin: MarginOpt = None,
    artifacts: Optional[Path] = typer.Option(
        None, "--artifacts", metavar="DIR",
        help="Optuna artifact store folder for the trained trial models (default: studies/<study>/artifacts "
             "beside a SQLite file, else studies/<study>/artifacts on this machine: give workers on several "
             "machines a shared folder)."),
    workers: int = typer.Option(1, "--workers", min=1, max=64, metavar="N",
                                help="Run N worker processes on this machine on the same study (CPU threads split "
                                     "between them), with one progress view and one report."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, max=1024, metavar="T",
                                          help="torch CPU threads of each worker (default: torch's own with one "
                                               "worker; cores / N with --workers N)."),
    worker_index: int = typer.Option(0, "--worker-index", min=0, metavar="I",
                                     help="This worker's index when several run on one study (each a different "
                                          "number), so their samplers do not propose the same trials; --workers "
                                          "N gives its workers 0..N-1."),
    storage_retry: float = typer.Option(
        RETRY_SECONDS, "--storage-retry", metavar="SECONDS", min=0,
        help="How long a worker waits for a storage that stopped answering (a database restart, a network drop, "
             "a locked SQLite file), retrying with backoff and keeping the trial it trains; past it the worker "
             "exits with code 75 and a rerun resumes."),
    progress_json: bool = typer.Option(False, "--progress-json", hidden=True,
                                       help="Write progress events as JSON lines on stdout (for --workers)."),
) -> int:
    """Run the search of SPACE until search.n_trials trials are COMPLETE (rerun to resume), then print the
    Pareto report.

    Many workers: run this same command on every machine (or GPU) against one --storage postgresql+psycopg://... (each
    with its own --worker-index), or --workers N on one machine. The study ends with between n_trials and
    n_trials + 2*workers - 1 COMPLETE trials (each worker's last trial and its KD twin finish)."""
    if study is not None:
        from autokd.study import check_study_name

        check_study_name(study)
    sp = load_space(space, overrides=set_ or [])
    options = SearchOptions(space=space, sets=list(set_ or []), storage=storage, study=study, timeout=timeout,
                            device=device, cache_dir=cache_dir, allow_space_change=allow_space_change, margin=margin,
                            artifacts=artifacts, threads=threads, worker_index=worker_index,
                            storage_retry=storage_retry)
    if workers > 1:
        from autokd.cli.workers import run_workers

        return run_workers(sp, options, workers)
    if progress_json:
        return _run_worker_json(sp, options)
    console = Console()
    from autokd.study import run_search

    with RichProgress(console) as ui:
        result = run_search(sp, progress=stop_on_sigterm(ui), **options.search_kwargs())
    return finish(sp, options, console, complete=result.complete, target=result.target, stopped=result.stopped,
                  failed=result.failed_this_run, last_error=result.last_error, ran=result.ran_this_run,
                  storage_url=result.storage, study=result.study)


@dataclass
class SearchOptions:
    """The options of one ``autokd search`` command, to rebuild the commands it prints and its workers'."""

    space: Path
    sets: list[str]
    storage: str | None
    study: str | None
    timeout: float | None
    device: str
    cache_dir: Path | None
    allow_space_change: bool
    margin: float | None
    artifacts: Path | None
    threads: int | None
    worker_index: int
    storage_retry: float = RETRY_SECONDS

    def search_kwargs(self) -> dict[str, Any]:
        return {"storage": self.storage, "study_name": self.study, "timeout": self.timeout, "device": self.device,
                "cache_dir": self.cache_dir, "allow_space_change": self.allow_space_change,
                "worker_index": self.worker_index, "artifacts": self.artifacts, "threads": self.threads,
                "storage_retry": self.storage_retry}

    def which(self) -> list[str]:
        """The arguments that name the study: SPACE, --set, --storage, --study."""
        return [str(self.space), *[a for s in self.sets for a in ("--set", s)],
                *(["--storage", self.storage] if self.storage else []), *(["--study", self.study] if self.study else [])]

    def search_args(self, *, workers: int = 1) -> list[str]:
        """The arguments of ``autokd search`` that repeat this command (without --worker-index when 0)."""
        return [*self.which(), *(["--timeout", f"{self.timeout:g}"] if self.timeout else []),
                *(["--device", self.device] if self.device != "auto" else []),
                *(["--cache-dir", str(self.cache_dir)] if self.cache_dir else []),
                *(["--allow-space-change"] if self.allow_space_change else []),
                *(["--artifacts", str(self.artifacts)] if self.artifacts else []),
                *(["--workers", str(workers)] if workers > 1 else []),
                *(["--threads", str(self.threads)] if self.threads else []),
                *(["--worker-index", str(self.worker_index)] if self.worker_index else []),
                *(["--margin", f"{self.margin:g}"] if self.margin is not None else []),
                *(["--storage-retry", f"{self.storage_retry:g}"] if self.storage_retry != RETRY_SECONDS else [])]


def _run_worker_json(sp: Any, options: SearchOptions) -> int:
    """One worker of ``--workers N``: progress events as JSON lines on stdout, the outcome as the last event."""
    import json
    import signal

    from autokd.study import run_search

    # The parent passes Ctrl-C on as SIGINT: make sure it raises here even if this process inherited it ignored
    # (a parent started in the background by a non-interactive shell).
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def emit(event: str, **d: Any) -> None:
        try:
            print(json.dumps({"event": event, **d}, default=str), flush=True)
        except (OSError, ValueError):  # the parent is gone: keep working, stop reporting
            pass

    result = run_search(sp, progress=stop_on_sigterm(emit), **options.search_kwargs())
    emit("search.result", complete=result.complete, target=result.target, stopped=result.stopped,
         failed=result.failed_this_run, last_error=result.last_error, ran=result.ran_this_run,
         storage=result.storage)
    return 0


def finish(sp: Any, options: SearchOptions, console: Console, *, complete: int, target: int, stopped: str,
           failed: int, last_error: str | None, ran: int, storage_url: str, workers: int = 1,
           study: Any = None) -> int:
    """Print the report and the closing line of a search; its exit code."""
    from autokd.report.render import print_report
    from autokd.study import MAX_DUPLICATES_IN_A_ROW, build_report, load_study

    st = study if study is not None else load_study(storage=storage_url, study_name=options.study or sp.name)[0]
    if complete:
        info = build_report(st, sp, margin=options.margin)
        print_report(info, console)
        if sp.search.design is not None and "kd" in info:  # what would decide each technique, and its cost
            from autokd.cli.plan import make_plan, print_plan

            print_plan(make_plan(st, sp, margin=options.margin, half_width=None, info=info), console)
    err = Console(stderr=True)
    if stopped == "max_failures":
        err.print(f"[red]error: stopped after {failed} failed trials (search.max_failures); last error: "
                  f"{last_error}[/]")
        return 1
    if complete == 0 and failed:
        err.print(f"[red]error: every trial failed; last error: {last_error}[/]")
        return 1
    if stopped == "duplicates":
        console.print(f"[yellow]Stopped with {complete}/{target} complete trials: the sampler proposed "
                      f"{MAX_DUPLICATES_IN_A_ROW} trials in a row that had already run (the space is nearly "
                      "exhausted); widen the space or lower search.n_trials.[/]")
        return 0
    if stopped == "others":
        console.print(f"This worker is done: the study holds {complete}/{target} complete trials and the trials "
                      "other workers are running take it to the target (if one of them fails, rerun this "
                      f"command): {shlex.join(['autokd', 'search', *options.search_args(workers=workers)])}")
        return 0
    if stopped == "timeout":
        resume = ["autokd", "search", *options.search_args(workers=workers)]
        console.print(f"Stopped at --timeout with {complete}/{target} complete trials; rerun to continue: "
                      f"{shlex.join(resume)}")
        return 0
    extra = f" ({complete - target} past the target: pending KD twins completed their pairs)" \
        if complete > target and ran else ""
    again = ["autokd", "report", *options.which()]
    console.print(f"Done: {complete} complete trials (target {target}){extra} in {storage_url}, study "
                  f"{st.study_name}. See the report again with: {shlex.join(again)}")
    return 0
