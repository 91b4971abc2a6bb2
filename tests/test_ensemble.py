"""Ensemble teachers: each member trained once with its own seed and cached under its own key (member 0 is the
single teacher), reused by later calls and by larger ensembles; KD uses the mean of the members' logits."""

from __future__ import annotations

import copy
import dataclasses
import shutil

import pytest
import torch

from autokd.data import augment_pool, load_dataset
from autokd.errors import SpaceError
from autokd.space import space_from_dict
from autokd.teacher import ensemble_key, get_teacher, pool_logits, teacher_key
from autokd.train import predict
from autokd.progress import EventLog

BASE = {
    "version": 1, "name": "ens",
    "dataset": {"name": "digits", "image_size": 8, "limit": 200},
    "distill": {"kd": True, "teacher": {"family": "resnet", "width": 8, "epochs": 1}},
    "train": {"epochs": 1},
}


def ens_space(n: int, **teacher):
    data = copy.deepcopy(BASE)
    data["distill"]["teacher"].update(ensemble=n, **teacher)
    return space_from_dict(data)




@pytest.fixture(scope="module")
def data():
    return load_dataset(ens_space(1).dataset)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """An ensemble of 2 trained into an empty folder: (folder, teacher, events)."""
    folder = tmp_path_factory.mktemp("ensemble")
    events = EventLog()
    teacher = get_teacher(ens_space(2), data, cache_dir=folder, progress=events)
    return folder, teacher, events


def cached_logits(folder, key: str) -> torch.Tensor:
    return torch.load(folder / f"{key}.pt", weights_only=True)["train_logits"]


def test_each_member_is_trained_once_and_cached(trained):
    folder, teacher, events = trained
    sp = ens_space(2)
    keys = [teacher_key(sp, 0), teacher_key(sp, 1)]
    assert keys[0] != keys[1]
    assert [(d["member"], d["key"]) for d in events.of("teacher.start")] == [(0, keys[0]), (1, keys[1])]
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{k}.pt" for k in keys)
    assert teacher.source == "trained"
    assert len(teacher.models) == 2 and teacher.model is teacher.models[0]
    assert teacher.key == ensemble_key(sp) and teacher.key not in keys
    assert teacher.cache_dir == folder and teacher.path == folder / f"{keys[0]}.pt"
    (done,) = events.of("teacher.done")
    assert done["members"] == 2 and done["source"] == "trained"
    # the members differ (different seeds)
    assert not torch.equal(cached_logits(folder, keys[0]), cached_logits(folder, keys[1]))


def test_ensemble_logits_are_the_mean_of_the_members(trained, data):
    folder, teacher, _ = trained
    sp = ens_space(2)
    members = torch.stack([cached_logits(folder, teacher_key(sp, i)) for i in range(2)])
    torch.testing.assert_close(teacher.train_logits, members.mean(0))
    assert teacher.train_logits.shape == (len(data.train_y), data.num_classes)
    # accuracy is that of the mean logits
    mean_val = torch.stack([predict(m, data.val_x) for m in teacher.models]).mean(0)
    assert teacher.val_accuracy == pytest.approx(float((mean_val.argmax(1) == data.val_y).float().mean()))


def test_later_call_reuses_every_member(trained, data):
    folder, first, _ = trained
    events = EventLog()
    again = get_teacher(ens_space(2), data, cache_dir=folder, progress=events)
    assert events.of("teacher.start") == [] and events.of("teacher.epoch") == []
    assert again.source == "cache" and again.key == first.key
    torch.testing.assert_close(again.train_logits, first.train_logits)
    assert again.val_accuracy == pytest.approx(first.val_accuracy)


def test_member_0_is_the_single_teacher(trained, data):
    folder, ens, _ = trained
    single = ens_space(1)
    assert teacher_key(single) == teacher_key(ens_space(2), 0) == teacher_key(ens_space(5), 0)
    assert ensemble_key(single) == teacher_key(single)
    events = EventLog()
    teacher = get_teacher(single, data, cache_dir=folder, progress=events)
    assert events.of("teacher.start") == []
    assert teacher.source == "cache" and teacher.key == teacher_key(single)
    torch.testing.assert_close(teacher.train_logits, cached_logits(folder, teacher_key(single)))
    assert not torch.equal(teacher.train_logits, ens.train_logits)


def test_growing_the_ensemble_trains_only_the_new_member(trained, data, tmp_path):
    folder, _, _ = trained
    for f in folder.iterdir():
        shutil.copy(f, tmp_path / f.name)
    events = EventLog()
    three = get_teacher(ens_space(3), data, cache_dir=tmp_path, progress=events)
    assert [d["member"] for d in events.of("teacher.start")] == [2]
    assert three.source == "trained" and len(three.models) == 3
    assert three.key == ensemble_key(ens_space(3)) != ensemble_key(ens_space(2))
    assert (tmp_path / f"{teacher_key(ens_space(3), 2)}.pt").is_file()


def test_pool_logits_of_an_ensemble_average_the_members(trained, data, tmp_path):
    _, teacher, _ = trained
    teacher = dataclasses.replace(teacher, cache_dir=tmp_path)
    pool = augment_pool(data.train_x, views=2, seed=0, flip=False)
    logits = pool_logits(teacher, pool, pool_key="p")
    assert logits.shape == (2, len(data.train_y), data.num_classes)
    for v in range(2):
        expected = torch.stack([predict(m, pool[v]) for m in teacher.models]).mean(0)
        torch.testing.assert_close(logits[v], expected)
    assert (tmp_path / f"{teacher.key}-views-p.pt").is_file()


def test_the_key_ignores_the_ensemble_size_and_checkpoint():
    assert teacher_key(ens_space(1)) == teacher_key(ens_space(4))
    assert teacher_key(ens_space(2), 1) != teacher_key(ens_space(2), 0)
    # member i is trained with train.seed + i: the seed shifts the members
    shifted = copy.deepcopy(BASE)
    shifted["train"]["seed"] = 1
    assert teacher_key(space_from_dict(shifted), 0) == teacher_key(ens_space(2), 1)


def test_checkpoint_and_ensemble_is_a_validation_error(tmp_path):
    with pytest.raises(SpaceError) as exc:
        ens_space(2, checkpoint=str(tmp_path / "t.pt"))
    assert [p.path for p in exc.value.problems] == ["distill.teacher.ensemble"]
    assert "checkpoint" in exc.value.problems[0].message
    ens_space(1, checkpoint=str(tmp_path / "t.pt"))  # one checkpoint teacher is fine


def test_checkpoint_and_ensemble_through_the_cli(cli, space_file):
    path = space_file("""\
    version: 1
    name: ens
    dataset:
      name: digits
    distill:
      kd: true
      teacher:
        checkpoint: teacher.pt
        ensemble: 3
    """)
    res = cli("validate", path)
    assert res.code == 2, (res.out, res.err)
    assert "Traceback" not in res.out + res.err
    assert len(res.err_lines) == 1, res.err
    assert res.err_lines[0].startswith(f"error: {path}:9: distill.teacher.ensemble: "), res.err_lines[0]


@pytest.mark.parametrize("n", [0, 17])
def test_ensemble_size_bounds(n):
    with pytest.raises(SpaceError) as exc:
        ens_space(n)
    assert [p.path for p in exc.value.problems] == ["distill.teacher.ensemble"]
