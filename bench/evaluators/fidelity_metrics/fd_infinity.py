"""FD-infinity (Chong and Forsyth, "Effectively Unbiased FID and Inception Score and where
to find them", CVPR 2020, section 3).

FID computed from N samples is biased upwards, and the bias is, to first order, linear in
1/N: FID_N = FID_inf + c / N. So FID is computed on random subsets of the samples at
``eval.fd_inf_points`` sizes N evenly spaced from ``eval.fd_inf_min_fraction`` of the
samples to all of them (the paper: 15 sizes from 5,000 to 50,000), a line is fitted to
(1/N, FID_N) by least squares, and its value at 1/N = 0 is FD-infinity: the FID of infinitely
many samples against the same reference statistics, comparable across sample counts where
plain FID is not. Subsets are drawn without replacement from one generator seeded by the
run's seed (the authors' code shuffles and takes the first N).

The linear model holds where N is well above the feature width d (the paper: N >= 5,000 for
d = 2,048); below it the covariance is rank-deficient and FID_N bends. So the smallest size
is at least 2d, and when that leaves less than a factor of two between the smallest and the
largest size (too few samples for the width, e.g. the 297 test images of digits against
128-d features) there is no fit and no value: the reason is recorded instead.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from bench.evaluators.base import Column
from bench.evaluators.fidelity_metrics import FidelityMetric, SampleSets, register_fidelity_metric

if TYPE_CHECKING:
    from torch import Tensor


def frechet_distance(a: Tensor, b_stats: dict[str, Any]) -> float:
    """torch-fidelity's FID between the features ``a`` and reference statistics."""
    from torch_fidelity import KEY_METRIC_FID
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    stats = fid_features_to_statistics(a.double().cpu())
    return float(fid_statistics_to_metric(stats, b_stats, False)[KEY_METRIC_FID])


def subset_sizes(count: int, points: int, min_fraction: float, floor: int = 2) -> list[int]:
    """``points`` sizes evenly spaced from max(ceil(min_fraction * count), floor) to count
    (duplicates dropped)."""
    low = max(2, floor, math.ceil(min_fraction * count))
    if points == 1 or low >= count:
        return [count]
    step = (count - low) / (points - 1)
    return sorted({round(low + i * step) for i in range(points)})


def fd_infinity(
    samples: Tensor, reference: Tensor, points: int, min_fraction: float, seed: int
) -> tuple[float | None, list[tuple[int, float]]]:
    """(FD-infinity, [(N, FID_N), ...]) of ``samples`` against ``reference`` features;
    (None, []) when there are too few samples for their width (module docstring)."""
    import numpy as np
    import torch
    from torch_fidelity.metric_fid import fid_features_to_statistics

    sizes = subset_sizes(len(samples), points, min_fraction, floor=2 * samples.shape[1])
    if len(sizes) < 2 or sizes[-1] < 2 * sizes[0]:
        return None, []
    reference_stats = fid_features_to_statistics(reference.double().cpu())
    generator = torch.Generator().manual_seed(seed)
    curve = []
    for size in sizes:
        order = torch.randperm(len(samples), generator=generator)[:size]
        curve.append((size, frechet_distance(samples[order], reference_stats)))
    if len(curve) < 2:
        raise ValueError("FD-infinity needs FID at two or more sample counts")
    inverse = np.array([1.0 / size for size, _ in curve])
    values = np.array([value for _, value in curve])
    slope, intercept = np.polyfit(inverse, values, 1)
    return float(intercept), curve


@register_fidelity_metric("fd_infinity")
class FDInfinity(FidelityMetric):
    columns = (
        # the extrapolation can undershoot 0 for near-identical sets: no floor
        Column("fd_inf", "FD∞", higher_is_better=False, decimals=2, noise=0.5, noise_rel=0.005),
    )
    settings = ("fd_inf_points", "fd_inf_min_fraction")

    def compute(self, sets: SampleSets) -> dict[str, Any]:
        from bench.seeds import derive

        settings = sets.settings
        count, width = sets.samples_fid.shape
        value, curve = fd_infinity(
            sets.samples_fid,
            sets.train_fid,
            settings.fd_inf_points,
            settings.fd_inf_min_fraction,
            derive(sets.seed, "fd_infinity"),
        )
        if value is None:
            why = f"{count} samples of {width}-d features: FD-infinity needs at least {4 * width}"
            return {"settings": {"skipped": why}}
        return {
            "fd_inf": value,
            "settings": {"fits": [{"samples": n, "fid": fid} for n, fid in curve]},
        }
