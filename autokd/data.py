"""Datasets as in-memory tensors with a fixed, seeded train/val/test split.

Small datasets live on the device as whole tensors, so a training step is an index into a tensor rather than a
DataLoader round trip (the per-batch overhead would dominate tiny models). ``digits`` is scikit-learn's bundled
8×8 digits and needs no network; torchvision datasets are read from ``root`` and downloaded only with
``download: true``.

``mnist`` and ``fashion_mnist`` are read from IDX files (gzipped or not, see :func:`read_idx`) with numpy alone:
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``
(each optionally ending in ``.gz``), either directly in ``root`` or in torchvision's layout ``<root>/<Name>/raw/``
(Name = ``MNIST`` / ``FashionMNIST``). With no ``root``, ``fashion_mnist`` reads the files that Debian's
``dataset-fashion-mnist`` package installs in :data:`DEBIAN_FASHION_MNIST` (``/usr/share/datasets/fashion-mnist``);
the environment variable ``AUTOKD_FASHION_MNIST_DIR`` names another folder to use instead. Debian packages no
MNIST, so ``mnist`` needs a ``root``. With ``download: true`` and the files missing, torchvision downloads them
into ``<root>/<Name>/raw/``.

Identity: :func:`dataset_key` names what a dataset block selects; a named dataset is the same wherever it is stored,
an ``imagefolder`` is its resolved folder and a fingerprint of the folder's listing (:func:`dataset_source`).
:func:`data_fingerprint` hashes loaded tensors (dtype, shape, bytes), so files computed on data (cached teacher
logits) can tell whether they were computed on these very images and labels.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from autokd.errors import DataError, Problem

#: Where Debian's ``dataset-fashion-mnist`` package installs the gzipped IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
#: Environment variable naming a folder to read Fashion-MNIST from when ``dataset.root`` is not set.
FASHION_MNIST_DIR_ENV = "AUTOKD_FASHION_MNIST_DIR"


#: What each dataset's loader reads as "raw" images, and the raw value that becomes 1.0 (see
#: :meth:`Splits.preprocessing`).
RAW_PIXELS: dict[str, tuple[str, float]] = {
    "digits": ("sklearn.datasets.load_digits().images[:, None]: (N, 1, 8, 8), integer values 0..16", 16.0),
    "mnist": ("the IDX images: uint8 (N, 28, 28) as (N, 1, 28, 28), values 0..255 (scaled as raw * (1/255) in "
              "float32, within 1 ulp of raw / 255)", 255.0),
    "fashion_mnist": ("the IDX images: uint8 (N, 28, 28) as (N, 1, 28, 28), values 0..255 (scaled as raw * (1/255) "
                      "in float32, within 1 ulp of raw / 255)", 255.0),
    "cifar10": ("torchvision CIFAR10 .data: uint8 (N, 32, 32, 3) RGB, transposed to (N, 3, 32, 32), values 0..255",
                255.0),
    "cifar100": ("torchvision CIFAR100 .data: uint8 (N, 32, 32, 3) RGB, transposed to (N, 3, 32, 32), values "
                 "0..255", 255.0),
    "imagefolder": ("each image file as torchvision ImageFolder loads it (PIL, converted to RGB), resized by "
                    "torchvision.transforms.Resize(({S}, {S})) (PIL bilinear, antialiased, rounded to uint8), as "
                    "(N, 3, {S}, {S}), values 0..255", 255.0),
}

#: How :func:`load_dataset` resizes to ``image_size``: ``torch.nn.functional.interpolate`` with these arguments.
RESIZE_ARGS: dict[str, Any] = {"mode": "bilinear", "align_corners": False, "antialias": False}


@dataclass(frozen=True)
class Splits:
    """Normalized image tensors (N, C, H, W) and integer labels for each split, and what was applied to get them.

    ``mean``/``std``: the per-channel statistics every split was normalized with (computed on the training split
    after any resize; ``std`` unbiased and clamped to >= 1e-6); ``pixel_max``: the raw pixel value that was scaled
    to 1.0 (16 for digits, 255 for the uint8 datasets); ``raw_size``: (H, W) of the images before the resize
    (``None``: not resized here); ``resize``: the exact call that resized them (``""``: none). A hand-built
    ``Splits`` leaves them empty (:meth:`preprocessing` then returns ``None``)."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    pixel_max: float | None = None
    raw_size: tuple[int, int] | None = None
    resize: str = ""

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[-1]

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}

    def to(self, device: torch.device | str) -> Splits:
        moved = (t.to(device) for t in (self.train_x, self.train_y, self.val_x, self.val_y, self.test_x, self.test_y))
        return dataclasses.replace(self, **dict(zip(("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"),
                                                    moved)))

    def preprocessing(self) -> dict[str, Any] | None:
        """How to turn raw images into this model input, exactly as :func:`load_dataset` did: the raw images
        (``raw``), ``x = raw / pixel_max`` in float32, then the resize (if any), then ``(x - mean[c]) / std[c]``
        per channel. ``None`` when unknown (a hand-built ``Splits``)."""
        if not self.mean or not self.std or self.pixel_max is None:
            return None
        size = [int(self.train_x.shape[-2]), int(self.train_x.shape[-1])]
        scaled = f"raw / {self.pixel_max:g}"
        if self.resize:
            scaled = self.resize.replace("(x, ", f"({scaled}, ", 1)
        raw = RAW_PIXELS.get(self.name, ("the dataset's images", self.pixel_max))[0]
        return {
            "formula": f"x = ({scaled} - mean[c]) / std[c]   (float32, NCHW, c: the channel)",
            "raw": raw.replace("{S}", str(size[-1])),
            "pixel_max": self.pixel_max,
            "resize": None if not self.resize else {
                "from": list(self.raw_size) if self.raw_size else None, "to": size,
                "function": "torch.nn.functional.interpolate", **RESIZE_ARGS, "call": self.resize},
            "mean": list(self.mean),
            "std": list(self.std),
            "statistics": "per channel over the training split after the resize; std unbiased (torch.std), "
                          "clamped to >= 1e-6",
        }


