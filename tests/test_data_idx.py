"""MNIST / Fashion-MNIST from IDX files: the reader (gzipped or plain, corrupt files as one located error), the
folders looked in (flat root, torchvision's ``<root>/<Name>/raw/``, Debian's folder or ``AUTOKD_FASHION_MNIST_DIR``),
the download fallback, and one integration test over the real files of Debian's ``dataset-fashion-mnist``."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import autokd.data
from autokd.data import DEBIAN_FASHION_MNIST, load_dataset, read_idx
from autokd.errors import DataError
from autokd.space import space_from_dict

ENV = "AUTOKD_FASHION_MNIST_DIR"
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CLASSES, PER_CLASS, TEST_PER_CLASS, SIDE = 3, 10, 3, 4
TEST_OFFSET = 100  # test images have pixel values 100.., train images 0..29: a mixed-up split shows


def idx_bytes(arr: np.ndarray) -> bytes:
    """An IDX file's bytes: 0x00 0x00, type, ndim, big-endian uint32 dims, big-endian data."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B, np.dtype(np.int32): 0x0C,
            np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}[arr.dtype]
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray, *, gz: bool | None = None) -> Path:
    """Write ``arr`` as IDX; gzipped when ``gz`` (default: when the name ends in .gz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if (path.suffix == ".gz" if gz is None else gz) else data)
    return path


def fixture_arrays() -> dict[str, np.ndarray]:
    """Every image is flat with its own value (train: its index, test: 100 + index); label = value % 3."""
    n, nt = CLASSES * PER_CLASS, CLASSES * TEST_PER_CLASS
    train_v = np.arange(n, dtype=np.uint8)
    test_v = (TEST_OFFSET + np.arange(nt)).astype(np.uint8)
    return {
        FILES[0]: np.repeat(train_v, SIDE * SIDE).reshape(n, SIDE, SIDE),
        FILES[1]: (train_v % CLASSES).astype(np.uint8),
        FILES[2]: np.repeat(test_v, SIDE * SIDE).reshape(nt, SIDE, SIDE),
        FILES[3]: (test_v % CLASSES).astype(np.uint8),
    }


def write_dataset(folder: Path, *, gz: bool) -> Path:
    for name, arr in fixture_arrays().items():
        write_idx(folder / (name + (".gz" if gz else "")), arr)
    return folder


def spec(**dataset):
    return space_from_dict({"version": 1, "name": "t", "dataset": dataset}).dataset


def raw_values(splits) -> dict[str, np.ndarray]:
    """Undo the normalization (one increasing affine map for all splits): the pixel value of each image,
    recovered from the smallest (0) and largest (test's last) values the fixture holds."""
    xs = {k: getattr(splits, f"{k}_x").numpy() for k in ("train", "val", "test")}
    for x in xs.values():  # every image is still flat
        assert np.allclose(x, x[:, :, :1, :1], atol=1e-5)
    lo = min(x.min() for x in xs.values())
    hi = max(x.max() for x in xs.values())
    top = TEST_OFFSET + CLASSES * TEST_PER_CLASS - 1
    return {k: (x[:, 0, 0, 0] - lo) / (hi - lo) * top for k, x in xs.items()}


def assert_fixture_loaded(splits, *, train: int = 24, val: int = 6):
    assert splits.sizes == {"train": train, "val": val, "test": CLASSES * TEST_PER_CLASS}
    assert splits.num_classes == CLASSES
    assert splits.in_channels == 1 and splits.image_size == SIDE
    values = raw_values(splits)
    for k, v in values.items():
        assert np.allclose(v, np.round(v), atol=1e-3), k  # integer pixel values: scaled by one factor
        v = np.round(v).astype(int)
        y = getattr(splits, f"{k}_y").numpy()
        assert (v % CLASSES == y).all(), f"{k}: labels not paired with their images"
        if k == "test":
            assert sorted(v) == list(range(TEST_OFFSET, TEST_OFFSET + CLASSES * TEST_PER_CLASS))
        else:
            assert (v < TEST_OFFSET).all()
    trainval = np.concatenate([np.round(values["train"]), np.round(values["val"])]).astype(int)
    assert len(set(trainval)) == len(trainval)  # the train/val split is a partition
    if train + val == CLASSES * PER_CLASS:
        assert sorted(trainval) == list(range(CLASSES * PER_CLASS))


@pytest.fixture(autouse=True)
def _no_default_dir(monkeypatch, tmp_path):
    """No test here reads the machine's Debian folder unless it asks to."""
    monkeypatch.setenv(ENV, str(tmp_path / "no-default-folder"))


# --- read_idx ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_plain_and_gzipped(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 2), dtype=np.uint8)
    labels = np.array([9, 0, 255, 1, 7], dtype=np.uint8)
    # Gzip is told apart by content, not by name: the gzipped file here has no .gz suffix.
    got_images = read_idx(write_idx(tmp_path / "images", images, gz=gz))
    got_labels = read_idx(write_idx(tmp_path / "labels", labels, gz=gz))
    assert got_images.dtype == np.uint8 and got_images.shape == (5, 3, 2)
    assert (got_images == images).all()
    assert got_labels.tolist() == [9, 0, 255, 1, 7]


def test_read_idx_big_endian_types_come_back_native(tmp_path):
    arr = np.array([[1, -2, 300], [-32768, 32767, 0]], dtype=np.int16)
    got = read_idx(write_idx(tmp_path / "a.gz", arr))
    assert got.dtype == np.dtype(np.int16) and got.dtype.isnative
    assert got.tolist() == arr.tolist()
    floats = read_idx(write_idx(tmp_path / "f", np.array([0.5, -1.25], dtype=np.float32)))
    assert floats.tolist() == [0.5, -1.25]


CORRUPT = {
    "bad magic": lambda good: b"\x12\x34" + good[2:],
    "unknown type": lambda good: good[:2] + b"\x07" + good[3:],
    "short header": lambda good: good[:3],
    "dims cut off": lambda good: good[:9],
    "truncated data": lambda good: good[:-5],
    "trailing data": lambda good: good + b"\0\0",
    "huge dims": lambda good: good[:4] + struct.pack(">3I", 4_000_000_000, 60_000, 60_000) + good[16:],
}


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("damage", list(CORRUPT))
def test_read_idx_corrupt_file_is_a_located_error(tmp_path, damage, gz):
    good = idx_bytes(np.zeros((4, 3, 3), dtype=np.uint8))
    path = tmp_path / "train-images-idx3-ubyte"
    data = CORRUPT[damage](good)
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError) as err:
        read_idx(path)
    (problem,) = err.value.problems
    assert problem.path == "dataset.root"
    assert str(path) in problem.message
    assert "\n" not in str(problem)


