"""dim: Hjelm et al. 2019, "Learning deep representations by mutual information estimation
and maximization" (Deep InfoMax).

The shared ResNet encoder is split as in the paper: its first stages C_psi give the local
feature map M = C_psi(x) (B, C_l, h, w) (the output of stage ``local_stage``, default 2: 7x7 x
64 on 28x28, 4x4 x 64 on 8x8), the remaining stage and the global pooling continue to the
pooled features, and the global feature Y = E_psi(x) (B, d_Y) is an MLP head on those. The
objective (eq. 8) is

    max_{omega, psi}  alpha I_omega(X; Y) + beta / (h w) sum_l I_omega(M^(l); Y)
      + min_psi max_phi  gamma D_phi(V || U_{psi, P}),

- global MI (DIM(G), section 3.1): a discriminator T(M, Y) between the whole feature map
  and Y;
- local MI (DIM(L), section 3.2): T(M^(l), Y) between Y and EVERY local feature vector;
- both discriminators are the paper's "encode-and-dot-product" architecture (appendix A.2):
  M (1x1 convolutions for the local one, an MLP on the flattened map for the global one)
  and Y (an MLP) are embedded to one width and T is their dot product, each embedding with
  a linear shortcut. The scores of every (image i's Y, image j's M) pair in the batch form
  a (B, B, locations) tensor: positives on the diagonal, negatives = the other images of
  the batch. The batch is the GLOBAL one: on several ranks both embeddings are gathered
  (:func:`bench.distributed.gather`, differentiable) and every rank scores all pairs, so
  the negatives do not depend on how many ranks share the batch (with gradient
  accumulation they are one micro-batch's).
- estimators of the MI (section 3.1): Jensen-Shannon (default, eq. 4),
      I_JSD = E_P[-sp(-T(x, y))] - E_{P x P~}[sp(T(x', y))],   sp = softplus,
  or InfoNCE (eq. 5, ``estimator="infonce"``),
      I_NCE = E_P[T(x, y) - log sum_{x'} exp T(x', y)]   (+ log B, a constant),
  with x' running over the batch (the positive included).
- prior matching (section 3.4, eq. 7): sigma(Y) (a sigmoid) is matched adversarially to a
  uniform prior V = U[0, 1]^d_Y; the discriminator D_phi ascends
  E_V[log D(v)] + E_P[log(1 - D(sigma(Y)))] and the encoder descends gamma times the second
  term (the minimax form of eq. 7). One training step makes the two players' gradient steps
  from ONE forward pass: the encoder's update (the MI terms and the prior term through
  D_phi, whose weights it does not train), then D_phi's on that pass's sigma(Y) (detached)
  against prior samples V drawn per example from the batch (``batch.rand``), i.e.
  simultaneous gradient descent-ascent on eq. 7. (Stepping D_phi first and scoring sigma(Y)
  with the updated D_phi, this module's former order, would need a second encoder forward
  per step, or a graph kept across updates, which defeats gradient accumulation.)

Defaults follow the paper's DIM(L) setting: alpha = 0, beta = 1, gamma = 0.1 (DIM(G) is
alpha = 1, beta = 0), d_Y = 64, Adam. The linear probe reads the encoder's pooled features
(the representation every method on the shared encoder is probed with; the paper also
probes conv, fc and Y), not Y. Why an intermediate map: with M = the encoder's last map (4x4
on 28x28, each location seeing nearly the whole digit, and Y computed from its pool) the
local objective degenerates into a global one that pixel-level detail satisfies; the probe
on mnist5k was 0.81 (below raw pixels), against 0.92 with stage 2 (measured, quick budget).
Departures: the learning rate is 1e-3 rather than 1e-4 for the short quick budget; the
discriminators' embeddings are sized for a CPU (256 wide).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.common.encoders import encoder_widths
from baselines.ssl.base import SelfSupervisedMethod
from baselines.ssl.losses import diagonal_info_nce
from bench.distributed import gather
from bench.method import Batch, DataSpec, Update
from bench.registry import register_method

ESTIMATORS = ("jsd", "infonce")


def jsd_mi(scores: Tensor) -> Tensor:
    """Jensen-Shannon MI estimate (eq. 4) from scores (B, B, L): scores[i, j, l] is
    T(feature l of image j, Y of image i); positives on the diagonal i == j, negatives off
    it. E_P[-softplus(-T)] - E_N[softplus(T)], each expectation a mean over its pairs."""
    is_positive = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    positive = -F.softplus(-scores[is_positive]).mean()  # (B, L) pairs
    negative = F.softplus(scores[~is_positive]).mean()  # (B (B - 1), L) pairs
    return positive - negative


def infonce_mi(scores: Tensor) -> Tensor:
    """InfoNCE MI estimate (eq. 5), log B - cross-entropy, per location l, averaged over l.
    Row i (image i's Y) scores every image's feature l; column i is its positive."""
    nce = torch.stack([diagonal_info_nce(s) for s in scores.unbind(dim=2)]).mean()
    return math.log(scores.shape[0]) - nce


MI_ESTIMATORS = {"jsd": jsd_mi, "infonce": infonce_mi}


class Embedding(nn.Module):
    """The encode-and-dot-product embedding (appendix A.2): a two-layer ReLU network plus a
    linear shortcut; 1x1 convolutions for feature maps (``conv=True``), linear layers for
    vectors."""

    def __init__(self, c_in: int, width: int, conv: bool) -> None:
        super().__init__()

        def layer(a: int, b: int) -> nn.Module:
            return nn.Conv2d(a, b, 1) if conv else nn.Linear(a, b)

        self.net = nn.Sequential(layer(c_in, width), nn.ReLU(), layer(width, width))
        self.shortcut = layer(c_in, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) + self.shortcut(x)


@register_method("dim")
class DeepInfoMax(SelfSupervisedMethod):
    summary = "Deep InfoMax (Hjelm 2019): local/global MI (JSD or InfoNCE) + prior matching"
    hparam_choices = {"estimator": ESTIMATORS}

    #: alpha, beta, gamma weigh the global MI, local MI and prior terms: 0 switches one off
    hparam_ranges = {
        "alpha": (0, None),
        "beta": (0, None),
        "gamma": (0, None),
        "local_stage": (1, None),
        "prior_lr": (0, None),  # 0 freezes the prior discriminator
    }

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {
            "estimator": "jsd",
            "alpha": 0.0,  # global MI weight
            "beta": 1.0,  # local MI weight
            "gamma": 0.1,  # prior-matching weight
            "local_stage": 2,  # M = the output of this encoder stage (1..3)
            "global_dim": 64,  # d_Y
            "discriminator_width": 256,
            "prior_width": 256,
            "lr": 1e-3,
            "prior_lr": 1e-3,
        }

    def __init__(
        self,
        spec: DataSpec,
        estimator: str,
        alpha: float,
        beta: float,
        gamma: float,
        local_stage: int,
        global_dim: int,
        discriminator_width: int,
        prior_width: int,
        lr: float,
        prior_lr: float,
    ) -> None:
        super().__init__(spec)
        self.estimator, self.alpha, self.beta, self.gamma = estimator, alpha, beta, gamma
        widths = encoder_widths(spec)
        if not 1 <= local_stage <= len(widths):
            raise ValueError(f"dim.local_stage must be in 1..{len(widths)}, got {local_stage}")
        # the encoder's stages hold blocks_per_stage blocks each
        self.local_blocks = local_stage * len(self.encoder.stages) // len(widths)
        channels, feature_dim = widths[local_stage - 1], self.encoder.feature_dim
        # Y = E_psi(x): a head on the pooled features
        self.global_head = nn.Sequential(
            nn.Linear(feature_dim, feature_dim), nn.ReLU(), nn.Linear(feature_dim, global_dim)
        )
        width = discriminator_width
        self.local_map_embed = Embedding(channels, width, conv=True)
        self.local_global_embed = Embedding(global_dim, width, conv=False)
        if alpha:  # the global discriminator exists only when its term is trained
            with torch.no_grad():  # the local map's size (h, w); eval: BN statistics untouched
                map_hw = self.eval().local_and_pooled(torch.zeros(1, *spec.shape))[0].shape[2:]
            self.train()
            self.global_map_embed = Embedding(channels * map_hw[0] * map_hw[1], width, False)
            self.global_global_embed = Embedding(global_dim, width, conv=False)
        # D_phi: sigma(Y) or a prior sample -> logit of "drawn from the prior"
        self.prior_discriminator = nn.Sequential(
            nn.Linear(global_dim, prior_width),
            nn.ReLU(),
            nn.Linear(prior_width, prior_width // 4),
            nn.ReLU(),
            nn.Linear(prior_width // 4, 1),
        )
        mi_params = [p for n, p in self.named_parameters() if not n.startswith("prior_")]
        self.add_optimizer("encoder", torch.optim.Adam(mi_params, lr=lr))
        self.add_optimizer(
            "prior", torch.optim.Adam(self.prior_discriminator.parameters(), lr=prior_lr)
        )

    def local_and_pooled(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> the local map M (B, C_l, h, w) and the pooled features (B, d) of the
        shared encoder, whose stages are split at ``local_stage``."""
        encoder = self.encoder
        local_map = encoder.stages[: self.local_blocks](encoder.stem(x * 2.0 - 1.0))  # as in
        # ResNetEncoder.feature_map, inputs in [-1, 1]
        top = encoder.stages[self.local_blocks :](local_map)  # (B, d, h', w')
        return local_map, encoder.pool(top).flatten(1)

    def local_scores(self, local_map: Tensor, y: Tensor) -> Tensor:
        """(B, C, h, w), (B, d_Y) -> (B', B', h w): scores[i, j, l] = T(M_j^(l), Y_i) over
        the global batch of B' images (every rank's embeddings, gathered)."""
        m = gather(self.local_map_embed(local_map).flatten(2))  # (B', width, h w)
        g = gather(self.local_global_embed(y))  # (B', width)
        return torch.einsum("id,jdl->ijl", g, m)

    def global_scores(self, local_map: Tensor, y: Tensor) -> Tensor:
        """(B, C, h, w), (B, d_Y) -> (B', B', 1): scores[i, j] = T(M_j, Y_i) over the
        global batch of B' images."""
        m = gather(self.global_map_embed(local_map.flatten(1)))  # (B', width)
        g = gather(self.global_global_embed(y))  # (B', width)
        return (g @ m.T)[..., None]

    def train_step(self, batch: Batch, step: int) -> Iterator[Update]:
        mi = MI_ESTIMATORS[self.estimator]
        codes: list[Tensor] = []

        def encoder_loss() -> tuple[Tensor, dict[str, Tensor]]:
            local_map, pooled = self.local_and_pooled(batch.x)  # (B, C_l, h, w), (B, d)
            y = self.global_head(pooled)  # Y (B, d_Y)
            objective = torch.zeros((), device=y.device)
            logs: dict[str, Tensor] = {}
            if self.beta:
                local_mi = mi(self.local_scores(local_map, y))
                objective = objective + self.beta * local_mi
                logs["local_mi"] = local_mi.detach()
            if self.alpha:
                global_mi = mi(self.global_scores(local_map, y))
                objective = objective + self.alpha * global_mi
                logs["global_mi"] = global_mi.detach()
            if self.gamma:
                code = torch.sigmoid(y)
                codes.append(code.detach().float())
                # the encoder descends E_P[log(1 - D(sigma(Y)))] = -BCE(D(sigma(Y)), 0)
                fooled = self.prior_discriminator(code)
                prior_term = -F.binary_cross_entropy_with_logits(fooled, torch.zeros_like(fooled))
                objective = objective - self.gamma * prior_term
            return -objective, logs

        # gradients flow through D_phi into sigma(Y), not into D_phi: it only ascends eq. 7
        self.prior_discriminator.requires_grad_(False)
        yield Update("encoder", encoder_loss)
        self.prior_discriminator.requires_grad_(True)
        if self.gamma:
            prior = batch.rand(codes[-1].shape[1])  # V ~ U[0, 1]^d_Y, per example

            def prior_loss() -> Tensor:
                # D_phi ascends E_V[log D(v)] + E_P[log(1 - D(sigma(Y)))] (eq. 7)
                real = self.prior_discriminator(prior)
                fake = self.prior_discriminator(codes[-1])
                return F.binary_cross_entropy_with_logits(
                    real, torch.ones_like(real)
                ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))

            yield Update("prior", prior_loss)
