"""Glow: generative flow with invertible 1x1 convolutions (Kingma & Dhariwal 2018).

The multi-scale architecture of Figure 2 with ``levels`` = L levels of ``steps`` = K steps:
each level squeezes (2x2 space-to-depth), applies K steps of flow, and (except the last)
splits off half of the channels. One step of flow (Table 1):

- actnorm: y = s (x + b) per channel, log-det H W sum log|s|, initialised from a data batch so
  that its outputs have zero mean and unit variance (data-dependent init, section 3.1);
- invertible 1x1 convolution, LU-decomposed: W = P L (U + diag(s)), log-det H W sum log|s|
  (section 3.2, eq. 10);
- affine coupling: x_a, x_b = split(x); (log s, t) = NN(x_a); s = sigmoid(log s + 2);
  y_b = (x_b + t) s; log-det sum log s (section 3.3; ``coupling = additive`` for y_b = x_b + t).
  NN = 3x3 conv -> actnorm -> ReLU -> 1x1 conv -> actnorm -> ReLU -> zero-initialised 3x3 conv,
  so each coupling starts as the identity.

Priors as in the official code: each split-off half z_i gets N(mu(h_i), sigma(h_i)^2) from a
zero-initialised convolution of the kept half h_i ("split prior"), the last level a learned
per-dimension mean and scale (learn_top); both are written as standardising bijections so the
flattened latent is N(0, I). Adam with a linear learning-rate warm-up, as the paper.

Departures: the data are uniformly dequantized and logit-preprocessed with its Jacobian
(``logit_alpha`` = 1e-6 on 1-channel data, 0.05 on CIFAR-10; 0 gives the paper's plain
[0, 1) input, the first actnorm absorbing the shift to [-1/2, 1/2)): on 17-level digits the
logit is what takes Glow below the independent-pixel row within the quick budget. Width and
depth are sized for that budget: K = 2 steps per level and 64 channels at 8x8 (the paper:
K = 32, width 512 on CIFAR-10).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from baselines.common.flow_layers import (
    ActNorm,
    ActNormFeatures,
    ChannelCoupling,
    Conv2dZeros,
    FlowLayer,
    FlowSequence,
    InvertibleConv1x1,
    LearnedTopPrior,
    MultiScaleFlow,
    Shape,
    Split,
    Squeeze,
)
from baselines.flows.base import DequantizedFlow
from bench.errors import GenbenchError
from bench.method import DataSpec, scale_table
from bench.registry import register_method

COUPLINGS = {"affine": "affine_sigmoid", "additive": "additive"}
WIDTHS = {"8x8": 64, "28x28": 256, "32x32": 512}
LEVELS = {"8x8": 2, "28x28": 2, "32x32": 3}
STEPS = {"8x8": 2, "28x28": 16, "32x32": 32}


def coupling_network(c_in: int, c_out: int, width: int) -> nn.Module:
    """Glow's NN(): conv3x3 -> actnorm -> ReLU -> conv1x1 -> actnorm -> ReLU -> Conv2dZeros."""
    return nn.Sequential(
        nn.Conv2d(c_in, width, 3, padding=1, bias=False),
        ActNormFeatures(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 1, bias=False),
        ActNormFeatures(width),
        nn.ReLU(),
        Conv2dZeros(width, c_out),
    )


def glow_flow(shape: Shape, levels: int, steps: int, width: int, coupling: str) -> MultiScaleFlow:
    """squeeze -> K x (actnorm, 1x1 conv, coupling) -> split, L times (no split at the end)."""
    if coupling not in COUPLINGS:
        raise GenbenchError(f"unknown glow.coupling {coupling!r}. Valid: {', '.join(COUPLINGS)}")
    input_shape = shape
    stages: list[FlowLayer] = []
    splits: list[Split] = []
    for level in range(levels):
        squeeze = Squeeze()
        shape = squeeze.output_shape(shape)
        channels = shape[0]
        layers: list[FlowLayer] = [squeeze]
        for _ in range(steps):
            layers += [
                ActNorm(channels),
                InvertibleConv1x1(channels),
                ChannelCoupling(
                    channels,
                    COUPLINGS[coupling],
                    lambda c_in, c_out: coupling_network(c_in, c_out, width),
                    swap=False,
                ),
            ]
        if level == levels - 1:
            layers.append(LearnedTopPrior(shape))
        else:
            splits.append(Split(channels, learned_prior=True))
            shape = splits[-1].output_shape(shape)
        stages.append(FlowSequence(layers))
    return MultiScaleFlow(input_shape, stages, splits)


@register_method("glow")
class Glow(DequantizedFlow):
    summary = "Glow: actnorm, invertible 1x1 conv (LU), affine coupling, multi-scale"

    hparam_choices = {"coupling": tuple(COUPLINGS)}

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {
            "levels": scale_table(LEVELS, spec, "glow's levels table"),
            "steps": scale_table(STEPS, spec, "glow's steps table"),
            "width": scale_table(WIDTHS, spec, "glow's width table"),
            "coupling": "affine",
            **cls.training_hparams(spec),
        }

    def __init__(
        self,
        spec: DataSpec,
        levels: int = 2,
        steps: int = 2,
        width: int = 64,
        coupling: str = "affine",
        **training: Any,
    ) -> None:
        super().__init__(spec, "gaussian", **training)
        self.flow = glow_flow(spec.shape, levels, steps, width, coupling)
        self.setup_optimizer()
