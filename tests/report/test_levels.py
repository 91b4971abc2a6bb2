"""Tests for autokd.report.levels: how raw factor values become report levels, and merging of small levels."""

from __future__ import annotations

import numpy as np
import pytest

from autokd.report.levels import (
    ABSENT_LEVEL,
    MERGE_JOIN,
    Levels,
    factor_levels,
    merge_small_levels,
)


def test_prune_ratio_is_binned_with_zero_alone():
    values = [0.0, 0.1, 0.25, 0.5, 0.74, 0.75, 1.0, None]
    lv = factor_levels("compress.prune_ratio", values)
    assert lv.binning == "prune_bins"
    assert lv.labels == ("0", "(0, 0.25)", "[0.25, 0.5)", "[0.5, 0.75)", "[0.5, 0.75)", "[0.75, 1]",
                         "[0.75, 1]", ABSENT_LEVEL)
    assert lv.order == ("0", "(0, 0.25)", "[0.25, 0.5)", "[0.5, 0.75)", "[0.75, 1]", ABSENT_LEVEL)
    assert lv.ordered


def test_prune_values_outside_the_edges_and_custom_bins():
    lv = factor_levels("p", [-0.5, 2.0, 0.3], prune_param="p", prune_bins=(0.0, 0.5, 1.0))
    assert lv.labels == ("<0", ">1", "(0, 0.5)")
    assert lv.order == ("<0", "(0, 0.5)", ">1")
    lv = factor_levels("p", [0.0, 0.05, 0.2, 0.6], prune_param="p", prune_bins=(0.1, 0.5, 1.0))
    assert lv.labels == ("0", "<0.1", "[0.1, 0.5)", "[0.5, 1]")


def test_prune_param_that_is_not_numeric_is_categorical():
    lv = factor_levels("compress.prune_ratio", ["low", "high", "low"])
    assert lv.binning is None and lv.order == ("high", "low") and not lv.ordered


def test_many_float_values_become_tertiles():
    values = [0.1 * i for i in range(1, 10)]  # 9 distinct floats > max_levels 6
    lv = factor_levels("train.lr", values)
    assert lv.binning == "tertiles"
    q1, q2 = np.quantile(values, [1 / 3, 2 / 3])
    first, second, third = f"[0.1, {q1:.3g})", f"[{q1:.3g}, {q2:.3g})", f"[{q2:.3g}, 0.9]"
    assert lv.order == (first, second, third)
    assert lv.labels[0] == first and lv.labels[-1] == third
    assert sorted(lv.counts().values()) == [3, 3, 3]
    # ints are never binned into tertiles; few floats stay categorical
    assert factor_levels("x", list(range(10))).binning is None
    assert factor_levels("x", [0.5, 1.0, 0.5]).binning is None
    assert factor_levels("x", values, max_levels=9).binning is None


def test_categorical_labels_and_order():
    lv = factor_levels("model.width_mult", [1.0, 0.25, np.float64(0.5), None, 0.25])
    assert lv.labels == ("1.0", "0.25", "0.5", ABSENT_LEVEL, "0.25")
    assert lv.order == ("0.25", "0.5", "1.0", ABSENT_LEVEL)
    lv = factor_levels("compress.bits", [32, 4, np.int64(8)])
    assert lv.order == ("4", "8", "32") and lv.ordered
    lv = factor_levels("train.augment", [True, False, np.bool_(True)])
    assert lv.labels == ("True", "False", "True") and lv.order == ("False", "True")
    lv = factor_levels("mixed", ["b", 2, "a", 10])
    assert lv.order == ("2", "10", "a", "b") and not lv.ordered
    assert factor_levels("empty", []).order == ()


def test_invalid_arguments_raise():
    with pytest.raises(ValueError):
        factor_levels("", [1, 2])
    with pytest.raises(ValueError):
        factor_levels("x", "abc")
    with pytest.raises(ValueError):
        factor_levels("x", [1, 2], prune_bins=(0.5, 0.25))
    with pytest.raises(ValueError):
        factor_levels("x", [1, 2], prune_bins=(0.5,))
    with pytest.raises(ValueError):
        factor_levels("x", [1, 2], max_levels=0)
    with pytest.raises(ValueError):
        merge_small_levels(factor_levels("x", [1, 2]), min_pairs=0)
    with pytest.raises(ValueError):
        merge_small_levels(["a", "b"])


def _levels(counts: dict, *, ordered: bool) -> Levels:
    labels = tuple(lab for lab, k in counts.items() for _ in range(k))
    return Levels(labels=labels, order=tuple(counts), binning=None, ordered=ordered)


def test_merge_ordered_joins_the_smaller_neighbour():
    lv = _levels({"0.25": 5, "0.5": 1, "0.75": 2, "1.0": 6}, ordered=True)
    merged = merge_small_levels(lv, min_pairs=3)
    # 0.5 (1 pair) joins its smaller neighbour 0.75 (2) -> 3 pairs
    label = MERGE_JOIN.join(["0.5", "0.75"])
    assert merged.order == ("0.25", label, "1.0")
    assert merged.merged_from == {label: ("0.5", "0.75")}
    assert merged.counts() == {"0.25": 5, label: 3, "1.0": 6}
    assert len(merged.labels) == len(lv.labels)


def test_merge_ordered_end_level_and_ties():
    lv = _levels({"4": 1, "8": 5, "32": 5}, ordered=True)
    merged = merge_small_levels(lv, min_pairs=3)
    assert merged.order == ("4 or 8", "32")
    # tie between neighbours: the lower one
    lv = _levels({"a": 4, "b": 2, "c": 4}, ordered=True)
    assert merge_small_levels(lv, min_pairs=3).order == ("a or b", "c")


def test_merge_categorical_joins_the_smallest_other_level():
    lv = _levels({"crop": 6, "flip": 2, "none": 2, "mix": 7}, ordered=False)
    merged = merge_small_levels(lv, min_pairs=3)
    assert merged.order == ("crop", "flip or none", "mix")
    assert merged.merged_from == {"flip or none": ("flip", "none")}


def test_merge_absent_level_is_categorical_even_for_ordered_factors():
    lv = factor_levels("w", [0.25] * 4 + [0.5] * 5 + [1.0] * 3 + [None])
    merged = merge_small_levels(lv, min_pairs=3)
    assert merged.order == ("0.25", "0.5", "1.0 or (absent)")


def test_merge_to_one_level_and_nothing_to_do():
    lv = _levels({"a": 2, "b": 1}, ordered=False)
    merged = merge_small_levels(lv, min_pairs=3)
    assert merged.order == ("a or b",) and set(merged.labels) == {"a or b"}
    lv = _levels({"a": 3, "b": 3}, ordered=True)
    assert merge_small_levels(lv, min_pairs=3) == Levels(lv.labels, lv.order, None, True, {})
