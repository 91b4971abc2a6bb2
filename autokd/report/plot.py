"""Plots of a study: every trial, KD on/off coloured, twins joined, both Pareto fronts drawn.

Thin renderers of data computed elsewhere (trial records and :func:`autokd.report.kd_gain.kd_analysis`).
``.png`` (and other raster/vector formats) via matplotlib; ``.html`` via plotly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autokd.errors import AutokdError, Problem

AXIS_LABELS = {"flops": "MFLOPs", "bitops": "GBitOps", "size_bytes": "size (KB)", "params": "parameters (k)"}
AXIS_SCALE = {"flops": 1e-6, "bitops": 1e-9, "size_bytes": 1e-3, "params": 1e-3}


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
    if path.suffix.lower() == ".html":
        _plotly(path, s, title)
    elif path.suffix.lower() in (".png", ".svg", ".pdf", ".jpg", ".jpeg"):
        _matplotlib(path, s, title)
    else:
        raise AutokdError(Problem(f"cannot draw {path.name}: use a .png, .svg, .pdf or .html file", file="--plot"))
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
