"""Density and coverage (Naeem, Oh, Uh, Choi and Yoo, "Reliable Fidelity and Diversity
Metrics for Generative Models", ICML 2020, eqs. 4 and 5).

With real features X_1..X_N (the train split, FID's reference), samples Y_1..Y_M and
B(X_i) the ball around X_i with radius the distance to its k-th nearest real neighbour:

    density  = 1 / (k M) * sum_j sum_i 1[Y_j in B(X_i)]
    coverage = 1 / N * sum_i 1[exists j: Y_j in B(X_i)]

Density is precision that counts how many real neighbourhoods hold a sample (expected 1
for samples from the real distribution, above 1 where samples crowd dense regions); coverage
is recall that reads only real neighbourhoods, so it is robust to outlying samples (expected
1 - (1/2)^k for equal set sizes of one distribution; 1 for a copy of the real set). Same
features and k (``eval.prc_neighborhood``) as precision/recall; membership is strict (<), as
in the authors' code (clovaai/generative-evaluation-prdc).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.evaluators.base import Column
from bench.evaluators.fidelity_metrics import FidelityMetric, SampleSets, register_fidelity_metric
from bench.evaluators.fidelity_metrics.neighbours import BLOCK, distances, kth_neighbour_radii

if TYPE_CHECKING:
    from torch import Tensor


def density_coverage(real: Tensor, fake: Tensor, k: int) -> tuple[float, float]:
    """(density, coverage) of samples ``fake`` against ``real`` (rows are feature vectors)."""
    import torch

    radii = kth_neighbour_radii(real, k)
    inside_total = 0
    covered = torch.zeros(len(real), dtype=torch.bool)
    for i in range(0, len(real), BLOCK):
        inside = distances(real[i : i + BLOCK], fake) < radii[i : i + BLOCK, None]
        inside_total += int(inside.sum())
        covered[i : i + BLOCK] = inside.any(dim=1)
    density = inside_total / (k * len(fake))
    coverage = float(covered.double().mean())
    return density, coverage


@register_fidelity_metric("density_coverage")
class DensityCoverage(FidelityMetric):
    columns = (
        # expected 1 for samples of the real distribution; higher packs samples into dense
        # real regions, so it is ranked but has no ceiling
        Column("density", "density", higher_is_better=True, range=(0.0, float("inf")), noise=0.01),
        Column("coverage", "coverage", higher_is_better=True, range=(0.0, 1.0), noise=0.01),
    )
    settings = ("prc_neighborhood",)

    def compute(self, sets: SampleSets) -> dict[str, Any]:
        k = min(sets.settings.prc_neighborhood, len(sets.train) - 1)
        density, coverage = density_coverage(sets.train, sets.samples, k)
        return {
            "density": density,
            "coverage": coverage,
            "settings": {"k": k, "real": "train split", "real_size": len(sets.train)},
        }