def test_read_idx_cut_off_gzip_stream(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8).reshape(2, 10, 10)))[:-12])
    with pytest.raises(DataError, match="corrupt gzip data") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="no IDX file at .*nope"):
        read_idx(tmp_path / "nope")


# --- where the files are found -------------------------------------------------------------------------------


def test_flat_root_plain_files(tmp_path):
    write_dataset(tmp_path / "flat", gz=False)
    assert_fixture_loaded(load_dataset(spec(name="fashion_mnist", root=str(tmp_path / "flat"))))


def test_flat_root_gzipped_files(tmp_path):
    write_dataset(tmp_path / "flatgz", gz=True)
    assert_fixture_loaded(load_dataset(spec(name="mnist", root=str(tmp_path / "flatgz"))))


@pytest.mark.parametrize("name, folder", [("fashion_mnist", "FashionMNIST"), ("mnist", "MNIST")])
def test_torchvision_layout(tmp_path, name, folder):
    write_dataset(tmp_path / "tv" / folder / "raw", gz=True)
    assert_fixture_loaded(load_dataset(spec(name=name, root=str(tmp_path / "tv"))))


def test_torchvision_layout_of_the_other_dataset_is_not_used(tmp_path):
    write_dataset(tmp_path / "tv" / "MNIST" / "raw", gz=False)
    with pytest.raises(DataError, match="fashion_mnist not found"):
        load_dataset(spec(name="fashion_mnist", root=str(tmp_path / "tv")))


