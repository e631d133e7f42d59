"""wgan-gp: Gulrajani et al. 2017, "Improved Training of Wasserstein GANs".

The WGAN critic objective with the Lipschitz constraint replaced by a gradient penalty on
random interpolates between real and generated images (eq. 3, Algorithm 1):

    L = E[D(x_tilde)] - E[D(x)] + lambda E[(||grad_{x_hat} D(x_hat)||_2 - 1)^2],
    x_hat = eps x + (1 - eps) x_tilde, eps ~ U[0, 1] per pair, lambda = 10;

the generator descends -E[D(G(z))]. n_critic = 5, Adam(1e-4, beta1 = 0, beta2 = 0.9) for
both networks (Algorithm 1's defaults). The penalty is per sample, so the critic has no batch
norm; it uses layer normalisation over (C, H, W) instead, as the paper recommends (section
4, "No critic batch normalization").
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from baselines.gan import losses
from baselines.gan.base import GANMethod, adam_hparams, random_interpolates
from bench.method import Batch, DataSpec
from bench.registry import register_method


@register_method("wgan-gp")
class WGANGP(GANMethod):
    summary = "WGAN-GP (Gulrajani 2017): gradient penalty 10 on interpolates, layer-norm critic"
    critic_normalisation = "layer"

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {
            **super().default_hparams(spec),
            "gp_weight": 10.0,
            "critic_steps": 5,
            **adam_hparams(1e-4, 0.0, 0.9),
        }

    def critic_objective(
        self, real: Tensor, fake: Tensor, real_scores: Tensor, fake_scores: Tensor, batch: Batch
    ) -> tuple[Tensor, dict[str, float]]:
        wasserstein = losses.wasserstein_critic_loss(real_scores, fake_scores)
        points = random_interpolates(real, fake, batch)
        grad_norms = losses.input_gradient_norms(self.critic, points)
        penalty = losses.gradient_penalty(grad_norms, self.hparams["gp_weight"])
        terms = {"wasserstein_estimate": -wasserstein.item(), "gradient_penalty": penalty.item()}
        return wasserstein + penalty, terms
