"""gan-qp: Su 2018, "GAN-QP: A Novel GAN Framework without Gradient Vanishing and Lipschitz
Constraint", arXiv:1811.07296.

The critic T maximises the quadratic-potential objective over independent real/fake pairs,

    T = argmax_T E_{x_r, x_f}[T(x_r) - T(x_f) - (T(x_r) - T(x_f))^2 / (2 lambda d(x_r, x_f))],

and the generator minimises E_{x_r, x_f}[T(x_r) - T(x_f)] (only the T(x_f) term depends on
G). The quadratic term, scaled by the distance between the pair, keeps the objective bounded
without any Lipschitz constraint on T. Normalisation as in the paper's code: d is the
per-pixel MEAN absolute difference of the pair in the networks' [-1, 1] range
(``distance="l1"``; ``"l2"`` is the root mean square difference of the code's L2 variant),
lambda = 10, and the critic is the DCGAN one with batch norm. Adam(2e-4, beta1 = 0.5) for
both networks (beta2 = 0.999, the Keras default) and 2 critic iterations per generator
iteration, as in the paper's code. Real image i of a batch is paired with fake image i. The
generator's logged loss scores the last critic iteration's real batch (the code draws a new
one; the real term has no gradient, so only the logged value differs).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from baselines.gan import losses
from baselines.gan.base import GANMethod, adam_hparams
from bench.method import Batch, DataSpec
from bench.registry import register_method


@register_method("gan-qp")
class GANQP(GANMethod):
    summary = "GAN-QP (Su 2018): quadratic-potential critic, no Lipschitz constraint"
    critic_normalisation = "batch"
    hparam_choices = {"distance": losses.QP_DISTANCES}

    hparam_ranges = {**GANMethod.hparam_ranges, "qp_lambda": (0, None, "(]")}

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {
            **super().default_hparams(spec),
            "qp_lambda": 10.0,
            "distance": "l1",
            "critic_steps": 2,
            **adam_hparams(2e-4, 0.5, 0.999),
        }

    def critic_objective(
        self, real: Tensor, fake: Tensor, real_scores: Tensor, fake_scores: Tensor, batch: Batch
    ) -> tuple[Tensor, dict[str, float]]:
        distance = losses.qp_distance(real, fake, self.hparams["distance"])  # (B,)
        loss = losses.qp_critic_loss(real_scores, fake_scores, distance, self.hparams["qp_lambda"])
        return loss, {}

    def generator_objective(self, real: Tensor, fake_scores: Tensor) -> Tensor:
        with torch.no_grad():  # T(x_r) carries no gradient to G; scored for the logged value
            real_scores = self.critic(real)
        return losses.qp_generator_loss(real_scores, fake_scores)
