"""Diffusion, score and flow-matching models against closed forms they must satisfy."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from baselines.diffusion.common import (
    ode_log_likelihood,
    odeint_dopri5,
    standard_normal_log_density,
)
from baselines.diffusion.ddpm import (
    DiscreteDiffusion,
    discretized_gaussian_log_likelihood,
    gaussian_kl,
)
from baselines.diffusion.edm import edm_loss_weight, edm_preconditioning, edm_sigma_steps
from baselines.diffusion.score_sde import VESDE, VPSDE
from bench.method import DataSpec
from bench.registry import METHODS

SPEC = DataSpec("tiny", 1, 8, 8, 17, 10)
MU, STD = 0.3, 0.5  # the Gaussian data distribution N(MU, STD^2) of the sampler tests


# -- forward processes ------------------------------------------------------------------------


def test_ddpm_forward_process_matches_its_closed_form() -> None:
    """Running the Markov chain q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x, beta_t) step by step
    gives the moments of q(x_t | x_0) = N(sqrt(abar_t) x_0, 1 - abar_t) (eq. 4)."""
    diffusion = DiscreteDiffusion()
    generator = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000,), 0.7, dtype=torch.float64)
    x = x0.clone()
    for t in range(300):
        beta = diffusion.betas[t]
        x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn(
            x.shape, generator=generator, dtype=x.dtype
        )
    abar = float(diffusion.alphas_cumprod[299])
    assert abs(float(x.mean()) - math.sqrt(abar) * 0.7) < 5e-3
    assert abs(float(x.var()) - (1 - abar)) < 5e-3
    # and q_sample draws exactly those moments
    noise = torch.randn(200_000, 1, 1, 1, generator=generator)
    x_t = diffusion.q_sample(torch.full_like(noise, 0.7), torch.full((200_000,), 299), noise)
    assert abs(float(x_t.mean()) - math.sqrt(abar) * 0.7) < 5e-3
    assert abs(float(x_t.var()) - (1 - abar)) < 5e-3


def _moments_by_integration(sde: VPSDE | VESDE, t_end: float, x0: float, steps: int = 20_000):
    """Mean and variance of the forward SDE from a point mass, by integrating the moment
    ODEs dm/dt = f_coef(t) m, dv/dt = 2 f_coef(t) v + g(t)^2 with tiny Euler steps."""
    mean, var, dt = x0, 0.0, t_end / steps
    for i in range(steps):
        t = torch.tensor([(i + 0.5) * dt], dtype=torch.float64)
        f, g = sde.drift_diffusion(torch.ones(1, 1, 1, 1, dtype=torch.float64), t)
        coef = float(f.flatten()[0])
        mean, var = mean + coef * mean * dt, var + (2 * coef * var + float(g[0]) ** 2) * dt
    return mean, var


def test_vp_sde_marginal_matches_its_moment_equations() -> None:
    sde = VPSDE()
    mean, var = _moments_by_integration(sde, 0.4, 0.7)
    m, std = sde.marginal(torch.tensor([0.4], dtype=torch.float64))
    assert mean == pytest.approx(float(m) * 0.7, rel=1e-3)
    assert var == pytest.approx(float(std) ** 2, rel=1e-3)


def test_ve_sde_marginal_matches_its_moment_equations() -> None:
    sde = VESDE(sigma_min=0.01, sigma_max=20.0)
    _, var = _moments_by_integration(sde, 0.6, 0.7)
    _, std = sde.marginal(torch.tensor([0.6], dtype=torch.float64))
    # the paper's marginal sigma(t)^2 drops the sigma_min^2 the process starts from
    assert var + 0.01**2 == pytest.approx(float(std) ** 2, rel=1e-3)


# -- EDM ------------------------------------------------------------------------------------


def test_edm_sigma_schedule_is_the_rho_7_schedule() -> None:
    sigmas = edm_sigma_steps(18)
    assert len(sigmas) == 19 and sigmas[-1] == 0
    assert float(sigmas[0]) == pytest.approx(80.0) and float(sigmas[17]) == pytest.approx(0.002)
    roots = sigmas[:-1] ** (1 / 7)  # sigma^(1/rho) is linear in i (eq. 5)
    assert torch.allclose(roots.diff().diff(), torch.zeros(16, dtype=torch.float64), atol=1e-12)
    assert bool((sigmas[:-1].diff() < 0).all())


def test_edm_preconditioning_follows_the_papers_design_principles() -> None:
    """Appendix B.6: unit-variance network inputs and training targets for data of standard
    deviation sigma_data, c_skip the optimal skip, and lambda(sigma) c_out^2 = 1."""
    generator = torch.Generator().manual_seed(0)
    sigma_data = 0.5
    y = sigma_data * torch.randn(400_000, generator=generator, dtype=torch.float64)
    n = torch.randn(400_000, generator=generator, dtype=torch.float64)
    for value in (0.01, 0.3, 2.0, 40.0):
        sigma = torch.tensor(value, dtype=torch.float64)
        c = edm_preconditioning(sigma, sigma_data)
        x = y + sigma * n
        assert float((c["c_in"] * x).var()) == pytest.approx(1.0, rel=1e-2)
        target = (y - c["c_skip"] * x) / c["c_out"]
        assert float(target.var()) == pytest.approx(1.0, rel=1e-2)
        assert float(edm_loss_weight(sigma, sigma_data) * c["c_out"] ** 2) == pytest.approx(1.0)
        assert float(c["c_skip"]) == pytest.approx(sigma_data**2 / (value**2 + sigma_data**2))
        assert float(c["c_noise"]) == pytest.approx(math.log(value) / 4)


# -- samplers on a Gaussian with the exact score ---------------------------------------------


def _gaussian_eps(mean_coef: Tensor, std: Tensor, x: Tensor) -> Tensor:
    """The exact eps-prediction for data N(MU, STD^2): x_t ~ N(m MU, m^2 STD^2 + std^2)."""
    m, s = mean_coef[:, None, None, None], std[:, None, None, None]
    return s * (x - m * MU) / (m**2 * STD**2 + s**2)


class FunctionNet(nn.Module):
    """A function standing in for the U-Net."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Tensor) -> Tensor:
        return self.fn(*args)