def test_no_root_reads_the_default_folder_named_by_the_env_var(tmp_path, monkeypatch):
    a, b = write_dataset(tmp_path / "a", gz=True), write_dataset(tmp_path / "b", gz=False)
    # b differs: one more image per class in training (values 30..32 -> labels 0, 1, 2)
    n = CLASSES * (PER_CLASS + 1)
    v = np.arange(n, dtype=np.uint8)
    write_idx(b / FILES[0], np.repeat(v, SIDE * SIDE).reshape(n, SIDE, SIDE))
    write_idx(b / FILES[1], (v % CLASSES).astype(np.uint8))
    monkeypatch.setenv(ENV, str(a))
    first = load_dataset(spec(name="fashion_mnist"))
    assert_fixture_loaded(first)
    monkeypatch.setenv(ENV, str(b))  # same spec, other folder: the cache must not hand back folder a's data
    second = load_dataset(spec(name="fashion_mnist"))
    assert second.sizes["train"] + second.sizes["val"] == n


def test_default_folder_constant_and_env_override(monkeypatch, tmp_path):
    assert DEBIAN_FASHION_MNIST == Path("/usr/share/datasets/fashion-mnist")
    monkeypatch.delenv(ENV)
    assert autokd.data.fashion_mnist_dir() == DEBIAN_FASHION_MNIST
    monkeypatch.setenv(ENV, str(tmp_path))
    assert autokd.data.fashion_mnist_dir() == tmp_path


def test_limit_subsamples_training_images_only(tmp_path):
    write_dataset(tmp_path / "lim", gz=False)
    splits = load_dataset(spec(name="fashion_mnist", root=str(tmp_path / "lim"), limit=12))
    assert_fixture_loaded(splits, train=12, val=6)
    assert np.bincount(splits.train_y.numpy()).tolist() == [4, 4, 4]  # stratified


def test_image_size_resizes(tmp_path):
    write_dataset(tmp_path / "rs", gz=True)
    splits = load_dataset(spec(name="fashion_mnist", root=str(tmp_path / "rs"), image_size=8))
    assert splits.train_x.shape[1:] == (1, 8, 8) and splits.test_x.shape[1:] == (1, 8, 8)


# --- missing and inconsistent files --------------------------------------------------------------------------


def test_missing_files_without_root_name_every_remedy(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset(spec(name="fashion_mnist"))
    (problem,) = err.value.problems
    assert problem.path == "dataset.root"
    assert "\n" not in problem.message
    assert str(tmp_path / "no-default-folder") in problem.message  # where it looked
    assert "apt-get install dataset-fashion-mnist" in problem.message
    assert "dataset.root" in problem.message
    assert "download: true" in problem.message


def test_missing_files_under_a_root_create_nothing(tmp_path):
    root = tmp_path / "empty"
    with pytest.raises(DataError) as err:
        load_dataset(spec(name="fashion_mnist", root=str(root)))
    message = err.value.problems[0].message
    assert message.startswith(f"fashion_mnist not found under {root}")
    assert str(root / "FashionMNIST" / "raw") in message
    assert "apt-get install dataset-fashion-mnist" in message and "download: true" in message
    assert not root.exists()


def test_one_missing_file_is_missing(tmp_path):
    folder = write_dataset(tmp_path / "partial", gz=True)
    (folder / (FILES[3] + ".gz")).unlink()
    with pytest.raises(DataError, match="not found under"):
        load_dataset(spec(name="mnist", root=str(folder)))


def test_mnist_without_root_is_an_error_even_with_the_default_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(write_dataset(tmp_path / "fm", gz=True)))  # Fashion-MNIST is there; MNIST is not
    with pytest.raises(DataError) as err:
        load_dataset(spec(name="mnist"))
    (problem,) = err.value.problems
    assert problem.path == "dataset.root"
    assert problem.message.startswith("mnist not found")
    assert "dataset.root" in problem.message and "apt-get" not in problem.message


def test_corrupt_header_in_a_dataset_names_the_file(tmp_path):
    folder = write_dataset(tmp_path / "bad", gz=True)
    bad = folder / (FILES[2] + ".gz")
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x03\x00\x00"))
    with pytest.raises(DataError) as err:
        load_dataset(spec(name="fashion_mnist", root=str(folder)))
    assert str(bad) in err.value.problems[0].message
    assert err.value.problems[0].path == "dataset.root"


