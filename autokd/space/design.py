"""The design phase as the space describes it: which searched fields are the design's techniques, at which levels,
and the cross-field rules a design must meet to run (``check_design``, one of the space's :data:`CHECKS`).

A technique is every searched field except ``distill.*`` (KD is the treatment; its own settings are not techniques,
as in the report). A ``{choices: [...]}`` field is designed at its choices, a numeric range at the levels
``search.design.levels`` names for it (default: its low and high). A searched ``distill.*`` setting other than
``distill.kd`` is held at its first level in every design point (said by ``autokd plan`` and the report).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from autokd.space.dimensions import CONDITIONS, Dimension, dimensions
from autokd.space.schema import Choices, Space

KD_PARAM = "distill.kd"
KD_OWN = "distill."


def trials_per_point(space: Space) -> int:
    """Trials one design point runs: the point and its KD twin, or with ``distill.method`` searched its whole
    sibling set (the KD-off trial and one KD-on trial per method)."""
    method = space.distill.method
    return 1 + len(method.choices) if isinstance(method, Choices) else 2


@dataclass(frozen=True)
class DesignFactor:
    """One technique of the design: its dotted path (Optuna parameter name) and its design levels, in order."""

    path: str
    levels: tuple[Any, ...]


def _range_levels(space: Space, dim: Dimension) -> tuple[Any, ...]:
    named = (space.search.design.levels or {}).get(dim.path) if space.search.design else None
    if named is not None:
        return tuple(int(v) if dim.is_int and isinstance(v, (int, float)) and float(v).is_integer() else v
                     for v in named)
    return (dim.low, dim.high)


def design_factors(space: Space) -> list[DesignFactor]:
    """The design's techniques and levels (schema order), for a space with or without ``search.design``."""
    out = []
    for dim in dimensions(space):
        if dim.path.startswith(KD_OWN):
            continue
        levels = tuple(dim.choices) if dim.choices is not None else _range_levels(space, dim)
        out.append(DesignFactor(dim.path, levels))
    return out


def held_settings(space: Space) -> dict[str, Any]:
    """The searched ``distill.*`` settings besides ``distill.kd``, each at the value every design point uses. A KD
    method's own settings (``distill.<method>.*``) are not held: each KD-on trial of that method draws them (they
    belong to its KD treatment, as the method does to the sibling set)."""
    held = {}
    for dim in dimensions(space):
        if (dim.path.startswith(KD_OWN) and dim.path != KD_PARAM
                and CONDITIONS.get(dim.path, ("",))[0] != "distill.method"):
            held[dim.path] = dim.choices[0] if dim.choices is not None else _range_levels(space, dim)[0]
    return held


def _level_problems(space: Space, path: str, values: list[Any]) -> list[tuple[str, str]]:
    """A named level list must fit its range: numbers within [low, high], on the step, distinct, at least 2."""
    where = f"search.design.levels.{path}"
    dims = {d.path: d for d in dimensions(space)}
    dim = dims.get(path)
    if dim is None or path == KD_PARAM:
        ranges = sorted(p for p, d in dims.items() if d.choices is None and not p.startswith(KD_OWN))
        return [(where, "not a searched numeric range of this space (valid: " + (", ".join(ranges) or "none") + ")")]
    if dim.choices is not None:
        return [(where, f"{path} is searched over choices, which are its design levels: name levels only for "
                        "numeric ranges")]
    if len(values) < 2:
        return [(where, "a design needs at least 2 levels per technique")]
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            out.append((where, f"{v!r} is not a number"))
        elif not dim.low <= v <= dim.high:
            out.append((where, f"{v} is outside the range {dim.low}..{dim.high}"))
        elif dim.is_int and not float(v).is_integer():
            out.append((where, f"{v} is not an integer (the range is of integers)"))
        elif dim.step and not dim.log:
            k = (float(v) - float(dim.low)) / float(dim.step)
            if abs(k - round(k)) > 1e-9:
                out.append((where, f"{v} is not on the range's grid (low {dim.low}, step {dim.step})"))
    if len({float(v) for v in values if isinstance(v, (int, float))}) != len(values):
        out.append((where, "design levels must be distinct"))
    return out


