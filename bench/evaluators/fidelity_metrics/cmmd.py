"""CMMD (Jayasumana, Ramalingam, Veit, Glasner, Chakrabarti and Kumar, "Rethinking FID:
Towards a Better Evaluation Metric for Image Generation", CVPR 2024, section 4).

The squared maximum mean discrepancy between the samples' and the reference images' CLIP
embeddings under a Gaussian kernel k(x, y) = exp(-||x - y||^2 / (2 sigma^2)), sigma = 10, on
L2-normalised embeddings, scaled by 1,000:

    CMMD = 1000 * (mean k(x, x') + mean k(y, y') - 2 mean k(x, y))

the estimate of the authors' code (google-research/cmmd, ``distance.mmd``: means over all
pairs, diagonals included, so a set against itself scores exactly 0). It assumes nothing
about the distribution of the embeddings (FID assumes a Gaussian). Scored when the study's
extractor is CLIP (``--extractor clip-vit-b-32``: torch-fidelity's ViT-B/32, where the paper
used ViT-L/14 at 336 pixels), against the train split like FID.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.evaluators.base import Column
from bench.evaluators.fidelity_metrics import FidelityMetric, SampleSets, register_fidelity_metric
from bench.evaluators.fidelity_metrics.neighbours import BLOCK

if TYPE_CHECKING:
    from torch import Tensor

SIGMA = 10.0
SCALE = 1000.0
#: the extractors whose features are CLIP embeddings
CLIP_EXTRACTORS = ("clip-vit-b-32",)


def _kernel_mean(a: Tensor, b: Tensor) -> float:
    """Mean of exp(-||a_i - b_j||^2 / (2 sigma^2)) over all pairs, in blocks of rows."""
    import torch

    gamma = 1.0 / (2.0 * SIGMA**2)
    total = 0.0
    for i in range(0, len(a), BLOCK):
        block = torch.cdist(a[i : i + BLOCK], b).square()
        total += float(torch.exp(-gamma * block).sum())
    return total / (len(a) * len(b))


def cmmd(x: Tensor, y: Tensor) -> float:
    """CMMD between two sets of embeddings (rows), normalised here as the paper's code does."""
    import torch

    x = torch.nn.functional.normalize(x.double(), dim=1)
    y = torch.nn.functional.normalize(y.double(), dim=1)
    return SCALE * (_kernel_mean(x, x) + _kernel_mean(y, y) - 2.0 * _kernel_mean(x, y))


@register_fidelity_metric("cmmd")
class CMMD(FidelityMetric):
    columns = (
        # a V-statistic: 0 for identical sets, never below (a squared MMD)
        Column(
            "cmmd",
            "CMMD",
            higher_is_better=False,
            range=(0.0, float("inf")),
            noise=0.01,
            noise_rel=0.02,
        ),
    )

    @classmethod
    def applies(cls, sets: SampleSets) -> bool:
        return sets.extractor in CLIP_EXTRACTORS

    def compute(self, sets: SampleSets) -> dict[str, Any]:
        return {
            "cmmd": cmmd(sets.samples, sets.train),
            "settings": {"sigma": SIGMA, "scale": SCALE, "reference": "train split"},
        }
