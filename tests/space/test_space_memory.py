"""``validate`` refuses a space whose data would not fit in memory, with the estimate in the one located line; the
estimate matches the tensors :mod:`autokd.data` really builds."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from autokd.errors import SpaceError
from autokd.space import MEMORY_LIMIT_ENV, check_memory, estimate_memory, load_space, space_from_dict, validate_data
from autokd.space import memory
from autokd.space.memory import MemoryLimit, available_memory, count_imagefolder, memory_limit

REPO = Path(__file__).resolve().parents[2]
GB = 10**9

BIG_TEXT = """\
version: 1
name: big
dataset:
  name: cifar10
  root: data
  image_size: 1024
train:
  augment: {choices: [true, false]}
  augment_views: 4
"""


@pytest.fixture(autouse=True)
def _no_limit_from_outside(monkeypatch):
    """The machine's own memory unless a test sets the limit."""
    monkeypatch.delenv(MEMORY_LIMIT_ENV, raising=False)


def space(**dataset) -> object:
    return space_from_dict({"version": 1, "name": "m", "dataset": dataset})


# --- the CLI ----------------------------------------------------------------------------------------------------


def test_image_size_1024_on_cifar10_is_refused_with_the_estimate(cli, space_file):
    path = space_file(BIG_TEXT)
    res = cli("validate", path)
    assert res.code == 2 and "Traceback" not in res.err
    (line,) = res.error_lines
    # 60,000 images of 3×1024×1024 float32 = 755.0 GB; 4 views of the 40,000 training images = 2.0 TB
    assert line.startswith(f"error: {path}:6: dataset.image_size: the data would need ~2.8 TB in memory "
                           "(images 755.0 GB, view pool 2.0 TB: 60,000 float32 images of 3×1024×1024, 40,000 of "
                           "them for training in 4 views), more than 80% of the "), line
    assert re.search(r"\d GB available on this machine: lower dataset.image_size \(cifar10 is 32 px\), set "
                     r"dataset.limit, or lower train.augment_views$", line), line


def test_the_refusal_names_the_override_that_caused_it(cli, space_file):
    path = space_file(BIG_TEXT.replace("  image_size: 1024\n", ""))
    assert cli("validate", path).code == 0  # CIFAR-10 at 32 px with 4 views: ~3 GB
    res = cli("validate", path, "--set", "dataset.image_size=1024")
    assert res.code == 2
    (line,) = res.error_lines
    assert line.startswith("error: --set dataset.image_size=1024: dataset.image_size: the data would need ~2.8 TB")


def test_the_limit_can_be_set_by_the_environment(cli, space_file, tiny_space, monkeypatch):
    path = space_file(tiny_space)  # digits at 8 px: ~0.5 MB
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "100000")
    res = cli("validate", path)
    assert res.code == 2
    (line,) = res.error_lines
    assert line.startswith(f"error: {path}:5: dataset.image_size: the data would need ~503 kB in memory (images "
                           "460 kB, teacher logits 43 kB: 1,797 float32 images of 1×8×8, 1,077 of them for "
                           "training), more than the limit of 100 kB set by AUTOKD_MEMORY_LIMIT_BYTES"), line
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "1e6")
    assert cli("validate", path).code == 0
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "off")
    assert cli("validate", space_file(BIG_TEXT, "big.yaml")).code == 0


@pytest.mark.parametrize("value", ["lots", "-1", "0", "nan", "inf"])
def test_a_bad_limit_in_the_environment_is_one_line(cli, space_file, tiny_space, monkeypatch, value):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, value)
    res = cli("validate", space_file(tiny_space))
    assert res.code == 2
    assert res.error_lines == [f"error: ${MEMORY_LIMIT_ENV}: {value!r} is not a number of bytes > 0 (or 'off' to "
                               "skip the memory check)"]


def test_the_repository_spaces_fit_in_2_gb(cli, monkeypatch):
    """Every shipped space passes on a machine with 2 GB free (80%: 1.6 GB), and its estimate is far below."""
    monkeypatch.setenv(MEMORY_LIMIT_ENV, str(int(0.8 * 2 * GB)))
    totals = {}
    for path in sorted((REPO / "spaces").glob("*.yaml")):
        assert cli("validate", path).code == 0, path
        totals[path.stem] = estimate_memory(load_space(path)).total
    assert totals["mobilenet"] < 10**7 and totals["kd-augment"] < 10**7  # digits at 16 px, 4 views: ~6.5 MB
    assert totals["fashion-mnist"] < 10**8  # 26,000 images at 16 px and 4 views of 10,000: ~70 MB
    assert totals["cifar100-mobilenet"] < GB  # 60,000 images at 32 px, no views: ~755 MB


