"""``autokd report``: the Pareto report of a study, as a rich table or JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from autokd.cli import app
from autokd.cli.common import StudySpaceArg, MarginOpt, SetOpt, StorageOpt, StudyOpt, open_study
from autokd.errors import AutokdError, Problem


@app.command()
def report(
    space: StudySpaceArg = None,
    set_: SetOpt = None,
    storage: StorageOpt = None,
    study: StudyOpt = None,
    all_: bool = typer.Option(False, "--all", help="Show every trial, not only the Pareto front."),
    json_: bool = typer.Option(False, "--json", help="Print one JSON object (for scripts)."),
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="FILE",
                                        help="Also draw the trials and both KD fronts (.png via matplotlib, "
                                             ".html via plotly)."),
    plot_kd: Optional[Path] = typer.Option(None, "--plot-kd", metavar="FILE",
                                           help="Also draw KD's gain overall and per technique and level, with "
                                                "intervals, the ±--margin band and each technique's verdict (a "
                                                "forest plot; .png/.svg/.pdf via matplotlib, .html via plotly)."),
    margin: MarginOpt = None,
    with_sampler_pairs: bool = typer.Option(False, "--with-sampler-pairs",
                                            help="When a design ran: put the sampler's KD pairs into the verdict "
                                                 "model beside the design's (by default the verdicts come from "
                                                 "the design pairs alone, at exactly the design's levels)."),
) -> None:
    """Print the Pareto report of the study of SPACE (or of --study NAME in --storage URL), with the KD
    section: paired KD gains with confidence intervals, whether each other technique is orthogonal to KD (within
    --margin points), fronts and a verdict."""
    from autokd.report.render import print_report, to_json
    from autokd.study import build_report, trial_records

    st, sp = open_study(space, storage, study, command="report", overrides=set_)
    info = build_report(st, sp, include_all=all_, margin=margin, sampler_pairs=with_sampler_pairs)
    if plot is not None:
        from autokd.report.plot import write_plot

        if "kd" not in info:
            raise AutokdError(Problem("--plot draws KD on/off; this space does not search distill.kd", file="--plot"))
        write_plot(plot, trial_records(st), info["kd"], title=f"{st.study_name}: trials and Pareto fronts")
    if plot_kd is not None:
        from autokd.report.plot import write_kd_forest

        if "kd" not in info:
            raise AutokdError(Problem("--plot-kd draws KD's gain; this space does not search distill.kd",
                                      file="--plot-kd"))
        write_kd_forest(plot_kd, info["kd"], title=f"{st.study_name}: does KD's gain persist across techniques?")
    if json_:
        typer.echo(to_json(info))
    else:
        print_report(info, Console())
        if plot is not None:
            Console().print(f"Plot written to {plot}.")
        if plot_kd is not None:
            Console().print(f"KD forest plot written to {plot_kd}.")
