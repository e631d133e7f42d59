"""The registered flows end to end (preprocessing included): y -> z -> y round trip, the
total log-determinant against the autograd Jacobian, a normalised density on a 2-D grid,
data-dependent initialisation and the bits/dim bookkeeping."""

from __future__ import annotations

import math

import pytest
import torch

from baselines.common.flow_layers import ActNorm, prior_log_prob
from baselines.flows.base import DequantizedFlow
from bench.method import DataSpec, from_levels
from bench.metrics.likelihood import dequantize, logit_transform
from bench.registry import METHODS

FLOWS = ["nice", "realnvp", "glow"]
SMALL = DataSpec("small", 1, 4, 4, 17, 10)


def prepared(
    name: str, spec: DataSpec, overrides: dict | None = None, scale: float = 0.05
) -> DequantizedFlow:
    """Built, data-initialised on random 'training' images, parameters moved off their
    identity initialisation, in float64 and eval mode."""
    torch.manual_seed(0)
    method = METHODS.get(name).build(spec, overrides or {})
    train = from_levels(torch.randint(0, spec.num_levels, (64, *spec.shape)), spec.num_levels)
    method.prepare(train, torch.zeros(64, dtype=torch.long), train)
    with torch.no_grad():
        for param in method.parameters():
            param.add_(torch.randn_like(param) * scale)
    return method.double().eval()


@pytest.mark.parametrize("name", FLOWS)
def test_flow_round_trip_and_total_log_det(name: str) -> None:
    method = prepared(name, SMALL)
    y = dequantize(torch.randint(0, 17, (3, *SMALL.shape)), 17).double()
    with torch.no_grad():
        z, log_det = method._forward_flow(y)
        assert z.shape == (3, SMALL.dims)
        torch.testing.assert_close(method._inverse_flow(z), y, atol=1e-5, rtol=0)
    jacobian = torch.autograd.functional.jacobian(lambda v: method._forward_flow(v)[0], y[:1])
    _, expected = torch.linalg.slogdet(jacobian.reshape(SMALL.dims, SMALL.dims))
    assert float(log_det[0]) == pytest.approx(float(expected), abs=1e-6)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [("nice", {"hidden_units": 16}), ("realnvp", {"num_scales": 1, "width": 8})],
)
def test_flow_density_integrates_to_one(name: str, overrides: dict) -> None:
    """The method's flow and prior on a 2-pixel image, integrated on a grid over the flow's
    input space (after the logit). Glow's multi-scale pieces (squeeze, split prior, learned
    top) need 2x2 images; they are integrated layer by layer in test_flows_layers.py."""
    method = prepared(name, DataSpec("pair", 1, 1, 2, 17, 10), overrides, scale=0.2)
    side = torch.linspace(-20, 20, 301, dtype=torch.float64)
    grid = torch.cartesian_prod(side, side).view(-1, 1, 1, 2)
    with torch.no_grad():
        z, log_det = method.flow(grid)
        density = (prior_log_prob(z.flatten(1), method.prior) + log_det).exp()
        prior_density = prior_log_prob(grid.flatten(1), method.prior).exp()
    step = float(side[1] - side[0])
    assert float(density.sum()) * step**2 == pytest.approx(1.0, abs=5e-4)
    assert float((density - prior_density).abs().max()) > 1e-2  # not the prior itself


def test_glow_actnorms_are_initialised_from_training_data() -> None:
    """After ``prepare``, every actnorm is initialised and the first one standardises the
    training images' channels (zero mean, unit variance, up to the dequantization noise)."""
    torch.manual_seed(0)
    method = METHODS.get("glow").build(SMALL, {})
    levels = torch.randint(0, 6, (512, *SMALL.shape))  # dark images: far from standard
    train = from_levels(levels, 17)
    method.prepare(train, torch.zeros(512, dtype=torch.long), train)
    actnorms = [m for m in method.modules() if isinstance(m, ActNorm)]
    assert actnorms and all(bool(m.initialized) for m in actnorms)
    outputs = []
    handle = actnorms[0].register_forward_hook(lambda module, args, out: outputs.append(out[0]))
    with torch.no_grad():
        method.eval().log_likelihood(train)
    handle.remove()
    # (fresh dequantization noise: equal up to sampling error; the logits of these dark
    # images themselves have a mean near -1.8)
    torch.testing.assert_close(outputs[0].mean((0, 2, 3)), torch.zeros(4), atol=0.1, rtol=0)
    torch.testing.assert_close(outputs[0].std((0, 2, 3)), torch.ones(4), atol=0.1, rtol=0)


@pytest.mark.parametrize("name", FLOWS)
def test_log_likelihood_is_the_dequantized_bound_in_nats(name: str) -> None:
    """log P(k) >= log p(y) - D log L with the logit Jacobian: recomputed here from the
    flow's pieces and bench's likelihood module, with the same evaluation noise."""
    method = prepared(name, SMALL)
    levels = torch.randint(0, 17, (4, *SMALL.shape))
    x = from_levels(levels, 17).double()
    y = dequantize(levels, 17, torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        flow_input, logit_log_jac = logit_transform(y, method.logit_alpha)
        z, log_det = method.flow(flow_input)
        expected = (
            prior_log_prob(z.flatten(1), method.prior)
            + log_det
            + logit_log_jac
            - SMALL.dims * math.log(17)
        )
        torch.testing.assert_close(method.log_likelihood(x), expected)
        assert method.likelihood_is_bound
        features = method.encode(x)
    assert features.shape == (4, SMALL.dims)
