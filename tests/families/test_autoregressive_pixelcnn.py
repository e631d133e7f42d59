"""Gated PixelCNN: its receptive field is exactly the causal past (no leak, no blind spot),
checked by gradients; the same check finds the blind spot of a plain masked-convolution
stack. Channel masks (RGB) and the discretised logistic mixture are normalised and sampled
correctly."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from baselines.autoregressive.pixelcnn import PixelCNN
from baselines.common.masked import MaskedConv2d
from bench.method import DataSpec, from_levels
from bench.registry import METHODS


def influence(
    network: nn.Module, shape: tuple[int, int, int], per_channel: int, groups: int | None = None
) -> torch.Tensor:
    """(groups * H * W, C * H * W) boolean: does input dimension q reach the output at pixel
    p of output channel group c (channels j with j % per_channel == c, c < groups)? By gradients in
    float64, where only structural zeros are exact zeros; the union over a batch of random
    inputs, so that a ReLU that happens to be off for one input hides nothing."""
    channels, height, width = shape
    x = torch.randn(8, *shape, dtype=torch.float64, requires_grad=True)
    out = network(x)  # (8, K, H, W); images of the batch are independent
    rows = []
    for group in range(groups or per_channel):
        for p in range(height * width):
            i, j = divmod(p, width)
            grad = torch.autograd.grad(out[:, group::per_channel, i, j].sum(), x, retain_graph=True)
            rows.append((grad[0] != 0).flatten(1).any(0))
    return torch.stack(rows)


def causal_past(channels: int, height: int, width: int, within_pixel: bool) -> torch.Tensor:
    """The allowed influence: input (c', q) reaches output (c, p) iff q < p in raster order, or
    q == p and c' < c when channels are generated one after another within a pixel."""
    pixels = height * width
    c_out = torch.arange(channels).repeat_interleave(pixels)[:, None]
    p_out = torch.arange(pixels).repeat(channels)[:, None]
    c_in = torch.arange(channels).repeat_interleave(pixels)[None, :]
    p_in = torch.arange(pixels).repeat(channels)[None, :]
    allowed = p_in < p_out
    if within_pixel:
        allowed |= (p_in == p_out) & (c_in < c_out)
    return allowed


def leaks_and_blind_spots(reached: torch.Tensor, allowed: torch.Tensor) -> tuple[int, int]:
    return int((reached & ~allowed).sum()), int((~reached & allowed).sum())


def gated_network(spec: DataSpec, **overrides) -> nn.Module:
    torch.manual_seed(0)
    method = METHODS.get("pixelcnn").build(spec, overrides)
    assert isinstance(method, PixelCNN)
    return method.network.double()


def plain_pixelcnn(layers: int, width: int = 16) -> nn.Module:
    """The original PixelCNN stack (van den Oord et al. 2016a): 3x3 convolutions masked to
    the rows above and the pixels to the left, mask A first, mask B after."""

    def mask(include_centre: bool) -> torch.Tensor:
        m = torch.ones(3, 3)
        m[2, :] = 0
        m[1, 2] = 0
        m[1, 1] = float(include_centre)
        return m

    stack: list[nn.Module] = [MaskedConv2d(1, width, mask(False))]
    for _ in range(layers - 1):
        stack += [nn.Tanh(), MaskedConv2d(width, width, mask(True))]
    torch.manual_seed(0)
    return nn.Sequential(*stack).double()


def test_gated_pixelcnn_sees_exactly_the_past() -> None:
    """Default 8x8 network: every earlier pixel reaches every later one, nothing else does."""
    spec = DataSpec("digits", 1, 8, 8, 17, 10)
    reached = influence(gated_network(spec), spec.shape, per_channel=1)
    assert leaks_and_blind_spots(reached, causal_past(1, 8, 8, False)) == (0, 0)


def test_the_check_finds_the_blind_spot_of_a_plain_masked_stack() -> None:
    """Eight masked 3x3 layers reach 8 rows up and 8 columns to each side, yet miss the pixels
    up and to the right of the growing blind spot; the same check must flag them (and no
    leak)."""
    reached = influence(plain_pixelcnn(layers=8), (1, 8, 8), per_channel=16, groups=1)
    leaks, blind = leaks_and_blind_spots(reached, causal_past(1, 8, 8, False))
    assert leaks == 0
    assert blind > 0
    # e.g. pixel (7, 0) never sees pixel (5, 7), two rows up on the right
    assert not bool(reached[7 * 8 + 0, 5 * 8 + 7])


def test_channel_masks_order_red_green_blue_within_a_pixel() -> None:
    spec = DataSpec("rgb", 3, 4, 4, 5, 10)
    network = gated_network(spec, width=48)  # 16 units per channel group
    # output channel j = level * C + c belongs to channel group c = j % C
    reached = influence(network, spec.shape, per_channel=3)
    assert leaks_and_blind_spots(reached, causal_past(3, 4, 4, True)) == (0, 0)


def test_mixture_network_sees_only_previous_pixels() -> None:
    spec = DataSpec("rgb", 3, 4, 4, 5, 10)
    network = gated_network(spec, width=12, output="logistic_mixture")
    reached = influence(network, spec.shape, per_channel=1)  # (H*W, C*H*W)
    allowed = causal_past(3, 4, 4, False)[: 4 * 4]
    assert leaks_and_blind_spots(reached, allowed) == (0, 0)


@pytest.mark.parametrize("output", ["categorical", "logistic_mixture"])
def test_rgb_probabilities_sum_to_one_and_samples_follow_them(output: str) -> None:
    """One RGB pixel, L = 3: 27 joint values. The channel dependencies (masks, or the
    mixture's linear mean coefficients) keep the joint normalised, and the sampler (one call
    per channel, or the mixture's quantised draws) matches it."""
    spec = DataSpec("rgb", 3, 1, 1, 3, 10)
    torch.manual_seed(0)
    method = METHODS.get("pixelcnn").build(spec, {"width": 12, "output": output})
    with torch.no_grad():
        for param in method.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    method.eval()
    levels = torch.tensor(list(itertools.product(range(3), repeat=3)))  # (27, 3): R, G, B
    with torch.no_grad():
        probs = method.log_likelihood(from_levels(levels, 3).view(27, 3, 1, 1)).exp()
        samples = method.sample(40_000, torch.Generator().manual_seed(0))
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(probs.max()) > 0.1  # not trivially uniform
    index = (torch.round(samples.flatten(1) * 2).long() * torch.tensor([9, 3, 1])).sum(1)
    empirical = torch.bincount(index, minlength=27).float() / len(index)
    assert 0.5 * float((empirical - probs).abs().sum()) < 0.02
    assert method.last_nfe == (3 if output == "categorical" else 1)


@pytest.mark.parametrize("output", ["categorical", "logistic_mixture"])
def test_sampler_is_batched_one_network_evaluation_per_position(output: str) -> None:
    """The whole batch at once: the horizontal stack once per pixel (and channel), the
    vertical stack once per row (that the draws follow the model is tested above)."""
    spec = DataSpec("rgb", 3, 4, 4, 5, 10)
    torch.manual_seed(0)
    method = METHODS.get("pixelcnn").build(spec, {"width": 12, "output": output}).eval()
    network = method.network
    calls = {"vertical_pass": [], "horizontal_pass": []}
    for name in calls:
        inner = getattr(network, name)

        def counted(*args, inner=inner, name=name):
            calls[name].append(len(args[0]))
            return inner(*args)

        setattr(network, name, counted)
    samples = method.sample(6, torch.Generator().manual_seed(0))
    per_pixel = 3 if output == "categorical" else 1
    assert len(calls["horizontal_pass"]) == 16 * per_pixel == method.last_nfe
    assert len(calls["vertical_pass"]) == 4
    assert set(calls["vertical_pass"]) | set(calls["horizontal_pass"]) == {6}
    assert samples.shape == (6, 3, 4, 4)
