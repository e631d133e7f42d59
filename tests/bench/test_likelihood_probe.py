from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.data import load_dataset
from bench.method import from_levels
from bench.metrics.likelihood import (
    BitsPerDim,
    bits_per_dim,
    dequantize,
    dequantized_log_likelihood,
    evaluate_likelihood,
    logit_transform,
)
from bench.metrics.probe import knn_accuracy, linear_probe
from bench.protocol import load_protocol
from bench.registry import METHODS


def test_independent_pixels_bpd_equals_cross_entropy_from_counts() -> None:
    data = load_dataset("digits")
    method = METHODS.get("independent-pixels").build(data.spec, {"alpha": 0.5})
    method.prepare(data.images("train"), data.labels("train"), data.images("test"))
    out = evaluate_likelihood(
        method, data.images("test"), 100, data.spec.dims, 17, torch.device("cpu")
    )
    # Cross-entropy of the test set under smoothed per-pixel frequencies, straight from numpy.
    train = data.levels("train").flatten(1).numpy()
    test = data.levels("test").flatten(1).numpy()
    cross_entropy = 0.0
    for d in range(train.shape[1]):
        counts = np.bincount(train[:, d], minlength=17) + 0.5
        probs = counts / counts.sum()
        cross_entropy += -np.log2(probs[test[:, d]]).sum()
    expected = cross_entropy / (test.shape[0] * test.shape[1])
    assert out["bpd"] == pytest.approx(expected, rel=1e-6)
    assert out["is_bound"] is False
    assert 0 < out["bpd"] < math.log2(17)


def test_uniform_model_gets_exactly_log2_levels() -> None:
    data = load_dataset("digits")
    method = METHODS.get("independent-pixels").build(data.spec)  # unfitted: uniform
    out = evaluate_likelihood(method, data.images("test"), 64, 64, 17, torch.device("cpu"))
    assert out["bpd"] == pytest.approx(math.log2(17), abs=1e-6)


def test_uniform_density_through_dequantization_gives_log2_levels() -> None:
    """A density of 1 on [0,1)^D has log p = 0; the dequantization term alone must give
    exactly log2(L) bits/dim, and log2(L) - 1 bits more on [-1, 1) with density 2^-D."""
    levels = torch.randint(0, 256, (10, 1, 4, 4))
    y = dequantize(levels, 256, torch.Generator().manual_seed(0))
    assert float(y.min()) >= 0 and float(y.max()) < 1
    ll = dequantized_log_likelihood(torch.zeros(10), 16, 256)
    assert bits_per_dim(ll, 16) == pytest.approx(8.0)
    ll_sym = dequantized_log_likelihood(torch.full((10,), -16 * math.log(2)), 16, 256, True)
    assert bits_per_dim(ll_sym, 16) == pytest.approx(8.0)


def test_logit_jacobian_matches_autograd() -> None:
    y = torch.rand(3, 1, 2, 2, dtype=torch.float64)
    _, log_jac = logit_transform(y)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: logit_transform(v)[0], y[i : i + 1])
        jac = jac.reshape(4, 4)
        assert float(log_jac[i]) == pytest.approx(float(torch.logdet(jac)), rel=1e-8)


def test_bits_per_dim_metric_accumulates_over_batches() -> None:
    ll = -torch.rand(100, dtype=torch.float64) * 50
    metric = BitsPerDim(dims=64)
    for chunk in ll.split(7):
        metric.update(chunk)
    assert float(metric.compute()) == pytest.approx(float(-ll.sum() / (100 * 64 * math.log(2))))


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    centers = torch.eye(4, 16) * 10
    return centers[labels] + 0.5 * torch.randn(n, 16, generator=gen), labels


def test_probe_separable_features_score_one() -> None:
    settings = load_protocol("smoke").eval
    train_x, train_y = _blobs(200, 0)
    test_x, test_y = _blobs(100, 1)
    out = linear_probe(train_x.double(), train_y, test_x.double(), test_y, 4, settings)
    assert out["linear_acc"] == 1.0
    assert knn_accuracy(train_x.double(), train_y, test_x.double(), test_y, 4, 20, 0.07) == 1.0


def test_probe_shuffled_labels_score_chance() -> None:
    settings = load_protocol("smoke").eval
    train_x, train_y = _blobs(400, 0)
    test_x, test_y = _blobs(400, 1)
    shuffled = train_y[torch.randperm(400, generator=torch.Generator().manual_seed(3))]
    test_shuffled = test_y[torch.randperm(400, generator=torch.Generator().manual_seed(4))]
    out = linear_probe(train_x.double(), shuffled, test_x.double(), test_shuffled, 4, settings)
    assert abs(out["linear_acc"] - 0.25) < 0.1


def test_raw_pixel_probe_on_digits() -> None:
    data = load_dataset("digits")
    settings = load_protocol("smoke").eval
    feats = lambda split: from_levels(data.levels(split), 17).flatten(1).double()  # noqa: E731
    out = linear_probe(
        feats("train"), data.labels("train"), feats("test"), data.labels("test"), 10, settings
    )
    assert 0.9 < out["linear_acc"] <= 1.0
    assert out["settings"]["c"] in settings.probe_c_grid
