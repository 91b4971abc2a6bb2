"""The teacher cache under concurrency and change: one teacher per key however many workers ask (a file lock),
a weight hash that identifies it, data fingerprints that keep logits of other data from being trusted, image
folders that never share a key, and a diverging teacher that is reported (at ``distill.teacher.lr``) and never
cached."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import autokd.teacher
from autokd.data import data_fingerprint, dataset_key, folder_fingerprint, load_dataset
from autokd.errors import TeacherError
from autokd.objective import view_pool
from autokd.progress import EventLog
from autokd.space import space_from_dict
from autokd.teacher import get_teacher, pool_logits, teacher_key
from autokd.teacher_cache import CACHE_FORMAT, cache_lock

REPO = Path(__file__).resolve().parents[1]

SPACE = {
    "version": 1, "name": "cache",
    "dataset": {"name": "digits", "image_size": 8, "limit": 200},
    "distill": {"kd": True, "teacher": {"family": "resnet", "width": 8, "epochs": 1}},
    "train": {"epochs": 1},
}


def make_space(**teacher):
    data = json.loads(json.dumps(SPACE))
    data["distill"]["teacher"].update(teacher)
    return space_from_dict(data)


@pytest.fixture(scope="module")
def space():
    return make_space()


@pytest.fixture(scope="module")
def data(space):
    return load_dataset(space.dataset)


@pytest.fixture(scope="module")
def trained(space, data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("teachers")
    return folder, get_teacher(space, data, cache_dir=folder)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- one teacher per key: the lock -------------------------------------------------------------------------

WORKER = """
import json, sys, torch
torch.set_num_threads(1)
from autokd.data import load_dataset
from autokd.space import space_from_dict
from autokd.teacher import get_teacher
space = space_from_dict(json.loads(sys.argv[1]))
def progress(event, **data):
    print(json.dumps({"event": event, **data}), flush=True)
