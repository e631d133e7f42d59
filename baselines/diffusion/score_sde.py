"""Score SDE: Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole, "Score-Based Generative
Modeling through Stochastic Differential Equations", ICLR 2021.

- Forward SDEs in continuous time t in [0, 1] (section 3.4, appendix B):
  VP: dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw, beta(t) = beta_min + t (beta_max -
  beta_min), beta_min = 0.1, beta_max = 20; p_0t(x | x_0) = N(m(t) x_0, (1 - m(t)^2) I),
  m(t) = exp(-1/4 t^2 (beta_max - beta_min) - 1/2 t beta_min) (eq. 29).
  VE: dx = sqrt(d[sigma^2(t)]/dt) dw, sigma(t) = sigma_min (sigma_max / sigma_min)^t;
  p_0t(x | x_0) = N(x_0, sigma(t)^2 I) (eq. 30); prior N(0, sigma_max^2 I).
- Training: denoising score matching with lambda(t) = std(t)^2 (eq. 7): the network
  predicts eps, s_theta(x, t) = -eps_theta(x, t) / std(t), t ~ U(eps_t, 1), eps_t = 1e-5.
- Samplers on N steps from t = 1 to eps_t: Euler-Maruyama on the reverse SDE
  dx = [f - g^2 s] dt + g dw_bar (eq. 6); predictor-corrector (Algorithms 2-3: the
  reverse-diffusion predictor of eq. 46 and one Langevin corrector step with signal-to-noise
  ratio r = 0.16); the probability-flow ODE dx = [f - 1/2 g^2 s] dt (eq. 13) solved with
  adaptive RK45 (Dormand-Prince, rtol = atol as recorded). The last step returns the mean
  (noise removal, appendix G).
- Exact likelihood through the probability-flow ODE (appendix D.2, eq. 39) with the
  Hutchinson-Skilling trace estimator (Rademacher probes, fixed along the path; the number
  of probes and the tolerances are recorded), on uniformly dequantized data: exact for the
  continuous density, a lower bound on the discrete levels' likelihood (labelled so).

Deliberate departures. The model is trained on uniformly dequantized data (the ScoreFlow
practice, Song et al. 2021b) rather than on the grid: with 17 levels a density trained on
point masses is meaningless on the dequantized cells the likelihood is measured on. At the
CPU data scales N = 100 steps (paper: 1000) and ODE tolerances 1e-3 (paper: 1e-5) are the
defaults; 32x32 keeps the paper's values.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from baselines.diffusion.common import (
    DequantizedDenoiser,
    denoiser_hparams,
    odeint_dopri5,
    standard_normal_log_density,
)
from bench.errors import GenbenchError
from bench.method import Batch, DataSpec, scale_table
from bench.registry import register_method

SAMPLERS = ("pc", "euler-maruyama", "ode")


#: sigma_max of the VE SDE per data scale (about the largest pairwise distance of the data)
SIGMA_MAX = {"8x8": 20.0, "28x28": 40.0, "32x32": 50.0}


class VPSDE:
    """The variance-preserving SDE (the continuous DDPM)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self.beta_min, self.beta_max = beta_min, beta_max

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(m(t), std(t)) of p_0t(x(t) | x(0)) = N(m x(0), std^2 I) (eq. 29)."""
        log_mean = -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        return log_mean.exp(), (-torch.expm1(2.0 * log_mean)).sqrt()

    def drift_diffusion(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """f(x, t) and g(t) of dx = f dt + g dw."""
        beta = self.beta(t)
        return -0.5 * beta[:, None, None, None] * x, beta.sqrt()

    def discretized(self, x: Tensor, t: Tensor, dt: float) -> tuple[Tensor, Tensor]:
        """f_i, G_i of the discretisation x_{i+1} = x_i + f_i + G_i z (DDPM's chain, eq. 46):
        beta_i = beta(t) dt."""
        beta = self.beta(t) * dt
        return ((1.0 - beta).sqrt() - 1.0)[:, None, None, None] * x, beta.sqrt()

    def noise_label(self, t: Tensor) -> Tensor:
        return 999.0 * t  # the DDPM++ convention of the authors' code

    def prior_log_density(self, z: Tensor) -> Tensor:
        return standard_normal_log_density(z)

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        return torch.randn(shape, generator=generator, device=generator.device)


class VESDE:
    """The variance-exploding SDE (the continuous NCSN)."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t), self.sigma(t)

    def drift_diffusion(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        g = self.sigma(t) * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min))
        return torch.zeros_like(x), g

    def discretized(self, x: Tensor, t: Tensor, dt: float) -> tuple[Tensor, Tensor]:
        """f_i = 0, G_i = sqrt(sigma_{i+1}^2 - sigma_i^2) (SMLD's chain, eq. 45)."""
        sigma, previous = self.sigma(t), self.sigma((t - dt).clamp(min=0.0))
        previous = torch.where(t - dt > 0, previous, torch.zeros_like(previous))
        return torch.zeros_like(x), (sigma**2 - previous**2).sqrt()

    def noise_label(self, t: Tensor) -> Tensor:
        return (0.5 * self.sigma(t)).log()  # EDM's VE conditioning, c_noise = ln(sigma / 2)

    def prior_log_density(self, z: Tensor) -> Tensor:
        dims = z[0].numel()
        return standard_normal_log_density(z / self.sigma_max) - dims * math.log(self.sigma_max)

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        return self.sigma_max * torch.randn(shape, generator=generator, device=generator.device)