# --- the estimate against the real tensors -------------------------------------------------------------------


@pytest.mark.parametrize("dataset", [
    {"image_size": 8},
    {"image_size": 8, "val_fraction": 0.1, "test_fraction": 0.3},
    {"image_size": 12, "limit": 500, "split_seed": 3},
    {},
])
def test_the_digits_estimate_matches_the_loaded_tensors(dataset):
    from autokd.data import load_dataset
    from autokd.objective import view_pool

    sp = space_from_dict({"version": 1, "name": "d", "dataset": {"name": "digits", **dataset},
                          "train": {"augment": True, "augment_views": 3}, "distill": {"kd": True}})
    est = estimate_memory(sp)
    data = load_dataset(sp.dataset)
    assert est.splits == data.sizes
    real = sum(t.nbytes for t in (data.train_x, data.val_x, data.test_x))
    assert abs(est.parts["images"] - real) <= 0.1 * real
    assert est.image_shape == tuple(data.train_x.shape[1:])
    pool = view_pool(sp, data).views
    assert abs(est.parts["view pool"] - pool.nbytes) <= 0.1 * pool.nbytes
    assert est.parts["teacher logits"] == len(data.train_y) * data.num_classes * 4
    assert est.parts["pool logits"] == 3 * est.parts["teacher logits"]
    assert est.total < 10**7 and est.peak >= est.total


def test_digits_at_8_px_is_small():
    est = estimate_memory(space(name="digits", image_size=8))
    assert est.parts == {"images": 1797 * 64 * 4, "view pool": 0, "teacher logits": 0, "pool logits": 0}
    assert est.total < 10**6


@pytest.mark.parametrize("name, split, shape", [
    ("mnist", {"train": 48000, "val": 12000, "test": 10000}, (1, 28, 28)),
    ("fashion_mnist", {"train": 48000, "val": 12000, "test": 10000}, (1, 28, 28)),
    ("cifar10", {"train": 40000, "val": 10000, "test": 10000}, (3, 32, 32)),
    ("cifar100", {"train": 40000, "val": 10000, "test": 10000}, (3, 32, 32)),
])
def test_known_datasets_are_sized_without_their_files(name, split, shape):
    est = estimate_memory(space(name=name, root="/nonexistent"))
    assert est.splits == split and est.image_shape == shape
    assert est.total == 4 * shape[0] * shape[1] * shape[2] * sum(split.values())


def test_limit_and_official_test_split():
    est = estimate_memory(space(name="fashion_mnist", image_size=16, val_fraction=0.1, limit=10000))
    assert est.splits == {"train": 10000, "val": 6000, "test": 10000}


# --- imagefolder ---------------------------------------------------------------------------------------------


def test_imagefolder_counts_the_images_under_an_existing_root(tmp_path):
    for cls, n in (("cat", 30), ("dog", 20)):
        (tmp_path / cls / "more").mkdir(parents=True)
        for i in range(n):
            (tmp_path / cls / ("more" if i % 2 else "") / f"{i}.{'PNG' if i % 3 else 'jpg'}").write_bytes(b"")
        (tmp_path / cls / "notes.txt").write_text("not an image")
    (tmp_path / "readme.md").write_text("not a class")
    assert count_imagefolder(tmp_path) == (50, 2, True)
    est = estimate_memory(space(name="imagefolder", root=str(tmp_path), image_size=16))
    assert sum(est.splits.values()) == 50 and est.image_shape == (3, 16, 16)  # ImageFolder converts to RGB
    assert estimate_memory(space(name="imagefolder", root=str(tmp_path))).image_shape == (3, 64, 64)


def test_imagefolder_without_its_folder_is_not_estimated(tmp_path):
    assert estimate_memory(space(name="imagefolder", root=str(tmp_path / "missing"), image_size=1024)) is None
    assert check_memory(space(name="imagefolder", root=str(tmp_path / "missing"), image_size=1024),
                        limit=MemoryLimit(1, "one byte")) == []


