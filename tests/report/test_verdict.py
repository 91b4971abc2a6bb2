"""Tests for autokd.report.verdict: the overall word (``adds``/``hurts`` only when the 95% interval excludes 0 and
the signed-rank test agrees at 0.05; ``no_clear_gain`` otherwise; ``too_few_pairs`` below 10 pairs), and the
sentences and warnings built from the numbers."""

from __future__ import annotations

import pytest

from autokd.report.stats import summarize_gain
from autokd.report.verdict import (
    FACTOR_WORDS,
    MIN_VERDICT_PAIRS,
    OVERALL_WORDS,
    factors_sentence,
    fmt_p,
    heterogeneity_sentence,
    interval,
    overall_sentence,
    overall_word,
    pts,
    verdict_text,
    warnings_for,
)


def summary(gains):
    return summarize_gain(gains).to_dict()


def fake(n=20, *, low=0.01, high=0.03, p=0.001, hl=0.02, mean=0.02, direction=None):
    if direction is None:
        direction = 1 if mean > 0 else -1
    return {"n_pairs": n, "mean": mean, "ci_low": low, "ci_high": high, "p_signed_rank": p, "hodges_lehmann": hl,
            "confidence": 0.95, "method": "student-t", "signed_rank_direction": direction}


# --------------------------------------------------------------------------- #
# the overall word
# --------------------------------------------------------------------------- #
def test_constants():
    assert MIN_VERDICT_PAIRS == 10
    assert OVERALL_WORDS == ("adds", "hurts", "no_clear_gain", "too_few_pairs")
    assert FACTOR_WORDS == ("orthogonal", "interacts", "undetermined")


def test_a_clear_gain_adds_and_a_clear_loss_hurts():
    gains = [0.010, 0.012, 0.008, 0.011, 0.009, 0.013, 0.010, 0.007, 0.012, 0.015]
    assert overall_word(summary(gains)) == "adds"
    assert overall_word(summary([-g for g in gains])) == "hurts"


def test_interval_excluding_zero_is_not_enough_without_the_signed_rank_test():
    # five exact zeros and five +1 point gains: the t interval is above 0, but with Pratt's zero handling only the
    # 5 nonzero gains carry signs, and all-positive has two-sided p = 2/32 = 0.0625
    s = summary([0.0] * 5 + [0.01] * 5)
    assert s["ci_low"] > 0
    assert s["p_signed_rank"] == pytest.approx(0.0625)
    assert overall_word(s) == "no_clear_gain"


def test_signed_rank_alone_is_not_enough_without_the_interval():
    # eleven +1 point gains and one -15 point outlier: the signed-rank test rejects, the interval straddles 0
    s = summary([0.01] * 11 + [-0.15])
    assert s["p_signed_rank"] < 0.05
    assert s["ci_low"] < 0 < s["ci_high"]
    assert overall_word(s) == "no_clear_gain"


def test_a_skewed_gain_with_a_positive_mean_is_no_clear_gain():
    # most pairs lose a little, two gain a lot: the mean is positive, the typical pair is not better
    s = summary([-0.002] * 8 + [0.05] * 2)
    assert s["mean"] > 0 and s["hodges_lehmann"] < 0
    assert s["outliers"] == [8, 9]
    assert overall_word(s) == "no_clear_gain"


def test_the_interval_and_the_test_must_agree_on_the_direction():
    assert overall_word(fake()) == "adds"
    assert overall_word(fake(direction=-1)) == "no_clear_gain"
    assert overall_word(fake(low=-0.03, high=-0.01, hl=-0.02, mean=-0.02)) == "hurts"
    assert overall_word(fake(low=-0.03, high=-0.01, hl=0.001, mean=-0.02, direction=1)) == "no_clear_gain"
    assert overall_word(fake(low=-0.001)) == "no_clear_gain"


