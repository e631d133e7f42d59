"""SimCLR (Chen, Kornblith, Norouzi & Hinton 2020, "A Simple Framework for Contrastive
Learning of Visual Representations").

Each image x_k of a batch of N gives two views x_{2k-1}, x_{2k} = t(x_k), t'(x_k) with t, t'
drawn from the augmentation family T (:mod:`baselines.ssl.augment`: random resized crop,
colour distortion, blur, flip where it keeps the class). One encoder f (the shared ResNet)
and a projection head g (the paper's MLP with one hidden layer, section 4.2 and its code:
Linear-BN-ReLU-Linear) map each view to z_i = g(f(x_i)). The loss is NT-Xent (eq. 1):

    l(i, j) = -log exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau)
    L = 1 / (2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)],   sim(u, v) = u.v / (|u| |v|)

(:func:`baselines.ssl.losses.nt_xent`). Both views go through the encoder as one batch of 2N,
so batch norm normalises over all of them (the paper's global BN; on several ranks the
training loop swaps it for BN over the global batch, :func:`bench.distributed.sync_batchnorm`).
The negatives are the GLOBAL batch's: on several ranks the projections are gathered
(:func:`bench.distributed.gather`, differentiable) and every rank computes the loss over all
2N views, as the paper's negatives are those of its global batch spread over TPU cores
(section 2.2; its code's ``tpu_cross_replica_concat``), so N is the protocol's batch size
however many ranks share it. (With gradient accumulation, N is one micro-batch's share:
the negatives of a micro-batch are its own.)
The two views of an image are a function of (run seed, step, its position in the global
batch): the augmentation draws its uniforms per example from the batch
(:func:`baselines.ssl.augment.view_draws`). The representation is h = f(x), the pooled
encoder features; g is discarded for the probe.

Defaults and departures:
- temperature 0.5: the paper's best value for CIFAR-10 at every batch size it tried
  (appendix B.9); its 0.1 goes with batches of 4,096 and LARS;
- projection to 128 dimensions (the paper's), hidden width = the encoder's feature width;
- optimiser: AdamW (lr 1e-3, weight decay 1e-6, the paper's decay) with a linear warm-up
  instead of LARS: LARS exists for batches of thousands; at batch 64 on a CPU Adam converges
  faster. The schedule is the paper's (appendix B.1), applied by the training loop
  (``warmup-cosine``, :func:`bench.optim.lr_factor`): linear warm-up (10 epochs of its 100
  or more; here the first ``warmup_fraction`` = 5% of the run's ``Method.budget_steps``)
  and cosine decay without restarts to 0 at the end of the run's budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from baselines.ssl.augment import BatchAugment, augment_hparams, view_draws
from baselines.ssl.base import SelfSupervisedMethod
from baselines.ssl.losses import nt_xent
from bench.distributed import gather
from bench.method import Batch, DataSpec, Update
from bench.registry import register_method


def projection_head(feature_dim: int, projection_dim: int, batch_norm: bool) -> nn.Sequential:
    """The MLP projection head of SimCLR (Linear-BN-ReLU-Linear) and MoCo v2 (no BN):
    (B, feature_dim) -> (B, projection_dim), hidden width = feature_dim."""
    hidden: list[nn.Module] = [nn.Linear(feature_dim, feature_dim, bias=not batch_norm)]
    if batch_norm:
        hidden.append(nn.BatchNorm1d(feature_dim))
    return nn.Sequential(*hidden, nn.ReLU(), nn.Linear(feature_dim, projection_dim))


class ContrastiveMethod(SelfSupervisedMethod):
    """What SimCLR and MoCo share: the batched augmentation (both views of a batch in one
    call, per-example draws from the batch) and AdamW with linear warm-up and cosine decay
    over the run (``budget_steps``), applied by the training loop."""

    #: augmentation strengths (shared by simclr and moco)
    hparam_ranges: ClassVar[dict[str, tuple[Any, ...] | None]] = {
        "crop_scale": (0, 1, "(]"),
        "blur_sigma": (0, None, "(]"),
        "brightness": (0, 1),
        "contrast": (0, 1),
        "saturation": (0, None),
        "hue": (0, 0.5),
    }

    @staticmethod
    def optimisation_hparams(spec: DataSpec) -> dict[str, Any]:
        return {"lr": 1e-3, "weight_decay": 1e-6, "warmup_fraction": 0.05, **augment_hparams(spec)}

    def __init__(
        self,
        spec: DataSpec,
        lr: float,
        weight_decay: float,
        warmup_fraction: float,
        **augmentation: Any,
    ) -> None:
        super().__init__(spec)
        self.augment = BatchAugment(spec.channels, **augmentation)
        self.lr, self.weight_decay, self.warmup_fraction = lr, weight_decay, warmup_fraction

    def setup_optimizer(self, parameters: list[nn.Parameter]) -> None:
        optimizer = torch.optim.AdamW(parameters, lr=self.lr, weight_decay=self.weight_decay)
        self.add_warmup_cosine_optimizer("adamw", optimizer, self.warmup_fraction)

    @torch.no_grad()
    def two_views(self, batch: Batch) -> Tensor:
        """-> (2B, C, H, W): two independently augmented views of every image of ``batch``,
        the first views then the second, from ONE call of the augmentation; each example's
        views are drawn from its own per-example uniforms (B, 2, NUM_DRAWS)."""
        return self.augment(torch.cat([batch.x, batch.x]), view_draws(batch, 2))


@register_method("simclr")
class SimCLR(ContrastiveMethod):
    summary = "SimCLR: two augmented views, MLP projection head, NT-Xent (Chen et al. 2020)"

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {"temperature": 0.5, "projection_dim": 128, **cls.optimisation_hparams(spec)}

    def __init__(
        self, spec: DataSpec, temperature: float, projection_dim: int, **optimisation: Any
    ) -> None:
        super().__init__(spec, **optimisation)
        self.temperature = temperature
        self.head = projection_head(self.encoder.feature_dim, projection_dim, batch_norm=True)
        self.setup_optimizer(list(self.encoder.parameters()) + list(self.head.parameters()))

    def train_step(self, batch: Batch, step: int) -> Iterator[Update]:
        views = self.two_views(batch)  # (2N, C, H, W)

        def loss() -> Tensor:
            # both views in one batch of 2N: batch norm sees all 2N, as the paper's global BN
            z_1, z_2 = self.head(self.encoder(views)).chunk(2)  # 2 x (N, projection_dim)
            # every rank's projections: the negatives are the global batch's (in rank order,
            # the same on every rank; NT-Xent does not depend on the order of the images)
            return nt_xent(gather(z_1), gather(z_2), self.temperature)

        yield Update("adamw", loss)