def test_a_huge_imagefolder_is_counted_up_to_a_cap(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    for i in range(50):
        (tmp_path / "a" / f"{i}.png").write_bytes(b"")
    monkeypatch.setattr(memory, "COUNT_CAP", 10)
    images, classes, complete = count_imagefolder(tmp_path)
    assert classes == 1 and not complete and images >= 10
    sp = space(name="imagefolder", root=str(tmp_path), image_size=8)
    ((path, message),) = check_memory(sp, limit=MemoryLimit(100, "a test limit"))
    assert path == "dataset.image_size" and message.startswith("the data would need at least ~")


# --- the check ---------------------------------------------------------------------------------------------------


def test_the_field_to_change_is_named():
    limit = MemoryLimit(2 * GB, "a test limit")
    base = {"version": 1, "name": "m", "dataset": {"name": "cifar10"}, "train": {"augment": True}}
    # CIFAR-10 at 32 px fits (737 MB); its 4 views (1.97 GB more) do not: fewer views
    ((path, message),) = check_memory(space_from_dict(base), limit=limit)
    assert path == "train.augment_views" and message.endswith(
        "more than a test limit: lower train.augment_views, set dataset.limit, or set dataset.image_size below 32")
    # upsampled: the size
    data = copy.deepcopy(base)
    data["dataset"]["image_size"] = 64
    ((path, message),) = check_memory(space_from_dict(data), limit=limit)
    assert path == "dataset.image_size" and "lower dataset.image_size (cifar10 is 32 px)" in message
    # the images alone do not fit at their native size: the limit
    ((path, message),) = check_memory(space_from_dict(base), limit=MemoryLimit(GB // 2, "half a GB"))
    assert path == "dataset.limit" and "set dataset.image_size below 32, set dataset.limit, or lower" in message
    data = copy.deepcopy(base)
    data["dataset"]["limit"] = 30000  # 50,000 images of 12 kB: 614 MB
    ((path, message),) = check_memory(space_from_dict(data), limit=MemoryLimit(GB // 2, "half a GB"))
    assert path == "dataset.limit" and "lower dataset.limit" in message
    # one view: turn augmentation off
    data = copy.deepcopy(base)
    data["train"]["augment_views"] = 1
    ((path, message),) = check_memory(space_from_dict(data), limit=MemoryLimit(GB, "1 GB"))
    assert path == "train.augment_views" and "set train.augment: false" in message
    assert check_memory(space_from_dict(base), limit=MemoryLimit(3 * GB, "3 GB")) == []


def test_a_stored_space_is_not_checked_against_this_machine(monkeypatch):
    """A study made on a big machine must stay readable on a small one (``space_from_dict``); a space file is
    checked (``load_space``), and ``validate_data(machine=...)`` says which explicitly."""
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "1000")
    data = {"version": 1, "name": "m", "dataset": {"name": "digits", "image_size": 8}}
    space_from_dict(data)
    with pytest.raises(SpaceError, match="dataset.image_size: the data would need"):
        validate_data(data, machine=True)
    validate_data(data, source="x.yaml", machine=False)


def test_available_memory_falls_back_to_the_physical_memory(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "CGROUP_ROOT", tmp_path)  # no cgroup limit
    found = available_memory()
    assert found is not None and found[0] > 0
    monkeypatch.setattr(memory, "open", lambda *a, **k: (_ for _ in ()).throw(OSError("no /proc")), raising=False)
    phys = available_memory()
    assert phys is not None and phys[1] == "of memory in this machine" and phys[0] >= found[0] * 0.5

    def no_sysconf(name):
        raise ValueError(name)

    monkeypatch.setattr(memory.os, "sysconf", no_sysconf)
    assert available_memory() is None and memory_limit() is None
    assert check_memory(space(name="cifar10", image_size=1024)) == []  # nothing to compare with: no refusal


@pytest.mark.parametrize("files, headroom", [
    ({"memory.max": "1000000000\n", "memory.current": "300000000\n",
      "memory.stat": "anon 1\ninactive_file 100000000\n"}, 800_000_000),
    ({"memory.max": "max\n", "memory.current": "300000000\n"}, None),
    ({"memory/memory.limit_in_bytes": "2000000000\n", "memory/memory.usage_in_bytes": "500000000\n",
      "memory/memory.stat": "total_inactive_file 0\n"}, 1_500_000_000),
    ({"memory/memory.limit_in_bytes": "9223372036854771712\n", "memory/memory.usage_in_bytes": "5\n"}, None),
    ({}, None),
])
def test_a_container_limit_lowers_the_available_memory(monkeypatch, tmp_path, files, headroom):
    """In a container /proc/meminfo shows the host; the cgroup's limit less its usage is what is left."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(memory, "CGROUP_ROOT", tmp_path)
    assert memory.cgroup_headroom() == headroom
    if headroom is not None:
        assert available_memory() == (headroom, "this container may still use")
        assert memory_limit().text == "80% of the " + {800_000_000: "800 MB", 1_500_000_000: "1.5 GB"}[headroom] + \
            " this container may still use"
