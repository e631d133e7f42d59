"""Intra-class FID for class-conditional methods (Miyato and Koyama, "cGANs with Projection
Discriminator", ICLR 2018, section 5; used for guided diffusion by Dhariwal and Nichol 2021).

For each class y: the FID between the samples drawn for y and the training images of class
y (torch-fidelity's Frechet distance on FID's features), then the mean over classes. It
sees what plain FID cannot: a model that draws beautiful images of the wrong class, or one
class's images for every label. The per-class values are recorded. With few samples per
class the per-class FIDs carry FID's small-sample bias, so compare them at equal
``fid_samples`` only.
"""

from __future__ import annotations

from typing import Any

from bench.evaluators.base import Column
from bench.evaluators.fidelity_metrics import FidelityMetric, SampleSets, register_fidelity_metric
from bench.evaluators.fidelity_metrics.fd_infinity import frechet_distance


@register_fidelity_metric("intra_class_fid")
class IntraClassFID(FidelityMetric):
    columns = (
        Column(
            "intra_fid",
            "intra-class FID",
            higher_is_better=False,
            range=(0.0, float("inf")),
            decimals=2,
            noise=0.5,
            noise_rel=0.005,
        ),
    )
    class_conditional = True

    def compute(self, sets: SampleSets) -> dict[str, Any]:
        from torch_fidelity.metric_fid import fid_features_to_statistics

        assert sets.sample_labels is not None and sets.train_labels is not None
        per_class: dict[str, float] = {}
        for label in sorted(int(y) for y in sets.sample_labels.unique()):
            drawn = sets.samples_fid[sets.sample_labels == label]
            real = sets.train_fid[sets.train_labels == label]
            if len(drawn) < 2 or len(real) < 2:
                continue
            reference = fid_features_to_statistics(real.double().cpu())
            per_class[str(label)] = frechet_distance(drawn, reference)
        if not per_class:
            return {}
        return {
            "intra_fid": sum(per_class.values()) / len(per_class),
            "settings": {"per_class": per_class, "classes": len(per_class)},
        }
