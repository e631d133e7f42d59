"""wgan: Arjovsky, Chintala & Bottou 2017, "Wasserstein GAN".

The critic f_w estimates the Wasserstein-1 distance through Kantorovich-Rubinstein duality,

    W(P_r, P_g) = max_{||f||_L <= K} E_{x~P_r}[f(x)] - E_{z}[f(G(z))],

with the Lipschitz constraint enforced by clipping every critic parameter to [-c, c] after
each critic update (Algorithm 1, c = 0.01); the generator descends -E_z[f(G(z))]. n_critic =
5 critic iterations per generator iteration, RMSProp with lr 5e-5 for both networks
(Algorithm 1's defaults), batch norm in the critic as in the paper's DCGAN critic. Clipping
covers every critic parameter, batch-norm scales and offsets included, as the authors' code
does; it is also applied once at construction so the critic starts inside the constrained set.

Departure: the authors' code (not Algorithm 1) also runs 100 critic iterations for the first
25 generator iterations and every 500th; not done here, Algorithm 1 is followed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from baselines.gan import losses
from baselines.gan.base import GANMethod
from bench.method import Batch, DataSpec
from bench.registry import register_method


@register_method("wgan")
class WGAN(GANMethod):
    summary = "Wasserstein GAN (Arjovsky 2017): weight clipping c=0.01, n_critic=5, RMSProp"
    critic_normalisation = "batch"

    hparam_ranges = {**GANMethod.hparam_ranges, "clip_value": (0, None, "(]")}

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {**super().default_hparams(spec), "clip_value": 0.01, "critic_steps": 5, "lr": 5e-5}

    def make_optimizer(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(params, lr=self.hparams["lr"])

    def constrain_critic(self) -> None:
        self.clip_critic()  # start inside the constrained set

    @torch.no_grad()
    def clip_critic(self) -> None:
        """w <- clip(w, -c, c) for every critic parameter (Algorithm 1)."""
        for param in self.critic.parameters():
            param.clamp_(-self.hparams["clip_value"], self.hparams["clip_value"])

    def after_critic_step(self) -> None:
        self.clip_critic()

    def critic_objective(
        self, real: Tensor, fake: Tensor, real_scores: Tensor, fake_scores: Tensor, batch: Batch
    ) -> tuple[Tensor, dict[str, float]]:
        loss = losses.wasserstein_critic_loss(real_scores, fake_scores)
        return loss, {"wasserstein_estimate": -loss.detach()}
