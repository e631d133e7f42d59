"""The GAN family's objectives and constraints against independently computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines.gan import losses
from baselines.gan.sngan import SNGAN, SpectralNorm, power_iteration, spectral_normalise
from baselines.gan.wgan import WGAN
from bench.method import Batch, DataSpec
from bench.optim import Optimisation, run_step
from bench.registry import METHODS

DIGITS = DataSpec("digits", 1, 8, 8, 17, 10)
GAN_METHODS = ["gan", "wgan", "wgan-gp", "wgan-div", "sngan", "gan-qp"]
#: small networks, so that training steps in unit tests take milliseconds
SMALL = {"generator_width": 16, "generator_fc_width": 0, "critic_width": 16, "critic_fc_width": 32}


def test_gradient_penalty_of_a_linear_critic_is_analytic() -> None:
    """f(x) = w.x + b has grad f = w everywhere, so the penalty is lambda (||w|| - 1)^2."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 1)
    critic = lambda x: linear(x.flatten(1)).squeeze(1)  # noqa: E731
    real, fake = torch.randn(5, 1, 8, 8), torch.randn(5, 1, 8, 8)
    points = losses.interpolates(real, fake, torch.rand(5))
    grad_norms = losses.input_gradient_norms(critic, points)
    w_norm = float(linear.weight.detach().norm())
    assert torch.allclose(grad_norms, torch.full((5,), w_norm), atol=1e-6)
    penalty = losses.gradient_penalty(grad_norms, weight=10.0)
    assert penalty.item() == pytest.approx(10.0 * (w_norm - 1) ** 2, rel=1e-5)
    # and it is differentiable in the critic's weights: d/dw = 2 lambda (||w|| - 1) w / ||w||
    penalty.backward()
    expected = 2 * 10.0 * (w_norm - 1) * linear.weight.detach() / w_norm
    assert torch.allclose(linear.weight.grad, expected, atol=1e-5)


def test_interpolates_lie_on_the_segment() -> None:
    real, fake = torch.ones(3, 1, 2, 2), torch.zeros(3, 1, 2, 2)
    points = losses.interpolates(real, fake, torch.tensor([0.0, 0.25, 1.0]))
    assert points[:, 0, 0, 0].tolist() == [0.0, 0.25, 1.0]


def test_wasserstein_div_penalty_by_hand() -> None:
    """k E[||grad||^p] with k = 2, p = 6 on norms 1, 2, 0.5: 2 (1 + 64 + 1/64) / 3."""
    norms = torch.tensor([1.0, 2.0, 0.5])
    value = losses.wasserstein_div_penalty(norms, k=2.0, p=6.0)
    assert value.item() == pytest.approx(2 * (1 + 64 + 0.5**6) / 3)
    # through a linear critic: ||grad|| = ||w|| at every point
    linear = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 2.0, 2.0, 0.0]]))  # ||w|| = 3
    norms = losses.input_gradient_norms(lambda x: linear(x).squeeze(1), torch.randn(7, 4))
    assert losses.wasserstein_div_penalty(norms, 2.0, 6.0).item() == pytest.approx(2 * 3**6)


def test_qp_losses_by_hand() -> None:
    real = torch.tensor([[1.0, 1.0], [0.0, -1.0]]).view(2, 1, 1, 2)
    fake = torch.tensor([[0.0, 0.0], [0.0, 1.0]]).view(2, 1, 1, 2)
    l1 = losses.qp_distance(real, fake, "l1")
    assert l1.tolist() == pytest.approx([1.0, 1.0])  # per-pixel mean |x_r - x_f|
    l2 = losses.qp_distance(real, fake, "l2")
    assert l2.tolist() == pytest.approx([1.0, math.sqrt(2.0)])  # root mean square
    real_scores, fake_scores = torch.tensor([3.0, 1.0]), torch.tensor([1.0, 2.0])
    # gaps 2 and -1; loss = mean(-gap + gap^2 / (2 lambda d)), lambda = 10, d = (1, 1)
    expected = ((-2 + 4 / 20) + (1 + 1 / 20)) / 2
    loss = losses.qp_critic_loss(real_scores, fake_scores, l1, qp_lambda=10.0)
    assert loss.item() == pytest.approx(expected)
    distance = torch.tensor([0.5, 2.0])
    expected = ((-2 + 4 / 10) + (1 + 1 / 40)) / 2
    assert losses.qp_critic_loss(real_scores, fake_scores, distance, 10.0).item() == (
        pytest.approx(expected)
    )
    assert losses.qp_generator_loss(real_scores, fake_scores).item() == pytest.approx(0.5)


def test_qp_critic_optimum_is_lambda_times_distance() -> None:
    """Per pair, -g + g^2 / (2 lambda d) is minimised at g = lambda d (the paper's T*)."""
    gap = torch.tensor(0.3, requires_grad=True)
    distance = torch.tensor([0.2])
    optimiser = torch.optim.SGD([gap], lr=1.0)
    for _ in range(200):
        optimiser.zero_grad()
        losses.qp_critic_loss(gap.view(1), torch.zeros(1), distance, 10.0).backward()
        optimiser.step()
    assert gap.item() == pytest.approx(10.0 * 0.2, rel=1e-4)