def test_many_zero_gains_do_not_hide_a_consistent_gain():
    # Saturated pairs gain exactly 0; the rest gain one or two images. Hodges-Lehmann is 0 here, but the interval
    # excludes 0 and the signed-rank test leans positive and rejects: KD adds.
    s = summary([0.0] * 22 + [0.02] * 8)
    assert s["hodges_lehmann"] == 0 and s["ci_low"] > 0 and s["p_signed_rank"] < 0.05
    assert s["signed_rank_direction"] == 1
    assert overall_word(s) == "adds"


def test_the_signed_rank_p_must_be_below_alpha():
    assert overall_word(fake(p=0.049)) == "adds"
    assert overall_word(fake(p=0.05)) == "no_clear_gain"
    assert overall_word(fake(p=None)) == "no_clear_gain"  # all gains zero: nothing to test
    assert overall_word(fake(p=0.03), alpha=0.01) == "no_clear_gain"
    assert overall_word(fake(low=None, high=None)) == "no_clear_gain"


def test_too_few_pairs_below_ten_whatever_the_numbers():
    nine = [0.010, 0.012, 0.008, 0.011, 0.009, 0.013, 0.010, 0.007, 0.012]
    s = summary(nine)
    assert s["ci_low"] > 0 and s["p_signed_rank"] < 0.05
    assert overall_word(s) == "too_few_pairs"
    assert overall_word(summary(nine + [0.015])) == "adds"
    assert overall_word(summary([])) == "too_few_pairs"
    assert overall_word(fake(n=9)) == "too_few_pairs"
    assert overall_word(fake(n=5), min_pairs=5) == "adds"


# --------------------------------------------------------------------------- #
# sentences
# --------------------------------------------------------------------------- #
def test_number_formats():
    assert pts(0.0123) == "+1.2" and pts(-0.0123) == "-1.2" and pts(0.0123, sign=False) == "1.2"
    assert pts(None) == "-"
    assert interval(0.011, 0.025) == "1.1–2.5"
    assert interval(-0.006, 0.010) == "-0.6 to +1.0"
    assert interval(None, 0.01) == "-"
    assert fmt_p(0.0004) == "< 0.001"
    assert fmt_p(0.004) == "= 0.004"
    assert fmt_p(0.31) == "= 0.31"
    assert fmt_p(None) == "-"


def test_a_p_value_below_alpha_is_never_printed_as_alpha():
    # "adds ... signed-rank p = 0.05" would contradict the rule p < 0.05
    assert fmt_p(0.046) == "= 0.046"
    assert fmt_p(0.0496) == "< 0.05"
    assert fmt_p(0.0625) == "= 0.062"
    assert fmt_p(0.05) == "= 0.050"
    for p in (0.0451, 0.0495, 0.04999, 0.049999999):
        text = fmt_p(p)
        assert text == "< 0.05" or float(text.removeprefix("= ")) < 0.05, (p, text)


def test_overall_sentences_show_the_numbers():
    s = fake(n=24, low=0.011, high=0.025, p=0.0004, hl=0.017, mean=0.018)
    assert overall_sentence("adds", s, unit="pair") == (
        "KD adds +1.8 pts (95% CI 1.1–2.5, student-t over 24 pairs; signed-rank p < 0.001; Hodges–Lehmann +1.7).")
    hurt = fake(n=12, low=-0.02, high=-0.004, p=0.004, hl=-0.011, mean=-0.012)
    assert overall_sentence("hurts", hurt, unit="configuration") == (
        "KD hurts: -1.2 pts (95% CI -2.0 to -0.4, student-t over 12 configurations; signed-rank p = 0.004; "
        "Hodges–Lehmann -1.1).")
    flat = fake(n=24, low=-0.006, high=0.010, p=0.41, hl=0.001, mean=0.002)
    assert overall_sentence("no_clear_gain", flat, unit="pair").startswith(
        "No clear KD gain: +0.2 pts (95% CI -0.6 to +1.0, student-t over 24 pairs; signed-rank p = 0.41;")


