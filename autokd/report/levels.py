"""How a searched factor's raw values become levels for the KD-gain report.

:func:`factor_levels` maps each KD pair's value of one factor to a level label (labels are the ones the KD report
has always written, so existing JSON keeps its level names):

* ``prune_param`` (numeric) is binned by ``prune_bins``: exactly 0 gets its own level ``"0"``; then ``"(0, 0.25)"``,
  ``"[0.25, 0.5)"``, ..., with the last bin closed (``"[0.75, 1]"``); values outside the edges get ``"<a"`` /
  ``">b"``. Binning name ``"prune_bins"``.
* Other numeric factors with at least one float value and more than ``max_levels`` distinct values are cut into
  tertiles (sample 1/3 and 2/3 quantiles of the present values). Binning name ``"tertiles"``.
* Everything else is categorical (binning ``None``): ``str(value)``, bools as ``"True"``/``"False"``.
* A missing value (``None``) is the level ``"(absent)"``, always ordered last.

:func:`merge_small_levels` merges levels with too few pairs into a neighbour (used before a model is fitted).

Pure Python/numpy: no optuna, torch or rich.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ABSENT_LEVEL",
    "DEFAULT_PRUNE_BINS",
    "MERGE_JOIN",
    "PRUNE_PARAM",
    "Levels",
    "factor_levels",
    "merge_small_levels",
]

ABSENT_LEVEL = "(absent)"
PRUNE_PARAM = "compress.prune_ratio"
DEFAULT_PRUNE_BINS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
MERGE_JOIN = " or "  # "0.25 or 0.5": the label of a level made by merging 0.25 and 0.5


@dataclass(frozen=True)
class Levels:
    """The levels of one factor over a list of KD pairs.

    ``labels[i]`` is pair i's level; ``order`` lists the distinct levels in report order (numeric levels by
    value, then strings alphabetically, then ``"(absent)"``); ``binning`` is ``None`` (categorical),
    ``"prune_bins"`` or ``"tertiles"``; ``ordered`` says whether the present (non-absent) levels have a natural
    order (all values numeric or bool), which :func:`merge_small_levels` uses. ``merged_from`` maps a level made
    by merging to the original levels it contains (levels that were not merged are not keys).
    """

    labels: tuple[str, ...]
    order: tuple[str, ...]
    binning: str | None
    ordered: bool
    merged_from: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Pairs per level, in ``order``."""
        out = dict.fromkeys(self.order, 0)
        for label in self.labels:
            out[label] += 1
        return out


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_)) and math.isfinite(float(value)))


def _fmt_edge(x: float) -> str:
    return f"{x:.3g}"


def _check_edges(prune_bins: Any) -> tuple[float, ...]:
    try:
        edges = tuple(float(e) for e in prune_bins)
    except (TypeError, ValueError):
        raise ValueError("prune_bins must be a sequence of numbers") from None
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])) or not all(map(math.isfinite, edges)):
        raise ValueError(f"prune_bins must be >= 2 finite, strictly increasing edges, got {prune_bins!r}")
    return edges


