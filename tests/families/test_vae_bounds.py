"""The VAE's bounds against closed forms: the ELBO of a linear-Gaussian model equals log p(x)
with the exact posterior and falls short by KL(q || p(z | x)) otherwise; IWAE with k = 1 is
the single-sample ELBO; the discrete decoders are normalised over the L levels; the training
ELBO's per-example noise does not depend on how the global batch is split."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from baselines.vae.decoders import DiscreteDecoder
from baselines.vae.vae import (
    VAE,
    elbo,
    gaussian_kl,
    gaussian_log_density,
    importance_log_weights,
    iwae_bound,
)
from bench.method import Batch, BatchNoise, DataSpec, from_levels
from bench.optim import run_step
from bench.registry import METHODS

DIGITS = DataSpec("digits", 1, 8, 8, 17, 10)
MNIST = DataSpec("mnist", 1, 28, 28, 256, 10)

# a linear-Gaussian model: z ~ N(0, 1) in 1-D, x | z ~ N(W z + b, s^2 I) in 2-D
W = torch.tensor([[1.5], [-0.7]], dtype=torch.float64)
B = torch.tensor([0.3, -0.2], dtype=torch.float64)
S = 0.5
X = torch.tensor([[1.0, -1.0], [0.2, 0.4], [-2.0, 1.0]], dtype=torch.float64)


def log_marginal(x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log N(x; b, W W^T + s^2 I)."""
    cov = W @ W.t() + S**2 * torch.eye(2, dtype=torch.float64)
    return MultivariateNormal(B, cov).log_prob(x)


