"""``autokd validate``: check a space and show what it searches."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from autokd.cli import app
from autokd.cli.common import SetOpt, SpaceArg
from autokd.space import dimensions, discrete_size, load_space, space_hash


@app.command()
def validate(space: SpaceArg, set_: SetOpt = None,
             json_: bool = typer.Option(False, "--json", help="Print the resolved space as JSON.")) -> None:
    """Validate SPACE and print each searched dimension, the size of the discrete part and, with search.design, the
    design it runs first."""
    sp = load_space(space, overrides=set_ or [])
    dims = dimensions(sp)
    size, continuous = discrete_size(dims, sp)
    if json_:
        typer.echo(json.dumps({"name": sp.name, "hash": space_hash(sp), "space": sp.model_dump(mode="json"),
                               "dimensions": [{"name": d.path, "values": d.describe(), "size": d.size}
                                              for d in dims],
                               "discrete_size": size, "continuous": continuous}, indent=2))
        return
    console = Console()
    console.print(f"[green]{space}: valid[/] — study '{sp.name}', space hash {space_hash(sp)}")
    table = Table(header_style="bold")
    table.add_column("parameter")
    table.add_column("values")
    table.add_column("size", justify="right")
    for d in dims:
        table.add_row(d.path, d.describe(), "∞" if d.size is None else str(d.size))
    console.print(table)
    extra = f" × {continuous} continuous dimension{'s' if continuous != 1 else ''}" if continuous else ""
    console.print(f"{len(dims)} searched dimensions; discrete part: {size:,} configurations{extra}. "
                  f"Budget: {sp.search.n_trials} complete trials, sampler {sp.search.sampler}.")
    if sp.search.design is not None:
        from autokd.space.design import trials_per_point
        from autokd.study.design import build_design

        d, spec = build_design(sp), sp.search.design
        per = trials_per_point(sp) * d.points
        reps = ("'auto' (a pilot of one, then as many as reach a 90% half-width of "
                f"{spec.target:g} pts, at most {sp.search.n_trials // per})" if spec.replicates == "auto"
                else f"{spec.replicates}" + (f", cut to {sp.search.n_trials // per} by n_trials"
                                             if spec.replicates * per > sp.search.n_trials else ""))
        with_ = "the KD twins" if trials_per_point(sp) == 2 else "each point's sibling set"
        console.print(f"Design: {d.note}; {per} trials a replicate with {with_}; replicates: {reps}.")
