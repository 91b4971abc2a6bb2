"""The teacher trains on the view pool it labels (``distill.teacher.augment: auto``), and says how accurate it is
there."""

from __future__ import annotations

import copy

import pytest
import torch

import autokd.teacher
from autokd.data import load_dataset
from autokd.objective import prepare_inputs, view_pool
from autokd.space import space_from_dict
from autokd.teacher import augment_policy, get_teacher, teacher_key


def space(tiny_space, *, augment=True, teacher_augment="auto", views=2, seed=0, size=16, epochs=4):
    s = copy.deepcopy(tiny_space)
    s["dataset"]["image_size"] = size
    s["train"].update({"augment": augment, "augment_views": views, "seed": seed})
    s["distill"]["teacher"].update({"augment": teacher_augment, "epochs": epochs, "width": 8})
    return space_from_dict(s)


def test_policy_follows_the_space(tiny_space):
    data = load_dataset(space(tiny_space).dataset)
    sp = space(tiny_space)
    pool = view_pool(sp, data)
    assert pool is not None and pool.views.shape[:2] == (2, len(data.train_y))
    assert augment_policy(sp, pool) == {"views": 2, "shift": 2, "flip": False, "seed": 0}
    assert augment_policy(space(tiny_space, teacher_augment=False), pool) is None
    # No trial augments: no pool, a clean teacher.
    assert view_pool(space(tiny_space, augment=False), data) is None
    assert augment_policy(space(tiny_space, augment=False), None) is None


def test_the_augmentation_policy_is_part_of_the_teacher_key(tiny_space):
    sp = space(tiny_space)
    clean = teacher_key(sp, 0)
    policy = {"views": 2, "shift": 2, "flip": False, "seed": 0}
    keys = {teacher_key(sp, 0, policy), teacher_key(sp, 0, {**policy, "views": 4}),
            teacher_key(sp, 0, {**policy, "shift": 1}), teacher_key(sp, 0, {**policy, "flip": True}),
            teacher_key(sp, 0, {**policy, "seed": 1})}
    assert len(keys) == 5 and clean not in keys
    # teacher.augment itself is not part of the key: a clean teacher keeps the key it always had.
    assert teacher_key(space(tiny_space, teacher_augment=False), 0) == clean


def test_an_augmented_teacher_trains_on_the_pool_and_labels_it_better(tiny_space, tmp_path, monkeypatch):
    """The clean teacher is measurably worse on the shifted views it labels; the consistent one is not."""
    seen = []
    real_fit = autokd.teacher.fit

    def spy(model, x, y, opt, **kw):
        seen.append(x.dim())
        return real_fit(model, x, y, opt, **kw)

    monkeypatch.setattr(autokd.teacher, "fit", spy)
    torch.set_num_threads(1)
    results = {}
    for mode in ("auto", False):
        sp = space(tiny_space, teacher_augment=mode, views=4, epochs=6)
        data = load_dataset(sp.dataset)
        pool = view_pool(sp, data)
        teacher = get_teacher(sp, data, pool=pool, cache_dir=tmp_path / str(mode))
        prepare_inputs(sp, data, teacher=teacher, pool=pool)
        results[mode] = teacher
    assert seen == [5, 4]  # (views, N, C, H, W) for the consistent teacher; clean images for the other
    auto, clean = results["auto"], results[False]
    assert auto.augmented and not clean.augmented
    assert auto.key != clean.key
    for t in (auto, clean):
        s = t.summary()
        assert set(s) >= {"train_accuracy", "val_accuracy", "test_accuracy", "view_accuracy"}
        assert all(0.0 <= s[k] <= 1.0 for k in ("train_accuracy", "val_accuracy", "test_accuracy", "view_accuracy"))
    # The clean teacher loses accuracy on the shifted views; the teacher trained on them does not.
    assert clean.train_accuracy - clean.view_accuracy > 0.05
    assert auto.view_accuracy > clean.view_accuracy + 0.05


def test_cached_augmented_teacher_is_reused(tiny_space, tmp_path):
    sp = space(tiny_space, epochs=1)
    data = load_dataset(sp.dataset)
    pool = view_pool(sp, data)
    first = get_teacher(sp, data, pool=pool, cache_dir=tmp_path)
    again = get_teacher(sp, data, pool=pool, cache_dir=tmp_path)
    assert (first.source, again.source) == ("trained", "cache")
    assert again.augmented and again.key == first.key
    torch.testing.assert_close(again.train_logits, first.train_logits)


@pytest.mark.parametrize("value, ok", [("auto", True), (False, True), (True, False), ("yes", False)])
def test_teacher_augment_values(tiny_space, value, ok):
    s = copy.deepcopy(tiny_space)
    s["distill"]["teacher"]["augment"] = value
    if ok:
        assert space_from_dict(s).distill.teacher.augment == value
    else:
        from autokd.errors import SpaceError

        with pytest.raises(SpaceError, match="distill.teacher.augment"):
            space_from_dict(s)


def test_a_teacher_of_another_policy_is_refused(tiny_space, tmp_path):
    """A clean teacher handed to a space whose teacher should train on the pool is a programming error."""
    sp = space(tiny_space, epochs=1)
    data = load_dataset(sp.dataset)
    clean = get_teacher(space(tiny_space, epochs=1, augment=False), data, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="augmentation policy"):
        prepare_inputs(sp, data, teacher=clean)
