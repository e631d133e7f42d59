"""Datasets that live in files: MNIST, Fashion-MNIST and CIFAR-10.

The files are the originals in torchvision's layout under the data root:

- ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``
- ``FashionMNIST/raw/`` with the same names
- ``cifar-10-batches-py/{data_batch_1..5,test_batch}`` (pickles)

When they are absent and download is allowed, torchvision downloads (and checksums) them.
Reading is done here, straight from the on-disk formats, so that a data root prepared by
hand (or a tiny fixture) is read exactly like a downloaded one.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import Any
from urllib.error import URLError

import numpy as np
import torch

from bench.errors import GenbenchError
from bench.method import DataSpec
from bench.registry import register_dataset

_IDX_DTYPES: dict[int, Any] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise GenbenchError(f"{path} is not an IDX file")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise GenbenchError(f"{path} is truncated: its header is incomplete")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.dtype(_IDX_DTYPES[data[2]]), offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise GenbenchError(f"{path} is truncated: expected {int(np.prod(dims))} values")
    return array.reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    return None


def _idx_split(raw: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    images = _find(raw, f"{prefix}-images-idx3-ubyte")
    labels = _find(raw, f"{prefix}-labels-idx1-ubyte")
    if images is None or labels is None:
        return None
    x, y = read_idx(images), read_idx(labels)
    if len(x) != len(y):
        raise GenbenchError(f"{images} and {labels} hold different numbers of items")
    return x, y


def _missing(name: str, where: Path, expected: str, reason: str) -> GenbenchError:
    return GenbenchError(
        f"dataset {name!r} not found under {where} ({reason}). Put {expected} there, "
        "or pass --data-root DIR pointing at a folder that has them"
    )


def _try_download(name: str, root: Path) -> str | None:
    """Let torchvision download the files; returns why it failed, or None."""
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            cls(root=str(root), train=train, download=True)
    except (URLError, OSError, RuntimeError) as exc:
        return f"download failed: {exc.__class__.__name__}: {str(exc).splitlines()[0][:120]}"
    return None


def _load_idx_dataset(name: str, folder: str, root: Path | None, download: bool):
    from bench.data import ImageData, default_data_root

    root = root or default_data_root()
    raw = root / folder / "raw"
    splits = _idx_split(raw, "train"), _idx_split(raw, "t10k")
    if None in splits and download:
        reason = _try_download(name, root)
        splits = _idx_split(raw, "train"), _idx_split(raw, "t10k")
        if None in splits:
            raise _missing(name, raw, "the four *-ubyte files", reason or "files missing")
    if None in splits:
        raise _missing(name, raw, "the four *-ubyte files", "download disabled")
    (train_x, train_y), (test_x, test_y) = splits  # type: ignore[misc]
    spec = DataSpec(name, 1, 28, 28, num_levels=256, num_classes=10)

    def tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(x.astype(np.uint8)[:, None].copy()), torch.from_numpy(
            y.astype(np.int64)
        )

    return ImageData(spec, *tensors(train_x, train_y), *tensors(test_x, test_y), str(raw))


@register_dataset("mnist")
def load_mnist(data_root: Path | None = None, download: bool = True):
    """MNIST, 60000 train / 10000 test, 28x28x1, 256 levels."""
    return _load_idx_dataset("mnist", "MNIST", data_root, download)


@register_dataset("fashion-mnist")
def load_fashion_mnist(data_root: Path | None = None, download: bool = True):
    """Fashion-MNIST, 60000 train / 10000 test, 28x28x1, 256 levels."""
    return _load_idx_dataset("fashion-mnist", "FashionMNIST", data_root, download)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as handle:
        try:
            entry = pickle.load(handle, encoding="latin1")
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise GenbenchError(f"{path} is not a CIFAR-10 batch file: {exc}") from None
    data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data, np.asarray(entry["labels"], dtype=np.int64)


@register_dataset("cifar10")
def load_cifar10(data_root: Path | None = None, download: bool = True):
    """CIFAR-10, 50000 train / 10000 test, 32x32x3, 256 levels."""
    from bench.data import ImageData, default_data_root

    root = data_root or default_data_root()
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    reason = "download disabled"
    if not all((folder / n).exists() for n in names) and download:
        reason = _try_download("cifar10", root) or "files missing"
    if not all((folder / n).exists() for n in names):
        raise _missing("cifar10", folder, "data_batch_1..5 and test_batch", reason)
    train = [_read_cifar_batch(folder / n) for n in names[:5]]
    test_x, test_y = _read_cifar_batch(folder / "test_batch")
    spec = DataSpec("cifar10", 3, 32, 32, num_levels=256, num_classes=10)
    return ImageData(
        spec,
        torch.from_numpy(np.concatenate([x for x, _ in train])),
        torch.from_numpy(np.concatenate([y for _, y in train])),
        torch.from_numpy(test_x),
        torch.from_numpy(test_y),
        str(folder),
    )
