"""Nearest-neighbour distances in chunks, shared by the fidelity metrics (no registration).

Euclidean distances in float64 (``torch.cdist``), a block of rows at a time so that a 50k x
50k reference never needs its whole distance matrix in memory."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

#: rows of the left-hand set per distance block
BLOCK = 1024


def distances(a: Tensor, b: Tensor) -> Tensor:
    """(len(a), len(b)) Euclidean distances, float64."""
    import torch

    return torch.cdist(a.double(), b.double())


def nearest(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """For each row of ``a``: the distance to its nearest row of ``b`` and that row's index."""
    import torch

    found = [distances(a[i : i + BLOCK], b).min(dim=1) for i in range(0, len(a), BLOCK)]
    return torch.cat([d.values for d in found]), torch.cat([d.indices for d in found])


def kth_neighbour_radii(x: Tensor, k: int) -> Tensor:
    """For each row of ``x``: the distance to its k-th nearest *other* row (the row itself,
    at distance 0, is the 0-th), the radius of its k-NN ball (Kynkaanniemi et al. 2019;
    Naeem et al. 2020)."""
    import torch

    if not 1 <= k < len(x):
        raise ValueError(f"k = {k} needs 1 <= k < {len(x)} (the set's size)")
    radii = []
    for i in range(0, len(x), BLOCK):
        block = distances(x[i : i + BLOCK], x)
        radii.append(torch.topk(block, k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)
