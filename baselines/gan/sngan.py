"""sngan: Miyato et al. 2018, "Spectral Normalization for Generative Adversarial Networks".

Every critic layer (convolutions and the final linear layer) uses W_SN = W / sigma(W), where
sigma(W), the largest singular value of W reshaped to (out, in k k), is estimated by power
iteration with a persistent vector u (Algorithm 1): ONE iteration per critic update,

    v <- W^T u / ||W^T u||,   u <- W v / ||W v||,   sigma(W) ~ u^T W v,

with u and v treated as constants when differentiating (the paper's appendix). No other
normalisation in the critic. The critic descends the hinge loss
E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))] and the generator -E[D(G(z))], the objective
of the paper's main results. Adam(2e-4, beta1 = 0.5, beta2 = 0.999) with n_dis = 1, the
DCGAN setting among the optimiser settings the paper compares, the one that suits a budget of
a few hundred generator updates.

The power iteration runs once at the start of every critic iteration (``before_critic_step``),
never inside a forward pass, so the count does not depend on how many times the critic is
called; sampling and ``encode`` use the stored u and v.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from baselines.gan import losses
from baselines.gan.base import GANMethod, adam_hparams
from bench.method import Batch, DataSpec
from bench.registry import register_method


class SpectralNorm(nn.Module):
    """The parametrisation W -> W / sigma(W), sigma from persistent power-iteration vectors."""

    def __init__(self, weight: Tensor, warmup_iterations: int = 15, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = eps
        rows, cols = weight.shape[0], weight[0].numel()
        self.register_buffer("u", F.normalize(weight.new_empty(rows).normal_(), dim=0, eps=eps))
        self.register_buffer("v", weight.new_zeros(cols))
        # a random u gives a meaningless sigma: warm it up at construction, as
        # torch.nn.utils.parametrizations.spectral_norm does (the paper is silent on this)
        self.power_iteration(weight, warmup_iterations)

    @torch.no_grad()
    def power_iteration(self, weight: Tensor, iterations: int = 1) -> None:
        matrix = weight.flatten(1)  # (out, in, k, k) -> (out, in k k)
        for _ in range(iterations):
            self.v.copy_(F.normalize(matrix.T @ self.u, dim=0, eps=self.eps))
            self.u.copy_(F.normalize(matrix @ self.v, dim=0, eps=self.eps))

    def sigma(self, weight: Tensor) -> Tensor:
        # u^T W v in the buffers' precision (under bf16 autocast the matmul comes out bf16)
        return torch.dot(self.u, (weight.flatten(1) @ self.v).to(self.u.dtype))

    def forward(self, weight: Tensor) -> Tensor:
        return weight / self.sigma(weight)


def spectral_normalise(module: nn.Module) -> list[nn.Module]:
    """Put SpectralNorm on the weight of every convolution and linear layer of ``module``;
    returns those layers."""
    layers = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for layer in layers:
        parametrize.register_parametrization(layer, "weight", SpectralNorm(layer.weight))
    return layers


def power_iteration(layers: list[nn.Module], iterations: int) -> None:
    """Advance the power iteration of every spectrally normalised layer."""
    for layer in layers:
        weight = layer.parametrizations.weight  # type: ignore[union-attr]
        weight[0].power_iteration(weight.original, iterations)


@register_method("sngan")
class SNGAN(GANMethod):
    summary = "SNGAN (Miyato 2018): spectral norm on every critic layer, hinge loss"
    critic_normalisation = "none"

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {
            **super().default_hparams(spec),
            "power_iterations": 1,
            "critic_steps": 1,
            **adam_hparams(2e-4, 0.5, 0.999),
        }

    def constrain_critic(self) -> None:
        self.normalised_layers = spectral_normalise(self.critic)

    def before_critic_step(self) -> None:
        power_iteration(self.normalised_layers, self.hparams["power_iterations"])

    def critic_objective(
        self, real: Tensor, fake: Tensor, real_scores: Tensor, fake_scores: Tensor, batch: Batch
    ) -> tuple[Tensor, dict[str, float]]:
        return losses.hinge_critic_loss(real_scores, fake_scores), {}
