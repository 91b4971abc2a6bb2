"""Small statistics over paired KD gains, each returning plain numbers and naming its method.

Pure numpy/scipy: no optuna, torch or rich. Every interval and test here has a simulation test of its coverage or
error rate at the pair counts where verdicts are made (5-40 pairs): see ``tests/report/test_stats.py`` and
``bench/orthogonality.py``.

Statistical choices:

* A gain is metric(KD on) - metric(KD off) for one KD twin. Accuracies move in steps of one validation image, so
  gains are **discrete: ties and exact zeros are normal**, not a corner case.
* Mean gain: **Student-t interval** (assumes a roughly symmetric gain distribution; simulated coverage stays >= 0.93
  from 5 pairs for normal and t(3) gains, and is reported, not promised, for skewed gains with outliers).
* Centre of the gains: **Wilcoxon signed-rank** test with mid-ranks and Pratt's zero handling, its p-value taken from
  the exact sign-flip (permutation) distribution -- the textbook normal approximation and scipy's ``method='exact'``
  table are both wrong under ties. **Hodges-Lehmann** estimate (median of Walsh averages) goes with it.
* Distribution-free sign summaries: win rate (zeros count half) and the **exact sign test** (zeros dropped).
* Outliers: Iglewicz-Hoaglin modified z-score (|x - median| > 3.5 robust SDs); flagged, never dropped.
* Relative error reduction is pooled (ratio of summed errors): a per-pair ratio is undefined when a model makes no
  error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats as _st

MIN_INTERVAL_PAIRS = 3  # no interval (overall or per level) is shown from fewer pairs

__all__ = [
    "GainSummary",
    "hodges_lehmann",
    "holm_adjust",
    "outlier_indices",
    "relative_error_reduction",
    "signed_rank_test",
    "summarize_gain",
    "t_interval",
]

_MAX_EXACT = 300  # nonzero gains up to which the signed-rank null distribution is computed exactly
_N_FLIPS = 20_000  # Monte-Carlo sign flips above that
_OUTLIER_Z = 3.5  # Iglewicz & Hoaglin (1993) cut-off for the modified z-score
_MIN_OUTLIER_N = 5


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjustment (controls the family-wise error rate)."""
    p = np.asarray(list(pvalues), dtype=float)
    if p.ndim != 1 or np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("pvalues must be a 1-D sequence of numbers in [0, 1]")
    m = p.size
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return [float(x) for x in adjusted]


