"""Plots of a study: every trial, KD on/off coloured, twins joined, both Pareto fronts drawn.

Thin renderers of data computed elsewhere (trial records and :func:`autokd.report.kd_gain.kd_analysis`).
``.png`` (and other raster/vector formats) via matplotlib; ``.html`` via plotly.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from autokd.errors import AutokdError, Problem

AXIS_LABELS = {"flops": "MFLOPs", "bitops": "GBitOps", "size_bytes": "size (KB)", "params": "parameters (k)"}
AXIS_SCALE = {"flops": 1e-6, "bitops": 1e-9, "size_bytes": 1e-3, "params": 1e-3}


@contextlib.contextmanager
def _writing(path: Path, option: str):
    """A picture that cannot be written (no permission, a folder in the way, a full disk) is bad input: one located
    line naming the option and the path, exit 2 -- not an internal error."""
    try:
        yield
    except OSError as exc:
        raise AutokdError(Problem(f"cannot write {path}: {exc.strerror or exc}", file=option)) from None


def _series(records: list[dict[str, Any]], kd: dict[str, Any]) -> dict[str, Any]:
    cost = kd["fronts"]["cost_metric"]
    metric = kd["fronts"]["metric"]
    scale = AXIS_SCALE.get(cost, 1.0)
    done = {r["number"]: r for r in records if r["state"] == "COMPLETE" and metric in r["metrics"]}

    def xy(numbers: list[int]) -> tuple[list[float], list[float]]:
        pts = sorted((done[n]["metrics"][cost] * scale, 100 * done[n]["metrics"][metric]) for n in numbers if n in done)
        return [p[0] for p in pts], [p[1] for p in pts]

    def kd_on(r: dict[str, Any]) -> bool:
        return bool(r["params"].get("distill.kd", r["settings"].get("distill", {}).get("kd")))

    on = [n for n, r in done.items() if kd_on(r)]
    off = [n for n, r in done.items() if not kd_on(r)]
    return {"cost": cost, "metric": metric, "on": xy(on), "off": xy(off),
            "front_on": xy(kd["fronts"]["front_kd_on"]), "front_off": xy(kd["fronts"]["front_kd_off"]),
            "pairs": [xy([p["on"], p["off"]]) for p in kd.get("pairs", [])],
            "xlabel": AXIS_LABELS.get(cost, cost), "ylabel": f"{metric.replace('_', ' ')} (%)"}


def write_plot(path: str | Path, records: list[dict[str, Any]], kd: dict[str, Any], *, title: str = "") -> Path:
    """Draw the study to ``path``; the format follows the suffix (.png/.svg/.pdf: matplotlib, .html: plotly)."""
    path = Path(path)
    s = _series(records, kd)
    if not s["on"][0] and not s["off"][0]:
        raise AutokdError(Problem("no complete trials to draw yet; run the search first", file="--plot"))
    if path.suffix.lower() not in (".html", ".png", ".svg", ".pdf", ".jpg", ".jpeg"):
        raise AutokdError(Problem(f"cannot draw {path.name}: use a .png, .svg, .pdf or .html file", file="--plot"))
    with _writing(path, "--plot"):
        if path.suffix.lower() == ".html":
            _plotly(path, s, title)
        else:
            _matplotlib(path, s, title)
    return path


def _matplotlib(path: Path, s: dict[str, Any], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    for xs, ys in s["pairs"]:
        ax.plot(xs, ys, color="0.8", linewidth=0.8, zorder=1)
    ax.scatter(*s["off"], color="tab:blue", label="KD off", s=28, zorder=2)
    ax.scatter(*s["on"], color="tab:orange", label="KD on", s=28, zorder=3)
    ax.step(*s["front_off"], where="post", color="tab:blue", linewidth=1.5, label="KD-off front")
    ax.step(*s["front_on"], where="post", color="tab:orange", linewidth=1.5, label="KD-on front")
    ax.set_xscale("log")
    ax.set_xlabel(s["xlabel"] + " (log scale)")
    ax.set_ylabel(s["ylabel"])
    ax.set_title(title or "Trials and Pareto fronts; grey lines join KD twins")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plotly(path: Path, s: dict[str, Any], title: str) -> None:
    try:
        import plotly.graph_objects as go
    except ImportError:  # pragma: no cover - plotly is a dependency, but may be removed
        raise AutokdError(Problem("writing .html needs plotly (pip install plotly); or use a .png file",
                                  file="--plot")) from None
    fig = go.Figure()
    for xs, ys in s["pairs"]:
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": "lightgrey", "width": 1},
                                 showlegend=False, hoverinfo="skip"))
    for key, name, color in (("off", "KD off", "#1f77b4"), ("on", "KD on", "#ff7f0e")):
        fig.add_trace(go.Scatter(x=s[key][0], y=s[key][1], mode="markers", name=name, marker={"color": color}))
        fig.add_trace(go.Scatter(x=s[f"front_{key}"][0], y=s[f"front_{key}"][1], mode="lines", name=f"{name} front",
                                 line={"color": color, "shape": "hv"}))
    fig.update_layout(title=title or "Trials and Pareto fronts", xaxis_title=s["xlabel"], yaxis_title=s["ylabel"],
                      xaxis_type="log")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True)


# ----------------------------------------------------------------------------------------------
# The KD forest plot: KD's gain overall and per technique and level, from kd_analysis (numbers are selected and
# labelled here, never computed).

KD_PLOT_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".html")
OVERALL_WORDS = {"adds": "KD adds", "hurts": "KD hurts", "no_clear_gain": "no clear gain",
                 "too_few_pairs": "too few pairs for a verdict"}
VERDICT_COLORS = {"orthogonal": "#2ca02c", "interacts": "#d62728", "undetermined": "#7f7f7f"}
LEVEL_INTERVAL = "95% Student-t"  # the per-level interval of autokd.report.orthogonality (None below 3 pairs)


def kd_forest_rows(kd: dict[str, Any]) -> dict[str, Any]:
    """The rows of the KD forest plot, selected from ``kd`` (the report's KD section, :func:`kd_analysis`).

    Values stay fractions of accuracy, exactly as in the report JSON (renderers scale them to points). Returns::

        {"metric", "margin", "unit" ("pairs" or "configurations"),
         "overall": {"mean", "ci_low", "ci_high", "n", "confidence", "method", "word"},
         "techniques": [{"factor", "name", "verdict", "reason", "max_difference", "equivalence_confidence",
                         "levels": [{"level", "label", "mean", "ci_low", "ci_high", "adjusted", "n"}, ...]}, ...],
         "design_pairs": the number of design pairs the techniques' rows come from (None: no design analysed)}

    Levels keep the report's order; techniques keep its order (by factor name).
    """
    from autokd.report.verdict import level_name, short

    metric = kd.get("metric", "val_accuracy")
    model = kd.get("model") or {}

    def techniques_of(factors: list) -> list[dict[str, Any]]:
        return [{
            "factor": f["factor"], "name": short(f["factor"]), "verdict": f.get("verdict", "undetermined"),
            "reason": f.get("reason"), "max_difference": f.get("max_difference"),
            "equivalence_confidence": model.get("equivalence_confidence"),
            "levels": [{"level": lv["level"], "label": level_name(lv["level"]), "mean": lv.get("mean"),
                        "ci_low": lv.get("ci_low"), "ci_high": lv.get("ci_high"), "adjusted": lv.get("adjusted"),
                        "n": lv["n_pairs"]} for lv in f["levels"]]} for f in factors or []]

    def overall_of(g: dict[str, Any], word: Any) -> dict[str, Any]:
        return {"mean": g.get("mean"), "ci_low": g.get("ci_low"), "ci_high": g.get("ci_high"), "n": g.get("n_pairs"),
                "confidence": g.get("confidence"), "method": g.get("method"), "word": word}

    # with distill.method searched: the pooled rows count sibling sets, and each method has its own group
    methods = {name: {"overall": overall_of(m["gain"][metric], m.get("overall")),
                      "techniques": techniques_of(m.get("factors"))}
               for name, m in (kd.get("methods") or {}).items()}
    return {"metric": metric, "margin": kd.get("margin"),
            "unit": "sibling sets" if methods else "configurations" if kd.get("repeats", 1) > 1 else "pairs",
            "overall": overall_of(kd["gain"][metric], kd.get("overall")),
            "techniques": techniques_of(kd.get("factors")),
            "methods": methods,
            "design_pairs": (kd.get("design") or {}).get("n_pairs")
            if (kd.get("design") or {}).get("analysed") == "design pairs" else None}


def _pts(v: float | None) -> float | None:
    return None if v is None else 100 * v


def _signed(v: float) -> str:
    return f"{100 * v:+.1f}"


def _interval(low: float | None, high: float | None) -> str:
    """As the terminal KD tables write an interval (``+1.2 … +2.5``)."""
    return "-" if low is None or high is None else f"{_signed(low)} … {_signed(high)}"


def _fmt_gain(row: dict[str, Any]) -> str:
    if row["mean"] is None:
        return "no pairs"
    if row["ci_low"] is None or row["ci_high"] is None:
        return f"{_signed(row['mean'])} (n too small for an interval)"
    return f"{_signed(row['mean'])} [{_interval(row['ci_low'], row['ci_high'])}]"


def _clip(text: str, width: int = 80) -> str:
    """One row's text, cut (visibly) where it would run off the figure; the terminal report has it whole."""
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _difference_text(t: dict[str, Any]) -> str:
    from autokd.report.verdict import level_name

    d = t.get("max_difference")
    if not d or d.get("estimate") is None:
        return t.get("reason") or ""
    conf = t.get("equivalence_confidence")
    level = f"{round(100 * conf)}% CI " if conf else ""
    return (f"largest difference {level_name(d['high'])}−{level_name(d['low'])} {_signed(d['estimate'])} "
            f"[{level}{_interval(d.get('ci_low'), d.get('ci_high'))}]")


def _forest_layout(rows: dict[str, Any]) -> list[dict[str, Any]]:
    """Top-to-bottom lines of the figure: the overall gain, then per technique a heading and its levels."""
    o = rows["overall"]
    unit = rows["unit"]
    word = OVERALL_WORDS.get(o.get("word"), o.get("word"))
    label = "KD, all methods" if rows.get("methods") else "KD overall"
    lines = [{"kind": "overall", "label": label, "mean": o["mean"], "ci_low": o["ci_low"],
              "ci_high": o["ci_high"], "n": o["n"], "text": _fmt_gain(o) + (f"   {word}" if word else ""),
              "unit": unit}]
    for name, m in (rows.get("methods") or {}).items():  # each KD method: its own gain, then its techniques
        mo = m["overall"]
        mword = OVERALL_WORDS.get(mo.get("word"), mo.get("word"))
        lines.append({"kind": "overall", "label": f"KD {name}", "mean": mo["mean"], "ci_low": mo["ci_low"],
                      "ci_high": mo["ci_high"], "n": mo["n"], "text": _fmt_gain(mo) + (f"   {mword}" if mword else ""),
                      "unit": "pairs"})
        lines += _technique_lines(m["techniques"], f"{name}: ", "pairs")
    return lines[:1] + _technique_lines(rows["techniques"], "", unit) + lines[1:]


def _technique_lines(techniques: list[dict[str, Any]], prefix: str, unit: str) -> list[dict[str, Any]]:
    lines = []
    for t in techniques:
        lines.append({"kind": "technique", "label": prefix + t["name"], "verdict": t["verdict"],
                      "text": _clip(_difference_text(t))})
        for lv in t["levels"]:
            lines.append({"kind": "level", "label": f"{prefix}{t['name']} = {lv['label']}", "mean": lv["mean"],
                          "ci_low": lv["ci_low"], "ci_high": lv["ci_high"], "adjusted": lv["adjusted"],
                          "n": lv["n"], "text": _fmt_gain(lv), "unit": unit})
    return lines


def _forest_caption(rows: dict[str, Any]) -> str:
    o = rows["overall"]
    conf = round(100 * (o.get("confidence") or 0.95))
    margin = rows["margin"]
    adjusted = ("; open circle: gain adjusted for the other techniques (the report's model)"
                if any(lv["adjusted"] is not None for t in rows["techniques"] for lv in t["levels"]) else "")
    method = (o.get("method") or "student-t").replace("student", "Student")
    eq = next((t["equivalence_confidence"] for t in rows["techniques"] if t.get("equivalence_confidence")), None)
    conf_eq = f"{round(100 * eq)}% " if eq else ""
    return (f"KD gain = {rows['metric']} with KD on − with KD off, paired twins, accuracy points. Overall (diamond): "
            f"mean, {conf}% {method} interval over {o['n']} {rows['unit']}. Levels"
            + (f" (the design's {rows['design_pairs']} pairs, at its levels)" if rows.get("design_pairs") else "")
            + f": raw mean gain, {LEVEL_INTERVAL} interval (none below 3 {rows['unit']}){adjusted}. "
            f"Shaded: overall gain ± margin ({100 * margin:.1f} pts). Verdicts (as in the report): orthogonal = every "
            f"difference of KD's gain between the technique's levels has its {conf_eq}interval inside ±margin "
            "(equivalence, Holm-corrected); interacts = the gain is shown to depend on the technique; undetermined "
            "= neither is shown (never read it as orthogonal).")


def write_kd_forest(path: str | Path, kd: dict[str, Any], *, title: str = "") -> tuple[Path, Any]:
    """Draw the KD forest plot of ``kd`` (the report's KD section) to ``path`` (.png/.svg/.pdf: matplotlib,
    .html: plotly). Returns (path, the matplotlib Figure or plotly Figure that was written)."""
    path = Path(path)
    if path.suffix.lower() not in KD_PLOT_SUFFIXES:
        raise AutokdError(Problem(f"cannot draw {path.name}: use a .png, .svg, .pdf or .html file", file="--plot-kd"))
    rows = kd_forest_rows(kd)
    if rows["overall"]["mean"] is None:
        raise AutokdError(Problem("no complete KD pairs to draw yet; run the search first", file="--plot-kd"))
    title = title or f"Does KD's gain persist across techniques? ({rows['metric']})"
    with _writing(path, "--plot-kd"):
        if path.suffix.lower() == ".html":
            fig = _forest_plotly(path, rows, title)
        else:
            fig = _forest_matplotlib(path, rows, title)
    return path, fig


def _forest_matplotlib(path: Path, rows: dict[str, Any], title: str) -> Any:
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.transforms import blended_transform_factory

    lines = _forest_layout(rows)
    n = len(lines)
    caption = textwrap.fill(_forest_caption(rows), 150)
    cap_lines = caption.count("\n") + 1
    entries = 2 + any(line.get("adjusted") is not None for line in lines) + any(  # legend: overall, band, ...
        line["kind"] == "level" and line["mean"] is not None for line in lines)
    top_in, bottom_in = 0.6 + 0.2 * ((entries + 1) // 2), 0.75 + 0.16 * cap_lines  # title + legend; x label + caption
    height = top_in + bottom_in + 0.3 * n
    width = 14.0
    fig, ax = plt.subplots(figsize=(width, height), dpi=120)
    ys = list(range(n, 0, -1))
    o = rows["overall"]
    margin = 100 * rows["margin"]
    centre = _pts(o["mean"])
    ax.axvspan(centre - margin, centre + margin, color="tab:orange", alpha=0.15, zorder=0, linewidth=0,
               label=f"overall gain ± margin ({margin:.1f} pts)", gid="margin-band")
    ax.axvline(0, color="0.2", linewidth=1, zorder=1, gid="zero")
    ax.axvline(centre, color="tab:orange", linewidth=0.8, linestyle="--", zorder=1)
    text_tf = blended_transform_factory(ax.transAxes, ax.transData)
    n_x, gain_x = 1.015, 1.09  # the text columns right of the axes (axes fractions)
    ax.text(n_x, 1.0, rows["unit"].split()[-1], transform=ax.transAxes, va="bottom", ha="left", fontsize=8,
            color="0.4")
    ax.text(gain_x, 1.0, "gain [interval] / verdict of the technique", transform=ax.transAxes, va="bottom",
            ha="left", fontsize=8, color="0.4")
    handles: dict[str, Any] = {}
    for y, line in zip(ys, lines):
        if line["kind"] == "technique":
            ax.axhline(y + 0.5, color="0.75", linewidth=0.6, zorder=0)
            verdict = ax.text(gain_x, y, line["verdict"], transform=text_tf, va="center", ha="left", fontsize=9,
                              fontweight="bold", color=VERDICT_COLORS.get(line["verdict"], "0.3"),
                              gid=f"verdict:{line['label']}")
            ax.annotate(line["text"], xy=(1, 0.5), xycoords=verdict, xytext=(6, 0), textcoords="offset points",
                        va="center", ha="left", fontsize=8, color="0.3", annotation_clip=False)
            continue
        mean, lo, hi = _pts(line["mean"]), _pts(line["ci_low"]), _pts(line["ci_high"])
        overall = line["kind"] == "overall"
        color = "black" if overall else "tab:blue"
        if mean is not None and lo is not None and hi is not None:
            bar = ax.errorbar([mean], [y], xerr=[[mean - lo], [hi - mean]], fmt="none", ecolor=color,
                              elinewidth=2 if overall else 1.4, capsize=3, zorder=3)
            bar.lines[2][0].set_gid(f"interval:{line['label']}")  # the bar itself (a LineCollection), not its caps
            handles.setdefault("interval", bar)
        if mean is not None:
            point, = ax.plot([mean], [y], marker="D" if overall else "s", markersize=11 if overall else 6,
                             color=color, zorder=4, linestyle="none", gid=f"point:{line['label']}")
            handles.setdefault("overall" if overall else "level", point)
        if line.get("adjusted") is not None:
            adj, = ax.plot([_pts(line["adjusted"])], [y], marker="o", markersize=10, markerfacecolor="none",
                           markeredgecolor="tab:purple", markeredgewidth=1.2, linestyle="none", zorder=5,
                           gid=f"adjusted:{line['label']}")
            handles.setdefault("adjusted", adj)
        ax.text(n_x, y, str(line["n"]), transform=text_tf, va="center", ha="left", fontsize=8)
        ax.text(gain_x, y, line["text"], transform=text_tf, va="center", ha="left", fontsize=8,
                fontweight="bold" if overall else "normal")
    ax.set_yticks(ys)
    ax.set_yticklabels([line["label"] if line["kind"] != "level" else line["label"].split(" = ", 1)[1]
                        for line in lines])
    for tick, line in zip(ax.get_yticklabels(), lines):
        if line["kind"] != "level":
            tick.set_fontweight("bold")
    ax.tick_params(axis="y", length=0)
    ax.set_ylim(0.4, n + 0.6)
    ax.set_xlabel(f"KD gain on {rows['metric']} (KD on − KD off, accuracy points)")
    ax.grid(True, axis="x", alpha=0.3)
    labels = {"overall": f"overall gain, {round(100 * (o.get('confidence') or 0.95))}% interval",
              "level": f"gain at a level, {LEVEL_INTERVAL} interval", "adjusted": "model-adjusted gain at a level"}
    band = [h for h in ax.patches if h.get_gid() == "margin-band"]
    ax.legend([handles[k] for k in labels if k in handles] + band,
              [labels[k] for k in labels if k in handles] + [band[0].get_label()] if band else [],
              loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, fontsize=8, frameon=False, borderaxespad=0.3)
    fig.text(0.01, 1 - 0.12 / height, title, fontsize=11, fontweight="bold", va="top", ha="left")
    fig.text(0.01, 0.08 / height, caption, fontsize=7.5, color="0.3", va="bottom", ha="left")
    left = min(0.25, (0.3 + 0.085 * max(len(label.get_text()) for label in ax.get_yticklabels())) / width)
    fig.subplots_adjust(left=left, right=0.53, top=1 - top_in / height, bottom=bottom_in / height)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return fig


def _forest_plotly(path: Path, rows: dict[str, Any], title: str) -> Any:
    import textwrap

    try:
        import plotly.graph_objects as go
    except ImportError:  # pragma: no cover - plotly is a dependency, but may be removed
        raise AutokdError(Problem("writing .html needs plotly (pip install plotly); or use a .png file",
                                  file="--plot-kd")) from None
    lines = _forest_layout(rows)
    n = len(lines)
    ys = list(range(n, 0, -1))
    o = rows["overall"]
    margin = 100 * rows["margin"]
    centre = _pts(o["mean"])
    fig = go.Figure()
    for kind, name, symbol, size, color in (("overall", "KD overall", "diamond", 14, "black"),
                                            ("level", "KD gain at a level", "square", 9, "#1f77b4")):
        pick = [(y, ln) for y, ln in zip(ys, lines) if ln["kind"] == kind and ln["mean"] is not None]
        fig.add_trace(go.Scatter(
            x=[_pts(ln["mean"]) for _, ln in pick], y=[y for y, _ in pick], mode="markers", name=name,
            marker={"symbol": symbol, "size": size, "color": color},
            error_x={"type": "data", "symmetric": False,
                     "array": [None if ln["ci_high"] is None else _pts(ln["ci_high"] - ln["mean"]) for _, ln in pick],
                     "arrayminus": [None if ln["ci_low"] is None else _pts(ln["mean"] - ln["ci_low"])
                                    for _, ln in pick]},
            text=[f"{ln['label']}: {ln['text']}, n={ln['n']}" for _, ln in pick], hoverinfo="text"))
    adj = [(y, ln) for y, ln in zip(ys, lines) if ln.get("adjusted") is not None]
    if adj:
        fig.add_trace(go.Scatter(x=[_pts(ln["adjusted"]) for _, ln in adj], y=[y for y, _ in adj], mode="markers",
                                 name="model-adjusted gain",
                                 marker={"symbol": "circle-open", "size": 9, "color": "#9467bd"},
                                 text=[f"{ln['label']}: adjusted {100 * ln['adjusted']:+.1f}" for _, ln in adj],
                                 hoverinfo="text"))
    fig.add_vrect(x0=centre - margin, x1=centre + margin, fillcolor="orange", opacity=0.15, line_width=0,
                  layer="below")
    fig.add_vline(x=0, line={"color": "black", "width": 1})
    fig.add_vline(x=centre, line={"color": "orange", "width": 1, "dash": "dash"})
    for y, ln in zip(ys, lines):
        if ln["kind"] == "technique":
            right = (f"<b><span style='color:{VERDICT_COLORS.get(ln['verdict'], '#444')}'>{ln['verdict']}</span></b>"
                     f"  {ln['text']}")
        else:
            right = f"n={ln['n']}   {ln['text']}"
        fig.add_annotation(x=1.01, xref="paper", y=y, yref="y", text=right, showarrow=False, xanchor="left",
                           font={"size": 11})
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left"}, height=330 + 28 * n, width=1250,
        margin={"l": 130, "r": 590, "t": 110, "b": 190},
        xaxis_title=f"KD gain on {rows['metric']} (KD on − KD off, accuracy points)",
        yaxis={"tickvals": ys, "ticktext": [f"<b>{ln['label']}</b>" if ln["kind"] != "level"
                                            else ln["label"].split(" = ", 1)[1] for ln in lines],
               "range": [0.4, n + 0.6]},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0})
    fig.add_annotation(x=0, xref="paper", y=0, yref="paper", yshift=-60, yanchor="top", xanchor="left", showarrow=False,
                       align="left", font={"size": 10, "color": "#555"},
                       text="<br>".join(textwrap.wrap(_forest_caption(rows), 140)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True)
    return fig
