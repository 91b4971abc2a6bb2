"""Thin renderers of report data: rich tables and JSON. They compute nothing."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def pareto_table(info: dict[str, Any]) -> Table:
    """The Pareto (or all-trials) table: trial, accuracies, cost, and the searched settings."""
    title = f"{'All trials' if len(info['trials']) != len(info['pareto']) else 'Pareto front'}"
    if info.get("study"):
        title += f" of {info['study']}"
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("trial", justify="right")
    table.add_column("val acc %", justify="right")
    table.add_column("test acc %", justify="right")
    table.add_column("MFLOPs", justify="right")
    table.add_column("params", justify="right")
    table.add_column("settings")
    pareto = set(info["pareto"])
    rows = sorted(info["trials"], key=lambda t: (t["state"] != "COMPLETE", t["metrics"].get("flops", 0), t["number"]))
    for t in rows:
        m = t["metrics"]
        number = f"{t['number']}{'*' if t['number'] in pareto and len(rows) != len(pareto) else ''}"
        settings = " ".join(f"{_short(k)}={_value(v)}" for k, v in t["params"].items())
        if t["state"] != "COMPLETE":
            settings = f"[{t['state']}] {t.get('fail_reason') or ''} {settings}".strip()
        table.add_row(number, _pct(m.get("val_accuracy")), _pct(m.get("test_accuracy")),
                      "-" if "flops" not in m else f"{m['flops'] / 1e6:.2f}",
                      "-" if "params" not in m else f"{m['params'] / 1e3:.1f}k", Text(settings))
    return table


def pareto_footer(info: dict[str, Any]) -> Text:
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(info["states"].items()))
    lines = [f"Trials: {states or 'none'}. Pareto-optimal: {len(info['pareto'])} (accuracy up, cost down)."]
    sizes = info.get("dataset_sizes")
    if sizes:
        lines.append(f"Validation set: {sizes['val']} images (one image = {100 / sizes['val']:.2f} pts); "
                     f"test set: {sizes['test']} images. The search used validation accuracy only.")
    if len(info["trials"]) != len(info["pareto"]):
        lines.append("* = on the Pareto front.")
    return Text("\n".join(lines), style="dim")


def render_report(info: dict[str, Any]) -> Group:
    return Group(pareto_table(info), pareto_footer(info))


def print_report(info: dict[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(render_report(info))


def to_json(info: dict[str, Any]) -> str:
    return json.dumps(info, indent=2, allow_nan=False, default=str)
