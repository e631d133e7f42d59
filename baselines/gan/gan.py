"""gan: Goodfellow et al. 2014, "Generative Adversarial Nets", trained as DCGAN (Radford et
al. 2016).

min_G max_D V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))]   (eq. 1)

The discriminator D = sigmoid(critic logits) ascends V (binary cross-entropy on real vs
fake). The generator descends, by default, the non-saturating loss -E_z[log D(G(z))] that
section 3 of the paper recommends (same fixed point, strong gradients while D rejects the
samples); ``loss="minimax"`` descends E_z[log(1 - D(G(z)))] exactly as in eq. 1. One
discriminator step per generator step (k = 1, as in the paper's experiments). Batch norm in
the discriminator (not on its first layer) and Adam(2e-4, beta1 = 0.5, beta2 = 0.999) as in
DCGAN.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from baselines.gan import losses
from baselines.gan.base import GANMethod, adam_hparams
from bench.method import Batch, DataSpec
from bench.registry import register_method


@register_method("gan")
class GAN(GANMethod):
    summary = "GAN (Goodfellow 2014) with DCGAN nets: non-saturating or minimax loss"
    critic_normalisation = "batch"
    hparam_choices = {"loss": losses.GAN_GENERATOR_LOSSES}

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {
            **super().default_hparams(spec),
            "loss": "non-saturating",
            "critic_steps": 1,
            **adam_hparams(2e-4, 0.5, 0.999),
        }

    def critic_objective(
        self, real: Tensor, fake: Tensor, real_scores: Tensor, fake_scores: Tensor, batch: Batch
    ) -> tuple[Tensor, dict[str, float]]:
        return losses.gan_critic_loss(real_scores, fake_scores), {}

    def generator_objective(self, real: Tensor, fake_scores: Tensor) -> Tensor:
        return losses.gan_generator_loss(fake_scores, self.hparams["loss"])
