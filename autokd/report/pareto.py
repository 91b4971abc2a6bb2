"""Pareto fronts from plain trial records (no Optuna objects, no drawing)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _oriented(point: Sequence[float], directions: Sequence[str]) -> tuple[float, ...]:
    """Turn every objective into one to minimize."""
    return tuple(-v if d == "maximize" else v for v, d in zip(point, directions))


def _check_directions(directions: Sequence[str]) -> list[str]:
    dirs = [str(getattr(d, "name", d)).lower() for d in directions]
    bad = [d for d in dirs if d not in ("maximize", "minimize")]
    if bad:
        raise ValueError(f"directions must be 'maximize' or 'minimize' (got {bad})")
    return dirs


def dominates(a: Sequence[float], b: Sequence[float], *, directions: Sequence[str]) -> bool:
    """Whether ``a`` is at least as good as ``b`` in every objective and better in one."""
    dirs = _check_directions(directions)
    oa, ob = _oriented(a, dirs), _oriented(b, dirs)
    return all(x <= y for x, y in zip(oa, ob)) and any(x < y for x, y in zip(oa, ob))


def pareto_front(points: Sequence[Sequence[float]], *, directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points (duplicates of a front point are all kept)."""
    dirs = _check_directions(directions)
    if any(len(p) != len(dirs) for p in points):
        raise ValueError("every point needs one value per direction")
    oriented = [_oriented(p, dirs) for p in points]
    front = []
    for i, p in enumerate(oriented):
        if not any(all(x <= y for x, y in zip(q, p)) and any(x < y for x, y in zip(q, p))
                   for j, q in enumerate(oriented) if j != i):
            front.append(i)
    return front


def pareto_info(records: Sequence[dict[str, Any]], *, directions: Sequence[str], study: str | None = None,
                metric_names: Sequence[str] | None = None, include_all: bool = False,
                dataset_sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """The report's data: which COMPLETE trials are Pareto-optimal, and the trials to show.

    ``records`` are plain trial dicts (see :func:`autokd.study.trial_records`): number, state, values, params,
    metrics, settings. Returns ``{"study", "directions", "metric_names", "pareto": [numbers], "trials": [...],
    "states": {state: count}, "dataset_sizes"}`` with the Pareto trials (or every trial with ``include_all``)
    sorted by number.
    """
    dirs = _check_directions(directions)
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
