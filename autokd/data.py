"""Datasets as in-memory tensors with a fixed, seeded train/val/test split.

Small datasets live on the device as whole tensors, so a training step is an index into a tensor rather than a
DataLoader round trip (the per-batch overhead would dominate tiny models). ``digits`` is scikit-learn's bundled
8×8 digits and needs no network; torchvision datasets are read from ``root`` and downloaded only with
``download: true``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from autokd.errors import DataError, Problem


@dataclass(frozen=True)
class Splits:
    """Normalized image tensors (N, C, H, W) and integer labels for each split."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

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
        return Splits(self.name, *(t.to(device) for t in (self.train_x, self.train_y, self.val_x, self.val_y,
                                                          self.test_x, self.test_y)), self.num_classes)


def dataset_key(dataset_spec: Any) -> str:
    """A stable hash of what a dataset block selects (not where it lives: root and download are left out)."""
    data = dataset_spec.model_dump(mode="json", exclude={"root", "download"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_dataset(dataset_spec: Any) -> Splits:
    """Load and split the dataset described by a ``DatasetSpec`` (cached per process)."""
    return _load_cached(json.dumps(dataset_spec.model_dump(mode="json"), sort_keys=True))


@functools.lru_cache(maxsize=4)
def _load_cached(spec_json: str) -> Splits:
    spec = json.loads(spec_json)
    loader = _LOADERS[spec["name"]]
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
    for x in (x_train, x_val, x_test):
        t = torch.as_tensor(x, dtype=torch.float32)
        if size and t.shape[-1] != size:
            t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
        tensors.append(t)
    # Normalize with the training split's per-channel statistics.
    mean = tensors[0].mean(dim=(0, 2, 3), keepdim=True)
    std = tensors[0].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    x_train, x_val, x_test = ((t - mean) / std for t in tensors)
    num_classes = int(max(y_train.max(), y_val.max(), y_test.max())) + 1
    return Splits(spec["name"], x_train.contiguous(), torch.as_tensor(y_train, dtype=torch.long),
                  x_val.contiguous(), torch.as_tensor(y_val, dtype=torch.long), x_test.contiguous(),
                  torch.as_tensor(y_test, dtype=torch.long), num_classes)


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
    "mnist": _torchvision("MNIST", channels_last=False),
    "fashion_mnist": _torchvision("FashionMNIST", channels_last=False),
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
