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
    why = ([f"{info['stopped']} stopped early"] if info.get("stopped") else []) + \
        ([_n(info["duplicates"], "duplicate")] if info.get("duplicates") else [])
    states = ", ".join(f"{n} {s.lower()}" + (f" ({', '.join(why)})" if s == "PRUNED" and why else "")
                       for s, n in sorted(info["states"].items()))
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
# KD section: the numbers come from autokd.report.kd_gain; the words from autokd.report.verdict.


def _gain(v: Any) -> str:
    return "-" if v is None else f"{100 * v:+.1f}"


def _ci(low: Any, high: Any) -> str:
    if low is None or high is None:
        return "-"
    return f"{100 * low:+.1f} … {100 * high:+.1f}"


def _p(p: Any) -> str:
    from autokd.report.verdict import fmt_p

    return "-" if p is None else fmt_p(p).removeprefix("= ")


def kd_teacher_text(kd: dict[str, Any]) -> Text | None:
    t = kd.get("teacher")
    if not t:
        return None
    acc = [f"{name} {100 * t[key]:.1f}%" for name, key in (("train", "train_accuracy"), ("val", "val_accuracy"),
                                                          ("test", "test_accuracy"), ("augmented views", "view_accuracy"))
           if t.get(key) is not None]
    how = " (trained on the students' view pool)" if t.get("augmented") else ""
    members = f"{t['members']} members, " if t.get("members", 1) > 1 else ""
    return Text(f"Teacher{how}: {members}accuracy " + ", ".join(acc) + ".", style="dim")


def kd_gain_table(kd: dict[str, Any]) -> Table:
    unit = "configurations" if kd.get("repeats", 1) > 1 else "pairs"
    title = f"KD gain, paired twins (KD on − KD off, points; {kd.get('repeats', 1)} repeat(s) per trial)"
    if kd.get("methods"):
        unit = "sets"
        title = (f"KD gain, all methods (per configuration: the mean of its methods' gains against its KD-off trial, "
                 f"points; {kd.get('repeats', 1)} repeat(s) per trial)")
    table = Table(title=title, title_justify="left", header_style="bold")
    for col in ("metric", unit, "mean", "95% CI (t)", "HL", "signed-rank p", "win", "error red."):
        table.add_column(col, justify="left" if col == "metric" else "right", no_wrap=col != "metric")
    for metric, s in kd["gain"].items():
        rer = s.get("relative_error_reduction")
        table.add_row(metric.removesuffix("_accuracy"), str(s["n_pairs"]), _gain(s.get("mean")),
                      _ci(s.get("ci_low"), s.get("ci_high")),
                      _gain(s.get("hodges_lehmann")), _p(s.get("p_signed_rank")),
                      "-" if s.get("win_rate") is None else f"{100 * s['win_rate']:.0f}%",
                      "-" if rer is None else f"{100 * rer:+.0f}%")
    return table


_VERDICT_STYLE = {"orthogonal": "green", "interacts": "red", "undetermined": "yellow"}


def kd_factor_table(kd: dict[str, Any], *, factors: list | None = None, who: str = "KD's") -> Table:
    """One row per technique, as in the paper: KD's gain at each level, the largest difference between levels
    [90% CI], the interaction p (Holm) and the verdict against the margin (``factors``: another method's table)."""
    from autokd.report.verdict import level_name

    margin = kd.get("margin") or 0.01
    table = Table(title=f"Is {who} gain the same with and without each technique? ({kd.get('metric', 'val_accuracy')}, "
                        f"margin ±{100 * margin:.1f} pts)", title_justify="left", header_style="bold")
    table.add_column("technique", no_wrap=True)
    table.add_column("KD gain per level (pairs)")
    table.add_column("largest difference [90% CI]", justify="right")
    table.add_column("90% half-width", justify="right")
    table.add_column("p (Holm)", justify="right")
    table.add_column("verdict", justify="right", no_wrap=True)
    for f in kd["factors"] if factors is None else factors:
        levels = "  ".join(f"{level_name(lv['level'])}: {_gain(lv.get('mean'))}"
                           + (f" adj {_gain(lv['adjusted'])}" if lv.get("adjusted") is not None else "")
                           + f" ({lv['n_pairs']})" for lv in f["levels"])
        d = f.get("max_difference")
        diff = "-" if not d or d.get("estimate") is None else \
            f"{level_name(d['high'])}−{level_name(d['low'])} {_gain(d['estimate'])} [{_ci(d.get('ci_low'), d.get('ci_high'))}]"
        word = f.get("verdict", "undetermined")
        p = "-" if f.get("p_interaction") is None else f"{_p(f['p_interaction'])} ({_p(f.get('p_adjusted'))})"
        hw = "-" if f.get("half_width") is None else f"{100 * f['half_width']:.2f}"
        table.add_row(_short(f["factor"]), levels, diff, hw, p, Text(word, style=_VERDICT_STYLE.get(word, "")))
    return table


_DIFFERENCE_WORDS = {"higher": "first higher", "lower": "first lower", "equivalent": "equivalent",
                     "undetermined": "undetermined", "too_few_pairs": "too few sets"}


