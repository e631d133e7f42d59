"""The Vendi score (Friedman and Dieng, "The Vendi Score: A Diversity Evaluation Metric for
Machine Learning", TMLR 2023, eq. 1).

VS = exp(-sum_i lambda_i log lambda_i), with lambda_i the eigenvalues of K / n, K the n x n
similarity matrix of the samples (K_ii = 1): the exponential of the Shannon entropy of the
eigenvalues, the effective number of distinct samples (1 for n identical samples, n for n
mutually dissimilar ones). K is the cosine similarity of the extractor's features, the
kernel of the paper's image experiments; since K = Z Z^T with Z the row-normalised
features, the non-zero eigenvalues of K / n are those of Z^T Z / n (d x d), which is what is
decomposed, so the cost grows with the feature width, not with the sample count squared.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from bench.evaluators.base import Column
from bench.evaluators.fidelity_metrics import FidelityMetric, SampleSets, register_fidelity_metric

if TYPE_CHECKING:
    from torch import Tensor


def vendi_score(features: Tensor) -> float:
    """The Vendi score of the rows of ``features`` under the cosine-similarity kernel."""
    import torch

    x = features.double()
    norms = x.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError("the Vendi score's cosine kernel needs non-zero feature vectors")
    z = x / norms
    eigenvalues = torch.linalg.eigvalsh(z.T @ z / len(z)).clamp(min=0.0)
    eigenvalues = eigenvalues[eigenvalues > 0]
    eigenvalues = eigenvalues / eigenvalues.sum()  # trace(K / n) = 1 up to rounding
    return math.exp(float(-(eigenvalues * eigenvalues.log()).sum()))


@register_fidelity_metric("vendi")
class Vendi(FidelityMetric):
    columns = (
        # the effective number of distinct samples: 1 .. number of samples
        Column(
            "vendi",
            "Vendi",
            higher_is_better=True,
            range=(1.0, float("inf")),
            decimals=2,
            noise=0.01,
            noise_rel=0.005,
        ),
    )

    def compute(self, sets: SampleSets) -> dict[str, Any]:
        import torch

        samples = sets.samples
        blank = samples.norm(dim=1) == 0
        if bool(blank.any()):
            # an all-zero feature (a blank image through ReLU features) has no direction:
            # all such samples count as one and the same
            samples = torch.where(blank[:, None], torch.ones_like(samples), samples)
        return {
            "vendi": vendi_score(samples),
            "settings": {"kernel": "cosine", "samples": len(samples)},
        }
