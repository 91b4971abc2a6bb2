"""KD methods side by side: each method's gain and orthogonality, and method against method.

When a study searches ``distill.method``, every configuration runs as a **sibling set** (one KD-off trial, one
KD-on trial per method, the same streams; :func:`autokd.report.pairing.pair_trials` pairs each KD-on trial with the
set's KD-off trial). A method's pairs are then one per configuration, independent of each other, and are analysed
exactly as a study of that method alone would be. Pairs of *different* methods share their KD-off trial, so they
are not independent: pooled over methods, the unit is the sibling set, whose gain is the mean of its methods'
gains (:func:`set_pairs`). Two methods are compared on the sets where both completed: per set,
gain(a) − gain(b) = accuracy(a) − accuracy(b), the shared KD-off partner cancelling out.

Plain data in, plain data out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from autokd.report import stats
from autokd.report.pairing import Pair, metric_of
from autokd.report.verdict import MIN_VERDICT_PAIRS

__all__ = ["set_pairs", "method_pairs", "method_differences", "difference_word", "methods_sentence", "SET_ESTIMAND"]

SET_ESTIMAND = ("the mean KD gain over the configurations this study visited, each configuration's gain being the "
                "mean of its KD methods' gains against its one KD-off trial (sibling sets: the methods share that "
                "trial, so a set is one unit)")


def method_pairs(pairs: Sequence[Pair]) -> dict[str, list[Pair]]:
    """The pairs of each method (methods in name order)."""
    out: dict[str, list[Pair]] = {}
    for p in pairs:
        if p.method is not None:
            out.setdefault(p.method, []).append(p)
    return dict(sorted(out.items()))


def _by_set(pairs: Sequence[Pair]) -> dict[int, dict[str, Pair]]:
    """Pairs grouped by their KD-off trial (one sibling set each): off number -> method -> pair."""
    sets: dict[int, dict[str, Pair]] = {}
    for p in pairs:
        if p.method is not None:
            sets.setdefault(p.numbers[1], {})[p.method] = p
    return sets


def _mean_metrics(sides: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The metrics of the method-averaged KD-on side: each numeric metric averaged over ``sides``, and the
    per-repeat metrics averaged repeat by repeat (absent when any side lacks them)."""
    metrics = [s.get("metrics") or {} for s in sides]
    out: dict[str, Any] = {}
    for name in metrics[0]:
        values = [metric_of(m, name) for m in metrics]
        if all(v is not None for v in values):
            out[name] = sum(values) / len(values)
    repeats = [m.get("repeats") for m in metrics]
    if all(isinstance(r, list) and r and len(r) == len(repeats[0]) for r in repeats):
        out["repeats"] = [_mean_metrics([{"metrics": r[i]} for r in repeats]) for i in range(len(repeats[0]))]
    return out


def set_pairs(pairs: Sequence[Pair], methods: Sequence[str]) -> tuple[list[Pair], list[int]]:
    """One pair per sibling set in which every method of ``methods`` completed: its KD-on side carries the mean of
    the methods' metrics (its trial number is the first method's). Returns them and the KD-off numbers of the sets
    left out (some method missing: a set's mean over fewer methods would estimate another quantity)."""
    out, partial = [], []
    for off, by_method in sorted(_by_set(pairs).items()):
        if set(by_method) != set(methods):
            partial.append(off)
            continue
        members = [by_method[m] for m in methods]
        first = members[0]
        on = {**first.on, "metrics": _mean_metrics([p.on for p in members])}
        out.append(Pair(on, first.off, first.params, first.seed, all(p.linked for p in members), None))
    return out, partial


def difference_word(summary: Mapping[str, Any], equivalence: Mapping[str, Any], *, margin: float,
                    alpha: float = 0.05, min_pairs: int = MIN_VERDICT_PAIRS) -> str:
    """``higher`` / ``lower`` (the first method's accuracy than the second's) when the 95% interval excludes 0 and
    the signed-rank test agrees at ``alpha``; ``equivalent`` when the 90% interval (two one-sided tests at 5%) lies
    within ±``margin``; ``too_few_pairs`` below ``min_pairs`` sets; else ``undetermined``."""
    n = int(summary.get("n_pairs") or 0)
    if n < min_pairs:
        return "too_few_pairs"
    low, high, p = summary.get("ci_low"), summary.get("ci_high"), summary.get("p_signed_rank")
    if low is not None and p is not None and p < alpha:
        if low > 0:
            return "higher"
        if high < 0:
            return "lower"
    lo90, hi90 = equivalence.get("ci_low"), equivalence.get("ci_high")
    if lo90 is not None and hi90 is not None and -margin < lo90 and hi90 < margin:
        return "equivalent"
    return "undetermined"


def method_differences(pairs: Sequence[Pair], metric: str, *, margin: float, alpha: float = 0.05,
                       seed: int = 0) -> list[dict[str, Any]]:
    """Every two methods (name order), compared on the sibling sets where both completed: the summary of
    accuracy(a) − accuracy(b) per set (t interval, signed-rank p, HL, ...) and its word."""
    sets = _by_set(pairs)
    methods = sorted({m for by in sets.values() for m in by})
    out = []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            diffs = []
            for by in sets.values():
                if a in by and b in by:
                    ga, gb = by[a].gain(metric), by[b].gain(metric)
                    if ga is not None and gb is not None:
                        diffs.append(ga - gb)
            summary = stats.summarize_gain(diffs, seed=seed).to_dict()
            equivalence = stats.summarize_gain(diffs, confidence=1 - 2 * 0.05, seed=seed).to_dict()
            out.append({"a": a, "b": b, "n_sets": len(diffs), "difference": summary,
                        "ci90": [equivalence.get("ci_low"), equivalence.get("ci_high")],
                        "word": difference_word(summary, equivalence, margin=margin, alpha=alpha)})
    return out


def per_method(pairs: Sequence[Pair], analyse: Callable[[Sequence[Pair]], dict[str, Any]]) -> dict[str, Any]:
    """``analyse`` run on each method's own pairs (name order)."""
    return {m: analyse(ps) for m, ps in method_pairs(pairs).items()}


_WORDS = {"adds": "adds", "hurts": "hurts", "no_clear_gain": "no clear gain", "too_few_pairs": "too few pairs"}


def methods_sentence(methods: Mapping[str, Mapping[str, Any]], metric: str) -> str:
    """The verdict's sentence on the methods, each in its own words: the pooled gain averages them, and methods
    that pull apart can cancel there."""
    parts = []
    for name, m in methods.items():
        g = m["gain"][metric]
        mean = "" if g.get("mean") is None else f" ({100 * g['mean']:+.1f} pts)"
        parts.append(f"{name} {_WORDS.get(m['overall'], m['overall'])}{mean}")
    return " Per KD method (each on its own pairs): " + "; ".join(parts) + "."