@register_method("score-sde")
class ScoreSDE(DequantizedDenoiser):
    """Continuous-time score model (VP or VE SDE) with PC / EM / ODE samplers and the exact
    probability-flow likelihood."""

    hparam_choices = {"sde": ("vp", "ve"), "sampler": SAMPLERS}
    summary = "score SDE (Song et al. 2021): VP/VE, PC + EM + probability-flow ODE, ODE bits/dim"

    hparam_ranges = {
        **DequantizedDenoiser.hparam_ranges,
        "beta_min": (0, None),
        "beta_max": (0, None, "(]"),
        "sigma_min": (0, None, "(]"),
        "sigma_max": (0, None, "(]"),
        "train_eps": (0, 1, "()"),
        "snr": (0, None, "(]"),
        "ode_rtol": (0, None, "(]"),
        "ode_atol": (0, None, "(]"),
    }

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        cpu_scale = spec.scale in ("8x8", "28x28")
        return {
            **denoiser_hparams(spec),
            "sde": "vp",
            "beta_min": 0.1,
            "beta_max": 20.0,
            "sigma_min": 0.01,
            # Song & Ermon's technique 1: sigma_max about the largest distance between
            # training images in [-1, 1] (about 20 for 8x8 digits, 50 for CIFAR-10)
            "sigma_max": scale_table(SIGMA_MAX, spec, "score-sde's sigma_max table"),
            "train_eps": 1e-5,
            "sampler": "pc",
            "sample_steps": 100 if cpu_scale else 1000,
            "snr": 0.16,
            "ode_rtol": 1e-3 if cpu_scale else 1e-5,
            "ode_atol": 1e-3 if cpu_scale else 1e-5,
            "likelihood_probes": 1,
        }

    def __init__(
        self,
        spec: DataSpec,
        sde: str = "vp",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        train_eps: float = 1e-5,
        sampler: str = "pc",
        sample_steps: int = 1000,
        snr: float = 0.16,
        ode_rtol: float = 1e-5,
        ode_atol: float = 1e-5,
        likelihood_probes: int = 1,
        **denoiser: Any,
    ) -> None:
        super().__init__(spec, **denoiser)
        if sde not in ("vp", "ve"):
            raise GenbenchError(f"sde must be 'vp' or 've', got {sde!r}")
        if sampler not in SAMPLERS:
            raise GenbenchError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        self.sde_name = sde
        self.sde: VPSDE | VESDE = (
            VPSDE(beta_min, beta_max) if sde == "vp" else VESDE(sigma_min, sigma_max)
        )
        self.train_eps, self.sampler, self.sample_steps, self.snr = (
            train_eps,
            sampler,
            sample_steps,
            snr,
        )
        self.ode_rtol, self.ode_atol, self.likelihood_probes = ode_rtol, ode_atol, likelihood_probes

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """s_theta(x, t) = -eps_theta(x, t) / std(t)."""
        _, std = self.sde.marginal(t)
        return -self.net(x, self.sde.noise_label(t)) / std[:, None, None, None]

    def loss(self, x: Tensor, labels: Tensor, batch: Batch) -> Tensor:
        """lambda(t) ||s_theta(x_t, t) - grad log p_0t(x_t | x_0)||^2 with lambda = std^2,
        i.e. ||eps_theta(x_t, t) - z||^2 (eq. 7)."""
        t = self.train_eps + (1.0 - self.train_eps) * batch.rand().to(x.dtype)
        mean, std = self.sde.marginal(t)
        z = batch.randn_like(x)
        x_t = mean[:, None, None, None] * x + std[:, None, None, None] * z
        return (self.net(x_t, self.sde.noise_label(t)) - z).square().mean()

    def ode_velocity(self, t: float, x: Tensor) -> Tensor:
        """dx/dt of the probability-flow ODE: f - 1/2 g^2 s (eq. 13)."""
        t_batch = torch.full((x.shape[0],), t, device=x.device)
        drift, g = self.sde.drift_diffusion(x, t_batch)
        return drift - 0.5 * (g**2)[:, None, None, None] * self.score(x, t_batch)

    # -- sampling ---------------------------------------------------------------------------
    def sample_variants(self) -> list[dict[str, Any]]:
        return [{"sampler": self.sampler}, *({"sampler": s} for s in SAMPLERS if s != self.sampler)]

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator,
        labels: Tensor | None = None,
        sampler: str | None = None,
        steps: int | None = None,
    ) -> Tensor:
        sampler, steps = sampler or self.sampler, steps or self.sample_steps
        shape = (n, *self.spec.shape)
        x = self.sde.prior_sample(shape, generator).to(self.device)
        if sampler == "ode":
            x, self.last_nfe = odeint_dopri5(
                self.ode_velocity, x, 1.0, self.train_eps, self.ode_rtol, self.ode_atol
            )
            return self.to_images(x)

        def noise() -> Tensor:
            return self.noise(shape, generator)

        if isinstance(self.sde, VPSDE) and self.sde.beta_max / steps >= 1.0:
            raise GenbenchError(  # the discretised beta_i = beta(t) / N must stay below 1
                f"score-sde (vp) needs more than beta_max = {self.sde.beta_max:g} sampler "
                f"steps, got {steps}"
            )
        times = torch.linspace(1.0, self.train_eps, steps, device=self.device).tolist()
        dt = (1.0 - self.train_eps) / steps
        nfe = 0
        for i, t in enumerate(times):
            t_batch = torch.full((n,), t, device=self.device)
            if sampler == "pc":  # Langevin corrector (Algorithm 4), then the predictor
                x = self._langevin(x, t_batch, noise())
                nfe += 1
            score = self.score(x, t_batch)
            nfe += 1
            if sampler == "pc":  # reverse diffusion predictor: x - f + G^2 s + G z (eq. 47)
                f, g = self.sde.discretized(x, t_batch, dt)
                mean = x - f + (g**2)[:, None, None, None] * score
            else:  # Euler-Maruyama on the reverse SDE, dt < 0
                f, g = self.sde.drift_diffusion(x, t_batch)
                mean = x - (f - (g**2)[:, None, None, None] * score) * dt
                g = g * math.sqrt(dt)
            x = mean + g[:, None, None, None] * noise() if i < steps - 1 else mean
        self.last_nfe = nfe
        return self.to_images(x)

    def _langevin(self, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """One corrector step: x + e s + sqrt(2 e) z with the step e set by the target
        signal-to-noise ratio r: e = 2 alpha (r ||z|| / ||s||)^2 (Algorithm 4)."""
        score = self.score(x, t)
        grad_norm = score.flatten(1).norm(dim=1).mean()
        noise_norm = z.flatten(1).norm(dim=1).mean()
        alpha = 1.0
        if isinstance(self.sde, VPSDE):  # alpha_i = 1 - beta_i of the discretisation
            alpha = 1.0 - float(self.sde.beta(t[:1]) / self.sample_steps)
        if grad_norm == 0:  # a zero score (an untrained network) carries no information
            return x
        step = 2.0 * alpha * (self.snr * noise_norm / grad_norm) ** 2
        return x + step * score + (2.0 * step).sqrt() * z

    def sample_settings(self) -> dict[str, Any]:
        return {
            "sde": self.sde_name,
            "sampler": self.sampler,
            "steps": self.sample_steps,
            "snr": self.snr,
            "ode_rtol": self.ode_rtol,
            "ode_atol": self.ode_atol,
        }

    # -- likelihood -------------------------------------------------------------------------
    def log_likelihood(self, x: Tensor) -> Tensor:
        """log P(levels) >= log p_ODE(y) - D log(L / 2), y uniformly dequantized in [-1, 1)."""
        return self.ode_bits_log_likelihood(
            x, self.ode_velocity, self.train_eps, 1.0, self.sde.prior_log_density
        )

    def likelihood_settings(self) -> dict[str, Any]:
        return {**super().likelihood_settings(), "t_start": self.train_eps}

    def flops_forward(self, x: Tensor) -> None:
        self.net(self.scale(x), torch.zeros(x.shape[0], device=x.device))