teacher = get_teacher(space, load_dataset(space.dataset), cache_dir=sys.argv[2], progress=progress)
torch.save(teacher.train_logits, sys.argv[3])
print(json.dumps({"result": teacher.source, "weights_hash": teacher.weights_hash}), flush=True)
"""


def test_concurrent_workers_train_the_teacher_once(space, tmp_path):
    """Two processes ask for the same teacher while a third holds its lock: both wait (saying so once), then one
    trains it and the other loads what the first wrote."""
    folder = tmp_path / "cache"
    path = folder / f"{teacher_key(space)}.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    workers, readers, lines = [], [], [[], []]
    waiting = [threading.Event(), threading.Event()]

    def read(i: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            lines[i].append(json.loads(line))
            if lines[i][-1].get("event") == "teacher.wait":
                waiting[i].set()

    with cache_lock(path, progress=lambda *a, **k: None, what="teacher", key="test"):
        for i in range(2):
            proc = subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(SPACE), str(folder),
                                     str(tmp_path / f"logits{i}.pt")], stdout=subprocess.PIPE, text=True, env=env)
            readers.append(threading.Thread(target=read, args=(i, proc), daemon=True))
            readers[-1].start()
            workers.append(proc)
        for i, event in enumerate(waiting):  # both are blocked on the lock we hold
            assert event.wait(60), f"worker {i} never waited: {lines[i]}"
    assert [proc.wait(60) for proc in workers] == [0, 0]
    for reader in readers:
        reader.join(10)
    results = [next(e for e in out if "result" in e) for out in lines]
    assert sorted(r["result"] for r in results) == ["cache", "trained"]
    assert results[0]["weights_hash"] == results[1]["weights_hash"]
    starts = [e for out in lines for e in out if e.get("event") == "teacher.start"]
    assert len(starts) == 1  # trained exactly once
    for out in lines:
        (wait,) = [e for e in out if e.get("event") == "teacher.wait"]  # reported once, though it waited twice
        assert wait == {"event": "teacher.wait", "key": teacher_key(space), "path": str(path), "what": "teacher"}
    assert torch.equal(torch.load(tmp_path / "logits0.pt"), torch.load(tmp_path / "logits1.pt"))
    assert names(folder) == [path.name]  # no lock or temp file left behind


def test_the_lock_holder_removes_a_dead_writers_temp_file(tmp_path):
    # kill -9 between atomic_save's mkstemp and its rename leaves <name><random>.tmp; the next holder removes it
    (tmp_path / "k.ptabc123.tmp").write_bytes(b"half a teacher")
    (tmp_path / "k-views-p.ptxyz.tmp").write_bytes(b"another file's")  # not this file's: left alone
    with cache_lock(tmp_path / "k.pt", progress=EventLog(), what="teacher", key="k"):
        assert names(tmp_path) == ["k-views-p.ptxyz.tmp", "k.lock"]


def test_an_uncontended_lock_says_nothing_and_leaves_nothing(tmp_path):
    events = EventLog()
    with cache_lock(tmp_path / "k.pt", progress=events, what="teacher", key="k"):
        assert names(tmp_path) == ["k.lock"]
    assert events.events == [] and names(tmp_path) == []


def test_a_waiter_whose_lock_file_was_removed_locks_the_new_one(tmp_path):
    """The holder removes the lock file before it lets go: a waiter that then holds the lock of a removed file
    must not go on beside a newcomer holding the lock of the new file."""
    path = tmp_path / "k.pt"
    inside, order = threading.Lock(), []

    def worker(name: str) -> None:
        with cache_lock(path, progress=lambda *a, **k: None, what="teacher", key="k"):
            assert inside.acquire(blocking=False), "two holders at once"
            order.append(name)
            time.sleep(0.2)
            inside.release()

    threads = [threading.Thread(target=worker, args=(str(i),)) for i in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(10)
    assert sorted(order) == ["0", "1", "2", "3"] and names(tmp_path) == []


# --- the weight hash ---------------------------------------------------------------------------------------

def test_weights_hash_is_the_same_trained_or_loaded(trained, space, data):
    folder, first = trained
    again = get_teacher(space, data, cache_dir=folder)
    assert again.source == "cache" and first.source == "trained"
    assert len(first.weights_hash) == 16 and int(first.weights_hash, 16) >= 0
    assert again.weights_hash == first.weights_hash
    assert first.summary()["weights_hash"] == first.weights_hash
    other = get_teacher(make_space(lr=0.1), data, cache_dir=folder)
    assert other.weights_hash != first.weights_hash


def test_a_checkpoint_teacher_has_the_hash_of_its_weights(trained, data, tmp_path):
    _, first = trained
    ckpt = tmp_path / "teacher.pt"
    torch.save(first.model.state_dict(), ckpt)
    events = EventLog()
    teacher = get_teacher(make_space(checkpoint=str(ckpt)), data, progress=events)
    assert teacher.source == "checkpoint" and teacher.weights_hash == first.weights_hash
    assert events.of("teacher.done")[0]["weights_hash"] == first.weights_hash


# --- data fingerprints -------------------------------------------------------------------------------------

def test_data_fingerprint_sees_bytes_shape_and_dtype():
    x, y = torch.arange(12.0).reshape(3, 4), torch.tensor([0, 1, 2])
    fp = data_fingerprint(x, y)
    assert fp == data_fingerprint(x.clone(), y.clone()) and len(fp) == 16
    assert fp == data_fingerprint(x.t().contiguous().t(), y)  # the values in C order, whatever the layout
    assert fp != data_fingerprint(x, y.flip(0))
    assert fp != data_fingerprint(x.reshape(4, 3), y)
    assert fp != data_fingerprint(x.double(), y)
    assert fp != data_fingerprint(x.clone().index_put_((torch.tensor(0), torch.tensor(0)), torch.tensor(0.5)), y)


@pytest.mark.parametrize("change", ["labels", "images"])
def test_a_teacher_of_other_data_is_rebuilt_and_says_so(trained, space, data, tmp_path, change):
    """The same shapes under the same key, other labels or images: the cached teacher is not trusted."""
    folder, first = trained
    key = teacher_key(space)
    (tmp_path / f"{key}.pt").write_bytes((folder / f"{key}.pt").read_bytes())
    if change == "labels":
        other = dataclasses.replace(data, train_y=(data.train_y + 1) % data.num_classes)  # classes renamed
    else:
        other = dataclasses.replace(data, train_x=data.train_x.flip(-1))
    events = EventLog()
    teacher = get_teacher(space, other, cache_dir=tmp_path, progress=events)
    assert teacher.source == "trained"
    (stale,) = events.of("teacher.corrupt")
    assert stale["stale"] is True and "data fingerprint differs" in stale["reason"]
    assert stale["moved_to"] == str(tmp_path / f"{key}.pt.stale")
    assert names(tmp_path) == [f"{key}.pt", f"{key}.pt.stale"]
    assert get_teacher(space, other, cache_dir=tmp_path).source == "cache"


def test_a_file_without_fingerprint_is_rebuilt_once(trained, space, data, tmp_path):
    folder, _ = trained
    key = teacher_key(space)
    blob = torch.load(folder / f"{key}.pt", weights_only=True)
    assert blob["format"] == CACHE_FORMAT and blob["data_fingerprint"]
    del blob["data_fingerprint"]  # as an older autokd wrote it
    torch.save(blob, tmp_path / f"{key}.pt")
    events = EventLog()
    assert get_teacher(space, data, cache_dir=tmp_path, progress=events).source == "trained"
    (stale,) = events.of("teacher.corrupt")
    assert stale["stale"] and "older autokd" in stale["reason"]
    events = EventLog()
    assert get_teacher(space, data, cache_dir=tmp_path, progress=events).source == "cache"
    assert events.of("teacher.corrupt") == []


def test_view_pool_logits_of_other_views_or_another_teacher_are_rebuilt(trained, data, tmp_path):
    _, first = trained
    teacher = dataclasses.replace(first, cache_dir=tmp_path)
    views = torch.stack([data.train_x, data.train_x.flip(-1)])
    good = pool_logits(teacher, views, pool_key="p")
    (path,) = tmp_path.glob("*-views-p.pt")
    assert torch.load(path, weights_only=True)["weights_hash"] == teacher.weights_hash

    events = EventLog()
    shifted = views.roll(1, dims=-1)  # same shape, other images
    pool_logits(teacher, shifted, pool_key="p", progress=events)
    assert events.names() == ["teacher.corrupt", "teacher.views"]
    assert events.of("teacher.corrupt")[0]["stale"] and "data fingerprint" in events.of("teacher.corrupt")[0]["reason"]

    pool_logits(teacher, views, pool_key="p")  # back to the first views (rebuilt)
    retrained = dataclasses.replace(teacher, models=[_perturbed(first.model)])
    events = EventLog()
    logits = pool_logits(retrained, views, pool_key="p", progress=events)
    (stale,) = events.of("teacher.corrupt")
    assert "weights hash differs" in stale["reason"]
    assert not torch.equal(logits, good)
    assert names(tmp_path) == [path.name, path.name + ".stale"]


def _perturbed(model):
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(0.5)
    return other


def test_an_augmented_teacher_is_rebuilt_when_its_pool_changes(tiny_space, tmp_path):
    tiny_space["train"]["augment"] = True
    tiny_space["train"]["augment_views"] = 2
    sp = space_from_dict(tiny_space)
    data = load_dataset(sp.dataset)
    pool = view_pool(sp, data)
    first = get_teacher(sp, data, pool=pool, cache_dir=tmp_path)
    assert first.augmented and first.source == "trained"
    assert get_teacher(sp, data, pool=pool, cache_dir=tmp_path).source == "cache"
    other = dataclasses.replace(pool, views=pool.views.flip(0))  # the same policy, other views
    events = EventLog()
    assert get_teacher(sp, data, pool=other, cache_dir=tmp_path, progress=events).source == "trained"
    assert events.of("teacher.corrupt")[0]["stale"]


# --- image folders -----------------------------------------------------------------------------------------

def _folder(root: Path, content: bytes) -> Path:
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            (root / cls / f"{i}.png").write_bytes(content)
    return root


def test_image_folders_never_share_a_key(tmp_path, tiny_space):
    one, two = _folder(tmp_path / "one", b"x" * 10), _folder(tmp_path / "two", b"y" * 10)  # same sizes, classes

    def spaces(root):
        tiny_space["dataset"] = {"name": "imagefolder", "root": str(root), "image_size": 8}
        return space_from_dict(tiny_space)

    s1, s2 = spaces(one), spaces(two)
    assert dataset_key(s1.dataset) != dataset_key(s2.dataset)
    assert teacher_key(s1) != teacher_key(s2)
    # the same folder named another way is the same dataset
    relative = spaces(os.path.relpath(one))
    assert dataset_key(relative.dataset) == dataset_key(s1.dataset) and teacher_key(relative) == teacher_key(s1)
    before = teacher_key(s1)
    (one / "a" / "3.png").write_bytes(b"z")  # another image: another dataset
    assert teacher_key(s1) != before and folder_fingerprint(one) != folder_fingerprint(two)
    # a named dataset is the same wherever it lives
    tiny_space["dataset"] = {"name": "digits", "image_size": 8}
    without = space_from_dict(tiny_space)
    tiny_space["dataset"]["root"] = str(tmp_path)
    assert dataset_key(space_from_dict(tiny_space).dataset) == dataset_key(without.dataset)
    assert teacher_key(space_from_dict(tiny_space)) == teacher_key(without)


# --- a teacher that diverges -------------------------------------------------------------------------------

def test_a_diverging_teacher_names_its_lr_and_is_not_cached(tmp_path):
    """lr 10 (within the allowed range) on the full digits: SGD with gradient clipping bounces at chance."""
    sp = space_from_dict({**SPACE, "dataset": {"name": "digits", "image_size": 8},
                          "distill": {"kd": True, "teacher": {"family": "resnet", "width": 8, "epochs": 1,
                                                              "lr": 10}}})
    with pytest.raises(TeacherError) as exc:
        get_teacher(sp, load_dataset(sp.dataset), cache_dir=tmp_path)
    (problem,) = exc.value.problems
    assert problem.path == "distill.teacher.lr"
    line = exc.value.lines[0]
    assert line.startswith("distill.teacher.lr: the teacher diverged at lr 10: ")
    assert "no better than chance" in line and "lower distill.teacher.lr, e.g. to 1" in line
    assert names(tmp_path) == []  # no .pt, .tmp or .lock


def test_a_loss_that_becomes_nan_names_the_epoch(space, data, tmp_path, monkeypatch):
    real_fit = autokd.teacher.fit

    def poisoned(model, x, y, opt, **kw):  # NaN images: the first epoch's loss is NaN
        return real_fit(model, x * float("nan"), y, opt, **kw)

    monkeypatch.setattr(autokd.teacher, "fit", poisoned)
    with pytest.raises(TeacherError, match=r"its loss became nan in epoch 1 of 2; lower distill\.teacher\.lr, "
                                           r"e\.g\. to 0\.005$"):
        get_teacher(make_space(epochs=2), data, cache_dir=tmp_path)
    assert names(tmp_path) == []


def test_a_diverging_ensemble_member_is_named(data, tmp_path, monkeypatch):
    real_fit = autokd.teacher.fit
    calls = []

    def second_poisoned(model, x, y, opt, **kw):
        calls.append(1)
        return real_fit(model, x * float("nan") if len(calls) == 2 else x, y, opt, **kw)

    monkeypatch.setattr(autokd.teacher, "fit", second_poisoned)
    with pytest.raises(TeacherError, match=r"the teacher \(ensemble member 2 of 2\) diverged"):
        get_teacher(make_space(ensemble=2), data, cache_dir=tmp_path)
    assert names(tmp_path) == [f"{teacher_key(make_space(ensemble=2), 0)}.pt"]  # the good member stays cached


def test_a_diverging_teacher_is_one_error_line_and_exit_2(cli, space_file, tiny_space, tmp_path):
    tiny_space["distill"]["teacher"]["lr"] = 10
    tiny_space["distill"]["kd"] = True
    res = cli("search", space_file(tiny_space), "--storage", f"sqlite:///{tmp_path}/s.db", "--device", "cpu",
              "--cache-dir", tmp_path / "cache")
    assert res.code == 2, res.err
    (line,) = res.error_lines
    assert "distill.teacher.lr: the teacher diverged at lr 10" in line
    assert not list((tmp_path / "cache").glob("*.pt"))
