"""What the normalizing flows share: uniform dequantization, optional logit preprocessing,
the change-of-variables likelihood, maximum-likelihood training (the loop applies the
learning-rate warm-up and optional clipping),
sampling by inverting the flow, and the latent as the representation.

For integer levels k of an image, y = (k + u) / L with u ~ U[0, 1)^D (uniform
dequantization), optionally z_0 = logit(alpha + (1 - 2 alpha) y) (RealNVP section 4.1), then
the flow f: z = f(z_0) with a standard prior p_Z:

    log p(y) = log p_Z(f(z_0)) + log|det df/dz_0| + log|dz_0/dy|
    log P(k) >= E_u[log p(y)] - D log L                        (Theis et al. 2016)

bits/dim therefore follow PROTOCOL.md through :mod:`bench.metrics.likelihood`
(``dequantize``, ``logit_transform``, ``dequantized_log_likelihood``), and are labelled a
bound (``likelihood_is_bound``): the continuous density is exact, its value on dequantized
data bounds the discrete likelihood from below. With ``eval_dequantization_samples`` = K > 1
the test likelihood is the importance-weighted bound log (1/K sum_k p(y_k) / q(y_k | k))
with the uniform q (tighter as K grows; the count is recorded).

Sampling: z ~ p_Z (times ``sample_temperature``, 1 by default), y = f^{-1}(z) (and the inverse
logit), levels floor(L y) clipped to 0..L-1. ``encode``: the latent z = f(z_0) of the cell
midpoints y = (k + 1/2) / L, flattened (all D dimensions, factored-out scales included).
Data-dependent initialisation (ActNorm) runs in ``prepare`` on training images only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from baselines.common.flow_layers import MultiScaleFlow, prior_log_prob, prior_sample
from bench.method import (
    ENCODE,
    LOG_LIKELIHOOD,
    SAMPLE,
    Batch,
    DataSpec,
    Method,
    Update,
    from_levels,
    to_levels,
)
from bench.metrics.likelihood import dequantize, dequantized_log_likelihood, logit_transform

#: images used for the data-dependent initialisation in ``prepare``
INIT_IMAGES = 512
#: seed of the dequantization noise at evaluation, so a test batch always gets one number
EVAL_NOISE_SEED = 0


class DequantizedFlow(Method):
    """Base class: subclasses build ``self.flow`` (a :class:`MultiScaleFlow`, or a flow layer
    on (B, C, H, W) images), then call :meth:`setup_optimizer`."""

    capabilities = frozenset({SAMPLE, LOG_LIKELIHOOD, ENCODE})
    likelihood_is_bound = True

    #: max_grad_norm 0 switches clipping off; the logit transform squeezes into [a, 1 - a]
    hparam_ranges: ClassVar[dict[str, tuple[Any, ...] | None]] = {
        "logit_alpha": (0, 0.5, "[)"),
        "max_grad_norm": (0, None),
    }

    @staticmethod
    def training_hparams(spec: DataSpec) -> dict[str, Any]:
        """The hyper-parameters every flow shares (preprocessing, optimisation, evaluation):
        merged into each flow's ``default_hparams``."""
        return {
            # RealNVP's alpha on CIFAR-10; MAF's 1e-6 on 1-channel data
            "logit_alpha": 0.05 if spec.scale == "32x32" else 1e-6,
            "lr": 3e-3 if spec.scale == "8x8" else 1e-3,
            "warmup_steps": 100,
            "max_grad_norm": 0.0,  # 0: no clipping
            "weight_decay": 0.0,
            "eval_dequantization_samples": 1,
            "sample_temperature": 1.0,
        }

    def __init__(
        self,
        spec: DataSpec,
        prior: str,
        logit_alpha: float = 1e-6,
        lr: float = 3e-3,
        warmup_steps: int = 100,
        max_grad_norm: float = 0.0,
        weight_decay: float = 0.0,
        eval_dequantization_samples: int = 1,
        sample_temperature: float = 1.0,
    ) -> None:
        super().__init__(spec)
        self.prior = prior
        self.logit_alpha = logit_alpha
        self.eval_samples = eval_dequantization_samples
        self.temperature = sample_temperature
        self.lr, self.warmup_steps, self.max_grad_norm = lr, warmup_steps, max_grad_norm
        self.weight_decay = weight_decay
        self.flow: nn.Module

    def setup_optimizer(self) -> None:
        """Adam on every parameter, with Glow's linear warm-up and optional clipping (both
        applied by the loop); subclasses call it once their flow is built."""
        self.add_optimizer(
            "adam",
            torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay),
            grad_clip=self.max_grad_norm,  # 0: no clipping
            schedule="warmup",  # linear learning-rate warm-up (Glow)
            warmup_steps=self.warmup_steps,
        )

    # -- the density ------------------------------------------------------------------------
    def _preprocess(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """y in [0, 1) -> (flow input, log|d input / dy| per image)."""
        if self.logit_alpha > 0:
            return logit_transform(y, self.logit_alpha)
        return y, y.new_zeros(len(y))

    def _postprocess(self, x: Tensor) -> Tensor:
        """The inverse of ``_preprocess``."""
        if self.logit_alpha > 0:
            return (torch.sigmoid(x) - self.logit_alpha) / (1.0 - 2.0 * self.logit_alpha)
        return x

    def _forward_flow(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """y (B, C, H, W) in [0, 1) -> latent (B, D) and log|dz/dy| (B,)."""
        flow_input, log_jacobian = self._preprocess(y)
        z, log_det = self.flow(flow_input)
        return z.flatten(1), log_det + log_jacobian

    def _inverse_flow(self, z: Tensor) -> Tensor:
        """latent (B, D) -> y (B, C, H, W)."""
        if isinstance(self.flow, MultiScaleFlow):
            return self._postprocess(self.flow.inverse(z))
        return self._postprocess(self.flow.inverse(z.view(len(z), *self.spec.shape)))

    def log_density(self, y: Tensor) -> Tensor:
        """log p(y) (B,) of dequantized images y in [0, 1)^D: prior + log-determinants."""
        z, log_det = self._forward_flow(y)
        return prior_log_prob(z, self.prior) + log_det

    def _dequantized(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        levels = to_levels(x, self.spec.num_levels)
        return dequantize(levels, self.spec.num_levels, generator).to(x.dtype)

    # -- set-up and training ------------------------------------------------------------------
    def prepare(self, train_x: Tensor, train_y: Tensor, held_out_x: Tensor) -> None:
        """Data-dependent initialisation (ActNorm) on a batch of training images."""
        index = torch.randperm(len(train_x))[:INIT_IMAGES]
        was_training = self.training
        self.train()
        with torch.no_grad():
            self._forward_flow(self._dequantized(train_x[index].to(self.device)))
        self.train(was_training)

    def train_step(self, batch: Batch, step: int) -> Iterator[Update]:
        dims = self.spec.dims
        # uniform dequantization y = (k + u) / L, u per example from the batch's noise
        levels = to_levels(batch.x, self.spec.num_levels).to(batch.x.dtype)
        y = (levels + batch.rand(*self.spec.shape)) / self.spec.num_levels

        def loss() -> Tensor:
            log_p = dequantized_log_likelihood(self.log_density(y), dims, self.spec.num_levels)
            return -log_p.mean() / (dims * math.log(2.0))  # bits/dim of the dequantized bound

        yield Update("adam", loss)

    # -- capabilities ---------------------------------------------------------------------------
    def log_likelihood(self, x: Tensor) -> Tensor:
        generator = torch.Generator(device=x.device).manual_seed(EVAL_NOISE_SEED)
        per_sample = torch.stack(
            [self.log_density(self._dequantized(x, generator)) for _ in range(self.eval_samples)]
        )  # (K, B)
        log_p = per_sample.logsumexp(0) - math.log(self.eval_samples)
        return dequantized_log_likelihood(log_p, self.spec.dims, self.spec.num_levels)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, labels: Tensor | None = None) -> Tensor:
        z = prior_sample((n, self.spec.dims), self.prior, generator, self.temperature)
        y = torch.nan_to_num(self._inverse_flow(z.to(self.device)), nan=0.0)
        top = self.spec.num_levels - 1
        levels = torch.floor(y * self.spec.num_levels).clamp(0, top)
        self.last_nfe = 1
        return from_levels(levels, self.spec.num_levels)

    def encode(self, x: Tensor) -> Tensor:
        midpoints = (to_levels(x, self.spec.num_levels).to(x.dtype) + 0.5) / self.spec.num_levels
        return self._forward_flow(midpoints)[0]

    def likelihood_settings(self) -> dict[str, Any]:
        return {
            "dequantization": "uniform",
            "dequantization_samples": self.eval_samples,
            "importance_weighted": self.eval_samples > 1,
            "logit_alpha": self.logit_alpha,
            "prior": self.prior,
        }

    def sample_settings(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "network_calls": 1}
