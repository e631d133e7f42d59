"""Likelihood in bits per dimension: the one place that knows how bits/dim are computed.

bits/dim = NLL in nats of the *discrete* data / (D ln 2), on the test split.

A method's ``log_likelihood(x)`` returns per-image log-probabilities in nats of the discrete
levels. Continuous densities get there through :func:`dequantized_log_likelihood`: with
uniform dequantization y = (k + u) / L, u ~ U[0, 1)^D, Jensen gives
log P(k) >= E_u[log p(y)] - D log L (Theis et al. 2016); with data in [-1, 1] the Jacobian
term is D log(L / 2). :func:`logit_transform` adds the Jacobian of the logit preprocessing
of RealNVP / Glow. Lower bounds (ELBO, IWAE, diffusion VLB, dequantization) are labelled.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from bench.errors import GenbenchError


class BitsPerDim(Metric):
    """Accumulates NLL (nats) over batches and ranks in float64; computes bits/dim."""

    higher_is_better = False
    full_state_update = False
    nll_sum: Tensor
    count: Tensor

    def __init__(self, dims: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dims = dims
        self.add_state("nll_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, log_likelihood: Tensor) -> None:
        """``log_likelihood``: (B,) per-image log-probabilities in nats."""
        self.nll_sum += negative_log_likelihood(log_likelihood)
        self.count += log_likelihood.numel()

    def compute(self) -> Tensor:
        return bits_from_nll(self.nll_sum, self.count, self.dims)


def negative_log_likelihood(log_likelihood: Tensor) -> Tensor:
    """The summed NLL (nats, float64) of a batch of per-image log-likelihoods (B,), checked."""
    if log_likelihood.dim() != 1:
        raise GenbenchError(f"log_likelihood must be (B,), got {tuple(log_likelihood.shape)}")
    if not torch.isfinite(log_likelihood).all():
        raise GenbenchError("log_likelihood returned NaN or inf")
    return -log_likelihood.double().sum()


def bits_from_nll(nll_sum: Tensor, count: Tensor | float, dims: int) -> Tensor:
    """bits/dim = NLL in nats / (images x D x ln 2)."""
    return nll_sum / (count * dims * math.log(2.0))


def bits_per_dim(log_likelihood: Tensor, dims: int) -> float:
    """bits/dim of a batch of per-image log-likelihoods (nats)."""
    metric = BitsPerDim(dims)
    metric.update(log_likelihood)
    return float(metric.compute())


def uniform_bits_per_dim(num_levels: int) -> float:
    """The bits/dim of a model that puts equal mass on every level: log2(L)."""
    return math.log2(num_levels)


def dequantize(
    levels: Tensor,
    num_levels: int,
    generator: torch.Generator | None = None,
    symmetric: bool = False,
) -> Tensor:
    """Uniform dequantization: levels k -> y = (k + u) / L in [0, 1) (or 2y - 1 in [-1, 1))."""
    noise = torch.rand(levels.shape, generator=generator, device=levels.device)
    y = (levels.float() + noise) / num_levels
    return 2.0 * y - 1.0 if symmetric else y


def dequantization_log_jacobian(dims: int, num_levels: int, symmetric: bool = False) -> float:
    """log of the volume factor from density of y to mass of the level cell: -D log(L) for
    y in [0,1) (cells of width 1/L), -D log(L/2) for y in [-1,1) (width 2/L)."""
    width_inv = num_levels / 2.0 if symmetric else float(num_levels)
    return -dims * math.log(width_inv)


def dequantized_log_likelihood(
    log_density: Tensor, dims: int, num_levels: int, symmetric: bool = False
) -> Tensor:
    """Discrete log-likelihood (a lower bound) from a continuous log-density at dequantized
    points: log P(k) >= log p(y) + log(cell volume)."""
    return log_density + dequantization_log_jacobian(dims, num_levels, symmetric)


def logit_transform(y: Tensor, alpha: float = 0.05) -> tuple[Tensor, Tensor]:
    """RealNVP's logit preprocessing of y in [0, 1): z = logit(alpha + (1 - 2 alpha) y).

    Returns z and the per-image log|dz/dy| to add to the model's log-density of z."""
    p = alpha + (1.0 - 2.0 * alpha) * y
    z = torch.log(p) - torch.log1p(-p)
    log_jac = math.log(1.0 - 2.0 * alpha) - torch.log(p) - torch.log1p(-p)
    return z, log_jac.flatten(1).sum(1)


def evaluate_likelihood(
    method: Any,
    test_images: Tensor,
    batch_size: int,
    dims: int,
    num_levels: int,
    device: torch.device,
    variant: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """bits/dim of ``method`` on the test images (float [0, 1]) in one process, labelled
    bound or exact; ``variant``: keyword arguments of ``log_likelihood`` (one of its
    likelihood_variants). Runs score it sharded across ranks with
    :class:`bench.evaluators.likelihood.Likelihood`."""
    metric = BitsPerDim(dims).to(device)
    with torch.no_grad():
        for start in range(0, len(test_images), batch_size):
            x = test_images[start : start + batch_size].to(device)
            metric.update(method.log_likelihood(x, **(variant or {})))
    return likelihood_scores(float(metric.compute()), method, len(test_images), num_levels, variant)


def likelihood_scores(
    bpd: float,
    method: Any,
    num_images: int,
    num_levels: int,
    variant: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A result's likelihood entry: bits/dim, bound or exact, and how it was measured."""
    settings = {
        "split": "test",
        "num_images": num_images,
        "num_levels": num_levels,
        "uniform_bpd": uniform_bits_per_dim(num_levels),
    }
    settings.update(method.likelihood_settings())
    settings.update(variant or {})
    return {"bpd": bpd, "is_bound": bool(method.likelihood_is_bound), "settings": settings}