def test_too_few_pairs_still_shows_the_numbers():
    s = summary([0.01, 0.02, 0.015])
    text = overall_sentence("too_few_pairs", s, unit="pair")
    assert text.startswith("Too few KD pairs to judge (3 pairs; need at least 10): mean gain +1.5 pts (95% CI ")
    assert "Hodges–Lehmann +1.5" in text
    one = overall_sentence("too_few_pairs", summary([0.01]), unit="pair")
    assert "(1 pair;" in one and "95% CI -" in one
    assert overall_sentence("too_few_pairs", summary([]), unit="pair") == (
        "No complete KD pairs yet (need at least 10).")


FACTORS = [
    {"factor": "compress.bits", "verdict": "interacts",
     "max_difference": {"high": "4", "low": "32", "estimate": 0.031}},
    {"factor": "model.width_mult", "verdict": "orthogonal"},
    {"factor": "train.label_smoothing", "verdict": "orthogonal"},
    {"factor": "train.augment", "verdict": "undetermined", "pairs_needed": 60},
    {"factor": "train.lr", "verdict": "undetermined", "pairs_needed": None},
]


def test_factors_sentence_names_each_word():
    text = factors_sentence(FACTORS, {"fitted": True}, 0.01)
    assert text == ("Per technique, orthogonal to KD within ±1.0 pts: width_mult, label_smoothing; "
                    "interacts: KD adds 3.1 pts more at bits 4 than at 32; "
                    "undetermined: augment (≈60 pairs would settle it), lr.")
    on_off = [{"factor": "train.augment", "verdict": "interacts",
               "max_difference": {"high": "False", "low": "True", "estimate": 0.02}}]
    assert "KD adds 2.0 pts more at augment off than at on" in factors_sentence(on_off, {"fitted": True}, 0.01)
    unfitted = [dict(f, verdict="undetermined") for f in FACTORS[:2]]
    assert factors_sentence(unfitted, {"fitted": False, "reason": "needs >= 8 pairs"}, 0.02) == (
        "Per technique, undetermined (needs >= 8 pairs): bits, width_mult.")
    assert factors_sentence([], {"fitted": False}, 0.01) == "No other technique varies across the pairs."


def test_verdict_text_counts_lost_pairs():
    common = {"word": "adds", "summary": fake(), "factors": FACTORS[1:2], "model": {"fitted": True},
              "margin": 0.01, "heterogeneity": None}
    assert "lost" not in verdict_text(**common, n_lost=0)
    one = verdict_text(**common, n_lost=1)
    assert one.startswith("KD adds +2.0 pts") and " 1 pair lost. Per technique, " in one
    assert " 3 pairs lost. " in verdict_text(**common, n_lost=3)
    assert "over 20 configurations" in verdict_text(**common, n_lost=0, unit="configuration")


def test_heterogeneity_sentence():
    het = {"tau": 0.002, "tau_low": 0.0, "tau_high": 0.004, "confidence": 0.9, "same_everywhere": True}
    text = heterogeneity_sentence(het, 0.01)
    assert text.startswith("Between-configuration SD of the gain beyond seed noise τ = 0.2 pts (90% CI 0.0–0.4; seed noise given one view pool")
    assert "the same everywhere" in text and "0.5" in text
    wide = heterogeneity_sentence(dict(het, tau_high=0.02, same_everywhere=False), 0.01)
    assert "same everywhere" not in wide and wide.endswith(".")
    assert heterogeneity_sentence(None, 0.01) is None
    assert heterogeneity_sentence({"tau": None}, 0.01) is None
    common = {"word": "adds", "summary": fake(), "factors": [], "model": {}, "margin": 0.01, "n_lost": 0}
    assert verdict_text(**common, heterogeneity=het).endswith(text)


# --------------------------------------------------------------------------- #
# warnings
# --------------------------------------------------------------------------- #
def warnings(**kw):
    args = {"summary": {"outliers": []}, "lost": [], "teacher": None, "pair_numbers": [], "collinear": []}
    return warnings_for(**{**args, **kw})


