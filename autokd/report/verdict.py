"""The words of the KD report, from its numbers (computed elsewhere: nothing here estimates anything).

``overall_word`` decides the overall call; the other functions only phrase what the numbers already say.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

MIN_VERDICT_PAIRS = 10  # below this the overall word is "too_few_pairs" (numbers are still shown)
OVERALL_WORDS = ("adds", "hurts", "no_clear_gain", "too_few_pairs")
FACTOR_WORDS = ("orthogonal", "interacts", "undetermined")
VIEW_ACCURACY_GAP = 0.05  # the teacher is suspect on its views when they are this far below its clean accuracy


def overall_word(summary: Mapping[str, Any], *, alpha: float = 0.05, min_pairs: int = MIN_VERDICT_PAIRS) -> str:
    """``adds`` / ``hurts`` only when the interval excludes 0 **and** the signed-rank test agrees at ``alpha``
    (same direction); ``too_few_pairs`` below ``min_pairs`` pairs; ``no_clear_gain`` otherwise."""
    n = int(summary.get("n_pairs") or 0)
    if n < min_pairs:
        return "too_few_pairs"
    low, high, p = summary.get("ci_low"), summary.get("ci_high"), summary.get("p_signed_rank")
    direction = summary.get("signed_rank_direction")  # which side the signed-rank statistic leans to
    if low is None or high is None or p is None or p >= alpha:
        return "no_clear_gain"
    if low > 0 and direction == 1:
        return "adds"
    if high < 0 and direction == -1:
        return "hurts"
    return "no_clear_gain"


def pts(x: float | None, *, sign: bool = True) -> str:
    """A fraction as accuracy points, one decimal (``+1.2``)."""
    if x is None:
        return "-"
    return f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}"


def interval(low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return "-"
    # "1.1–2.5" reads well; with a negative bound a dash is ambiguous, so say "to".
    return f"{pts(low, sign=False)}–{pts(high, sign=False)}" if low >= 0 else f"{pts(low)} to {pts(high)}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "-"
    if p < 0.001:
        return "< 0.001"
    # Three decimals up to 0.1; a p just below 0.05 never reads "= 0.05" next to a verdict that needs p < 0.05.
    text = f"{p:.3f}" if p < 0.1 else f"{p:.2f}"
    return "< 0.05" if p < 0.05 <= float(text) else f"= {text}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def level_name(level: Any) -> str:
    return {"True": "on", "False": "off"}.get(str(level), str(level))


def overall_sentence(word: str, summary: Mapping[str, Any], *, unit: str, min_pairs: int = MIN_VERDICT_PAIRS) -> str:
    n = int(summary.get("n_pairs") or 0)
    if summary.get("mean") is None:
        return f"No complete KD pairs yet (need at least {min_pairs})."
    level = round(100 * float(summary.get("confidence") or 0.95))
    ci = interval(summary.get("ci_low"), summary.get("ci_high"))
    numbers = (f"{pts(summary['mean'])} pts ({level}% CI {ci}, {summary.get('method', 'student-t')} over "
               f"{_plural(n, unit)}; signed-rank p {fmt_p(summary.get('p_signed_rank'))}; "
               f"Hodges–Lehmann {pts(summary.get('hodges_lehmann'))})")
    if word == "too_few_pairs":
        return f"Too few KD pairs to judge ({_plural(n, unit)}; need at least {min_pairs}): mean gain {numbers}."
    if word == "adds":
        return f"KD adds {numbers}."
    if word == "hurts":
        return f"KD hurts: {numbers}."
    return f"No clear KD gain: {numbers}."


def difference_phrase(factor: Mapping[str, Any]) -> str | None:
    """"KD adds 3.1 pts more at width_mult 0.25 than at 1.0" from the factor's largest level difference."""
    d = factor.get("max_difference")
    if not d or d.get("estimate") is None:
        return None
    hi, lo, est = d["high"], d["low"], float(d["estimate"])
    if est < 0:
        hi, lo, est = lo, hi, -est
    return (f"KD adds {pts(est, sign=False)} pts more at {short(factor['factor'])} {level_name(hi)} than at "
            f"{level_name(lo)}")