def test_gan_and_hinge_losses_by_hand() -> None:
    real, fake = torch.tensor([0.0, 2.0]), torch.tensor([-1.0, 0.5])
    softplus = lambda a: math.log1p(math.exp(a))  # noqa: E731
    expected = (softplus(0.0) + softplus(-2.0)) / 2 + (softplus(-1.0) + softplus(0.5)) / 2
    assert losses.gan_critic_loss(real, fake).item() == pytest.approx(expected)
    # minimax: E[log(1 - sigmoid(a))]; non-saturating: -E[log sigmoid(a)]
    minimax = sum(math.log(1 - 1 / (1 + math.exp(-a))) for a in (-1.0, 0.5)) / 2
    nonsat = -sum(math.log(1 / (1 + math.exp(-a))) for a in (-1.0, 0.5)) / 2
    assert losses.gan_generator_loss(fake, "minimax").item() == pytest.approx(minimax)
    assert losses.gan_generator_loss(fake, "non-saturating").item() == pytest.approx(nonsat)
    # hinge: mean(relu(1 - [0, 2])) + mean(relu(1 + [-1, 0.5])) = 0.5 + 0.75
    assert losses.hinge_critic_loss(real, fake).item() == pytest.approx(1.25)
    assert losses.wasserstein_critic_loss(real, fake).item() == pytest.approx(-0.25 - 1.0)


def test_spectral_norm_brings_the_largest_singular_value_to_one() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 4, 2, 1)
    with torch.no_grad():
        conv.weight.mul_(10.0)
    assert torch.linalg.matrix_norm(conv.weight.detach().flatten(1), 2) > 2.0
    layers = spectral_normalise(conv)
    power_iteration(layers, 50)
    effective = conv.weight.detach().flatten(1)  # the parametrised weight W / sigma
    assert torch.linalg.matrix_norm(effective, 2).item() == pytest.approx(1.0, abs=1e-3)


def test_exactly_one_power_iteration_per_critic_step() -> None:
    """u and v after a train step are ONE power iteration from their values before it, on the
    weights before the update: none is added by the generator step or extra forward passes."""
    torch.manual_seed(0)
    method = SNGAN.build(DIGITS, SMALL)
    batch = Batch(torch.rand(64, 1, 8, 8), torch.zeros(64, dtype=torch.long))
    expected = []
    for layer in method.normalised_layers:
        weight = layer.parametrizations.weight.original.detach().flatten(1).clone()
        u = layer.parametrizations.weight[0].u.clone()
        v = F.normalize(weight.T @ u, dim=0)
        expected.append((F.normalize(weight @ v, dim=0), v))
    run_step(method, batch, 0)  # critic_steps = 1: a critic and a generator update
    for layer, (u, v) in zip(method.normalised_layers, expected, strict=True):
        norm = layer.parametrizations.weight[0]
        assert torch.allclose(norm.u, u, atol=1e-6) and torch.allclose(norm.v, v, atol=1e-6)


def test_persistent_power_iteration_tracks_sigma_during_training() -> None:
    """One iteration per step keeps sigma close (from below, so the norm is >= 1) while the
    raw weights are far from norm 1; u is a buffer, so checkpoints keep it."""
    torch.manual_seed(0)
    method = SNGAN.build(DIGITS, SMALL)
    x = torch.rand(64, 1, 8, 8)
    for step in range(20):
        run_step(method, Batch(x, torch.zeros(64, dtype=torch.long)), step)
    for layer in method.normalised_layers:
        effective = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), 2).item()
        raw = layer.parametrizations.weight.original.detach().flatten(1)
        assert 1 - 1e-4 <= effective <= 1.3
        assert not 0.5 < torch.linalg.matrix_norm(raw, 2).item() < 2.0
    state = method.state_dict()
    assert any(key.endswith(".u") for key in state), "u must persist (checkpointed)"


def test_spectral_norm_sigma_is_the_power_estimate() -> None:
    weight = torch.diag(torch.tensor([3.0, 1.0]))
    norm = SpectralNorm(weight, warmup_iterations=30)
    assert norm.sigma(weight).item() == pytest.approx(3.0, rel=1e-4)


def test_weight_clipping_keeps_every_critic_parameter_within_c() -> None:
    torch.manual_seed(0)
    method = WGAN.build(DIGITS, {**SMALL, "lr": 0.5})  # a step far larger than c
    x = torch.rand(64, 1, 8, 8)
    before = [p.detach().clone() for p in method.critic.parameters()]
    run_step(method, Batch(x, torch.zeros(64, dtype=torch.long)), 0)
    after = list(method.critic.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    for param in after:
        assert param.abs().max().item() <= method.hparams["clip_value"] + 1e-12


@pytest.mark.parametrize("name", GAN_METHODS)
def test_images_seen_count_critic_and_generator_batches(name: str) -> None:
    torch.manual_seed(0)
    method = METHODS.get(name).build(DIGITS, SMALL)
    batch = Batch(torch.rand(16, 1, 8, 8), torch.zeros(16, dtype=torch.long))
    optimisation = Optimisation(method, torch.device("cpu"))
    counts = [optimisation.step([batch], step)[1] for step in range(method.critic_steps)]
    # critic_steps critic batches, then one generator batch on the last of them
    assert counts == [16] * (method.critic_steps - 1) + [32]


def test_sampling_noise_is_shared_across_methods() -> None:
    """Same seed -> same latent tensor for every GAN (comparable sample grids)."""
    noises = []
    for name in GAN_METHODS:
        method = METHODS.get(name).build(DIGITS)
        noises.append(method.latents(4, torch.Generator().manual_seed(3)))
    assert all(torch.equal(noises[0], n) for n in noises[1:])