def dataset_key(dataset_spec: Any) -> str:
    """A stable hash of what a dataset block selects: not where it lives (root and download are left out), except
    for ``imagefolder``, whose images are whatever its folder holds (see :func:`dataset_source`)."""
    data = dataset_spec.model_dump(mode="json", exclude={"root", "download"})
    source = dataset_source(dataset_spec)
    if source is not None:
        data["source"] = source
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def dataset_source(dataset_spec: Any) -> dict[str, str] | None:
    """Where the images of an ``imagefolder`` dataset come from: its resolved absolute root and a fingerprint of
    the folder's listing (:func:`folder_fingerprint`); ``None`` for the named datasets, which are the same
    wherever they are stored. Two image folders with the same size and classes then never share a key (nor a
    teacher)."""
    if dataset_spec.name != "imagefolder" or not dataset_spec.root:
        return None
    root = Path(dataset_spec.root).expanduser().resolve()
    return {"root": str(root), "content": folder_fingerprint(root)}


def folder_fingerprint(root: str | Path) -> str:
    """A hash of a folder's listing: every file's path relative to ``root`` (sorted), size and modification time
    in nanoseconds, following symbolic links as ``ImageFolder`` does ("" for a folder that does not exist).

    The listing and not the bytes: it costs one ``stat`` per file, where hashing the contents would read the
    whole dataset a second time. An edit that keeps a file's size and time is missed here, but not by the
    :func:`data_fingerprint` that cached teacher logits carry, which is computed on the loaded images."""
    root = Path(root)
    if not root.is_dir():
        return ""
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder, name)
            try:
                st = path.stat()
            except OSError:  # a dangling link: ImageFolder skips it too
                continue
            rel = path.relative_to(root).as_posix()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


#: Bytes copied from an accelerator to the host at a time when hashing a tensor that lives there.
_HASH_CHUNK = 64 << 20


def update_hash(h: Any, t: torch.Tensor) -> None:
    """Feed a tensor into a hashlib object: its dtype, shape and raw bytes (C order). A CPU tensor is hashed in
    place (no copy when contiguous); one on an accelerator is copied to the host in 64 MiB chunks."""
    t = t.detach()
    h.update(f"{str(t.dtype).removeprefix('torch.')}{tuple(t.shape)}".encode())
    flat = t.contiguous().reshape(-1)
    if flat.numel() == 0:
        return
    raw = flat.view(torch.uint8)  # any dtype, bool and bfloat16 included
    if raw.device.type == "cpu":
        h.update(memoryview(raw.numpy()))
        return
    for i in range(0, raw.numel(), _HASH_CHUNK):
        h.update(memoryview(raw[i:i + _HASH_CHUNK].cpu().numpy()))