def factors_sentence(factors: Sequence[Mapping[str, Any]], model: Mapping[str, Any], margin: float) -> str:
    """Which techniques are orthogonal to KD, which interact, which the data do not settle."""
    if not factors:
        return "No other technique varies across the pairs."
    by = {w: [f for f in factors if f.get("verdict") == w] for w in FACTOR_WORDS}
    parts = []
    if by["orthogonal"]:
        names = ", ".join(short(f["factor"]) + (" (a difference smaller than the margin is detectable)"
                                                if f.get("detectable") else "") for f in by["orthogonal"])
        parts.append(f"orthogonal to KD within ±{pts(margin, sign=False)} pts: {names}")
    if by["interacts"]:
        phrases = [difference_phrase(f) or short(f["factor"]) for f in by["interacts"]]
        parts.append("interacts: " + "; ".join(phrases))
    if by["undetermined"]:
        if not model.get("fitted"):
            names = ", ".join(short(f["factor"]) for f in by["undetermined"])
            parts.append(f"undetermined ({model.get('reason') or 'model not fitted'}): {names}")
        else:
            items = []
            for f in by["undetermined"]:
                need, hw = f.get("pairs_needed"), f.get("half_width")
                width = f"90% half-width {pts(hw, sign=False)} pts; " if hw is not None else ""
                if need and need > 1000:
                    items.append(short(f["factor"]) + f" ({width}more than 1,000 pairs would be needed)")
                elif need or width:
                    settle = f"≈{need} pairs would settle it" if need else ""
                    items.append(short(f["factor"]) + f" ({(width + settle).rstrip('; ')})")
                else:
                    items.append(short(f["factor"]))
            parts.append("undetermined: " + ", ".join(items))
    return "Per technique, " + "; ".join(parts) + "."


def heterogeneity_sentence(het: Mapping[str, Any] | None, margin: float) -> str | None:
    if not het or het.get("tau") is None:
        return None
    level = round(100 * float(het.get("confidence") or 0.9))
    text = (f"Between-configuration SD of the gain beyond seed noise τ = {pts(het['tau'], sign=False)} pts "
            f"({level}% CI {interval(het.get('tau_low'), het.get('tau_high'))}; seed noise given one view pool, "
            "teacher and data split)")
    if het.get("same_everywhere"):
        return text + f": KD's gain is the same everywhere (upper bound below margin/2 = {pts(margin / 2, sign=False)})."
    return text + "."


