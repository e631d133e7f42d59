"""RealNVP: density estimation using real NVP (Dinh, Sohl-Dickstein & Bengio 2017).

Affine coupling layers (eqs. 7-9) y = b x + (1 - b) (x exp(s(b x)) + t(b x)), log-det
sum((1 - b) s), with the log-scale bounded as s = scale * tanh(raw) (the official code), in the
multi-scale architecture of section 3.6: at each scale but the last, three couplings with
alternating checkerboard masks, a squeeze (2x2 space-to-depth), three couplings with
alternating channel-wise masks, then half of the channels are factored out to the N(0, I)
prior; the last scale has four checkerboard couplings. Data are uniformly dequantized and
logit-preprocessed, y -> logit(alpha + (1 - 2 alpha) y) with its Jacobian (section 4.1;
alpha = 0.05 on CIFAR-10 as the paper, 1e-6 on 1-channel data as MAF on MNIST: a small
alpha keeps the many near-black pixels off a sharp density edge).

s and t come from one convolutional network per coupling (section 4.1: a ResNet): a 3x3
convolution to ``width`` channels, ``res_blocks`` residual blocks (BN, ReLU, 3x3 conv, twice),
BN, ReLU and a zero-initialised 3x3 convolution to (s, t), so each coupling starts as the
identity. Departures, for the quick budget: at 8x8 no residual block (3x3 conv, ReLU,
zero-initialised 3x3 conv, no batch norm) at width 32 instead of 8 blocks of 64 features; no
weight normalisation; no batch-normalisation bijector between couplings (its role, keeping
activations standardised, is left to the logit preprocessing and the zero-initialised
couplings); Adam with a linear learning-rate warm-up and no L2 penalty.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from baselines.common.flow_layers import (
    ChannelCoupling,
    FlowLayer,
    FlowSequence,
    MaskedCoupling,
    MultiScaleFlow,
    Shape,
    Split,
    Squeeze,
    checkerboard_mask,
)
from baselines.flows.base import DequantizedFlow
from bench.method import DataSpec, scale_table
from bench.registry import register_method

WIDTHS = {"8x8": 32, "28x28": 64, "32x32": 64}
SCALES = {"8x8": 2, "28x28": 3, "32x32": 3}


class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def coupling_resnet(c_in: int, c_out: int, width: int, res_blocks: int) -> nn.Module:
    """The network of s and t: conv -> residual blocks -> BN, ReLU -> zero-initialised conv
    (without residual blocks: conv -> ReLU -> zero-initialised conv)."""
    last = nn.Conv2d(width, c_out, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    blocks = [ResidualBlock(width) for _ in range(res_blocks)]
    norm = [nn.BatchNorm2d(width)] if res_blocks else []
    return nn.Sequential(nn.Conv2d(c_in, width, 3, padding=1), *blocks, *norm, nn.ReLU(), last)


def realnvp_flow(shape: Shape, num_scales: int, width: int, res_blocks: int) -> MultiScaleFlow:
    """The multi-scale RealNVP of section 3.6 for images of ``shape``."""
    input_shape = shape

    def network(c_in: int, c_out: int) -> nn.Module:
        return coupling_resnet(c_in, c_out, width, res_blocks)

    stages: list[FlowLayer] = []
    splits: list[Split] = []
    for scale in range(num_scales):
        last = scale == num_scales - 1
        layers: list[FlowLayer] = [
            MaskedCoupling(checkerboard_mask(shape, index % 2), "affine_tanh", network)
            for index in range(4 if last else 3)
        ]
        if not last:
            layers.append(Squeeze())
            shape = layers[-1].output_shape(shape)
            layers += [
                ChannelCoupling(shape[0], "affine_tanh", network, swap=index % 2 == 1)
                for index in range(3)
            ]
            splits.append(Split(shape[0], learned_prior=False))
            shape = splits[-1].output_shape(shape)
        stages.append(FlowSequence(layers))
    return MultiScaleFlow(input_shape, stages, splits)


@register_method("realnvp")
class RealNVP(DequantizedFlow):
    summary = "RealNVP: affine coupling, checkerboard + channel masks, squeeze, multi-scale"

    hparam_ranges = {**DequantizedFlow.hparam_ranges, "res_blocks": (0, None)}  # 0: plain conv

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {
            "num_scales": scale_table(SCALES, spec, "realnvp's scales table"),
            "width": scale_table(WIDTHS, spec, "realnvp's width table"),
            "res_blocks": 0 if spec.scale == "8x8" else 4,
            **cls.training_hparams(spec),
        }

    def __init__(
        self,
        spec: DataSpec,
        num_scales: int = 2,
        width: int = 32,
        res_blocks: int = 0,
        **training: Any,
    ) -> None:
        super().__init__(spec, "gaussian", **training)
        self.flow = realnvp_flow(spec.shape, num_scales, width, res_blocks)
        self.setup_optimizer()
