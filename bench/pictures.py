"""The pictures a person trusts more than a number, written into each run folder and shown
by the leaderboards (:func:`bench.report.copy_sample_grids`):

- ``nearest.png`` (sample-capable methods): the first samples, each beside its nearest
  training image in pixel space: the memorization check by eye (a copied digit shows up as
  a pair of twins), next to the ``memorized`` columns of
  :mod:`bench.evaluators.fidelity_metrics.memorization`;
- ``retrieval.png`` (encoders): random test images, each followed by its nearest training
  images in the encoder's feature space (cosine similarity, as the kNN probe) and then,
  after a blank, in raw pixels (Euclidean) for contrast: the "randomly sampled kNN" figure
  of the Deep InfoMax write-up. An encoder that has learnt the classes retrieves the
  query's class where pixels retrieve look-alikes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

NEAREST_FILE = "nearest.png"
RETRIEVAL_FILE = "retrieval.png"
#: samples shown in nearest.png (pairs, four to a row)
NEAREST_PAIRS = 16
#: queries (rows) and neighbours per space in retrieval.png
RETRIEVAL_QUERIES = 8
RETRIEVAL_NEIGHBOURS = 5


def _save(images: Tensor, path: Path, nrow: int) -> None:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, path, nrow=nrow, padding=1, pad_value=0.5)


def _flat(images: Tensor) -> Tensor:
    return images.reshape(len(images), -1).double()


def nearest_training_pairs(samples: Tensor, train: Tensor, count: int = NEAREST_PAIRS) -> Tensor:
    """(2 * count, C, H, W): sample, its nearest training image (pixel L2), sample, ...;
    images in [0, 1]."""
    shown = samples[:count]
    index = torch.cdist(_flat(shown), _flat(train)).argmin(dim=1)
    return torch.stack([shown, train[index]], dim=1).reshape(-1, *samples.shape[1:])


def save_nearest_grid(samples: Tensor, train: Tensor, path: Path) -> None:
    _save(nearest_training_pairs(samples.float(), train.float()), path, nrow=8)


def retrieval_rows(
    train_features: Tensor,
    test_features: Tensor,
    train_images: Tensor,
    test_images: Tensor,
    seed: int,
    queries: int = RETRIEVAL_QUERIES,
    k: int = RETRIEVAL_NEIGHBOURS,
) -> tuple[Tensor, Tensor, Tensor]:
    """(query indices into test, (queries, k) neighbours in feature space, the same in
    pixel space), queries drawn at random from a generator seeded by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(test_images), generator=generator)[:queries]
    unit_train = torch.nn.functional.normalize(train_features.double(), dim=1)
    unit_query = torch.nn.functional.normalize(test_features[chosen].double(), dim=1)
    by_features = (unit_query @ unit_train.T).topk(k, dim=1).indices
    distances = torch.cdist(_flat(test_images[chosen]), _flat(train_images))
    by_pixels = distances.topk(k, dim=1, largest=False).indices
    return chosen, by_features, by_pixels


def save_retrieval_grid(
    train_features: Tensor,
    test_features: Tensor,
    train_images: Tensor,
    test_images: Tensor,
    seed: int,
    path: Path,
) -> None:
    chosen, by_features, by_pixels = retrieval_rows(
        train_features, test_features, train_images, test_images, seed
    )
    blank = torch.ones_like(test_images[:1].float())
    rows = []
    for row, query in enumerate(chosen):
        rows += [test_images[query : query + 1].float(), train_images[by_features[row]].float()]
        rows += [blank, train_images[by_pixels[row]].float()]
    _save(torch.cat(rows), path, nrow=2 * by_features.shape[1] + 2)