def _build(name: str, **overrides) -> nn.Module:
    method = METHODS.get(name).build(SPEC, overrides)
    method.to_images = lambda x: x  # the continuous samples, not their levels
    return method.eval()


def _check_gaussian(samples: Tensor) -> None:
    assert float(samples.mean()) == pytest.approx(MU, abs=0.02)
    assert float(samples.std()) == pytest.approx(STD, rel=0.05)


def test_edm_heun_sampler_with_the_exact_denoiser_recovers_the_gaussian() -> None:
    method = _build("edm")
    method.denoise = lambda x, sigma: (
        MU + STD**2 / (STD**2 + sigma[:, None, None, None] ** 2) * (x - MU)
    )
    method.sample(500, torch.Generator().manual_seed(0))
    assert method.last_nfe == 35  # 18 steps, no correction on the last
    # Heun's error on this narrow Gaussian is ~5% of the std at 18 steps; it vanishes with N
    _check_gaussian(method.sample(500, torch.Generator().manual_seed(0), steps=100))


def test_probability_flow_ode_with_the_exact_score_recovers_the_gaussian() -> None:
    method = _build("score-sde", sde="vp", ode_rtol=1e-5, ode_atol=1e-5)
    sde = method.sde
    method.net = FunctionNet(lambda x, label: _gaussian_eps(*sde.marginal(label / 999.0), x))
    samples = method.sample(500, torch.Generator().manual_seed(0), sampler="ode")
    _check_gaussian(samples)


def test_ddim_with_the_exact_eps_recovers_the_gaussian() -> None:
    method = _build("ddpm", ddim_steps=[100])
    diffusion = method.diffusion

    def eps(x: Tensor, t: Tensor, labels=None) -> Tensor:
        abar = diffusion.abar(t, x.device)
        return _gaussian_eps(abar.sqrt(), (1 - abar).sqrt(), x)

    method.eps = eps
    _check_gaussian(method.sample(500, torch.Generator().manual_seed(0), sampler="ddim"))


def _gaussian_velocity(t: float | Tensor, x: Tensor) -> Tensor:
    """E[x_1 - x_0 | x_t = x] for x_0 ~ N(0, 1), x_1 ~ N(MU, STD^2), x_t = (1-t) x_0 + t x_1."""
    t = float(t if not isinstance(t, Tensor) else t.flatten()[0])
    var = (1 - t) ** 2 + t**2 * STD**2
    return MU + (t * STD**2 - (1 - t)) / var * (x - t * MU)