def test_no_warnings_when_nothing_is_wrong():
    assert warnings() == []


def test_teacher_worse_on_its_views_is_suspect():
    (w,) = warnings(teacher={"train_accuracy": 0.99, "view_accuracy": 0.80, "val_accuracy": 0.97})
    assert "less accurate on its augmented views" in w and "suspect" in w
    assert "19.0 pts" in w and "(80.0%)" in w
    assert warnings(teacher={"train_accuracy": 0.99, "view_accuracy": 0.97}) == []
    assert warnings(teacher={"train_accuracy": 0.99, "view_accuracy": None}) == []
    assert warnings(teacher={"view_accuracy": 0.5}) == []


def test_lost_pairs_and_outliers_and_collinearity_are_named():
    lost = [{"original": 0, "twin": 1, "failed_side": "kd_off", "reason": "boom"}]
    (w,) = warnings(lost=lost)
    assert w.startswith("1 pair lost") and "kd.lost_pairs" in w
    assert warnings(lost=lost * 2)[0].startswith("2 pairs lost")
    (w,) = warnings(summary={"outliers": [1]}, pair_numbers=[(0, 1), (6, 7), (2, 3)])
    assert "6/7" in w and "0/1" not in w and "outlier" in w
    assert w.startswith("1 pair's gain is an outlier")
    (w,) = warnings(summary={"outliers": [0, 2]}, pair_numbers=[(0, 1), (6, 7), (2, 3)])
    assert w.startswith("2 pairs' gains are outliers") and "0/1" in w and "2/3" in w
    (w,) = warnings(collinear=["compress.bits", "model.width_mult"])
    assert "bits, width_mult nearly collinear" in w


def test_an_unreachable_sample_size_is_not_quoted_to_the_pair():
    from autokd.report.verdict import factors_sentence

    factors = [{"factor": "compress.bits", "verdict": "undetermined", "pairs_needed": 9068},
               {"factor": "model.width_mult", "verdict": "undetermined", "pairs_needed": 187}]
    text = factors_sentence(factors, {"fitted": True}, 0.01)
    assert "bits (more than 1,000 pairs would be needed)" in text and "9068" not in text
    assert "width_mult (≈187 pairs would settle it)" in text


def test_a_detectable_difference_inside_the_margin_is_still_orthogonal_and_said_so():
    from autokd.report.verdict import factors_sentence

    factors = [{"factor": "compress.bits", "verdict": "orthogonal", "detectable": True},
               {"factor": "model.conv", "verdict": "orthogonal", "detectable": False}]
    text = factors_sentence(factors, {"fitted": True}, 0.01)
    assert "bits (a difference smaller than the margin is detectable), conv" in text


@pytest.mark.parametrize("n", [10, 20, 40])
def test_the_overall_word_errs_at_most_at_its_level_and_finds_a_real_gain(n):
    """Simulated against a planted truth, gains in steps of one image of a 360-image validation set (ties and
    zeros), at the pair counts where verdicts are made: with no gain, 'adds' or 'hurts' comes out at most 5% of the
    time (+3 SE); with a gain of one noise SD it comes out 'adds' most of the time."""
    import numpy as np

    from autokd.report.stats import summarize_gain

    reps, step = 600, 1 / 360
    rng = np.random.default_rng(n)
    null = np.round(rng.normal(0.0, 0.01, size=(reps, n)) / step) * step
    shifted = np.round(rng.normal(0.01, 0.01, size=(reps, n)) / step) * step
    words_null = [overall_word(summarize_gain(g).to_dict()) for g in null]
    words_gain = [overall_word(summarize_gain(g).to_dict()) for g in shifted]
    false_call = np.mean([w in ("adds", "hurts") for w in words_null])
    assert false_call <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / reps), false_call
    power = np.mean([w == "adds" for w in words_gain])
    assert "hurts" not in words_gain
    assert power >= {10: 0.6, 20: 0.9, 40: 0.99}[n], power
