"""Pareto fronts from plain trial records (no Optuna objects, no drawing)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from autokd.report.pairing import is_state, kd_flag, metric_of


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
    "states": {state: count}, "stopped", "duplicates", "dataset_sizes"}`` with the Pareto trials (or every trial
    with ``include_all``) sorted by number; ``stopped`` / ``duplicates`` split the PRUNED trials into those early
    stopping stopped (see :func:`is_stopped`) and proposals that repeated a trial (``duplicate_of``).
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
    stopped = sum(is_stopped(r) for r in records)
    duplicates = sum(is_state(r, "PRUNED") and r.get("duplicate_of") is not None for r in records)
    return {"study": study, "directions": dirs, "metric_names": list(metric_names or []), "pareto": pareto,
            "trials": trials, "states": states, "stopped": stopped, "duplicates": duplicates,
            "dataset_sizes": dataset_sizes}


def is_stopped(record: dict[str, Any]) -> bool:
    """Whether early stopping stopped this trial: PRUNED with a ``stopped_reason``, or (records that do not carry
    it) PRUNED without ``duplicate_of`` -- autokd prunes a trial for no other reason."""
    if not is_state(record, "PRUNED"):
        return False
    return bool(record.get("stopped_reason")) or record.get("duplicate_of") is None


def front_comparison(trials: Sequence[dict[str, Any]], *, cost_metric: str = "flops", metric: str = "val_accuracy",
                     kd_param: str = "distill.kd") -> dict[str, Any]:
    """Compare the accuracy/cost Pareto front of KD-on trials with that of KD-off trials (all COMPLETE trials with
    a KD flag and finite ``metric`` and ``cost_metric``; unpaired trials included).

    Reference point (shared by both fronts, reported in the result): ``acc_ref = 0.0`` -- the worst possible
    accuracy, so the value does not depend on which trials happened to run (lowered to the smallest observed value
    if a metric is negative); ``cost_ref = 1.1 * max cost`` over all those trials (1.0 if every cost is 0), so the
    costliest trial still adds area.

    ``dominated_share``: share of KD-off front points that some KD-on front point weakly dominates while differing
    from it (None if the KD-off front is empty). Fronts are lists of trial numbers sorted by ascending cost. A side
    with more trials tends to get a larger hypervolume; ``n_kd_on``/``n_kd_off`` are reported so a reader can judge.

    Returns ``{"metric", "cost_metric", "reference", "hv_kd_on", "hv_kd_off", "dominated_share", "front_kd_on",
    "front_kd_off", "n_kd_on", "n_kd_off"}``; with no usable trials, reference and hypervolumes are None.
    """
    sides: dict[bool, list[tuple[int, float, float]]] = {True: [], False: []}
    for trial in trials:
        if not is_state(trial, "COMPLETE"):
            continue
        flag = kd_flag(trial, kd_param)
        acc, cost = metric_of(trial.get("metrics"), metric), metric_of(trial.get("metrics"), cost_metric)
        if flag is None or acc is None or cost is None:
            continue
        sides[flag].append((int(trial["number"]), acc, cost))

    result: dict[str, Any] = {"metric": metric, "cost_metric": cost_metric, "reference": None, "hv_kd_on": None,
                              "hv_kd_off": None, "dominated_share": None, "front_kd_on": [], "front_kd_off": [],
                              "n_kd_on": len(sides[True]), "n_kd_off": len(sides[False])}
    everything = sides[True] + sides[False]
    if not everything:
        return result
    directions = ["maximize", "minimize"]
    max_cost = max(c for _, _, c in everything)
    reference = [min(0.0, min(a for _, a, _ in everything)), 1.1 * max_cost if max_cost > 0 else 1.0]
    result["reference"] = [float(reference[0]), float(reference[1])]
    fronts: dict[bool, np.ndarray] = {}
    for flag, label in ((True, "kd_on"), (False, "kd_off")):
        rows = sides[flag]
        points = np.asarray([(a, c) for _, a, c in rows], dtype=float).reshape(-1, 2)
        idx = pareto_front(points, directions=directions) if rows else []
        idx = sorted(idx, key=lambda i: (points[i, 1], -points[i, 0], rows[i][0]))
        fronts[flag] = points[idx]
        result[f"front_{label}"] = [rows[i][0] for i in idx]
        result[f"hv_{label}"] = hypervolume_2d(points[idx], directions=directions, reference=reference)
    if len(fronts[False]):
        flip = np.asarray([-1.0, 1.0])
        result["dominated_share"] = float(_dominated_mask(fronts[False] * flip, fronts[True] * flip).mean())
    return result