def test_flow_matching_heun_with_the_exact_velocity_recovers_the_gaussian() -> None:
    method = _build("flow-matching")
    method.velocity = _gaussian_velocity
    _check_gaussian(method.sample(500, torch.Generator().manual_seed(0), sampler="heun", steps=50))


def test_ode_likelihood_through_an_exact_velocity_is_the_analytic_log_density() -> None:
    """The instantaneous change of variables, integrated with the adaptive solver and the
    Hutchinson estimator (exact here: the Jacobian is diagonal and the probes Rademacher),
    gives log N(x; MU, STD^2)."""
    x = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(1)) * STD + MU
    log_p, nfe = ode_log_likelihood(
        _gaussian_velocity,
        x,
        1.0,
        0.0,
        standard_normal_log_density,
        torch.Generator().manual_seed(0),
        probes=1,
        rtol=1e-7,
        atol=1e-7,
    )
    analytic = torch.distributions.Normal(MU, STD).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(log_p, analytic, atol=1e-4), (log_p - analytic).abs().max()
    assert nfe > 6


@pytest.mark.parametrize("sde", ["vp", "ve"])
def test_probability_flow_likelihood_with_the_exact_score_is_the_analytic_density(sde) -> None:
    """Song et al. eq. 39 through the method's own ODE: log p_eps(x) of Gaussian data."""
    method = _build("score-sde", sde=sde, sigma_max=20.0)
    marginal = method.sde.marginal
    if sde == "vp":
        method.net = FunctionNet(lambda x, label: _gaussian_eps(*marginal(label / 999.0), x))
    else:  # the VE noise label is ln(sigma / 2)
        sigma_of = lambda label: 2.0 * label.exp()  # noqa: E731
        method.net = FunctionNet(
            lambda x, label: _gaussian_eps(torch.ones_like(label), sigma_of(label), x)
        )
    x = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(1)) * STD + MU
    log_p, _ = ode_log_likelihood(
        method.ode_velocity,
        x,
        method.train_eps,
        1.0,
        method.sde.prior_log_density,
        torch.Generator().manual_seed(0),
        probes=1,
        rtol=1e-6,
        atol=1e-6,
    )

    # For Gaussian data the flow is linear: x(1) = m_1 MU + (x - m_eps MU) r, with
    # r = marginal std at t = 1 over that at eps; the model's density is the prior at x(1)
    # times r^D (the prior N(0, I) or N(0, sigma_max^2 I) ignores the data mean, as in the
    # paper, so this differs slightly from the data density itself)
    def marginal_std(t: float) -> tuple[Tensor, Tensor]:
        mean, std = marginal(torch.tensor(t))
        return mean, (mean**2 * STD**2 + std**2).sqrt()

    (mean_eps, std_eps), (mean_1, std_1) = marginal_std(method.train_eps), marginal_std(1.0)
    x1 = mean_1 * MU + (x - mean_eps * MU) * std_1 / std_eps
    analytic = method.sde.prior_log_density(x1) + x[0].numel() * torch.log(std_1 / std_eps)
    assert torch.allclose(log_p, analytic, atol=1e-3), (log_p - analytic).abs().max()
    data_density = torch.distributions.Normal(mean_eps * MU, std_eps).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(log_p, data_density, atol=0.1)  # and close to the data's own


def test_dopri5_solves_a_linear_ode_to_its_tolerance() -> None:
    y, nfe = odeint_dopri5(lambda t, y: -y * (1 + t), torch.ones(3, 2), 0.0, 2.0, 1e-8, 1e-8)
    assert torch.allclose(y, torch.full((3, 2), math.exp(-4.0)), rtol=1e-6)
    backwards, _ = odeint_dopri5(lambda t, y: -y, torch.ones(1), 1.0, 0.0, 1e-8, 1e-8)
    assert float(backwards) == pytest.approx(math.e, rel=1e-6)
    assert nfe < 400


# -- DDPM's bound -----------------------------------------------------------------------------


def test_discretized_decoder_is_a_distribution_over_the_levels() -> None:
    levels = 17
    grid = torch.linspace(-1, 1, levels)[:, None]  # every level, for 5 decoders
    mean = torch.tensor([-1.2, -0.3, 0.0, 0.55, 1.0])[None].expand(levels, 5)
    log_scale = torch.tensor([-4.0, -2.0, -1.0, 0.0, 1.0])[None].expand(levels, 5)
    probs = discretized_gaussian_log_likelihood(
        grid.expand(levels, 5), mean, log_scale, levels
    ).exp()
    assert torch.allclose(probs.sum(0), torch.ones(5), atol=1e-5)


