from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.data import files, load_dataset, validation_split
from bench.errors import GenbenchError


def test_digits_split_and_levels() -> None:
    data = load_dataset("digits")
    assert data.spec.shape == (1, 8, 8) and data.spec.num_levels == 17
    assert len(data.levels("train")) == 1500 and len(data.levels("test")) == 297
    assert int(data.levels("train").max()) == 16 and int(data.levels("train").min()) == 0
    images = data.images("train")
    assert images.dtype == torch.float32 and float(images.max()) == 1.0
    # the fixed permutation: the same split every time, all 10 classes on both sides
    assert data.fingerprint() == load_dataset("digits").fingerprint()
    assert set(data.labels("test").tolist()) == set(range(10))


def test_mnist5k_split() -> None:
    data = load_dataset("mnist5k")
    assert data.spec.shape == (1, 28, 28) and data.spec.num_levels == 256
    assert len(data.levels("train")) == 4000 and len(data.levels("test")) == 1000


def test_validation_split_is_fixed_and_disjoint() -> None:
    fit, val = validation_split(100, 0.1)
    fit2, val2 = validation_split(100, 0.1)
    assert torch.equal(val, val2) and len(val) == 10 and len(fit) == 90
    assert not set(fit.tolist()) & set(val.tolist())


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def make_mnist_fixture(
    root: Path, folder: str, n_train: int = 6, n_test: int = 4, gz: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    train_x = rng.integers(0, 256, (n_train, 28, 28))
    test_x = rng.integers(0, 256, (n_test, 28, 28))
    write_idx(raw / "train-images-idx3-ubyte", train_x, gz)
    write_idx(raw / "train-labels-idx1-ubyte", np.arange(n_train) % 10, gz)
    write_idx(raw / "t10k-images-idx3-ubyte", test_x, gz)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10, gz)
    return train_x, test_x


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_datasets_read_original_files(tmp_path: Path, name: str, folder: str, gz: bool) -> None:
    train_x, test_x = make_mnist_fixture(tmp_path, folder, gz=gz)
    data = load_dataset(name, tmp_path, download=False)
    assert data.spec.shape == (1, 28, 28) and data.spec.num_levels == 256
    assert torch.equal(data.levels("train")[:, 0], torch.from_numpy(train_x.astype(np.uint8)))
    assert torch.equal(data.levels("test")[:, 0], torch.from_numpy(test_x.astype(np.uint8)))
    assert data.labels("train").tolist() == [0, 1, 2, 3, 4, 5]


def test_cifar10_reads_original_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (3, 3072)).astype(np.uint8)
        batches[name] = data
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data, "labels": [1, 2, 3]}, handle)
    data = load_dataset("cifar10", tmp_path, download=False)
    assert data.spec.shape == (3, 32, 32)
    assert len(data.levels("train")) == 15 and len(data.levels("test")) == 3
    expected = torch.from_numpy(batches["test_batch"].reshape(3, 3, 32, 32))
    assert torch.equal(data.levels("test"), expected)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_missing_files_give_one_clear_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(GenbenchError, match=f"dataset '{name}' not found under .*--data-root"):
        load_dataset(name, tmp_path, download=False)


def test_failed_download_says_where_to_put_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(files, "_try_download", lambda name, root: "download failed: no network")
    with pytest.raises(GenbenchError, match="download failed: no network.*Put"):
        load_dataset("mnist", tmp_path, download=True)


def test_download_goes_through_torchvision(tmp_path: Path, monkeypatch) -> None:
    """The download path asks torchvision for both splits, then reads what it wrote."""
    import torchvision.datasets as tvd

    calls = []

    class FakeMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((root, train, download))
            make_mnist_fixture(Path(root), "MNIST", gz=False)

    monkeypatch.setattr(tvd, "MNIST", FakeMNIST)
    data = load_dataset("mnist", tmp_path, download=True)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert len(data.levels("train")) == 6


def test_corrupt_idx_file_is_reported(tmp_path: Path) -> None:
    make_mnist_fixture(tmp_path, "MNIST")
    (tmp_path / "MNIST/raw/train-images-idx3-ubyte").write_bytes(
        b"\x00\x00\x08\x03" + struct.pack(">3I", 6, 28, 28) + b"\x00" * 10
    )
    with pytest.raises(GenbenchError, match="truncated"):
        load_dataset("mnist", tmp_path, download=False)