def data_fingerprint(*tensors: torch.Tensor) -> str:
    """A hash of the images and labels something was computed on, e.g. ``data_fingerprint(x, y)``: each tensor's
    dtype, shape and bytes, in order (SHA-256, 16 hex digits). Streaming and copy-free on the CPU, at about
    2 GB/s with SHA extensions (0.36 s for CIFAR-sized 60000×3×32×32 float32, 737 MB)."""
    h = hashlib.sha256()
    for t in tensors:
        update_hash(h, t)
    return h.hexdigest()[:16]


def load_dataset(dataset_spec: Any) -> Splits:
    """Load and split the dataset described by a ``DatasetSpec`` (cached per process).

    The cache key is the spec plus the folder a rootless ``fashion_mnist`` reads (``AUTOKD_FASHION_MNIST_DIR``
    is looked up on every call, so changing it is not hidden by the cache).
    """
    spec_json = json.dumps(dataset_spec.model_dump(mode="json"), sort_keys=True)
    default_dir = str(fashion_mnist_dir()) if dataset_spec.name == "fashion_mnist" and not dataset_spec.root else ""
    return _load_cached(spec_json, default_dir)


@functools.lru_cache(maxsize=4)
def _load_cached(spec_json: str, default_dir: str = "") -> Splits:
    spec = json.loads(spec_json)
    if default_dir:
        spec["_default_dir"] = default_dir
    loader = _LOADERS[spec["name"]]
    # Loaders return float32 in [0, 1], or uint8 (0..255), which is scaled here after the split and the limit,
    # so only the images kept are ever converted to float.
    x_trainval, y_trainval, x_test, y_test = loader(spec)
    rng_seed = spec["split_seed"]
    if x_test is None:  # no official test split: carve one out, stratified
        x_trainval, x_test, y_trainval, y_test = _split(x_trainval, y_trainval, spec["test_fraction"], rng_seed)
    val_share = spec["val_fraction"] if spec["name"] not in ("digits", "imagefolder") else \
        spec["val_fraction"] / (1.0 - spec["test_fraction"])
    x_train, x_val, y_train, y_val = _split(x_trainval, y_trainval, val_share, rng_seed + 1)
    if spec.get("limit") and spec["limit"] < len(y_train):
        x_train, _, y_train, _ = _split(x_train, y_train, 1.0 - spec["limit"] / len(y_train), rng_seed + 2)
    size = spec.get("image_size")
    tensors = []
    raw_size = None
    resize = ""
    for x in (x_train, x_val, x_test):
        t = _to_float(x)
        if size and tuple(t.shape[-2:]) != (size, size):
            raw_size = (int(t.shape[-2]), int(t.shape[-1]))
            args = ", ".join(f"{k}={v!r}" for k, v in RESIZE_ARGS.items())
            resize = f"torch.nn.functional.interpolate(x, size=({size}, {size}), {args})"
            t = F.interpolate(t, size=(size, size), **RESIZE_ARGS)
        tensors.append(t)
    # Normalize with the training split's per-channel statistics.
    mean = tensors[0].mean(dim=(0, 2, 3), keepdim=True)
    std = tensors[0].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    x_train, x_val, x_test = ((t - mean) / std for t in tensors)
    num_classes = int(max(y_train.max(), y_val.max(), y_test.max())) + 1
    return Splits(spec["name"], x_train.contiguous(), torch.as_tensor(y_train, dtype=torch.long),
                  x_val.contiguous(), torch.as_tensor(y_val, dtype=torch.long), x_test.contiguous(),
                  torch.as_tensor(y_test, dtype=torch.long), num_classes,
                  mean=tuple(float(v) for v in mean.flatten()), std=tuple(float(v) for v in std.flatten()),
                  pixel_max=RAW_PIXELS[spec["name"]][1], raw_size=raw_size, resize=resize)


