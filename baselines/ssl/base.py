"""What every self-supervised method shares: the encoder it learns and how it is probed.

The representation is the shared ResNet encoder's globally pooled features (METHODS.md: the
same architecture as the random-encoder and supervised reference rows, so that the probe
compares objectives, not networks); heads, projectors and decoders are discarded for the probe.
mae overrides ``encoder`` with its ViT.
"""

from __future__ import annotations

from torch import Tensor, nn

from baselines.common.encoders import shared_encoder
from bench.method import ENCODE, DataSpec, Method


class SelfSupervisedMethod(Method):
    capabilities = frozenset({ENCODE})

    def __init__(self, spec: DataSpec) -> None:
        super().__init__(spec)
        self.encoder: nn.Module = shared_encoder(spec)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)  # (B, C, H, W) -> (B, feature_dim)

    def flops_forward(self, x: Tensor) -> None:
        self.encode(x)
