"""Flow layers: inverse(forward(x)) = x, the log-determinant equals log|det J| of the
autograd Jacobian, and small flows built from them integrate to one on a 2-D grid."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from baselines.common.flow_layers import (
    ActNorm,
    ChannelCoupling,
    DiagonalScaling,
    FlowLayer,
    FlowSequence,
    InvertibleConv1x1,
    LearnedTopPrior,
    MaskedCoupling,
    MultiScaleFlow,
    PartitionCoupling,
    Split,
    Squeeze,
    checkerboard_mask,
    prior_log_prob,
)


def conv_net(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(c_in, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, c_out, 3, padding=1)
    )


def mlp(inputs: int, outputs: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, 16), nn.Tanh(), nn.Linear(16, outputs))


def randomized(module: nn.Module, scale: float = 0.3) -> nn.Module:
    """Move every parameter off its (often identity-making) initialisation."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn_like(param) * scale)
    return module.double().eval()


SHAPE = (3, 4, 4)
LAYERS: dict[str, Callable[[], FlowLayer]] = {
    "squeeze": Squeeze,
    "actnorm": lambda: ActNorm(3),
    "invertible_1x1": lambda: InvertibleConv1x1(3),
    "checkerboard_affine_tanh": lambda: MaskedCoupling(
        checkerboard_mask(SHAPE, 0), "affine_tanh", conv_net
    ),
    "checkerboard_additive": lambda: MaskedCoupling(
        checkerboard_mask(SHAPE, 1), "additive", conv_net
    ),
    "channel_affine_sigmoid": lambda: ChannelCoupling(3, "affine_sigmoid", conv_net, swap=False),
    "channel_affine_tanh_swapped": lambda: ChannelCoupling(3, "affine_tanh", conv_net, swap=True),
    "partition_additive": lambda: PartitionCoupling(torch.arange(48) % 2 == 0, "additive", mlp),
    "partition_affine_tanh": lambda: PartitionCoupling(
        torch.arange(48) % 3 == 0, "affine_tanh", mlp
    ),
    "diagonal_scaling": lambda: DiagonalScaling(SHAPE),
    "learned_top_prior": lambda: LearnedTopPrior(SHAPE),
}


def glow_like_multiscale() -> MultiScaleFlow:
    """squeeze, a Glow step, split with the learned conditional prior, another step, top."""
    stage_one = FlowSequence(
        [
            Squeeze(),
            ActNorm(12),
            InvertibleConv1x1(12),
            ChannelCoupling(12, "affine_sigmoid", conv_net, swap=False),
        ]
    )
    stage_two = FlowSequence(
        [
            ActNorm(6),
            InvertibleConv1x1(6),
            ChannelCoupling(6, "affine_sigmoid", conv_net, swap=False),
            LearnedTopPrior((6, 2, 2)),
        ]
    )
    return MultiScaleFlow(SHAPE, [stage_one, stage_two], [Split(12, learned_prior=True)])