def _to_float(x: np.ndarray) -> torch.Tensor:
    """float32 tensor of ``x``; uint8 is scaled to [0, 1] in one pass (no float64 intermediate)."""
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).mul_(1.0 / 255.0)
    return torch.as_tensor(x, dtype=torch.float32)


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=fraction, random_state=seed, stratify=y)


def _digits(spec: dict) -> tuple:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8), bundled with scikit-learn
    return x, d.target.astype(np.int64), None, None


def _missing(spec: dict, name: str, exc: Exception | None = None) -> DataError:
    root = spec.get("root")
    how = ("set dataset.download: true to fetch it" + (f" into {root}" if root else " (and dataset.root)")
           if not spec.get("download") else f"the download failed: {exc}")
    return DataError(Problem(f"{name} not found under {root or '(no root given)'}; {how}", "dataset.root"))


def _torchvision(cls_name: str, *, channels_last: bool):
    def load(spec: dict) -> tuple:
        import torchvision.datasets as tvd

        name = spec["name"]
        if not spec.get("root"):
            if not spec.get("download"):
                raise _missing(spec, name)
            raise DataError(Problem("download: true needs a root folder to download into", "dataset.root"))
        cls = getattr(tvd, cls_name)
        try:
            train = cls(spec["root"], train=True, download=spec.get("download", False))
            test = cls(spec["root"], train=False, download=spec.get("download", False))
        except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted ..."
            raise _missing(spec, name, exc) from None
        except OSError as exc:
            raise _missing(spec, name, exc) from None

        def arrays(ds):
            x = np.asarray(ds.data, dtype=np.float32) / 255.0
            x = x.transpose(0, 3, 1, 2) if channels_last else x[:, None]
            return np.ascontiguousarray(x), np.asarray(ds.targets, dtype=np.int64)

        return (*arrays(train), *arrays(test))

    return load


# --- IDX files (MNIST, Fashion-MNIST) ----------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_FILES = (("train", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              ("test", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
_IDX_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}  # torchvision's class (and folder) names


def fashion_mnist_dir() -> Path:
    """The folder a ``fashion_mnist`` dataset without ``root`` reads: ``$AUTOKD_FASHION_MNIST_DIR`` if set,
    else :data:`DEBIAN_FASHION_MNIST` (Debian's ``dataset-fashion-mnist`` package)."""
    env = os.environ.get(FASHION_MNIST_DIR_ENV, "").strip()
    return Path(env).expanduser() if env else DEBIAN_FASHION_MNIST


def _bad_idx(path: Path, what: str) -> DataError:
    return DataError(Problem(f"cannot read IDX file {path}: {what}", "dataset.root"))


