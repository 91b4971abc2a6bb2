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
    """The Pareto (or all-trials) table: trial, accuracies, costs, KD and its twin, the other searched settings."""
    title = f"{'All trials' if len(info['trials']) != len(info['pareto']) else 'Pareto front'}"
    if info.get("study"):
        title += f" of {info['study']}"
    table = Table(title=title, title_justify="left", header_style="bold")
    rows = sorted(info["trials"], key=lambda t: (t["state"] != "COMPLETE", t["metrics"].get("flops", float("inf")),
                                                 t["number"]))
    has = {k for t in rows for k in t["metrics"]}
    columns = [("val acc %", "val_accuracy", _pct), ("test acc %", "test_accuracy", _pct),
               ("MFLOPs", "flops", lambda v: f"{v / 1e6:.2f}"), ("GBitOps", "bitops", lambda v: f"{v / 1e9:.3f}"),
               ("size KB", "size_bytes", lambda v: f"{v / 1e3:.1f}"), ("params", "params", lambda v: f"{v / 1e3:.1f}k")]
    columns = [c for c in columns if c[1] in has]
    table.add_column("trial", justify="right")
    for name, _, _ in columns:
        table.add_column(name, justify="right")
    show_twin = any("twin" in t for t in rows)
    if show_twin:
        table.add_column("KD", justify="center")
        table.add_column("twin", justify="right")
    table.add_column("settings")
    pareto = set(info["pareto"])
    for t in rows:
        m = t["metrics"]
        number = f"{t['number']}{'*' if t['number'] in pareto and len(rows) != len(pareto) else ''}"
        params = dict(t["params"])
        kd = params.pop("distill.kd", None)
        settings = " ".join(f"{_short(k)}={_value(v)}" for k, v in params.items())
        if t["state"] != "COMPLETE":
            settings = f"[{t['state']}] {t.get('fail_reason') or ''} {settings}".strip()
        cells = [number] + ["-" if m.get(key) is None else fmt(m[key]) for _, key, fmt in columns]
        if show_twin:
            cells += ["-" if kd is None else _value(kd), "-" if t.get("twin") is None else str(t["twin"])]
        table.add_row(*cells, Text(settings))
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
    parts: list[Any] = [pareto_table(info), pareto_footer(info)]
    if info.get("kd"):
        parts += [Text(""), render_kd(info["kd"])]
    return Group(*parts)


def print_report(info: dict[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(render_report(info))


def to_json(info: dict[str, Any]) -> str:
    return json.dumps(info, indent=2, allow_nan=False, default=str)


# ----------------------------------------------------------------------------------------------
# KD section


def _gain(v: Any) -> str:
    return "-" if v is None else f"{100 * v:+.1f}"


def _ci(s: dict[str, Any]) -> str:
    if s.get("ci_low") is None:
        return "-"
    return f"{100 * s['ci_low']:+.1f} … {100 * s['ci_high']:+.1f}"


def _p(p: Any) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def kd_gain_table(kd: dict[str, Any]) -> Table:
    table = Table(title="KD gain, paired twins (KD on − KD off, points)", title_justify="left", header_style="bold")
    for col in ("metric", "pairs", "mean", "95% CI", "win rate", "sign-test p"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for metric, s in kd["gain"].items():
        table.add_row(metric, str(s["n_pairs"]), _gain(s.get("mean")), _ci(s),
                      "-" if s.get("win_rate") is None else f"{100 * s['win_rate']:.0f}%", _p(s.get("p_sign")))
    return table


def _level(level: str) -> str:
    return {"True": "on", "False": "off"}.get(level, level)


def kd_factor_table(kd: dict[str, Any]) -> Table:
    table = Table(title=f"KD gain by the level of each other setting ({kd.get('metric', 'val_accuracy')})",
                  title_justify="left", header_style="bold")
    table.add_column("setting", no_wrap=True)
    table.add_column("level")
    for col in ("pairs", "mean", "95% CI", "win rate", "interaction p (Holm-adjusted)"):
        table.add_column(col, justify="right")
    for f in kd["factors"]:
        for i, lv in enumerate(f["levels"]):
            p = ""
            if i == 0:
                p = "too few pairs" if f.get("p_interaction") is None else \
                    f"{_p(f['p_interaction'])} ({_p(f.get('p_adjusted'))})"
            table.add_row(f["factor"] if i == 0 else "", _level(lv["level"]), str(lv["n_pairs"]), _gain(lv.get("mean")),
                          _ci(lv), "-" if lv.get("win_rate") is None else f"{100 * lv['win_rate']:.0f}%", p,
                          end_section=i == len(f["levels"]) - 1)
    return table


def kd_fronts_text(kd: dict[str, Any]) -> Text:
    fr = kd["fronts"]
    if fr.get("reference") is None:
        return Text("Fronts: no complete trials with both KD settings yet.", style="dim")
    ref = fr["reference"]
    share = "-" if fr.get("dominated_share") is None else f"{100 * fr['dominated_share']:.0f}%"
    return Text(
        f"Fronts ({fr['metric']} vs {fr['cost_metric']}): hypervolume KD on {fr['hv_kd_on']:.6g} "
        f"({fr['n_kd_on']} trials, front {fr['front_kd_on']}) vs KD off {fr['hv_kd_off']:.6g} "
        f"({fr['n_kd_off']} trials, front {fr['front_kd_off']}), reference point ({ref[0]:g}, {ref[1]:.4g}); "
        f"{share} of the KD-off front is dominated by the KD-on front.")


def _n(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def render_kd(kd: dict[str, Any]) -> Group:
    parts: list[Any] = [kd_gain_table(kd)]
    if kd["factors"]:
        parts.append(kd_factor_table(kd))
    parts += [kd_fronts_text(kd), Text(f"{_n(kd['n_pairs'], 'pair')} of twins, {_n(kd['n_unpaired'], 'unpaired trial')}.", style="dim"),
              Text("Verdict: ", style="bold") + Text(kd["verdict"], style="bold")]
    return Group(*parts)


def print_kd(kd: dict[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(render_kd(kd))