def kd_methods_tables(kd: dict[str, Any]) -> list[Table]:
    """Each KD method's gain against its configurations' KD-off trials, and method against method on the
    configurations where both ran (the shared KD-off trial cancels)."""
    metric = kd.get("metric", "val_accuracy")
    table = Table(title=f"KD gain per method (KD on − the same configuration's KD off, points; {metric})",
                  title_justify="left", header_style="bold")
    for col in ("method", "pairs", "mean", "95% CI (t)", "HL", "signed-rank p", "win", "overall"):
        table.add_column(col, justify="left" if col in ("method", "overall") else "right", no_wrap=True)
    for name, m in kd["methods"].items():
        s = m["gain"][metric]
        table.add_row(name, str(m["n_pairs"]), _gain(s.get("mean")), _ci(s.get("ci_low"), s.get("ci_high")),
                      _gain(s.get("hodges_lehmann")), _p(s.get("p_signed_rank")),
                      "-" if s.get("win_rate") is None else f"{100 * s['win_rate']:.0f}%", m["overall"])
    margin = kd.get("margin") or 0.01
    diffs = Table(title=f"Method against method (accuracy of the first − the second on the same configurations, "
                        f"points; equivalent: 90% CI within ±{100 * margin:.1f})", title_justify="left",
                  header_style="bold")
    for col in ("first − second", "sets", "mean", "95% CI (t)", "90% CI", "signed-rank p", "verdict"):
        diffs.add_column(col, justify="left" if col in ("first − second", "verdict") else "right", no_wrap=True)
    for d in kd.get("method_differences") or []:
        s = d["difference"]
        diffs.add_row(f"{d['a']} − {d['b']}", str(d["n_sets"]), _gain(s.get("mean")),
                      _ci(s.get("ci_low"), s.get("ci_high")), _ci(*d["ci90"]), _p(s.get("p_signed_rank")),
                      _DIFFERENCE_WORDS.get(d["word"], d["word"]))
    return [table, diffs]


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


def kd_design_text(kd: dict[str, Any]) -> Text | None:
    """What the design phase was, and that (and on what estimand) the verdict table comes from its pairs."""
    d = kd.get("design")
    if not d:
        return None
    replicates = d.get("replicates")
    reps = f"{d.get('replicates_with_pairs', 0)} replicate(s) with pairs" + (
        f" of {replicates} planned" if replicates else "")
    lines = [f"Design: {d.get('note') or d.get('kind')}; {reps}, {_n(d.get('n_pairs', 0), 'design pair')}. "
             f"Verdicts from {d.get('analysed')}, at exactly the design's levels."]
    if d.get("analysed") == "design pairs" and d.get("estimand"):
        lines.append(f"Verdict estimand: {d['estimand']}.")
    held = {k: v for k, v in (d.get("held") or {}).items() if not (kd.get("methods") and k == "distill.method")}
    if held:  # (a searched KD method is not held: each design point runs every method, as its sibling set)
        lines.append("Held in every design point: " + ", ".join(f"{k}={_value(v)}" for k, v in held.items()) + ".")
    if d.get("cut"):
        lines.append(f"The design was cut to {replicates} of {d.get('asked')} replicate(s) by search.n_trials.")
    return Text("\n".join(lines), style="dim")


def _n(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def render_kd(kd: dict[str, Any]) -> Group:
    parts: list[Any] = []
    teacher = kd_teacher_text(kd)
    if teacher is not None:
        parts.append(teacher)
    parts.append(kd_gain_table(kd))
    if kd["factors"]:
        parts.append(kd_factor_table(kd))
    if kd.get("methods"):
        parts += kd_methods_tables(kd)
        parts += [kd_factor_table(kd, factors=m["factors"], who=f"{name}'s")
                  for name, m in kd["methods"].items() if m.get("factors")]
    model = kd.get("model") or {}
    counts = (f"{_n(kd['n_pairs'], 'pair')} of twins, {_n(kd.get('n_lost_pairs', 0), 'lost pair')}, "
              f"{_n(kd.get('n_pending', 0), 'pending twin')}, {_n(kd['n_unpaired'], 'unpaired trial')}.")
    if kd.get("methods"):
        counts = (f"{_n(kd['n_pairs'], 'pair')} in {_n(kd.get('n_sets', 0), 'complete sibling set')} "
                  f"({len(kd['methods'])} methods), {_n(kd.get('n_lost_pairs', 0), 'lost pair')}, "
                  f"{_n(kd.get('n_pending', 0), 'pending set')}, {_n(kd['n_unpaired'], 'unpaired trial')}.")
    method = (f" Per-technique model: {model.get('n_coefficients')} coefficients, {model.get('df_resid')} residual df, "
              f"{model.get('se')} standard errors, {model.get('test')}." if model.get("fitted") else "")
    parts += [kd_fronts_text(kd), Text(counts + method, style="dim"),
              Text(f"Estimand: {kd['estimand']}.", style="dim") if kd.get("estimand") else Text("")]
    design = kd_design_text(kd)
    if design is not None:
        parts.append(design)
    for w in kd.get("warnings") or []:
        parts.append(Text("Warning: " + w, style="yellow"))
    parts.append(Text("Verdict: ", style="bold") + Text(kd["verdict"], style="bold"))
    return Group(*parts)


def print_kd(kd: dict[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(render_kd(kd))
