"""``autokd plan``: how precise each technique's orthogonality verdict is, and what it would cost to settle."""

from __future__ import annotations

import json
import statistics
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from autokd.cli import app
from autokd.cli.common import MarginOpt, SetOpt, SpaceArg, StorageOpt, StudyOpt
from autokd.errors import AutokdError, Problem


def trial_seconds(records: list[dict[str, Any]]) -> float | None:
    """The median training time of the study's COMPLETE trials on the machines that ran them (seconds)."""
    seconds = [float(r["seconds"]) for r in records if r.get("state") == "COMPLETE"
               and isinstance(r.get("seconds"), (int, float))]
    return statistics.median(seconds) if seconds else None


def make_plan(st: Any, sp: Any, *, margin: float | None, half_width: float | None,
              info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The plan of a study as data: per technique, and what it rests on (``info``: its report, if made already)."""
    from autokd.report.plan import plan_techniques, undetermined_at_target
    from autokd.study import build_report, trial_records

    info = info if info is not None else build_report(st, sp, margin=margin)
    kd = info.get("kd")
    if kd is None:
        raise AutokdError(Problem("plan sizes KD's orthogonality verdicts; this space does not search distill.kd",
                                  file="plan"))
    spec = sp.search.design
    margin_pts = 100.0 * kd["margin"]
    target = half_width if half_width is not None else (
        spec.target if spec is not None and margin is None else margin_pts / 2)
    design = kd.get("design")
    block = int(design["points"]) if design and design.get("points") else 1
    records = trial_records(st)
    seconds = trial_seconds(records)
    methods = kd.get("methods") or {}
    per_pair = 1 + len(methods) if methods else 2  # with KD methods the unit is a sibling set, all of it run
    techniques = plan_techniques(kd, target=target / 100.0, trial_seconds=seconds, block=block,
                                 trials_per_pair=per_pair)
    # Each method's own technique questions, on its own pairs: a method-by-method answer needs each of them precise
    # (a design runs every method at every point, so the slowest method sets the budget).
    per_method = {m: plan_techniques(v, target=target / 100.0, trial_seconds=seconds, block=block,
                                     trials_per_pair=per_pair)
                  for m, v in methods.items() if (v.get("model") or {}).get("n_pairs")}
    k = len(techniques)
    return {"techniques": techniques, "methods": per_method, "target_half_width": target / 100.0, "margin": kd["margin"],
            "block": block, "trials_per_pair": per_pair, "unit": "sibling sets" if methods else "pairs", "trial_seconds": seconds, "n_pairs": (kd.get("model") or {}).get("n_pairs"),
            "analysed": (design or {}).get("analysed") or "all pairs", "design": design,
            "undetermined_at_target": undetermined_at_target(k) if k else None}


@app.command()
def plan(
    space: SpaceArg,
    set_: SetOpt = None,
    storage: StorageOpt = None,
    study: StudyOpt = None,
    margin: MarginOpt = None,
    half_width: Optional[float] = typer.Option(
        None, "--half-width", metavar="PTS", min=0.01, max=50.0, show_default=False,
        help="Target: every level difference's 90% half-width at most PTS points [default: search.design."
             "half_width, else --margin / 2]."),
    json_: bool = typer.Option(False, "--json", help="Print {technique: {half_width, pairs_needed, trials_needed, "
                                                     "minutes_needed}} (fractions of accuracy; for scripts)."),
) -> None:
    """Per technique: the 90% half-width of KD's gain differences reached so far, and the pairs, trials and minutes
    (at the study's own median trial time, one worker) still needed to reach the target half-width in 90% of
    studies. Reads the study of SPACE; a design study is planned in whole replicates."""
    from autokd.space import load_space
    from autokd.study import default_storage, load_study

    sp = load_space(space, overrides=set_ or [], machine=False)
    name = study or sp.name
    st, _ = load_study(storage=storage or default_storage(name), study_name=name)
    data = make_plan(st, sp, margin=margin, half_width=half_width)
    if json_:
        keys = ("half_width", "pairs_needed", "trials_needed", "minutes_needed")
        typer.echo(json.dumps({t: {k: e[k] for k in keys} for t, e in data["techniques"].items()}, indent=2))
        return
    print_plan(data, Console())


def _pts(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def print_plan(data: dict[str, Any], console: Console) -> None:
    target = data["target_half_width"]
    table = Table(title=f"Plan: the 90% half-width of each technique's KD-gain differences (pts) against the target "
                        f"≤ {_pts(target)} (margin ±{_pts(data['margin'])}), and what is still needed to reach it",
                  title_justify="left", header_style="bold")
    unit = data.get("unit", "pairs")
    for col in ("technique", "verdict now", "half-width", "sets" if unit == "sibling sets" else "pairs", "trials",
                "minutes"):
        table.add_column(col, justify="left" if col in ("technique", "verdict now") else "right",
                         no_wrap=col in ("technique", "verdict now"))
    for name, e in data["techniques"].items():
        reached = e["reached"]
        hw = _pts(e["half_width"]) + (" ✓" if reached else "")
        minutes = "-" if e["minutes_needed"] is None else f"{e['minutes_needed']:.0f}"
        pairs = "-" if e["pairs_needed"] is None else str(e["pairs_needed"])
        trials = "-" if e["trials_needed"] is None else str(e["trials_needed"])
        table.add_row(name.rsplit(".", 1)[-1], str(e["verdict"]), hw, pairs, trials, minutes)
    console.print(table)
    if data.get("methods"):
        per = Table(title="Per KD method: the same, on each method's own pairs (a design runs every method at every "
                          "point: the largest need settles them all)", title_justify="left", header_style="bold")
        for col in ("method", "technique", "verdict now", "half-width", "sets", "trials", "minutes"):
            per.add_column(col, justify="left" if col in ("method", "technique", "verdict now") else "right",
                           no_wrap=col in ("method", "technique", "verdict now"))
        for method, techniques in data["methods"].items():
            for name, e in techniques.items():
                per.add_row(method, name.rsplit(".", 1)[-1], str(e["verdict"]),
                            _pts(e["half_width"]) + (" ✓" if e["reached"] else ""),
                            "-" if e["pairs_needed"] is None else str(e["pairs_needed"]),
                            "-" if e["trials_needed"] is None else str(e["trials_needed"]),
                            "-" if e["minutes_needed"] is None else f"{e['minutes_needed']:.0f}")
        console.print(per)
    design = data.get("design") or {}
    where = (f"from {data['n_pairs']} {data['analysed']}" if data.get("n_pairs") is not None else "no pairs yet")
    lines = [f"Half-widths {where}; needs are predicted from their HC3 standard errors, inflated so the target "
             f"is reached in 90% of studies" + (f", in whole replicates of {data['block']} {unit}" if data["block"] > 1
                                                 else "") + " (the report's '≈N pairs would settle it' extrapolates "
             "the differences observed so far; this is the precision that settles it whatever they are)."]
    if unit == "sibling sets":
        lines.append(f"With KD methods searched the unit is a sibling set: its KD-off trial and one KD-on trial per "
                     f"method, {data['trials_per_pair']} trials.")
    if data.get("trial_seconds") is not None:
        lines.append(f"Minutes at the study's median trial time, {data['trial_seconds']:.0f} s, on one worker "
                     "(divide by the workers).")
    for name, e in data["techniques"].items():
        if e["reason"]:
            lines.append(f"{name}: {e['reason']}.")
    if data.get("undetermined_at_target") is not None:
        lines.append(f"Precision is not yet a decision: at a half-width of exactly margin/2 a technique whose true "
                     f"difference is 0 stays undetermined with probability ≈ {data['undetermined_at_target']:.2f} "
                     f"(Holm across {len(data['techniques'])} techniques).")
    if design.get("cut"):
        lines.append(f"The design was cut to {design.get('replicates')} replicate(s) of {design.get('asked')} by "
                     "search.n_trials.")
    for line in lines:
        console.print(line)