@pytest.mark.parametrize("what, file, arr, message", [
    ("label count", FILES[1], np.zeros(CLASSES * PER_CLASS - 1, np.uint8), "29 labels for the 30 images"),
    ("swapped", FILES[1], np.zeros((30, 4, 4), np.uint8), "expected uint8 labels"),
    ("labels as images", FILES[0], np.zeros(30, np.uint8), "expected uint8 images"),
    ("image size", FILES[2], np.zeros((9, 5, 5), np.uint8), "5×5 pixels"),
])
def test_inconsistent_files_name_the_file(tmp_path, what, file, arr, message):
    folder = write_dataset(tmp_path / what.replace(" ", "-"), gz=False)
    write_idx(folder / file, arr)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(spec(name="fashion_mnist", root=str(folder)))
    assert str(folder / file) in str(err.value)


# --- download: true ------------------------------------------------------------------------------------------


def fake_torchvision(monkeypatch, calls: list, *, fail: bool = False):
    """torchvision.datasets.FashionMNIST stand-in: its download writes the IDX files to <root>/FashionMNIST/raw."""

    class FashionMNIST:
        def __init__(self, root, train=True, download=False):
            calls.append((root, download))
            if fail:
                raise RuntimeError("Dataset not found or corrupted.")
            write_dataset(Path(root) / "FashionMNIST" / "raw", gz=False)

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FashionMNIST)


def test_download_fetches_into_root_when_files_are_missing(tmp_path, monkeypatch):
    calls = []
    fake_torchvision(monkeypatch, calls)
    root = tmp_path / "dl"
    assert_fixture_loaded(load_dataset(spec(name="fashion_mnist", root=str(root), download=True)))
    assert calls == [(str(root), True)]


def test_download_is_not_used_when_the_files_are_there(tmp_path, monkeypatch):
    calls = []
    fake_torchvision(monkeypatch, calls)
    root = write_dataset(tmp_path / "have", gz=True)
    assert_fixture_loaded(load_dataset(spec(name="fashion_mnist", root=str(root), download=True)))
    assert calls == []


def test_failed_download_is_a_located_error(tmp_path, monkeypatch):
    calls = []
    fake_torchvision(monkeypatch, calls, fail=True)
    with pytest.raises(DataError, match="download into .* failed: Dataset not found") as err:
        load_dataset(spec(name="fashion_mnist", root=str(tmp_path / "dlfail"), download=True))
    assert err.value.problems[0].path == "dataset.root"


def test_download_without_root_is_an_error(tmp_path):
    with pytest.raises(DataError, match="needs a root"):
        load_dataset(spec(name="mnist", download=True))


# --- the real files of Debian's dataset-fashion-mnist ---------------------------------------------------------


def test_real_fashion_mnist_from_the_debian_package(monkeypatch):
    missing = [f for f in FILES if not (DEBIAN_FASHION_MNIST / (f + ".gz")).is_file()]
    if missing:
        why = f"{DEBIAN_FASHION_MNIST} lacks {', '.join(missing)} (apt-get install dataset-fashion-mnist)"
        if os.environ.get("CI") == "true":  # CI installs the package: absent files there are a failure
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)
    monkeypatch.delenv(ENV)
    raw = read_idx(DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz")
    assert raw.shape == (10_000, 28, 28) and raw.dtype == np.uint8 and raw.max() == 255 and raw.min() == 0
    try:
        splits = load_dataset(spec(name="fashion_mnist"))
        assert sum(splits.sizes.values()) == 70_000
        assert splits.sizes["test"] == 10_000
        assert splits.num_classes == 10
        assert splits.train_x.shape[1:] == (1, 28, 28) and splits.test_x.shape[1:] == (1, 28, 28)
        trainval = np.concatenate([splits.train_y.numpy(), splits.val_y.numpy()])
        assert np.bincount(trainval).tolist() == [6000] * 10
        assert np.bincount(splits.test_y.numpy()).tolist() == [1000] * 10
        assert abs(float(splits.train_x.mean())) < 1e-3 and abs(float(splits.train_x.std()) - 1) < 1e-3
    finally:
        autokd.data._load_cached.cache_clear()  # 220 MB of floats: not kept for the rest of the session