def exact_posterior(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log-variance (N, 1) of p(z | x): precision 1 + W^T W / s^2."""
    var = 1.0 / (1.0 + (W.t() @ W) / S**2)
    mean = (x - B) @ W / S**2 * var
    return mean, torch.log(var).expand_as(mean)


def decoder_log_prob(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x | z) for z (N, k, 1): (N, k)."""
    means = z @ W.t() + B  # (N, k, 2)
    return Normal(means, S).log_prob(x.unsqueeze(1)).sum(-1)


def expected_decoder_log_prob(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor):
    """E_q[log p(x | z)] in closed form: log N(x; W mu + b, s^2) - ||W||^2 var / (2 s^2)."""
    at_mean = Normal(mean @ W.t() + B, S).log_prob(x).sum(-1)
    return at_mean - (W.pow(2).sum() * log_var.exp().squeeze(1)) / (2 * S**2)


def test_kl_and_log_density_match_torch_distributions() -> None:
    torch.manual_seed(0)
    mean, log_var = torch.randn(4, 3), torch.randn(4, 3)
    q = Normal(mean, torch.exp(0.5 * log_var))
    expected = torch.distributions.kl_divergence(q, Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(gaussian_kl(mean, log_var), expected, atol=1e-5)
    z = torch.randn(4, 3)
    assert torch.allclose(gaussian_log_density(z, mean, log_var), q.log_prob(z).sum(-1), atol=1e-5)


def test_elbo_with_the_exact_posterior_is_the_log_likelihood() -> None:
    mean, log_var = exact_posterior(X)
    analytic = expected_decoder_log_prob(X, mean, log_var) - gaussian_kl(mean, log_var)
    assert torch.allclose(analytic, log_marginal(X), atol=1e-10)
    # every importance weight is p(x) exactly, so the IWAE bound is exact for any k
    torch.manual_seed(0)
    z = mean.unsqueeze(1) + torch.exp(0.5 * log_var).unsqueeze(1) * torch.randn(3, 5, 1).double()
    log_w = importance_log_weights(decoder_log_prob(X, z), z, mean, log_var)
    assert torch.allclose(log_w, log_marginal(X)[:, None].expand(3, 5), atol=1e-10)
    assert torch.allclose(iwae_bound(log_w), log_marginal(X), atol=1e-10)
    # and the Monte Carlo ELBO of the code (reconstruction averaged over samples) agrees
    noise = torch.randn(3, 200_000, 1, dtype=torch.float64)
    z = mean.unsqueeze(1) + torch.exp(0.5 * log_var).unsqueeze(1) * noise
    assert torch.allclose(elbo(decoder_log_prob(X, z), mean, log_var), log_marginal(X), atol=0.02)


def test_elbo_gap_is_the_kl_to_the_true_posterior() -> None:
    true_mean, true_log_var = exact_posterior(X)
    # a worse posterior, wider than the true one (so the importance weights are bounded)
    mean, log_var = true_mean + 0.2, true_log_var + 0.5
    bound = expected_decoder_log_prob(X, mean, log_var) - gaussian_kl(mean, log_var)
    q = Normal(mean, torch.exp(0.5 * log_var))
    p = Normal(true_mean, torch.exp(0.5 * true_log_var))
    gap = torch.distributions.kl_divergence(q, p).sum(-1)
    assert (gap > 0.01).all()
    assert torch.allclose(log_marginal(X) - bound, gap, atol=1e-10)
    # IWAE tightens the bound towards log p(x) as k grows (Burda et al. theorem 1)
    torch.manual_seed(0)
    noise = torch.randn(3, 20_000, 1, dtype=torch.float64)
    z = mean.unsqueeze(1) + torch.exp(0.5 * log_var).unsqueeze(1) * noise
    log_w = importance_log_weights(decoder_log_prob(X, z), z, mean, log_var)

    def average_bound(k: int) -> torch.Tensor:  # L_k averaged over 20000 / k groups of samples
        return iwae_bound(log_w.reshape(3 * (20_000 // k), k)).view(3, -1).mean(1)

    l_1, l_5, l_all = average_bound(1), average_bound(5), average_bound(20_000)
    assert (l_1 < l_5).all() and (l_5 < l_all).all()
    assert torch.allclose(l_1, bound, atol=0.02)  # L_1 is the ELBO (in expectation)
    assert torch.allclose(l_all, log_marginal(X), atol=0.01)


def small_vae(**overrides) -> VAE:
    torch.manual_seed(0)
    method = METHODS.get("vae").build(DIGITS, {"width": 16, "latent_dim": 4, **overrides})
    assert isinstance(method, VAE)
    return method


def digit_batch(n: int = 6) -> torch.Tensor:
    torch.manual_seed(1)
    return from_levels(torch.randint(0, 17, (n, 1, 8, 8)), 17)


@pytest.mark.parametrize("decoder", ["categorical", "logistic_mixture"])
def test_iwae_with_one_sample_is_the_single_sample_elbo(decoder: str) -> None:
    vae = small_vae(decoder=decoder)
    x = digit_batch()
    noise = torch.randn(len(x), 1, 4)
    with torch.no_grad():
        bounds = vae.bounds(x, 1, noise)
        mean, log_var = vae.posterior(x)
        z = mean + torch.exp(0.5 * log_var) * noise[:, 0]
        levels = torch.round(x * 16).long()
        reconstruction = vae.distribution.log_prob(vae.decode(z), levels)
        prior = Normal(0.0, 1.0).log_prob(z).sum(1)
        posterior = Normal(mean, torch.exp(0.5 * log_var)).log_prob(z).sum(1)
    assert torch.allclose(bounds["iwae"], reconstruction + prior - posterior, atol=1e-4)
    assert torch.equal(bounds["iwae"], bounds["elbo"])
    # over the same k > 1 samples, L_k >= the ELBO estimate image by image (Jensen), and the
    # estimate agrees with the analytic-KL ELBO of training (K&W's estimator B)
    with torch.no_grad():
        many = vae.bounds(x, 4000)
        z = mean.unsqueeze(1) + torch.exp(0.5 * log_var).unsqueeze(1) * torch.randn(6, 4000, 4)
        analytic = elbo(vae.reconstruction_log_prob(z, levels), mean, log_var)
    assert (many["iwae"] >= many["elbo"]).all()
    assert torch.allclose(many["elbo"], analytic, atol=0.05)


def test_vae_likelihood_variants_are_the_iwae_bound_and_the_elbo() -> None:
    vae = small_vae(iwae_samples=50)
    x = digit_batch()
    logs = run_step(vae, Batch(x, torch.zeros(len(x))), 0)
    assert set(logs) == {"loss", "elbo_bpd"}
    vae.eval()
    assert vae.likelihood_variants() == [{"bound": "iwae"}, {"bound": "elbo"}]
    with torch.no_grad():
        torch.manual_seed(3)
        ll = vae.log_likelihood(x)
        torch.manual_seed(3)
        bounds = vae.bounds(x, 50)
        torch.manual_seed(4)
        elbo_row = vae.log_likelihood(x, bound="elbo")
        torch.manual_seed(4)
        mean, log_var = vae.posterior(x)
        z = mean.unsqueeze(1) + torch.exp(0.5 * log_var).unsqueeze(1) * torch.randn(6, 10, 4)
        reconstruction = vae.reconstruction_log_prob(z, torch.round(x * 16).long())
    assert torch.allclose(ll, bounds["iwae"])
    assert torch.allclose(elbo_row, reconstruction.mean(1) - gaussian_kl(mean, log_var))
    assert vae.likelihood_settings()["iwae_samples"] == 50
    assert ll.mean() >= elbo_row.mean()  # the tighter bound on average


@pytest.mark.parametrize("spec", [DIGITS, MNIST], ids=["L17", "L256"])
@pytest.mark.parametrize("output", ["categorical", "logistic_mixture"])
def test_discrete_decoder_is_normalised_over_the_levels(spec: DataSpec, output: str) -> None:
    torch.manual_seed(0)
    decoder = DiscreteDecoder(spec, output, components=3)
    params = 3.0 * torch.randn(2, decoder.param_channels, spec.height, spec.width)
    table = decoder.level_log_probs(params)  # (B, C, H, W, L)
    assert table.shape == (2, 1, spec.height, spec.width, spec.num_levels)
    assert torch.allclose(table.logsumexp(-1), torch.zeros(()), atol=1e-4)
    # log_prob of given levels is the sum of the table's entries at those levels
    levels = torch.randint(0, spec.num_levels, (2, 1, spec.height, spec.width))
    expected = table.gather(-1, levels.unsqueeze(-1)).flatten(1).sum(1)
    assert torch.allclose(decoder.log_prob(params, levels), expected, rtol=1e-4)
    # the cheaper probability table of the samplers is the same distribution
    assert torch.allclose(decoder.level_probs(params), table.exp(), atol=1e-5)
    # the mean image is the expectation of level / (L - 1)
    values = torch.arange(spec.num_levels).float() / (spec.num_levels - 1)
    assert torch.allclose(decoder.mean(params), (table.exp() * values).sum(-1), atol=1e-5)


def test_decoder_draws_follow_the_level_probabilities() -> None:
    torch.manual_seed(0)
    decoder = DiscreteDecoder(DIGITS, "logistic_mixture", components=2)
    params = torch.randn(1, decoder.param_channels, 1, 1).expand(4000, -1, 8, 8).contiguous()
    draws = decoder.draw(params, torch.Generator().manual_seed(0))[:, 0, 0, 0]
    frequencies = torch.bincount(draws, minlength=17).float() / len(draws)
    probs = decoder.level_log_probs(params[:1])[0, 0, 0, 0].exp()
    assert (frequencies - probs).abs().max() < 0.03
    again = decoder.draw(params, torch.Generator().manual_seed(0))[:, 0, 0, 0]
    assert torch.equal(draws, again)


def test_training_noise_is_per_example_whatever_the_split() -> None:
    """The ELBO terms of images 0..15 of a global batch are the same whether one process
    takes all 16 or two ranks (or micro-batches) take 8 each: eps is a function of (seed,
    step, position), not of the part that draws it."""
    vae = small_vae()
    x = from_levels(
        torch.randint(0, 17, (16, 1, 8, 8), generator=torch.Generator().manual_seed(2)), 17
    )
    y = torch.zeros(16)
    positions = torch.arange(16)
    with torch.no_grad():
        whole = vae.training_elbo(Batch(x, y, BatchNoise(7, positions, 16)))
        halves = [
            vae.training_elbo(Batch(x[part], y[part], BatchNoise(7, part, 16)))
            for part in (positions[0::2], positions[1::2])  # the ranks' interleaved shares
        ]
        other_seed = vae.training_elbo(Batch(x, y, BatchNoise(8, positions, 16)))
    split = torch.empty(16)
    split[0::2], split[1::2] = halves
    assert torch.allclose(whole, split, atol=1e-5)
    assert not torch.allclose(whole, other_seed)  # and the noise is drawn, not fixed