def t_interval(values: Sequence[float], *, confidence: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean of ``values`` (None below 2 values)."""
    x = np.asarray(values, dtype=float)
    n = x.size
    if n < 2:
        return None
    mean = float(x.mean())
    se = float(x.std(ddof=1)) / np.sqrt(n)
    half = float(_st.t.ppf(0.5 + confidence / 2.0, n - 1)) * se
    return mean - half, mean + half


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def as_values(values: Any, name: str = "gains") -> np.ndarray:
    """``values`` as a 1-D float array of finite numbers (bools refused), else ValueError naming ``name``."""
    if isinstance(values, (str, bytes, Mapping)):
        raise ValueError(f"{name} must be a 1-D sequence of numbers, got {type(values).__name__}")
    if isinstance(values, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) for v in values):
        raise ValueError(f"{name} must hold numbers, not bools")
    try:
        x = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a 1-D sequence of numbers: {exc}") from None
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return x


def _snap(x: np.ndarray) -> np.ndarray:
    """Round away float noise so that equal accuracy differences tie and tiny ones become exact zeros.

    (0.3 - 0.2) != (0.2 - 0.1) in floating point; left alone, such noise would split ties and change ranks.
    Values are rounded to 1e-10 of the largest |gain| -- far below one validation image.
    """
    scale = float(np.max(np.abs(x))) if x.size else 0.0
    if scale == 0.0:
        return np.zeros_like(x)
    return np.round(x / scale, 10) * scale


def jsonable(value: Any) -> Any:
    """Plain JSON-able Python data: numpy scalars unwrapped, non-finite floats as None, tuples as lists."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _float_or_none(value)
    return value


def _float_or_none(v: Any) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


# --------------------------------------------------------------------------- #
# signed-rank test
# --------------------------------------------------------------------------- #
def _signed_rank_p_exact(ranks2: np.ndarray, w_obs: int) -> float:
    """Exact two-sided p of W = sum(sign * rank) over all 2^m sign patterns.

    ``ranks2`` are doubled mid-ranks (integers), so W is an exact integer. The null distribution of
    R+ = sum of ranks given a + sign is built by convolution (one rank at a time), which equals enumerating all
    2^m sign flips in O(m * sum(ranks)) instead of O(2^m). By symmetry W = 2 R+ - sum(ranks).
    """
    total = int(ranks2.sum())
    dist = np.ones(1)
    for r in ranks2.astype(int):
        new = np.zeros(dist.size + r)
        new[: dist.size] += 0.5 * dist
        new[r:] += 0.5 * dist
        dist = new
    w = 2 * np.arange(total + 1) - total
    return float(min(1.0, dist[np.abs(w) >= abs(w_obs)].sum()))


def _signed_rank_p_mc(ranks2: np.ndarray, w_obs: int, seed: int, n_flips: int = _N_FLIPS) -> float:
    """Monte-Carlo two-sided p, (1 + #{|W*| >= |W|}) / (1 + B), over B seeded random sign flips."""
    rng = np.random.default_rng(seed)
    a = ranks2.astype(np.int64)
    hits, done = 0, 0
    while done < n_flips:
        b = min(2_000, n_flips - done)
        signs = rng.integers(0, 2, size=(b, a.size), dtype=np.int64) * 2 - 1
        hits += int(np.count_nonzero(np.abs(signs @ a) >= abs(w_obs)))
        done += b
    return (1 + hits) / (1 + n_flips)


def signed_rank_test(gains: Sequence[float], *, zero_method: str = "pratt", seed: int = 0) -> tuple[float | None, str]:
    """Two-sided Wilcoxon signed-rank test of "gains are symmetric about 0"; returns (p, description).

    Ties get mid-ranks. ``zero_method='pratt'`` (default) ranks |gains| *with* the zeros, then gives zeros no sign;
    ``'wilcox'`` drops zeros before ranking. Pratt is the default because dropping zeros makes the test
    non-monotone -- moving a gain from 0 to slightly positive can *weaken* the evidence for a positive centre (Pratt
    1959; Conover 1973) -- and zero gains are common here. The p-value comes from the permutation distribution of
    W = sum(sign * rank) under independent random signs of the m nonzero gains: exact (all 2^m patterns, by
    convolution) for m <= 300, else ``seed``-ed Monte-Carlo with 20 000 flips. Assumes independent pairs symmetric
    about their centre under the null. All-zero (or empty) gains: p is None (nothing to test).
    """
    if zero_method not in ("pratt", "wilcox"):
        raise ValueError(f"zero_method must be 'pratt' or 'wilcox', got {zero_method!r}")
    x = _snap(as_values(gains))
    name = f"Wilcoxon signed-rank, two-sided, mid-ranks, zero_method={zero_method!r}"
    if zero_method == "wilcox":
        x = x[x != 0]
    # Own implementation rather than scipy.stats.wilcoxon(method=PermutationMethod()): that option is missing from
    # older scipy the project allows (>= 1.11) and compares float statistics; doubled mid-ranks are integers, so W
    # below is compared exactly.
    ranks2 = np.rint(2 * _st.rankdata(np.abs(x))).astype(np.int64)
    nonzero = x != 0
    m = int(nonzero.sum())
    if m == 0:
        return None, f"{name}: no nonzero gains, no test"
    ranks2, w_obs = ranks2[nonzero], int(np.sum(np.sign(x[nonzero]).astype(np.int64) * ranks2[nonzero]))
    if m <= _MAX_EXACT:
        how = f"exact permutation distribution, all 2^{m} sign flips of the nonzero gains"
        return _signed_rank_p_exact(ranks2, w_obs), f"{name}; {how}"
    p = _signed_rank_p_mc(ranks2, w_obs, seed)
    return p, f"{name}; Monte-Carlo {_N_FLIPS} random sign flips of {m} gains (seed {seed}), p=(1+#>=)/(1+B)"


# --------------------------------------------------------------------------- #
# robust location, outliers, error reduction
# --------------------------------------------------------------------------- #
def hodges_lehmann(gains: Sequence[float]) -> float | None:
    """Hodges-Lehmann estimate: median of the Walsh averages (x_i + x_j) / 2, i <= j (None if empty).

    The location estimate that goes with the signed-rank test; consistent for the centre of a symmetric distribution.
    """
    x = as_values(gains)
    if x.size == 0:
        return None
    i, j = np.triu_indices(x.size)
    return float(np.median((x[i] + x[j]) / 2.0))


def outlier_indices(gains: Sequence[float]) -> list[int]:
    """Indices of gains far from the bulk: |x - median| > 3.5 robust SDs (Iglewicz-Hoaglin modified z-score).

    Robust SD = 1.4826 * MAD. When MAD is 0 (more than half the gains equal the median, common with discrete
    accuracies) it falls back to 1.2533 * mean absolute deviation from the median (both scale to the SD under
    normality); when that is 0 too, all gains are equal and nothing is flagged. Needs >= 5 gains, else [].
    """
    x = as_values(gains)
    if x.size < _MIN_OUTLIER_N:
        return []
    dev = np.abs(x - np.median(x))
    scale = 1.4826 * float(np.median(dev))
    if scale == 0.0:
        scale = 1.2533 * float(np.mean(dev))
    if scale == 0.0:
        return []
    return [int(i) for i in np.flatnonzero(dev > _OUTLIER_Z * scale)]


def relative_error_reduction(acc_on: Sequence[float], acc_off: Sequence[float]) -> float | None:
    """Pooled relative error reduction (sum err_off - sum err_on) / sum err_off, err = 1 - accuracy.

    Pooled over pairs because a per-pair ratio is undefined when the KD-off model makes no error. None with no pairs
    or when KD-off models make no error at all. Accuracies must be fractions in [0, 1], paired by position.
    """
    on, off = as_values(acc_on, "acc_on"), as_values(acc_off, "acc_off")
    if on.size != off.size:
        raise ValueError(f"acc_on and acc_off must pair up, got {on.size} and {off.size} values")
    if np.any((on < 0) | (on > 1)) or np.any((off < 0) | (off > 1)):
        raise ValueError("accuracies must be fractions in [0, 1]")
    err_off, err_on = float(np.sum(1.0 - off)), float(np.sum(1.0 - on))
    if on.size == 0 or err_off <= 0.0:
        return None
    return (err_off - err_on) / err_off


# --------------------------------------------------------------------------- #
# overall summary
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class GainSummary:
    """Overall KD gain: estimate, interval, tests and robustness checks (see :func:`summarize_gain`)."""

    n_pairs: int
    mean: float | None
    sd: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float
    method: str
    hodges_lehmann: float | None
    p_signed_rank: float | None
    signed_rank: str | None
    win_rate: float | None
    p_sign: float | None
    outliers: list[int] = field(default_factory=list)
    signed_rank_direction: int | None = None  # sign of W = sum(sign * rank): +1 gains lean positive, -1 negative

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field; non-finite floats become None."""
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, float):
                d[key] = _float_or_none(value)
        d["outliers"] = [int(i) for i in self.outliers]
        return d


def summarize_gain(gains: Sequence[float], *, confidence: float = 0.95, seed: int = 0) -> GainSummary:
    """Summarise paired gains: mean, SD (ddof=1), Student-t interval, Hodges-Lehmann, signed-rank p, win rate,
    exact sign-test p and outlier indices.

    The t interval assumes independent pairs and a roughly symmetric gain distribution (None below
    ``MIN_INTERVAL_PAIRS`` = 3 gains). Win
    rate = share of gains > 0 with exact zeros counting half; the sign test (scipy ``binomtest``, two-sided) drops
    zeros and is None when all gains are zero. No gains: every statistic is None.
    """
    x = as_values(gains)
    if not isinstance(confidence, (int, float)) or isinstance(confidence, bool) or not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}")
    n = int(x.size)
    method = "student-t"
    if n == 0:
        return GainSummary(0, None, None, None, None, float(confidence), method, None, None, None, None, None, [])
    # No interval from fewer than MIN_INTERVAL_PAIRS gains: with 2 the t interval rests on one degree of freedom.
    ci = t_interval(x, confidence=confidence) if n >= MIN_INTERVAL_PAIRS else None
    p_rank, rank_desc = signed_rank_test(x, seed=seed)
    s = _snap(x)
    wins, losses = int(np.sum(s > 0)), int(np.sum(s < 0))
    p_sign = float(_st.binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else None
    return GainSummary(
        n_pairs=n,
        mean=float(x.mean()),
        sd=float(x.std(ddof=1)) if n >= 2 else None,
        ci_low=None if ci is None else float(ci[0]),
        ci_high=None if ci is None else float(ci[1]),
        confidence=float(confidence),
        method=method,
        hodges_lehmann=hodges_lehmann(x),
        p_signed_rank=p_rank,
        signed_rank=rank_desc,
        win_rate=(wins + 0.5 * (n - wins - losses)) / n,
        p_sign=p_sign,
        outliers=outlier_indices(x),
        signed_rank_direction=_signed_rank_direction(s),
    )


def _signed_rank_direction(snapped: np.ndarray) -> int | None:
    """Sign of the Pratt signed-rank statistic W (which side the test leans to); None when every gain is 0."""
    if not np.any(snapped != 0):
        return None
    ranks = _st.rankdata(np.abs(snapped))
    w = float(np.sum(np.sign(snapped) * ranks))
    return int(np.sign(w))