def _read_exact(f, buf: memoryview) -> int:
    got = 0
    while got < len(buf):
        n = f.readinto(buf[got:])
        if not n:
            break
        got += n
    return got


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (gzipped or plain, told apart by content, not by name).

    IDX: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64),
    the number of dimensions, each dimension as a big-endian uint32, then the data in C order, big-endian. MNIST's
    images are ``0x00000803`` (N, rows, cols) and its labels ``0x00000801`` (N,). A missing, truncated, oversized
    or otherwise corrupt file raises a :class:`DataError` at ``dataset.root`` that names the file.
    Multi-byte types come back in native byte order.
    """
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4:
                raise _bad_idx(path, f"too short for an IDX header ({len(head)} bytes)")
            if head[:2] != b"\0\0" or head[2] not in _IDX_DTYPES:
                raise _bad_idx(path, f"not an IDX file (magic 0x{head.hex()})")
            dtype, ndim = _IDX_DTYPES[head[2]], head[3]
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise _bad_idx(path, f"header truncated (magic 0x{head.hex()} promises {ndim} dimensions)")
            dims = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
            shape = "×".join(map(str, dims)) or "a scalar"
            nbytes = int(np.prod(dims, dtype=object)) * dtype.itemsize
            # Check the size before allocating: a damaged header must not ask for terabytes. A plain file's data
            # size is exact; deflate expands at most ~1032:1, which bounds what a gzip file can hold.
            stored = path.stat().st_size - 4 - 4 * ndim
            limit = stored if not gz else 1032 * path.stat().st_size
            if nbytes > limit:
                holds = f"holds only {stored}" if not gz else f"cannot hold that many in {limit // 1032} bytes"
                raise _bad_idx(path, f"truncated or corrupt: the header says {shape} ({nbytes} bytes of data), "
                                     f"the file {holds}")
            out = np.empty(dims, dtype=dtype)
            got = _read_exact(f, memoryview(out.reshape(-1).view(np.uint8))) if nbytes else 0
            if got < nbytes:
                raise _bad_idx(path, f"truncated: the header says {shape} ({nbytes} bytes of data), the file "
                                     f"holds {got}")
            if f.read(1):
                raise _bad_idx(path, f"longer than its header says ({shape}, {nbytes} bytes of data)")
    except FileNotFoundError:
        raise DataError(Problem(f"no IDX file at {path}", "dataset.root")) from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:  # a damaged or cut-off gzip stream
        raise _bad_idx(path, f"corrupt gzip data ({exc or type(exc).__name__})") from None
    except OSError as exc:
        raise _bad_idx(path, exc.strerror or str(exc)) from None
    except MemoryError:
        raise _bad_idx(path, "its header asks for more memory than this machine has") from None
    return out if out.dtype.isnative else out.astype(out.dtype.newbyteorder("="))


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):  # the plain file reads faster
        if (folder / name).is_file():
            return folder / name
    return None


def _idx_folders(spec: dict) -> list[Path]:
    """Where to look, in order: ``root`` then ``root/<Name>/raw``; without root, Fashion-MNIST's default folder."""
    if spec.get("root"):
        root = Path(spec["root"]).expanduser()
        return [root, root / _IDX_FOLDER[spec["name"]] / "raw"]
    if spec["name"] == "fashion_mnist":
        return [Path(spec.get("_default_dir") or fashion_mnist_dir())]
    return []


def _locate_idx(spec: dict) -> dict[str, tuple[Path, Path]] | None:
    """The four files from the first folder that holds all of them (None if none does)."""
    for folder in _idx_folders(spec):
        found = {split: (_find_idx(folder, img), _find_idx(folder, lab)) for split, img, lab in _IDX_FILES}
        if all(p is not None for pair in found.values() for p in pair):
            return found
    return None


def _idx_missing(spec: dict, exc: Exception | None = None) -> DataError:
    """One line: where we looked, and every way to get the files."""
    name, root = spec["name"], spec.get("root")
    folders = _idx_folders(spec)
    files = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
    where = " or ".join(str(f) for f in folders) if folders else "(no root given)"
    looked = f"{name} not found under {where} (looked for {files}, each plain or .gz)"
    if exc is not None:
        return DataError(Problem(f"{looked}; the download into {root} failed: {exc}", "dataset.root"))
    if name == "fashion_mnist":
        if root:
            how = (f"put the IDX files in {root}, set dataset.download: true to fetch them into it, or remove "
                   f"dataset.root to read Debian's copy (apt-get install dataset-fashion-mnist)")
        else:
            how = ("install them with apt-get install dataset-fashion-mnist, set dataset.root to a folder holding "
                   "them, or set dataset.download: true with a dataset.root to fetch them there")
    else:  # Debian packages no MNIST
        how = (f"put the IDX files in {root}, or set dataset.download: true to fetch them into it" if root else
               "set dataset.root to a folder holding them, or set dataset.download: true with a dataset.root "
               "to fetch them there (no system package provides MNIST)")
    return DataError(Problem(f"{looked}; {how}", "dataset.root"))


