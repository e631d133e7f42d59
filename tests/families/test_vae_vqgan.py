"""VQGAN's pieces: the adaptive weight against hand-computed gradient norms, the PatchGAN
critic's patch map, the transformer prior's causality and normalisation, the perceptual loss
from a locally saved VGG16 state dict, and a first-stage step with the critic on."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from baselines.vae.vq_vae import prior_log_prob, top_k_log_probs
from baselines.vae.vqgan import (
    PERCEPTUAL_UNAVAILABLE,
    VQGAN,
    PatchCritic,
    TransformerPrior,
    VGGPerceptual,
    adaptive_weight,
)
from bench.method import Batch, DataSpec, from_levels
from bench.optim import run_step
from bench.registry import METHODS

DIGITS = DataSpec("digits", 1, 8, 8, 17, 10)
SMALL = {"width": 16, "code_dim": 4, "num_codes": 8, "critic_width": 8, "prior_dim": 16}


def test_adaptive_weight_is_the_ratio_of_gradient_norms() -> None:
    """With losses linear in the last layer's weight, the gradients are known: d/dW sum(W*A)
    = A and d/dW 3 sum(W*B) = 3B, so lambda = ||A|| / (3 ||B|| + 1e-4) * disc_weight."""
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(4, 3))
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    rec, gan = (weight * a).sum(), 3 * (weight * b).sum()
    expected = a.norm() / (3 * b.norm() + 1e-4) * 0.8
    got = adaptive_weight(rec, gan, weight, disc_weight=0.8)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not got.requires_grad
    # a GAN loss with no gradient at the last layer: the weight is clamped at 1e4
    flat = adaptive_weight((weight * a).sum(), 0.0 * (weight * b).sum(), weight, disc_weight=1.0)
    assert flat.item() == pytest.approx(1e4)


@pytest.mark.parametrize(("size", "layers", "patches"), [(8, 1, 2), (28, 2, 5), (32, 3, 2)])
def test_patch_critic_gives_one_logit_per_patch(size: int, layers: int, patches: int) -> None:
    critic = PatchCritic(1, 8, layers)
    out = critic(torch.randn(3, 1, size, size))
    assert out.shape == (3, 1, patches, patches)


def test_transformer_prior_is_causal_and_normalised() -> None:
    torch.manual_seed(0)
    prior = TransformerPrior(num_codes=3, positions=3, layers=2, heads=2, dim=8)
    grids = torch.tensor(list(itertools.product(range(3), repeat=3)))
    with torch.no_grad():
        assert prior_log_prob(prior, grids).logsumexp(0).item() == pytest.approx(0.0, abs=1e-5)
    # changing code j changes the logits of the positions after j only
    codes = torch.randint(0, 3, (4, 3))
    base = prior(codes)
    for j in range(3):
        changed = codes.clone()
        changed[:, j] = (changed[:, j] + 1) % 3
        diff = (prior(changed) - base).abs().amax((0, 2))
        assert (diff[: j + 1] == 0).all() and (diff[j + 1 :] > 0).all()


def test_top_k_keeps_the_k_most_probable_codes_renormalised() -> None:
    probs = torch.tensor([[0.1, 0.4, 0.2, 0.3], [0.2, 0.3, 0.4, 0.1]])
    kept = top_k_log_probs(probs.log(), 2).exp()
    expected = torch.tensor([[0.0, 4 / 7, 0.0, 3 / 7], [0.0, 3 / 7, 4 / 7, 0.0]])
    assert torch.allclose(kept, expected, atol=1e-6)
    assert torch.equal(top_k_log_probs(probs.log(), 0), probs.log())


def save_vgg16_features(path: Path) -> None:
    """A randomly initialised torchvision VGG16 ``features`` state dict, saved as a whole
    VGG16 would be (keys 'features.N.weight'), standing in for downloaded weights."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    state = make_layers(cfgs["D"]).state_dict()
    torch.save({f"features.{k}": v for k, v in state.items()}, path)


def test_perceptual_distance_from_a_local_vgg16_file(tmp_path: Path) -> None:
    path = tmp_path / "vgg16.pt"
    save_vgg16_features(path)
    perceptual = VGGPerceptual(str(path))
    torch.manual_seed(1)
    x, y = torch.rand(2, 1, 8, 8) * 2 - 1, torch.rand(2, 1, 8, 8) * 2 - 1
    assert torch.allclose(perceptual(x, x), torch.zeros(2), atol=1e-6)
    y.requires_grad_(True)
    distance = perceptual(x, y)
    assert (distance > 0).all()
    distance.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in perceptual.parameters())
    # used by the method when given, and recorded either way
    torch.manual_seed(0)
    method = METHODS.get("vqgan").build(DIGITS, {**SMALL, "perceptual_weights": str(path)})
    images = from_levels(torch.randint(0, 17, (4, 1, 8, 8)), 17)
    run_step(method, Batch(images, torch.zeros(4)), 0)
    assert str(path) in method.sample_settings()["perceptual"]
    assert "vgg" not in " ".join(method.state_dict())  # a loss network, not part of the model
    default = METHODS.get("vqgan").build(DIGITS, SMALL)
    assert default.sample_settings()["perceptual"] == PERCEPTUAL_UNAVAILABLE


def test_vqgan_first_stage_step_trains_the_critic_after_its_start() -> None:
    torch.manual_seed(0)
    method = METHODS.get("vqgan").build(
        DIGITS, {**SMALL, "prior_fraction": 0.5, "disc_start_fraction": 0.2}
    )
    assert isinstance(method, VQGAN)
    method.set_budget(640, 64)
    assert method.disc_start_images == 64 and method.prior_start_images == 320
    images = from_levels(torch.randint(0, 17, (64, 1, 8, 8)), 17)
    batch = Batch(images, torch.zeros(64))
    critic = {k: v.clone() for k, v in method.critic.state_dict().items()}
    before = run_step(method, batch, 0)
    assert "critic_loss" not in before and "adaptive_weight" not in before
    assert "autoencoder_loss" in before and "l1" in before
    assert all(torch.equal(v, critic[k]) for k, v in method.critic.state_dict().items())
    after = run_step(method, batch, 1)
    assert after["adaptive_weight"] > 0 and "critic_loss" in after
    assert any(not torch.equal(v, critic[k]) for k, v in method.critic.state_dict().items())
    assert all(p.requires_grad for p in method.critic.parameters())  # toggled back on
    assert set(run_step(method, batch, 5)) == {"prior_loss"}
    method.eval()
    samples = method.sample(5, torch.Generator().manual_seed(0))
    assert samples.shape == (5, 1, 8, 8) and method.last_nfe == method.positions + 1
    assert torch.equal(samples, method.sample(5, torch.Generator().manual_seed(0)))