def test_gaussian_kl_matches_torch_distributions() -> None:
    m1, m2 = torch.tensor([0.3, -1.0]), torch.tensor([0.1, 2.0])
    lv1, lv2 = torch.tensor([-2.0, 0.5]), torch.tensor([-1.0, 0.1])
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()),
        torch.distributions.Normal(m2, (0.5 * lv2).exp()),
    )
    assert torch.allclose(gaussian_kl(m1, lv1, m2, lv2), expected, atol=1e-6)


def test_ddpm_bound_strata_partition_the_kl_terms() -> None:
    """The stratified estimate of sum_{t=2}^T L_{t-1} is unbiased: the strata partition the
    terms, each pick lies in its stratum and is weighted by the stratum's size; with as many
    strata as terms it is the full sum."""
    method = _build("ddpm", num_timesteps=40, vlb_timesteps=5)
    seen = set()
    for seed in range(50):
        strata = method.vlb_strata(torch.Generator().manual_seed(seed))
        assert len(strata) == 5 and sum(w for _, w in strata) == 39
        lo = 1
        for t, weight in strata:
            assert lo <= t < lo + weight
            lo += int(weight)
            seen.add(t)
    assert seen == set(range(1, 40))  # every term can be drawn
    full = _build("ddpm", num_timesteps=40, vlb_timesteps=1000)
    assert full.vlb_strata(torch.Generator()) == [(t, 1.0) for t in range(1, 40)]
    log_p = full.log_likelihood(torch.rand(4, 1, 8, 8))
    assert log_p.shape == (4,) and bool((log_p < 0).all())


# -- guidance ---------------------------------------------------------------------------------


def test_classifier_free_guidance_combines_conditional_and_unconditional_predictions() -> None:
    torch.manual_seed(0)
    method = _build("guidance")
    for p in method.net.parameters():  # a non-trivial network (its output layer starts at 0)
        nn.init.normal_(p, std=0.1)
    x, t = torch.randn(6, 1, 8, 8), torch.randint(0, 1000, (6,))
    labels = torch.arange(6) % 10
    conditional = method.net(x, t.float(), labels)
    unconditional = method.net(x, t.float(), torch.full_like(labels, 10))
    assert not torch.allclose(conditional, unconditional)
    for w in (0.0, 1.0, 3.0):
        expected = (1 + w) * conditional - w * unconditional
        assert torch.allclose(method.guided_eps(x, t, labels, w), expected, atol=1e-5)


# -- the samplers call the network once per step on the whole batch ---------------------------


class CountingNet(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.batch_sizes = net, []

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        self.batch_sizes.append(x.shape[0])
        return self.net(x, *args, **kwargs)


@pytest.mark.parametrize(
    ("name", "variant"),
    [
        ("ddpm", {"steps": 7}),
        ("ddpm", {"sampler": "ddim", "steps": 10}),
        ("edm", {"steps": 5}),
        ("flow-matching", {"sampler": "heun", "steps": 4}),
        ("score-sde", {"sampler": "pc", "steps": 25}),
        ("score-sde", {"sampler": "euler-maruyama", "steps": 25}),
    ],
)
def test_samplers_make_one_batched_network_call_per_function_evaluation(name, variant) -> None:
    method = METHODS.get(name).build(SPEC).eval()
    method.net = CountingNet(method.net)
    samples = method.sample(12, torch.Generator().manual_seed(0), **variant)
    assert samples.shape == (12, 1, 8, 8)
    assert method.net.batch_sizes == [12] * method.last_nfe


def test_bad_sampler_settings_are_rejected_before_any_run(tmp_path) -> None:
    from bench.errors import GenbenchError
    from bench.runner import plan_study

    for bad in ("score-sde.sde=vq", "score-sde.sampler=rk4", "ddpm.variance=medium"):
        with pytest.raises(GenbenchError, match="bad value .* Valid:"):
            plan_study("smoke", methods=["ddpm", "score-sde"], sets=[bad], out=tmp_path)
    with pytest.raises(GenbenchError, match="sampler rows are"):
        METHODS.get("flow-matching").build(SPEC, {"samplers": ["rk4:3"]})
