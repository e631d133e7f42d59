"""wgan-div: Wu et al. 2018, "Wasserstein Divergence for GANs".

The critic maximises the Wasserstein divergence, which needs no Lipschitz constraint:

    W_{k,p}(P_r, P_g) = max_f E_{P_r}[f(x)] - E_{P_g}[f(x)] - k E_{x_hat~P_u}[||grad f(x_hat)||^p],

k = 2, p = 6 (the paper's best setting); the generator descends -E[f(G(z))], i.e. it
minimises the distance the optimal f estimates. The paper writes the same objective with the
opposite sign of f (the critic minimises E[f(x_r)] - E[f(G(z))] + k E||grad f||^p and the
generator minimises E[f(G(z))]); f -> -f leaves the penalty unchanged, so the two are the
same method. Here the critic scores real images high, as in the other Wasserstein rows.

P_u, the distribution of the penalty points, only needs to cover the supports: the paper
compares several choices and finds them close; the default is its and its code's choice,
interpolates x_hat = eps x_r + (1 - eps) x_f with eps ~ U[0, 1]; ``penalty_points=
"real-and-fake"`` puts the penalty on the real and the generated points themselves (half
the weight on each, so the term stays k E||grad f||^p over their mixture).

Optimiser and schedule from the authors' code: Adam(2e-4, beta1 = 0, beta2 = 0.9) for both
networks, 4 critic iterations per generator iteration, layer normalisation in the critic
(the penalty is per sample, so no batch norm).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from baselines.gan import losses
from baselines.gan.base import GANMethod, adam_hparams, random_interpolates
from bench.method import Batch, DataSpec
from bench.registry import register_method

PENALTY_POINTS = ("interpolates", "real-and-fake")


@register_method("wgan-div")
class WGANDiv(GANMethod):
    summary = "WGAN-div (Wu 2018): Wasserstein divergence, k=2 p=6, no Lipschitz constraint"
    critic_normalisation = "layer"
    hparam_choices = {"penalty_points": PENALTY_POINTS}

    hparam_ranges = {**GANMethod.hparam_ranges, "div_k": (0, None, "(]"), "div_p": (0, None, "(]")}

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {
            **super().default_hparams(spec),
            "div_k": 2.0,
            "div_p": 6.0,
            "penalty_points": "interpolates",
            "critic_steps": 4,
            **adam_hparams(2e-4, 0.0, 0.9),
        }

    def critic_objective(
        self, real: Tensor, fake: Tensor, real_scores: Tensor, fake_scores: Tensor, batch: Batch
    ) -> tuple[Tensor, dict[str, float]]:
        wasserstein = losses.wasserstein_critic_loss(real_scores, fake_scores)
        if self.hparams["penalty_points"] == "interpolates":
            points = random_interpolates(real, fake, batch)  # (B, C, H, W)
        else:
            points = torch.cat([real, fake])  # (2B, C, H, W)
        grad_norms = losses.input_gradient_norms(self.critic, points)
        penalty = losses.wasserstein_div_penalty(
            grad_norms, self.hparams["div_k"], self.hparams["div_p"]
        )
        terms = {"wasserstein_estimate": -wasserstein.item(), "div_penalty": penalty.item()}
        return wasserstein + penalty, terms