def _idx_download(spec: dict) -> None:
    """torchvision's download of all four files into ``<root>/<Name>/raw/`` (train and test in one go)."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, _IDX_FOLDER[spec["name"]])
    try:
        cls(str(Path(spec["root"]).expanduser()), train=False, download=True)
    except (RuntimeError, OSError) as exc:  # "Dataset not found or corrupted", network errors
        raise _idx_missing(spec, exc) from None


def _idx_dataset(spec: dict) -> tuple:
    """MNIST / Fashion-MNIST from IDX files: images as uint8 (N, 1, 28, 28), labels int64."""
    files = _locate_idx(spec)
    if files is None:
        if not spec.get("download"):
            raise _idx_missing(spec)
        if not spec.get("root"):
            raise DataError(Problem("download: true needs a root folder to download into", "dataset.root"))
        _idx_download(spec)
        files = _locate_idx(spec)
        if files is None:
            raise _idx_missing(spec, RuntimeError("the files are still missing after the download"))
    out = []
    shape = None
    for split, (img_path, lab_path) in files.items():
        x, y = read_idx(img_path), read_idx(lab_path)
        if x.ndim != 3 or x.dtype != np.uint8:
            raise _bad_idx(img_path, f"expected uint8 images (magic 0x00000803), found {x.dtype} with "
                                     f"{x.ndim} dimensions")
        if y.ndim != 1 or y.dtype != np.uint8:
            raise _bad_idx(lab_path, f"expected uint8 labels (magic 0x00000801), found {y.dtype} with "
                                     f"{y.ndim} dimensions")
        if len(x) != len(y):
            raise _bad_idx(lab_path, f"{len(y)} labels for the {len(x)} images of {img_path.name}")
        if len(x) == 0:
            raise _bad_idx(img_path, "no images")
        if shape is not None and x.shape[1:] != shape:
            raise _bad_idx(img_path, f"images of {x.shape[1]}×{x.shape[2]} pixels, the training images have "
                                     f"{shape[0]}×{shape[1]}")
        shape = x.shape[1:]
        out += [x[:, None], y.astype(np.int64)]
    return tuple(out)


def _imagefolder(spec: dict) -> tuple:
    from torchvision import datasets, transforms

    root = Path(spec["root"])
    if not root.is_dir():
        raise DataError(Problem(f"no folder at {root}", "dataset.root"))
    size = spec.get("image_size") or 64
    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])
    try:
        ds = datasets.ImageFolder(str(root), transform=tf)
    except (FileNotFoundError, OSError) as exc:
        raise DataError(Problem(f"cannot read images under {root}: {exc}", "dataset.root")) from None
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs).numpy(), np.asarray(ys, dtype=np.int64), None, None


_LOADERS = {
    "digits": _digits,
    "mnist": _idx_dataset,
    "fashion_mnist": _idx_dataset,
    "cifar10": _torchvision("CIFAR10", channels_last=True),
    "cifar100": _torchvision("CIFAR100", channels_last=True),
    "imagefolder": _imagefolder,
}


# Natural images get flips; digits and clothing keep their orientation.
FLIP_DATASETS = {"cifar10", "cifar100", "imagefolder"}


def augment_pool(x: torch.Tensor, *, views: int, seed: int, flip: bool, max_shift: int | None = None) -> torch.Tensor:
    """A fixed pool of ``views`` augmented copies of ``x`` (N, C, H, W) -> (views, N, C, H, W).

    Each view shifts every image by a random offset of up to ``max_shift`` pixels (default: 1/8 of the side,
    zero-padded, i.e. a padded random crop) and, with ``flip``, mirrors it with probability 1/2. Drawing the pool
    once from the seed is what lets the teacher's logits over it be computed once and cached (as FKD, Shen & Xing
    2022, stores soft labels of random crops): a KD step then costs no teacher forward pass, and a KD trial and
    its KD-off twin see exactly the same views.
    """
    if views < 1:
        raise ValueError(f"views must be >= 1 (got {views})")
    n, _, h, w = x.shape
    shift = max(1, round(min(h, w) / 8)) if max_shift is None else max_shift
    gen = torch.Generator().manual_seed(seed)
    padded = F.pad(x, (shift, shift, shift, shift))
    out = torch.empty((views, *x.shape), dtype=x.dtype, device=x.device)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    for v in range(views):
        dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen).to(x.device)
        flips = (torch.rand(n, generator=gen) < 0.5).to(x.device) if flip else torch.zeros(n, dtype=torch.bool,
                                                                                          device=x.device)
        r = (dy[:, None] + rows[None, :])  # (n, h)
        c = (dx[:, None] + cols[None, :])  # (n, w)
        c = torch.where(flips[:, None], c.flip(1), c)
        idx_n = torch.arange(n, device=x.device)[:, None, None]
        out[v] = padded.permute(0, 2, 3, 1)[idx_n, r[:, :, None], c[:, None, :]].permute(0, 3, 1, 2)
    return out
