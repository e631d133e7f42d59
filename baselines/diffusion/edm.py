"""EDM: Karras, Aittala, Aila & Laine, "Elucidating the Design Space of Diffusion-Based
Generative Models", NeurIPS 2022.

- Preconditioning (Table 1, "Ours"; eq. 7): D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)
  with c_skip = sigma_data^2 / (sigma^2 + sigma_data^2), c_out = sigma sigma_data /
  sqrt(sigma^2 + sigma_data^2), c_in = 1 / sqrt(sigma^2 + sigma_data^2),
  c_noise = ln(sigma) / 4, sigma_data = 0.5.
- Training (eq. 8): E ||D(y + n; sigma) - y||^2 weighted by
  lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, with ln sigma ~
  N(P_mean = -1.2, P_std = 1.2).
- Sampling: Algorithm 2 (Heun's second-order method on the probability-flow ODE
  dx/dsigma = (x - D(x; sigma)) / sigma, with sigma(t) = t and s(t) = 1), N = 18 steps on the
  schedule sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) -
  sigma_max^(1/rho)))^rho, rho = 7, sigma_min = 0.002, sigma_max = 80 (eq. 5), sigma_N = 0,
  no Heun correction on the last step: 2N - 1 = 35 NFE. S_churn > 0 adds the stochastic
  churn of Algorithm 2 (gamma_i = min(S_churn / N, sqrt(2) - 1) on [S_tmin, S_tmax],
  noise S_noise); S_churn = 0 (default) is the deterministic sampler.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from baselines.diffusion.common import DenoiserMethod, denoiser_hparams
from bench.method import SAMPLE, Batch, DataSpec
from bench.registry import register_method


def edm_sigma_steps(
    steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> Tensor:
    """The N sigmas of eq. 5 (descending) followed by sigma_N = 0: (N + 1,) float64."""
    i = torch.arange(steps, dtype=torch.float64)
    inv_rho = 1.0 / rho
    sigmas = (
        sigma_max**inv_rho + i / max(steps - 1, 1) * (sigma_min**inv_rho - sigma_max**inv_rho)
    ) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def edm_preconditioning(sigma: Tensor, sigma_data: float = 0.5) -> dict[str, Tensor]:
    """c_skip, c_out, c_in, c_noise of Table 1 for noise levels ``sigma``."""
    total = sigma**2 + sigma_data**2
    return {
        "c_skip": sigma_data**2 / total,
        "c_out": sigma * sigma_data / total.sqrt(),
        "c_in": 1.0 / total.sqrt(),
        "c_noise": sigma.log() / 4.0,
    }


def edm_loss_weight(sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (Table 1)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


@register_method("edm")
class EDM(DenoiserMethod):
    """The preconditioned denoiser with the Heun sampler of Karras et al. 2022."""

    capabilities = frozenset({SAMPLE})
    summary = "EDM (Karras et al. 2022): preconditioned denoiser, Heun, rho=7, 18 steps (35 NFE)"

    hparam_ranges = {
        **DenoiserMethod.hparam_ranges,
        "sigma_data": (0, None, "(]"),
        "p_mean": None,  # log-normal mean of the training sigmas: any sign
        "p_std": (0, None, "(]"),
        "sigma_min": (0, None, "(]"),
        "sigma_max": (0, None, "(]"),
        "rho": (0, None, "(]"),
        "s_churn": (0, None),  # 0: the deterministic sampler
        "s_tmin": (0, None),
        "s_tmax": (0, None),
        "s_noise": (0, None),
    }

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {
            **denoiser_hparams(spec),
            "sigma_data": 0.5,
            "p_mean": -1.2,
            "p_std": 1.2,
            "sigma_min": 0.002,
            "sigma_max": 80.0,
            "rho": 7.0,
            "steps": 18,
            "s_churn": 0.0,
            "s_tmin": 0.0,
            "s_tmax": 1e3,  # above sigma_max: the paper's S_tmax = inf
            "s_noise": 1.0,
        }

    def __init__(
        self,
        spec: DataSpec,
        sigma_data: float = 0.5,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        steps: int = 18,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = 1e3,
        s_noise: float = 1.0,
        **denoiser: Any,
    ) -> None:
        super().__init__(spec, **denoiser)
        self.sigma_data, self.p_mean, self.p_std = sigma_data, p_mean, p_std
        self.sigma_min, self.sigma_max, self.rho, self.steps = sigma_min, sigma_max, rho, steps
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = s_churn, s_tmin, s_tmax, s_noise

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (eq. 7); sigma (B,)."""
        c = edm_preconditioning(sigma, self.sigma_data)
        expand = {k: v[:, None, None, None] for k, v in c.items() if k != "c_noise"}
        out = self.net(expand["c_in"] * x, c["c_noise"])
        return expand["c_skip"] * x + expand["c_out"] * out

    def loss(self, x: Tensor, labels: Tensor, batch: Batch) -> Tensor:
        """lambda(sigma) ||D(y + n; sigma) - y||^2, ln sigma ~ N(P_mean, P_std^2) (eq. 8)."""
        ln_sigma = self.p_mean + self.p_std * batch.randn().to(x.dtype)
        sigma = ln_sigma.exp()
        noisy = x + sigma[:, None, None, None] * batch.randn_like(x)
        weight = edm_loss_weight(sigma, self.sigma_data)[:, None, None, None]
        return (weight * (self.denoise(noisy, sigma) - x).square()).mean()

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator,
        labels: Tensor | None = None,
        steps: int | None = None,
    ) -> Tensor:
        """Algorithm 2 of the paper (deterministic when S_churn = 0)."""
        steps = steps or self.steps
        t_steps = edm_sigma_steps(steps, self.sigma_min, self.sigma_max, self.rho).tolist()
        shape, device = (n, *self.spec.shape), self.device

        def noise() -> Tensor:
            return self.noise(shape, generator)

        def d(x: Tensor, t: float) -> Tensor:  # dx/dt = (x - D(x; t)) / t (eq. 4, sigma = t)
            return (x - self.denoise(x, torch.full((n,), t, device=device))) / t

        x = noise() * t_steps[0]  # x_0 ~ N(0, t_0^2 I)
        nfe = 0
        gamma_max = min(self.s_churn / steps, math.sqrt(2.0) - 1.0)
        for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:], strict=True)):
            gamma = gamma_max if self.s_tmin <= t_cur <= self.s_tmax else 0.0
            t_hat = t_cur + gamma * t_cur  # increase the noise temporarily (churn)
            if gamma > 0:
                x = x + math.sqrt(t_hat**2 - t_cur**2) * self.s_noise * noise()
            d_cur = d(x, t_hat)  # Euler step from t_hat to t_next
            x_next = x + (t_next - t_hat) * d_cur
            nfe += 1
            if i < steps - 1:  # second-order correction unless t_next = 0
                x_next = x + (t_next - t_hat) * 0.5 * (d_cur + d(x_next, t_next))
                nfe += 1
            x = x_next
        self.last_nfe = nfe
        return self.to_images(x)

    def sample_settings(self) -> dict[str, Any]:
        return {
            "sampler": "heun (Algorithm 2)",
            "steps": self.steps,
            "rho": self.rho,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "s_churn": self.s_churn,
        }

    def flops_forward(self, x: Tensor) -> None:
        self.denoise(self.scale(x), torch.ones(x.shape[0], device=x.device))
