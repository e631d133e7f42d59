"""Contrastive losses shared by the self-supervised methods.

- ``nt_xent``: the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020,
  eq. 1): for 2N views, each view's positive is the other view of its image and its 2N - 2
  negatives are every other view in the batch; the loss is averaged over all 2N anchors.
- ``info_nce``: InfoNCE with one positive and a shared set of negatives (van den Oord et al.
  2018, eq. 4; MoCo's form, He et al. 2020, eq. 1): logits [q.k+, q.k_1..q.k_K] / tau, the
  positive at index 0.
- ``diagonal_info_nce``: InfoNCE over a square score matrix whose diagonal holds the positive
  pairs and whose off-diagonal entries are the negatives (CPC's in-batch negatives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """z1, z2: (N, d) projections of the two views of the same N images -> scalar loss."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2N, d) on the unit sphere
    logits = z @ z.T / temperature  # (2N, 2N) cosine similarities / tau
    # an anchor is never its own negative: -inf removes k = i from the denominator
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, positives)


def info_nce(query: Tensor, positive: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """query, positive: (N, d); negatives: (K, d) shared by every query. Inputs are used as
    given (normalise them first for cosine similarities) -> scalar loss."""
    l_pos = (query * positive).sum(1, keepdim=True)  # (N, 1)
    l_neg = query @ negatives.T  # (N, K)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # (N, 1 + K)
    return F.cross_entropy(
        logits, torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    )


def diagonal_info_nce(scores: Tensor) -> Tensor:
    """scores: (N, N) with scores[i, j] the critic of prediction i against target j; the
    positive of row i is column i -> scalar loss."""
    return F.cross_entropy(scores, torch.arange(scores.shape[0], device=scores.device))
