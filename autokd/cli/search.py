"""``autokd search``: run or resume the study of a space, with rich progress."""

from __future__ import annotations

import shlex
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from autokd.cli import Terminated, app, terminated
from autokd.cli.common import CacheDirOpt, MarginOpt, SetOpt, SpaceArg, StorageOpt, StudyOpt
from autokd.space import load_space


class RichProgress:
    """Turns the stages' progress events into rich bars and a few printed lines."""

    def __init__(self, console: Console):
        self.console = console
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
                             transient=False)
        self.study_task = None
        self.inner = None

    def __enter__(self) -> RichProgress:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bars.__exit__(*exc)

    def _inner(self, description: str, total: int) -> None:
        if self.inner is not None:
            self.bars.remove_task(self.inner)
        self.inner = self.bars.add_task(description, total=total)

    def __call__(self, event: str, **d: Any) -> None:
        log = self.bars.console.print
        if event == "study.resume":
            if d["trials"]:
                log(f"Resuming study [bold]{d['study']}[/] ({d['storage']}): {d['complete']}/{d['target']} "
                    "complete trials.")
            else:
                log(f"New study [bold]{d['study']}[/] in {d['storage']}.")
            self.study_task = self.bars.add_task("study", total=d["target"], completed=d["complete"])
        elif event == "study.stale":
            log(f"[yellow]Trial {d['number']} was left running by a process that died; marked FAIL and queued "
                "again.[/]")
        elif event == "teacher.start":
            self._inner("teacher (training once)", d["epochs"])
        elif event == "teacher.epoch":
            self.bars.update(self.inner, completed=d["epoch"])
        elif event == "teacher.corrupt":
            log(f"[yellow]Teacher cache file {d['path']} is unusable ({d['reason']}); moved to {d['moved_to']} "
                "and retraining.[/]")
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
            settings = " ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in d["params"].items())
            self.current = d["number"]
            self.settings = settings
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
            task = next(t for t in self.bars.tasks if t.id == self.study_task)
            # A pending KD twin may take the study one trial past its target.
            self.bars.update(self.study_task, advance=1, total=max(task.total or 0, task.completed + 1))
        elif event == "trial.duplicate":
            log(f"[dim]trial {d['number']:>3}: same settings as trial {d['duplicate_of']}: skipped (pruned, not "
                "trained)[/]")
        elif event == "trial.fail":
            log(f"[red]trial {d['number']} failed: {d['reason']}[/]")


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
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    cache_dir: CacheDirOpt = None,
    allow_space_change: bool = typer.Option(False, "--allow-space-change",
                                            help="Continue a study whose space differs from SPACE."),
    margin: MarginOpt = 1.0,
    worker_index: int = typer.Option(0, "--worker-index", min=0, metavar="I",
                                     help="This worker's index when several run on one study (each a different "
                                          "number), so their samplers do not propose the same trials."),
) -> int:
    """Run the search of SPACE until search.n_trials trials are COMPLETE (rerun to resume), then print the
    Pareto report."""
    from autokd.report.render import print_report
    from autokd.study import build_report, run_search

    sp = load_space(space, overrides=set_ or [])
    console = Console()
    with RichProgress(console) as ui:
        result = run_search(sp, storage=storage, study_name=study, timeout=timeout, device=device,
                            cache_dir=cache_dir, allow_space_change=allow_space_change, worker_index=worker_index,
                            progress=stop_on_sigterm(ui))
    st = result.study
    info = build_report(st, sp, margin=margin)
    if result.complete:
        print_report(info, console)
    # The commands to see the report again and to continue are rebuilt from this command's own options.
    which = [str(space), *[a for s in set_ or [] for a in ("--set", s)], *(["--storage", storage] if storage else []),
             *(["--study", study] if study else [])]
    again = ["autokd", "report", *which]
    err = Console(stderr=True)
    if result.stopped == "max_failures":
        err.print(f"[red]error: stopped after {result.failed_this_run} failed trials (search.max_failures); "
                  f"last error: {result.last_error}[/]")
        return 1
    if result.complete == 0 and result.failed_this_run:
        err.print(f"[red]error: every trial failed; last error: {result.last_error}[/]")
        return 1
    if result.stopped == "duplicates":
        from autokd.study import MAX_DUPLICATES_IN_A_ROW

        console.print(f"[yellow]Stopped with {result.complete}/{result.target} complete trials: the sampler proposed "
                      f"{MAX_DUPLICATES_IN_A_ROW} trials in a row that had already run (the space is nearly "
                      "exhausted); widen the space or lower search.n_trials.[/]")
        return 0
    if result.stopped == "timeout":
        resume = ["autokd", "search", *which, "--timeout", f"{timeout:g}",
                  *(["--device", device] if device != "auto" else []),
                  *(["--cache-dir", str(cache_dir)] if cache_dir else []),
                  *(["--allow-space-change"] if allow_space_change else []),
                  *(["--worker-index", str(worker_index)] if worker_index else []),
                  *(["--margin", f"{margin:g}"] if margin != 1.0 else [])]
        console.print(f"Stopped at --timeout with {result.complete}/{result.target} complete trials; rerun to "
                      f"continue: {shlex.join(resume)}")
        return 0
    extra = " (one past the target: a pending KD twin completed the last pair)" \
        if result.complete > result.target and result.ran_this_run else ""
    console.print(f"Done: {result.complete} complete trials (target {result.target}){extra} in {result.storage}, "
                  f"study {st.study_name}. See the report again with: {shlex.join(again)}")
    return 0
