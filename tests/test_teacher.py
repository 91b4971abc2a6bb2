"""The teacher cache: trained once, then loaded; a corrupt file is set aside and rebuilt; the key depends on what
determines the teacher and on nothing else."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from autokd.data import load_dataset
from autokd.errors import CacheError
from autokd.space import space_from_dict
from autokd.teacher import get_teacher, resolve_cache_dir, teacher_key
from autokd.progress import EventLog




@pytest.fixture(scope="module")
def teacher_space():
    """A tiny teacher (width 8, one epoch) on 8 px digits, limited to 200 training images to keep it quick."""
    return space_from_dict({
        "version": 1, "name": "teach",
        "dataset": {"name": "digits", "image_size": 8, "limit": 200},
        "distill": {"kd": True, "teacher": {"family": "resnet", "width": 8, "epochs": 1}},
        "train": {"epochs": 1},
    })


@pytest.fixture(scope="module")
def data(teacher_space):
    return load_dataset(teacher_space.dataset)


@pytest.fixture(scope="module")
def trained(teacher_space, data, tmp_path_factory):
    """The first call into an empty cache folder: (folder, teacher, events)."""
    folder = tmp_path_factory.mktemp("teachers")
    events = EventLog()
    teacher = get_teacher(teacher_space, data, cache_dir=folder, progress=events)
    return folder, teacher, events


def test_miss_trains_and_writes_the_file(trained, teacher_space, data):
    folder, teacher, events = trained
    key = teacher_key(teacher_space)
    assert teacher.source == "trained"
    assert teacher.key == key
    assert (folder / f"{key}.pt").is_file()
    assert Path(teacher.path) == folder / f"{key}.pt"
    assert sorted(p.name for p in folder.iterdir()) == [f"{key}.pt"]  # no temp files left behind
    assert "teacher.start" in events.names()
    assert [d["epoch"] for d in events.of("teacher.epoch")] == [1]
    (done,) = events.of("teacher.done")
    assert done["source"] == "trained"
    assert teacher.train_logits.shape == (len(data.train_y), data.num_classes)
    assert torch.isfinite(teacher.train_logits).all()
    assert 0.0 <= teacher.val_accuracy <= 1.0


def test_hit_loads_without_training(trained, teacher_space, data, tmp_path):
    folder, first, _ = trained
    shutil.copy(folder / f"{first.key}.pt", tmp_path / f"{first.key}.pt")
    events = EventLog()
    again = get_teacher(teacher_space, data, cache_dir=tmp_path, progress=events)
    assert again.source == "cache"
    assert again.key == first.key
    assert "teacher.epoch" not in events.names() and "teacher.start" not in events.names()
    assert [d["source"] for d in events.of("teacher.done")] == ["cache"]
    torch.testing.assert_close(again.train_logits, first.train_logits)
    assert again.val_accuracy == pytest.approx(first.val_accuracy)
    for (k1, v1), (k2, v2) in zip(first.model.state_dict().items(), again.model.state_dict().items()):
        assert k1 == k2 and torch.equal(v1.cpu(), v2.cpu())
    assert not again.model.training


def test_cache_folder_from_the_environment(trained, teacher_space, data, tmp_path, monkeypatch):
    folder, first, _ = trained
    shutil.copy(folder / f"{first.key}.pt", tmp_path / f"{first.key}.pt")
    monkeypatch.setenv("AUTOKD_CACHE_DIR", str(tmp_path))
    events = EventLog()
    assert get_teacher(teacher_space, data, progress=events).source == "cache"
    assert "teacher.epoch" not in events.names()


def _assert_rebuilt(folder: Path, key: str, garbage: bytes, teacher, events: EventLog):
    path = folder / f"{key}.pt"
    assert teacher.source == "trained"
    assert [d["epoch"] for d in events.of("teacher.epoch")] == [1]
    (corrupt,) = events.of("teacher.corrupt")
    assert corrupt["path"] == str(path)
    assert corrupt["reason"]
    aside = folder / f"{key}.pt.corrupt"
    assert aside.read_bytes() == garbage  # moved aside untouched, not deleted
    # the rebuilt file is good: the next call loads it
    assert path.is_file() and path.read_bytes() != garbage


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_file_is_set_aside_and_rebuilt(trained, teacher_space, data, tmp_path, kind):
    folder, first, _ = trained
    good = (folder / f"{first.key}.pt").read_bytes()
    bad = os.urandom(256) if kind == "garbage" else good[: len(good) // 2]
    (tmp_path / f"{first.key}.pt").write_bytes(bad)
    events = EventLog()
    teacher = get_teacher(teacher_space, data, cache_dir=tmp_path, progress=events)
    _assert_rebuilt(tmp_path, first.key, bad, teacher, events)
    assert get_teacher(teacher_space, data, cache_dir=tmp_path).source == "cache"


def test_file_of_another_key_is_not_trusted(trained, teacher_space, data, tmp_path):
    """A valid teacher file under the wrong name (another key) is set aside, not loaded."""
    folder, first, _ = trained
    other = space_from_dict(teacher_space.model_dump(mode="json"), overrides=["distill.teacher.lr=0.1"])
    other_key = teacher_key(other)
    assert other_key != first.key
    wrong = (folder / f"{first.key}.pt").read_bytes()
    (tmp_path / f"{other_key}.pt").write_bytes(wrong)
    events = EventLog()
    teacher = get_teacher(other, data, cache_dir=tmp_path, progress=events)
    _assert_rebuilt(tmp_path, other_key, wrong, teacher, events)


def test_key_ignores_searched_student_fields(tiny_space):
    base = teacher_key(space_from_dict(tiny_space))
    for override in ["model.width_mult={choices: [0.5, 1.0]}", "model.kernel_size=5", "distill.kd=false",
                     "distill.alpha=0.5", "distill.temperature=2.0", "train.epochs=7", "train.lr=0.1",
                     "search.n_trials=9", "search.seed=3", "name=other", "model.conv=standard"]:
        assert teacher_key(space_from_dict(tiny_space, overrides=[override])) == base, override


def test_key_depends_on_what_determines_the_teacher(tiny_space):
    base = teacher_key(space_from_dict(tiny_space))
    for override in ["distill.teacher.width=16", "distill.teacher.epochs=2", "distill.teacher.lr=0.1",
                     "distill.teacher.depth=2", "dataset.image_size=16", "dataset.split_seed=1",
                     "train.seed=1", "train.batch_size=32"]:
        assert teacher_key(space_from_dict(tiny_space, overrides=[override])) != base, override


def test_resolve_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOKD_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("AUTOKD_CACHE_DIR")
    assert resolve_cache_dir() == Path("studies") / "teachers"


def test_session_cache_is_outside_the_repository():
    repo = Path(__file__).resolve().parents[1]
    cache = resolve_cache_dir().resolve()
    assert repo not in cache.parents


def test_checkpoint_is_loaded_instead_of_training(trained, teacher_space, data, tmp_path):
    _, first, _ = trained
    ckpt = tmp_path / "teacher.pt"
    torch.save(first.model.state_dict(), ckpt)
    sp = space_from_dict(teacher_space.model_dump(mode="json"),
                         overrides=[f"distill.teacher.checkpoint={ckpt}"])
    events = EventLog()
    teacher = get_teacher(sp, data, cache_dir=tmp_path / "cache", progress=events)
    assert teacher.source == "checkpoint"
    assert "teacher.epoch" not in events.names()
    torch.testing.assert_close(teacher.train_logits, first.train_logits, rtol=1e-4, atol=1e-4)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("content", [None, b"not a checkpoint"])
def test_bad_checkpoint_is_a_cache_error(teacher_space, data, tmp_path, content):
    ckpt = tmp_path / "teacher.pt"
    if content is not None:
        ckpt.write_bytes(content)
    sp = space_from_dict(teacher_space.model_dump(mode="json"), overrides=[f"distill.teacher.checkpoint={ckpt}"])
    with pytest.raises(CacheError) as exc:
        get_teacher(sp, data, cache_dir=tmp_path / "cache")
    (line,) = exc.value.lines
    assert line.startswith("distill.teacher.checkpoint: ")


def test_checkpoint_of_another_architecture_is_a_cache_error(trained, teacher_space, data, tmp_path):
    _, first, _ = trained
    ckpt = tmp_path / "teacher.pt"
    torch.save(first.model.state_dict(), ckpt)
    sp = space_from_dict(teacher_space.model_dump(mode="json"),
                         overrides=[f"distill.teacher.checkpoint={ckpt}", "distill.teacher.width=16"])
    with pytest.raises(CacheError, match="width 16"):
        get_teacher(sp, data, cache_dir=tmp_path / "cache")