def jacobian_log_det(function: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    jacobian = torch.autograd.functional.jacobian(function, x)
    dims = x.numel()
    sign, log_abs = torch.linalg.slogdet(jacobian.reshape(-1, dims))
    assert float(sign) != 0
    return float(log_abs)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_inverts_and_its_log_det_is_the_jacobians(name: str) -> None:
    layer = randomized(LAYERS[name]())
    torch.manual_seed(0)
    x = torch.randn(5, *SHAPE, dtype=torch.float64)
    y, log_det = layer(x)
    assert log_det.shape == (5,)
    torch.testing.assert_close(layer.inverse(y), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.float().inverse(layer.float()(x.float())[0]), x.float(),
                               atol=1e-5, rtol=0)  # fmt: skip
    layer.double()
    expected = jacobian_log_det(lambda v: layer(v)[0], x[:1])
    assert float(log_det[0].detach()) == pytest.approx(expected, abs=1e-8)
    assert not torch.allclose(y.flatten(1), x.flatten(1))
    if "squeeze" not in name and "additive" not in name:  # the volume-preserving layers
        assert abs(expected) > 1e-3


def test_multiscale_flow_with_split_prior_inverts_and_its_log_det_is_the_jacobians() -> None:
    flow = randomized(glow_like_multiscale())
    torch.manual_seed(0)
    x = torch.randn(4, *SHAPE, dtype=torch.float64)
    z, log_det = flow(x)
    assert z.shape == (4, math.prod(SHAPE))
    torch.testing.assert_close(flow.inverse(z), x, atol=1e-5, rtol=0)
    expected = jacobian_log_det(lambda v: flow(v)[0], x[:1])
    assert float(log_det[0].detach()) == pytest.approx(expected, abs=1e-8)


def test_actnorm_data_dependent_initialisation() -> None:
    layer = ActNorm(3)
    x = torch.randn(256, *SHAPE) * torch.tensor([3.0, 0.5, 2.0]).view(1, 3, 1, 1) + 4.0
    y, _ = layer.train()(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    again, _ = layer(x * 2)  # initialised once only
    assert not torch.allclose(again.std((0, 2, 3)), torch.ones(3), atol=0.1)


PAIR = (1, 1, 2)
TWO_CHANNELS = (2, 1, 1)
TINY_FLOWS: dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int], str]] = {
    "nice": (
        lambda: FlowSequence(
            [
                PartitionCoupling(torch.tensor([True, False]), "additive", mlp),
                PartitionCoupling(torch.tensor([False, True]), "additive", mlp),
                DiagonalScaling(PAIR),
            ]
        ),
        PAIR,
        "logistic",
    ),
    "realnvp": (
        lambda: FlowSequence(
            [
                MaskedCoupling(checkerboard_mask(PAIR, i % 2), "affine_tanh", conv_net)
                for i in range(3)
            ]
        ),
        PAIR,
        "gaussian",
    ),
    "glow": (
        lambda: MultiScaleFlow(
            TWO_CHANNELS,
            [
                FlowSequence(
                    [
                        ActNorm(2),
                        InvertibleConv1x1(2),
                        ChannelCoupling(2, "affine_sigmoid", conv_net, swap=False),
                    ]
                ),
                FlowSequence([ActNorm(1), LearnedTopPrior((1, 1, 1))]),
            ],
            [Split(2, learned_prior=True)],
        ),
        TWO_CHANNELS,
        "gaussian",
    ),
}


@pytest.mark.parametrize("name", sorted(TINY_FLOWS))
def test_density_of_a_two_dimensional_flow_integrates_to_one(name: str) -> None:
    make, shape, prior = TINY_FLOWS[name]
    flow = randomized(make(), scale=0.5)
    side = torch.linspace(-25, 25, 501, dtype=torch.float64)
    step = float(side[1] - side[0])
    grid = torch.cartesian_prod(side, side)  # (501^2, 2)
    with torch.no_grad():
        z, log_det = flow(grid.view(-1, *shape))
        density = (prior_log_prob(z.flatten(1), prior) + log_det).exp()
    assert float(density.sum()) * step**2 == pytest.approx(1.0, abs=1e-4)
    # the flow is not the prior: its density differs from the prior's at the grid points
    prior_density = prior_log_prob(grid, prior).exp()
    assert float((density - prior_density).abs().max()) > 1e-2


def test_masked_conv_skips_a_mask_of_ones_with_the_same_output_and_gradient() -> None:
    from baselines.common.masked import MaskedConv2d

    torch.manual_seed(0)
    ones = MaskedConv2d(3, 5, torch.ones(2, 3), (1, 1, 1, 0))
    applied = MaskedConv2d(3, 5, torch.ones(2, 3), (1, 1, 1, 0))
    applied.load_state_dict(ones.state_dict())
    applied.full_mask = False
    assert ones.full_mask
    x = torch.randn(2, 3, 6, 6)
    out, ref = ones(x), applied(x)
    assert torch.equal(out, ref)
    out.sum().backward()
    ref.sum().backward()
    assert torch.equal(ones.weight.grad, applied.weight.grad)
    assert not MaskedConv2d(3, 5, torch.tensor([[1.0, 0.0]]), (0, 1, 0, 0)).full_mask