def warnings_for(*, summary: Mapping[str, Any], lost: Sequence[Mapping[str, Any]],
                 teacher: Mapping[str, Any] | None, pair_numbers: Sequence[tuple[int, int]],
                 collinear: Sequence[str], refused: Sequence[Mapping[str, Any]] = (), unusable: int = 0,
                 metric: str = "val_accuracy", teacher_keys: Sequence[str] = (),
                 repeats_note: str | None = None, mixed_numerics: Sequence[tuple[int, int]] = (),
                 unsure_numerics: Sequence[tuple[int, int]] = ()) -> list[str]:
    """The caveats a reader must see next to the numbers. ``mixed_numerics``: pairs (KD on, KD off) whose two
    trials were trained by different training numerics (``numerics``, see :data:`autokd.objective.NUMERICS`);
    ``unsure_numerics``: pairs with one trial from before autokd recorded them."""
    out = []
    if refused:
        out.append(f"{_plural(len(refused), 'linked pair')} refused: the two trials differ beyond distill.kd "
                   "(see kd.refused_pairs).")
    if unusable:
        out.append(f"{_plural(unusable, 'pair')} lack a finite {metric} on one side and are left out of the statistics.")
    if repeats_note:
        out.append(repeats_note)
    if summary.get("sd") == 0 and int(summary.get("n_pairs") or 0) >= 2:
        out.append("Every pair has the same gain: the interval has no width and carries no estimate of the noise "
                   "(a saturated metric or too small a validation set?).")
    if len(set(teacher_keys)) > 1:
        out.append(f"KD trials distilled from {len(set(teacher_keys))} different teachers "
                   f"({', '.join(sorted(set(teacher_keys)))}): the pairs do not share one teacher.")
    if mixed_numerics:
        which = ", ".join(f"{a}/{b}" for a, b in mixed_numerics)
        out.append(f"{_plural(len(mixed_numerics), 'pair')} had their two trials trained by different versions of "
                   f"autokd's training numerics (trials KD on/off {which}; a study resumed across an upgrade): "
                   "their gain also holds that change, which acts like a different seed, not KD alone.")
    if unsure_numerics:
        which = ", ".join(f"{a}/{b}" for a, b in unsure_numerics)
        out.append(f"{_plural(len(unsure_numerics), 'pair')} had one trial trained before autokd recorded its "
                   f"training numerics (trials KD on/off {which}): if that trial predates channels_last training "
                   "and the mean pool, their gain also holds that change, not KD alone.")
    if lost:
        out.append(f"{_plural(len(lost), 'pair')} lost (a twin failed or did not match): see kd.lost_pairs; the "
                   "statistics use the complete pairs only.")
    outliers = list(summary.get("outliers") or [])
    if outliers:
        which = ", ".join(f"{pair_numbers[i][0]}/{pair_numbers[i][1]}" for i in outliers if i < len(pair_numbers))
        what = "pair's gain is an outlier" if len(outliers) == 1 else "pairs' gains are outliers"
        out.append(f"{len(outliers)} {what} (trials KD on/off {which}): the t interval assumes roughly symmetric "
                   "noise; the signed-rank test and the Hodges–Lehmann estimate are more robust to it.")
    if teacher and teacher.get("view_accuracy") is not None and teacher.get("train_accuracy") is not None:
        gap = teacher["train_accuracy"] - teacher["view_accuracy"]
        if gap > VIEW_ACCURACY_GAP:
            out.append(f"The teacher is {pts(gap, sign=False)} pts less accurate on its augmented views "
                       f"({pts(teacher['view_accuracy'], sign=False)}%) than on clean training images: KD numbers "
                       "under augmentation are suspect (set distill.teacher.augment: auto).")
    if collinear:
        out.append(f"The sampled design leaves {', '.join(short(c) for c in collinear)} nearly collinear with the other techniques "
                   "(GVIF^(1/(2·df)) > 2): the model cannot fully separate their effects on the gain.")
    return out


def survival_sentence(stopped: int) -> str:
    """Early stopping was on in a study with KD twins: the pairs are conditioned on survival."""
    return (f"Early stopping was on: a pair exists only if its first trial survived early stopping "
            f"({_plural(stopped, 'trial')} stopped, their twins never ran), so the pairs are conditioned on survival "
            "and the gain is measured over configurations that looked good early, not over every configuration "
            "visited (bench/early_stop.py measures the bias this adds).")


def verdict_text(*, word: str, summary: Mapping[str, Any], factors: Sequence[Mapping[str, Any]],
                 model: Mapping[str, Any], margin: float, heterogeneity: Mapping[str, Any] | None, n_lost: int,
                 unit: str = "pair") -> str:
    """The report's closing paragraph: overall word, lost pairs, per-technique orthogonality, heterogeneity."""
    parts = [overall_sentence(word, summary, unit=unit)]
    if n_lost:
        parts.append(f"{_plural(n_lost, 'pair')} lost.")
    parts.append(factors_sentence(factors, model, margin))
    het = heterogeneity_sentence(heterogeneity, margin)
    if het:
        parts.append(het)
    return " ".join(parts)
