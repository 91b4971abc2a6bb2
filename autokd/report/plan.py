"""How precise is each technique's orthogonality verdict now, and how many more pairs would reach the target?

The target is a precision: every level difference of KD's gain (the 90% intervals of
:mod:`autokd.report.orthogonality`) has a half-width of at most ``h`` (default margin / 2). A difference whose
interval reaches ``h`` and whose true value is 0 is declared ``orthogonal`` unless the Holm correction across the
k techniques holds it back (:func:`undetermined_at_target`: about 0.13, 0.17, 0.25 for k = 3, 5, 9): precision is
what a budget can buy, a decision follows from it with that probability.

**Sizing (internal pilot, Wittes & Brittain 1990).** The half-width of a difference at N pairs is predicted from its
HC3 standard error ``se`` at n pairs, which scales as sqrt((n - p) / (N - p)) for a design that grows by whole
replicates (HC3 inflates a variance by about n / (n - p), p coefficients). Its variance estimate is itself uncertain
(Bell-McCaffrey df ``nu``), and so is the final one: the ratio of the final to the pilot variance estimate is about
F(nu_N, nu) (nu_N = nu (N - p) / (n - p)), so N is the smallest size with

    t_{0.95}(nu_N)^2 * se^2 * ((n - p) / (N - p)) * F_{assurance}(nu_N, nu) <= h^2,

which reaches the target in about ``assurance`` of studies when the pilot's variance estimate is as good as its df
say. Heavy tails make it worse than that (a small pilot without an outlier under-estimates the variance, and nothing
in it shows that): one **top-up** (:func:`topup_replicates`) re-plans from all the design's pairs once the planned
replicates are done and runs the difference. Measured by ``bench/orthogonality_design.py --experiment`` (400
replications, 2 cores): with t3 noise this rule alone reached the target in 0.75-0.89 of studies, with the top-up in
0.97-1.00, at 13.5-30 replicates where a pilot df discounted for kurtosis asked 26-38 (and the cap of 40 bound);
with normal noise it asks about half of what the n / N scaling with the discount did. ``bench/orthogonality.py``
measures how often the target is reached and whether the intervals keep their coverage after sizing (Stein's
two-stage procedure does not fit a multi-factor HC3 analysis; this is why the bench, not a theorem, validates it).

Plain data in (the ``kd`` section of a report), plain data out; no optuna, torch or rich.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import stats as _st

__all__ = ["ASSURANCE", "pairs_to_reach", "plan_techniques", "replicates_for", "topup_replicates",
           "undetermined_at_target"]

ASSURANCE = 0.90  # share of studies that should reach the target half-width
CONFIDENCE = 0.90  # the level-difference intervals of the orthogonality analysis
MAX_PAIRS = 1_000_000


def _predicted(se: float, df: float, n: int, N: int, p: int, assurance: float) -> float:
    """The half-width a difference with standard error ``se`` (``df``) at ``n`` pairs reaches at ``N`` pairs in
    ``assurance`` of studies (see the module docstring)."""
    nu_n = max(1.0, df * (N - p) / max(1.0, n - p))
    t = float(_st.t.ppf(0.5 + CONFIDENCE / 2.0, nu_n))
    q = float(_st.f.ppf(assurance, nu_n, max(df, 1.0))) if assurance > 0.5 else 1.0
    # HC3 variances carry about n / (n - p) of inflation at n pairs: they shrink as (n - p) / (N - p), not n / N
    # (which sized 9-technique designs about twice as large as needed).
    return t * se * math.sqrt((n - p) / (N - p) * q)


def pairs_to_reach(differences: Sequence[Mapping[str, Any]], *, n: int, p: int, target: float, block: int = 1,
                   assurance: float = ASSURANCE) -> int | None:
    """The fewest pairs N (n plus whole blocks of ``block`` pairs) at which every difference's predicted 90%
    half-width is at most ``target`` in ``assurance`` of studies; None when a difference has no standard error,
    or when more than :data:`MAX_PAIRS` would be needed."""
    if not differences or target <= 0:
        return None
    block = max(1, int(block))
    need = n
    for d in differences:
        se, df = d.get("se"), d.get("df")
        if se is None or df is None or not math.isfinite(se):
            return None
        if se == 0:
            continue
        # A first guess from the plain scaling, then step by blocks until the prediction reaches the target.
        t = float(_st.t.ppf(0.5 + CONFIDENCE / 2.0, max(df, 1.0)))
        guess = max(n, int(n * (t * se / target) ** 2))
        N = n + block * max(0, math.ceil((guess - n) / block) - 1)
        while _predicted(se, df, n, N, p, assurance) > target:
            N += block
            if N > MAX_PAIRS:
                return None
        while N - block >= n and _predicted(se, df, n, N - block, p, assurance) <= target:
            N -= block  # the guess overshot: the fewest blocks that reach it
        need = max(need, N)
    return need


def replicates_for(kd_factors: Sequence[Mapping[str, Any]], *, n: int, p: int, points: int, target: float,
                   assurance: float = ASSURANCE) -> tuple[int | None, dict[str, int | None]]:
    """(replicates of a ``points``-point design that reach ``target`` for every technique, pairs per technique),
    sized from an analysis of ``n`` design pairs (``kd_factors``: the analysis' factor entries). None when a
    technique cannot be sized (its model was not fitted)."""
    per = {}
    for f in kd_factors:
        per[f["factor"]] = pairs_to_reach(f.get("differences") or [], n=n, p=p, target=target, block=points,
                                          assurance=assurance) if f.get("half_width") is not None else None
    if not per or any(v is None for v in per.values()):
        return None, per
    return max(1, math.ceil(max(per.values()) / points)), per


def topup_replicates(kd_factors: Sequence[Mapping[str, Any]], *, n: int, p: int, points: int, target: float,
                     replicates: int, assurance: float = ASSURANCE) -> int | None:
    """The top-up after the planned ``replicates`` ran (``n`` design pairs, analysed as ``kd_factors``): the same
    number when every technique reached ``target``, else :func:`replicates_for` re-planned from all ``n`` pairs (at
    least ``replicates``); None when a technique cannot be sized."""
    if kd_factors and all(f.get("half_width") is not None and f["half_width"] <= target for f in kd_factors):
        return replicates
    more, _ = replicates_for(kd_factors, n=n, p=p, points=points, target=target, assurance=assurance)
    return None if more is None else max(replicates, more)


def plan_techniques(kd: Mapping[str, Any], *, target: float, trial_seconds: float | None, block: int = 1,
                    assurance: float = ASSURANCE, trials_per_pair: int = 2) -> dict[str, dict[str, Any]]:
    """Per technique of a KD report section (``kd``): the half-width reached, and the pairs, trials and minutes
    (one worker, at ``trial_seconds`` a trial) still needed to reach ``target``, in whole blocks of ``block`` pairs
    (a design replicate). A pair costs ``trials_per_pair`` trials: 2 (KD on and off), or with KD methods searched
    the whole sibling set the pooled analysis counts as one unit (KD-off + one trial per method). Fractions of
    accuracy throughout (``target`` too)."""
    model = kd.get("model") or {}
    n, p = int(model.get("n_pairs") or 0), int(model.get("n_coefficients") or 0)
    out = {}
    for f in kd.get("factors") or []:
        hw = f.get("half_width")
        entry: dict[str, Any] = {"half_width": hw, "pairs_needed": None, "trials_needed": None,
                                 "minutes_needed": None, "reached": hw is not None and hw <= target,
                                 "verdict": f.get("verdict"), "reason": None}
        if hw is None:
            entry["reason"] = f.get("reason") or model.get("reason") or "not in the fitted model"
        else:
            total = pairs_to_reach(f.get("differences") or [], n=n, p=p, target=target, block=block,
                                   assurance=assurance)
            if total is None:
                entry["reason"] = f"more than {MAX_PAIRS:,} pairs would be needed"
            else:
                more = 0 if entry["reached"] else max(0, total - n)
                entry["pairs_needed"] = more
                entry["trials_needed"] = trials_per_pair * more
                if trial_seconds is not None:
                    entry["minutes_needed"] = trials_per_pair * more * trial_seconds / 60.0
        out[f["factor"]] = entry
    return out


@lru_cache(maxsize=32)
def undetermined_at_target(k: int, *, draws: int = 40_000, alpha: float = 0.05) -> float:
    """P(a technique is not declared ``orthogonal``) when its true difference is 0 and its 90% half-width is exactly
    margin / 2, with ``k`` two-level techniques in the model and Holm's correction across them (normal
    approximation; deterministic Monte Carlo). Precision at the target is not yet a decision."""
    if k < 1:
        raise ValueError("k must be >= 1")
    z = float(_st.norm.ppf(0.5 + CONFIDENCE / 2.0))
    h, m = 0.5, 1.0
    se = h / z
    est = np.abs(np.random.default_rng(12345).normal(0.0, se, (draws, k)))
    p = _st.norm.cdf((est - m) / se)
    order = np.argsort(p, axis=1)
    ranked = np.take_along_axis(p, order, axis=1) * (k - np.arange(k))
    adjusted = np.empty_like(p)
    np.put_along_axis(adjusted, order, np.minimum(1.0, np.maximum.accumulate(ranked, axis=1)), axis=1)
    orthogonal = (est[:, 0] + h < m) & (adjusted[:, 0] < alpha)
    return float(1.0 - orthogonal.mean())