def check_design(space: Space) -> list[tuple[str, str]]:
    """A design that cannot run as written: no KD twins, no technique, bad levels, prune levels in one report bin,
    a kind that does not fit the levels, or a budget (``search.n_trials``) below one replicate."""
    design = space.search.design
    if design is None:
        return []
    kd = space.distill.kd
    if not (isinstance(kd, Choices) and set(kd.choices) == {True, False}) or space.search.kd_twins is False:
        return [("search.design", "a design runs every point with its KD twin: distill.kd must be "
                                  "{choices: [true, false]} and search.kd_twins not false")]
    out: list[tuple[str, str]] = []
    for path, values in (design.levels or {}).items():
        out += _level_problems(space, path, list(values))
    if out:
        return out
    factors = design_factors(space)
    if not factors:
        return [("search.design", "no technique is searched besides distill.*: there is nothing to design "
                                  "(search a model, train or compress field)")]
    for f in factors:
        if len(f.levels) < 2:
            out.append((_where(space, f.path), f"{f.path} has one level: a technique needs at least 2 to be "
                                               "compared (or fix its value)"))
    out += _prune_bins(space, factors)
    if out:
        return out
    from autokd.doe import make_design  # numpy only (pydoe is imported only to build a fraction)

    counts = [len(f.levels) for f in factors]
    try:  # what validate accepts must run: the design itself is built (well under a second)
        points = make_design(counts, seed=space.search.seed, kind=design.kind, runs=design.runs).runs
    except ValueError as exc:
        where = "search.design.runs" if design.runs is not None else "search.design.kind"
        return [(where, str(exc))]
    least = min_replicates(points, counts)
    if isinstance(design.replicates, int) and design.replicates < least:
        p = 1 + sum(k - 1 for k in counts)
        return [("search.design.replicates", f"{design.replicates} replicate(s) of {points} points give "
                                             f"{design.replicates * points} pairs, and the verdict model of {p} "
                                             f"coefficients needs at least {p + _min_df()}: use replicates >= "
                                             f"{least}, or 'auto'")]
    per = trials_per_point(space) * points
    if per * least > space.search.n_trials:
        with_ = "KD twins" if trials_per_point(space) == 2 else "sibling sets (KD-off and one trial per KD method)"
        out.append(("search.n_trials", f"the design has {points} points, i.e. {per} trials with their {with_} "
                                       f"per replicate, and needs {least} replicate(s) to analyse: n_trials "
                                       f"must be at least {per * least} (got {space.search.n_trials})"))
    return out


def _min_df() -> int:
    from autokd.report.orthogonality import MIN_DF_RESID

    return MIN_DF_RESID


def min_replicates(points: int, counts: list[int]) -> int:
    """The fewest replicates whose pairs the verdict model can be fitted to (p coefficients + its minimum residual
    degrees of freedom): the size of the pilot of ``replicates: auto``."""
    p = 1 + sum(k - 1 for k in counts)
    return max(1, math.ceil((p + _min_df()) / points))


def _where(space: Space, path: str) -> str:
    named = space.search.design and path in (space.search.design.levels or {})
    return f"search.design.levels.{path}" if named else path


def _prune_bins(space: Space, factors: list[DesignFactor]) -> list[tuple[str, str]]:
    """Pruning levels must fall in distinct bins of the report (so the report's levels are the design's)."""
    from autokd.report.levels import PRUNE_PARAM, factor_levels

    for f in factors:
        if f.path != PRUNE_PARAM:
            continue
        labels = factor_levels(PRUNE_PARAM, [float(v) for v in f.levels]).labels
        for i, (a, la) in enumerate(zip(f.levels, labels)):
            for b, lb in zip(f.levels[i + 1:], labels[i + 1:]):
                if la == lb:
                    return [(_where(space, f.path), f"pruning levels {a} and {b} fall in the same report bin {la} "
                                                    "(bins: 0, (0, 0.25), [0.25, 0.5), [0.5, 0.75), [0.75, 1]): "
                                                    "choose levels in distinct bins")]
    return []