def factor_levels(name: str, values: Sequence[Any], *, prune_param: str = PRUNE_PARAM,
                  prune_bins: Sequence[float] = DEFAULT_PRUNE_BINS, max_levels: int = 6,
                  exact: bool = False) -> Levels:
    """Level of each pair's value of factor ``name`` (see the module docstring for the rules).

    ``exact``: every distinct value is its own level, numeric or not (no pruning bins, no tertiles): the levels of
    a designed experiment, which the report analyses as designed.

    ``values`` has one raw value per pair; ``None`` means the pair's params lack the factor. Raises
    ``ValueError`` for a bad ``name``, ``values``, ``prune_bins`` or ``max_levels``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"factor name must be a non-empty string, got {name!r}")
    if not isinstance(prune_param, str) or not prune_param:
        raise ValueError(f"prune_param must be a non-empty string, got {prune_param!r}")
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
        raise ValueError(f"values of factor {name!r} must be a sequence (one value per pair)")
    edges = _check_edges(prune_bins)
    if isinstance(max_levels, bool) or not isinstance(max_levels, (int, np.integer)) or max_levels < 1:
        raise ValueError(f"max_levels must be an integer >= 1, got {max_levels!r}")

    values = list(values)
    present = [v for v in values if v is not None]
    numeric = bool(present) and all(_is_number(v) for v in present)
    absent = (ABSENT_LEVEL, (2, 0.0, ""))

    if numeric and name == prune_param and not exact:
        def level(v: Any) -> tuple[str, tuple]:
            v = float(v)
            if v == 0.0:
                return "0", (0, -math.inf, "")
            if v < edges[0]:
                return f"<{_fmt_edge(edges[0])}", (0, edges[0] - 1.0, "")
            for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
                last = i == len(edges) - 2
                if lo <= v < hi or (last and v == hi):
                    opener = "(" if lo == 0.0 else "["
                    closer = "]" if last else ")"
                    return f"{opener}{_fmt_edge(lo)}, {_fmt_edge(hi)}{closer}", (0, lo, "")
            return f">{_fmt_edge(edges[-1])}", (0, math.inf, "")

        binning: str | None = "prune_bins"
    elif (not exact and numeric and any(isinstance(v, (float, np.floating)) for v in present)
          and len({float(v) for v in present}) > max_levels):
        arr = np.asarray([float(v) for v in present])
        lo, hi = float(arr.min()), float(arr.max())
        q1, q2 = (float(q) for q in np.quantile(arr, [1 / 3, 2 / 3]))

        def level(v: Any) -> tuple[str, tuple]:
            v = float(v)
            if v < q1:
                return f"[{_fmt_edge(lo)}, {_fmt_edge(q1)})", (0, lo, "")
            if v < q2:
                return f"[{_fmt_edge(q1)}, {_fmt_edge(q2)})", (0, q1, "")
            return f"[{_fmt_edge(q2)}, {_fmt_edge(hi)}]", (0, q2, "")

        binning = "tertiles"
    else:
        def level(v: Any) -> tuple[str, tuple]:
            if isinstance(v, (bool, np.bool_)):
                return str(bool(v)), (0, float(bool(v)), "")
            if _is_number(v):
                v = v.item() if isinstance(v, np.generic) else v
                return str(v), (0, float(v), "")
            return str(v), (1, 0.0, str(v))

        binning = None

    mapped = [absent if v is None else level(v) for v in values]
    sort_key: dict[str, tuple] = {}
    for label, key in mapped:
        sort_key.setdefault(label, key)
    order = tuple(sorted(sort_key, key=lambda lab: (sort_key[lab], lab)))
    ordered = bool(present) and all(_is_number(v) or isinstance(v, (bool, np.bool_)) for v in present)
    return Levels(labels=tuple(m[0] for m in mapped), order=order, binning=binning, ordered=ordered)


def merge_small_levels(levels: Levels, *, min_pairs: int = 3) -> Levels:
    """Merge levels with fewer than ``min_pairs`` pairs into a neighbour until every level has ``min_pairs`` or
    only one level is left.

    Each step takes the smallest level (the first in order on ties) and merges it:

    * ordered factors (``levels.ordered``): with the adjacent non-absent level that has fewer pairs (the lower
      one on ties), so merged levels stay contiguous ranges;
    * categorical factors, and the ``"(absent)"`` level: with the smallest other level (the first in order on
      ties).

    The merged level is labelled by its parts joined with ``MERGE_JOIN`` (``"0.25 or 0.5"``), sits where its
    first part was, and ``merged_from[label]`` lists the original levels it contains, in order.
    """
    if not isinstance(levels, Levels):
        raise ValueError("levels must be a Levels (see factor_levels)")
    if isinstance(min_pairs, bool) or not isinstance(min_pairs, (int, np.integer)) or min_pairs < 1:
        raise ValueError(f"min_pairs must be an integer >= 1, got {min_pairs!r}")

    # Each group: list of original levels; groups in report order.
    groups: list[list[str]] = [[lab] for lab in levels.order]
    base_counts = levels.counts()

    def size(group: list[str]) -> int:
        return sum(base_counts[lab] for lab in group)

    def in_chain(group: list[str]) -> bool:
        return levels.ordered and any(lab != ABSENT_LEVEL for lab in group)

    while len(groups) > 1:
        sizes = [size(g) for g in groups]
        smallest = min(range(len(groups)), key=lambda i: (sizes[i], i))
        if sizes[smallest] >= min_pairs:
            break
        partner = None
        if in_chain(groups[smallest]):
            chain = [i for i, g in enumerate(groups) if in_chain(g)]
            at = chain.index(smallest)
            neighbours = [chain[j] for j in (at - 1, at + 1) if 0 <= j < len(chain)]
            if neighbours:
                partner = min(neighbours, key=lambda i: (sizes[i], i))
        if partner is None:
            partner = min((i for i in range(len(groups)) if i != smallest), key=lambda i: (sizes[i], i))
        first, second = sorted((smallest, partner))
        groups[first] = groups[first] + groups[second]
        del groups[second]

    label_of: dict[str, str] = {}
    merged_from: dict[str, tuple[str, ...]] = {}
    order = []
    for group in groups:
        label = MERGE_JOIN.join(group)
        order.append(label)
        if len(group) > 1:
            merged_from[label] = tuple(group)
        for lab in group:
            label_of[lab] = label
    return Levels(labels=tuple(label_of[lab] for lab in levels.labels), order=tuple(order),
                  binning=levels.binning, ordered=levels.ordered, merged_from=merged_from)
