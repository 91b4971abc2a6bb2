"""Pareto fronts from plain trial records (no Optuna objects, no drawing)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


_DIRECTIONS = ("maximize", "minimize")


def _normalize(directions: Any) -> list[str]:
    """Accept "maximize"/"minimize" strings or Optuna StudyDirection members."""
    if isinstance(directions, str) or not isinstance(directions, Sequence) or not directions:
        raise ValueError("directions must be a non-empty list of 'maximize'/'minimize'")
    return [str(getattr(d, "name", d)).lower() for d in directions]


def _as_min_space(points: Any, directions: Any, name: str = "points") -> tuple[np.ndarray, np.ndarray]:
    """Points as a float array in which every objective is minimized (maximized ones negated)."""
    directions = _normalize(directions)
    bad = [d for d in directions if d not in _DIRECTIONS]
    if bad:
        raise ValueError(f"directions must be 'maximize' or 'minimize', got {bad!r}")
    signs = np.asarray([-1.0 if d == "maximize" else 1.0 for d in directions])
    try:
        arr = np.asarray(points, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of numeric points") from None
    if arr.size == 0:
        arr = arr.reshape(0, len(directions))
    if arr.ndim != 2 or arr.shape[1] != len(directions):
        raise ValueError(f"{name} must have shape (n, {len(directions)}), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr * signs, signs


def _dominated_mask(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """mask[i] = some row of ``b`` weakly dominates ``a[i]`` and differs from it
    (minimisation)."""
    out = np.zeros(len(a), dtype=bool)
    for i, p in enumerate(a):
        out[i] = bool(np.any(np.all(b <= p, axis=1) & np.any(b < p, axis=1)))
    return out


def pareto_front(points: Any, *, directions: Sequence[str]) -> list[int]:
    """Indices (ascending) of the non-dominated points.

    A point is dominated when another is at least as good in every objective
    and strictly better in one; exact duplicates do not dominate each other,
    so both stay on the front.
    """
    mins, _ = _as_min_space(points, directions)
    return [int(i) for i in np.flatnonzero(~_dominated_mask(mins, mins))]


def hypervolume_2d(points: Any, *, directions: Sequence[str], reference: Sequence[float]) -> float:
    """Exact 2-D hypervolume: the area dominated by ``points`` and bounded by
    ``reference``. Maximised objectives are negated so both are minimised;
    points that do not strictly improve on the reference in both objectives
    contribute nothing. Computed with a sweep over the first objective.
    """
    mins, signs = _as_min_space(points, directions)
    if mins.shape[1] != 2:
        raise ValueError("hypervolume_2d needs exactly 2 objectives")
    ref, _ = _as_min_space([reference], directions, name="reference")
    rx, ry = ref[0]
    inside = mins[(mins[:, 0] < rx) & (mins[:, 1] < ry)]
    volume, best_y = 0.0, ry
    for x, y in inside[np.lexsort((inside[:, 1], inside[:, 0]))]:
        if y < best_y:
            volume += (rx - x) * (best_y - y)
            best_y = y
    return float(volume)


def dominates(a: Sequence[float], b: Sequence[float], *, directions: Sequence[str]) -> bool:
    """Whether ``a`` is at least as good as ``b`` in every objective and better in one."""
    mins, _ = _as_min_space([a, b], directions)
    return bool(np.all(mins[0] <= mins[1]) and np.any(mins[0] < mins[1]))


def pareto_info(records: Sequence[dict[str, Any]], *, directions: Sequence[str], study: str | None = None,
                metric_names: Sequence[str] | None = None, include_all: bool = False,
                dataset_sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """The report's data: which COMPLETE trials are Pareto-optimal, and the trials to show.

    ``records`` are plain trial dicts (see :func:`autokd.study.trial_records`): number, state, values, params,
    metrics, settings. Returns ``{"study", "directions", "metric_names", "pareto": [numbers], "trials": [...],
    "states": {state: count}, "dataset_sizes"}`` with the Pareto trials (or every trial with ``include_all``)
    sorted by number.
    """
    dirs = _normalize(directions)
    complete = [r for r in records if r["state"] == "COMPLETE" and r.get("values") is not None]
    idx = pareto_front([r["values"] for r in complete], directions=dirs)
    pareto = sorted(complete[i]["number"] for i in idx)
    shown = records if include_all else [r for r in complete if r["number"] in set(pareto)]
    states: dict[str, int] = {}
    for r in records:
        states[r["state"]] = states.get(r["state"], 0) + 1
    trials = [{"number": r["number"], "state": r["state"], "params": dict(r.get("params", {})),
               "metrics": dict(r.get("metrics", {})), "settings": dict(r.get("settings", {})),
               **({"fail_reason": r["fail_reason"]} if r.get("fail_reason") else {})}
              for r in sorted(shown, key=lambda r: r["number"])]
    return {"study": study, "directions": dirs, "metric_names": list(metric_names or []), "pareto": pareto,
            "trials": trials, "states": states, "dataset_sizes": dataset_sizes}
