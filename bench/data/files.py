"""Datasets that live in files: MNIST, Fashion-MNIST and CIFAR-10.

The files are the originals in torchvision's layout under the data root:

- ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``
- ``FashionMNIST/raw/`` with the same names
- ``cifar-10-batches-py/{data_batch_1..5,test_batch}`` (pickles, read by a restricted
  unpickler that builds only numpy arrays, lists, dicts and strings: a file under
  ``--data-root`` can never run code)

When they are absent and download is allowed, torchvision downloads (and checksums) them.
Reading is done here, straight from the on-disk formats, so that a data root prepared by
hand (or a tiny fixture) is read exactly like a downloaded one.
"""

from __future__ import annotations

import gzip
import io
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


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it to spell bytes; only latin-1, the one
    encoding those pickles ever ask for, so that the call can do nothing else."""
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(
            f"refusing _codecs.encode({type(text).__name__}, {encoding!r})"
        )
    return text.encode("latin-1")


def _cifar_globals() -> dict[tuple[str, str], Any]:
    """The only callables a CIFAR-10 batch needs: numpy's array, scalar and dtype reconstruction
    (under its numpy 1 and numpy 2 module names, protocols 2 to 5) and latin-1 bytes.
    Taken from numpy's own ``__reduce__`` so that no module path is imported from the file."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    frombuffer = np.ndarray.__reduce_ex__(np.zeros(1), 5)[0]
    # numpy scalars (labels written as np.int64 by tools that re-save the batches): built
    # from a dtype and raw bytes, nothing callable
    scalar = np.int64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("codecs", "encode"): _latin1_encode,
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{module}.numeric", "_frombuffer")] = frombuffer
        allowed[(f"{module}.multiarray", "scalar")] = scalar
    return allowed


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :func:`_cifar_globals`: anything else (``os.system``,
    ``builtins.exec``, ``subprocess.Popen``, any class's ``__reduce__``) is refused before it
    is called, so a malicious batch file fails with one line instead of running code."""

    def __init__(self, handle: io.BufferedIOBase, path: Path) -> None:
        super().__init__(handle, encoding="latin1")
        self.path = path
        self.allowed = _cifar_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise GenbenchError(f"refusing to unpickle {module}.{name} from {self.path}")
        return found


def _batch_field(entry: dict[Any, Any], key: str, path: Path) -> Any:
    for candidate in (key, key.encode("latin-1")):  # str keys (latin1) or bytes keys
        if candidate in entry:
            return entry[candidate]
    raise GenbenchError(f"{path} is not a CIFAR-10 batch file: no {key!r} entry")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (images (N, 3, 32, 32) uint8, labels (N,) int64), validated."""
    with open(path, "rb") as handle:
        try:
            entry = CifarUnpickler(handle, path).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
            raise GenbenchError(f"{path} is not a CIFAR-10 batch file: {exc}") from None
    if not isinstance(entry, dict):
        raise GenbenchError(f"{path} is not a CIFAR-10 batch file: holds a {type(entry).__name__}")
    raw_data, raw_labels = _batch_field(entry, "data", path), _batch_field(entry, "labels", path)
    if not isinstance(raw_data, np.ndarray) or raw_data.dtype != np.uint8:
        raise GenbenchError(f"{path} is not a CIFAR-10 batch file: 'data' is not a uint8 array")
    if raw_data.size % (3 * 32 * 32):
        raise GenbenchError(f"{path} is not a CIFAR-10 batch file: 'data' is not N x 3072")
    data = raw_data.reshape(-1, 3, 32, 32)
    try:
        labels = np.asarray(raw_labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise GenbenchError(f"{path} is not a CIFAR-10 batch file: bad 'labels'") from None
    if labels.shape != (len(data),) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise GenbenchError(
            f"{path} is not a CIFAR-10 batch file: {labels.size} labels in 0..9 expected "
            f"for {len(data)} images"
        )
    return data, labels


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
