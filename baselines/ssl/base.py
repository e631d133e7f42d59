"""What every self-supervised method shares: the encoder it learns, how it is probed, and the
warm-up + cosine learning-rate schedule of the papers that use one.

The representation is the shared ResNet encoder's globally pooled features (METHODS.md: the
same architecture as the random-encoder and supervised reference rows, so that the probe
compares objectives, not networks); heads, projectors and decoders are discarded for the probe.
mae overrides ``encoder`` with its ViT.

Optimisation belongs to the training loop (:mod:`bench.optim`); a method here registers its
optimiser and, where its paper warms up and decays the rate (SimCLR appendix B.1, MAE
appendix A.1), :meth:`SelfSupervisedMethod.add_warmup_cosine_optimizer` turns the paper's
warm-up, a fraction of the run, into steps once the loop has said how long the run is
(``set_budget``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from baselines.common.encoders import shared_encoder
from bench.method import ENCODE, Batch, DataSpec, Method


def warmup_steps(fraction: float, total_steps: int) -> int:
    """The warm-up of a run of ``total_steps`` steps that warms up over ``fraction`` of it."""
    return int(fraction * total_steps)


def positions(batch: Batch) -> Tensor:
    """The positions of ``batch``'s examples in the global batch (0..B-1 for a batch built
    by hand)."""
    if batch.noise is None:
        return torch.arange(len(batch))
    return batch.noise.positions


class SelfSupervisedMethod(Method):
    capabilities = frozenset({ENCODE})

    def __init__(self, spec: DataSpec) -> None:
        super().__init__(spec)
        self.encoder: nn.Module = shared_encoder(spec)
        #: optimisers on the warm-up + cosine schedule: name -> warm-up fraction of the run
        self.warmup_fractions: dict[str, float] = {}

    def add_warmup_cosine_optimizer(
        self, name: str, optimizer: torch.optim.Optimizer, warmup_fraction: float
    ) -> None:
        """Register ``optimizer`` with a linear warm-up over the first ``warmup_fraction`` of
        the run's steps, then a cosine decay to 0 at its end (``Method.budget_steps``), the
        loop's ``warmup-cosine`` schedule. The steps are known once the loop calls
        ``set_budget``; until then (a one-off step outside the loop) the rate is constant."""
        self.add_optimizer(name, optimizer)
        self.warmup_fractions[name] = warmup_fraction
        self._schedule()

    def set_budget(self, budget_images: int, batch_size: int) -> None:
        super().set_budget(budget_images, batch_size)
        self._schedule()

    def _schedule(self) -> None:
        if self.budget_steps <= 0:
            return
        for name, fraction in self.warmup_fractions.items():
            self.optimizer_settings[name] = dataclasses.replace(
                self.optimizer_settings[name],
                schedule="warmup-cosine",
                warmup_steps=warmup_steps(fraction, self.budget_steps),
                final_lr_fraction=0.0,
            )

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)  # (B, C, H, W) -> (B, feature_dim)

    def flops_forward(self, x: Tensor) -> None:
        self.encode(x)
