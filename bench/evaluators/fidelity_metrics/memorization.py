"""Memorization: are samples copies of training images?

On the CPU datasets this is a live question (digits has about 1,500 training images and the
quick protocol shows each one about 40 times). Two scores, each in the extractor's feature
space and in pixel space (``[pixels]`` columns):

- ``memorized``: the fraction of samples closer to a training image than real unseen images
  are. For each sample s, d_train(s) is the distance to its nearest training image; the
  threshold tau is the ``eval.memorization_quantile`` (q) quantile of the same distance for
  the real test images, calibrated on the data itself: a model whose samples are as novel
  as unseen real images scores about q, one that copies its training set scores 1. Lower
  is better; the recorded ``median_train_test_ratio`` is the median over samples of
  d_train(s) / d_test(s), the distance to the nearest training image over the distance to
  the nearest test image (well below 1: closer to what was trained on than to new data).
- ``authenticity`` (Alaa, van Breugel, Saveliev and van der Schaar, "How Faithful is your
  Synthetic Data?", ICML 2022, section 3.3): a sample is authentic when it is farther from
  its nearest training image x* than x* is from its own nearest other training image; the
  score is the authentic fraction (0 for a copy of the training set). Higher is better.

The reference rows check both ends: ``real-data`` (test images as samples) scores about q,
``real-data[split=train]`` (training images as samples) scores 1 and authenticity 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.evaluators.base import Column
from bench.evaluators.fidelity_metrics import FidelityMetric, SampleSets, register_fidelity_metric
from bench.evaluators.fidelity_metrics.neighbours import kth_neighbour_radii, nearest

if TYPE_CHECKING:
    from torch import Tensor


def memorization(
    samples: Tensor, train: Tensor, test: Tensor, quantile: float
) -> dict[str, float | None]:
    """``memorized``, ``authenticity`` and their calibration for one space (rows: images)."""
    import torch

    to_train, nearest_train = nearest(samples, train)
    to_test, _ = nearest(samples, test)
    test_to_train, _ = nearest(test, train)
    threshold = float(torch.quantile(test_to_train, quantile))
    memorized = float((to_train < threshold).double().mean())
    # Alaa et al.: authentic when farther from x* than x* is from the rest of train
    train_radii = kth_neighbour_radii(train, 1)
    authenticity = float((to_train > train_radii[nearest_train]).double().mean())
    ratio = to_train / to_test
    median = float(ratio.median())
    return {
        "memorized": memorized,
        "authenticity": authenticity,
        "threshold": threshold,
        # a sample that is a test image has ratio inf: no number to record
        "median_train_test_ratio": median if median != float("inf") else None,
    }


@register_fidelity_metric("memorization")
class Memorization(FidelityMetric):
    columns = (
        Column("memorized", "memorized", higher_is_better=False, range=(0.0, 1.0), noise=0.01),
        Column("authenticity", "authenticity", higher_is_better=True, range=(0.0, 1.0), noise=0.01),
    )
    settings = ("memorization_quantile",)

    def compute(self, sets: SampleSets) -> dict[str, Any]:
        q = sets.settings.memorization_quantile
        features = memorization(sets.samples, sets.train, sets.test, q)
        pixels = memorization(sets.samples_px, sets.train_px, sets.test_px, q)
        keys = ("memorized", "authenticity")
        return {
            **{key: features[key] for key in keys},
            "pixels": {key: pixels[key] for key in keys},
            "settings": {
                "quantile": q,
                "calibration": "test split's distances to the train split",
                "features": {k: v for k, v in features.items() if k not in keys},
                "pixels": {k: v for k, v in pixels.items() if k not in keys},
            },
        }
