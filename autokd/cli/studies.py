"""``autokd studies``: list the studies in a storage (or in every studies/*.db)."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from autokd.cli import app
from autokd.cli.common import StorageOpt


def study_rows(storage: str | None) -> list[dict]:
    """Plain data: one row per study (name, storage, trial counts by state)."""
    import optuna

    from autokd.study import STUDIES_DIR, open_storage, quiet_optuna

    urls = [storage] if storage else [f"sqlite:///{p}" for p in sorted(STUDIES_DIR.glob("*.db"))]
    rows = []
    for url in urls:
        store = open_storage(url, create=False)
        with quiet_optuna():
            for s in optuna.study.get_all_study_summaries(store, include_best_trial=False):
                study = optuna.load_study(study_name=s.study_name, storage=store)
                states: dict[str, int] = {}
                for t in study.get_trials(deepcopy=False):
                    states[t.state.name] = states.get(t.state.name, 0) + 1
                target = study.user_attrs.get("autokd.space", {}).get("search", {}).get("n_trials")
                rows.append({"study": s.study_name, "storage": url, "states": states, "n_trials": target,
                             "autokd": "autokd.space_hash" in study.user_attrs})
    return rows


@app.command()
def studies(storage: StorageOpt = None,
            json_: bool = typer.Option(False, "--json", help="Print JSON (for scripts).")) -> None:
    """List studies in --storage URL, or in every studies/*.db."""
    rows = study_rows(storage)
    if json_:
        typer.echo(json.dumps(rows, indent=2))
        return
    console = Console()
    if not rows:
        console.print("No studies found" + (f" in {storage}." if storage else " under studies/."))
        return
    table = Table(header_style="bold")
    for col in ("study", "complete", "failed", "other", "target", "storage"):
        table.add_column(col, justify="right" if col in ("complete", "failed", "other", "target") else "left")
    for r in rows:
        s = r["states"]
        other = sum(v for k, v in s.items() if k not in ("COMPLETE", "FAIL"))
        table.add_row(r["study"], str(s.get("COMPLETE", 0)), str(s.get("FAIL", 0)), str(other),
                      str(r["n_trials"] or "-"), r["storage"])
    console.print(table)
