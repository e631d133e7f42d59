"""What the diffusion, score and flow-matching methods share: the U-Net denoiser and its
optimiser (Ho et al. 2020, appendix B: Adam, learning-rate warm-up, gradient clipping at 1,
an EMA of the weights for evaluation), data scaling to [-1, 1], the discrete DDPM noise
schedule, an adaptive Dormand-Prince ODE solver and the Hutchinson divergence estimator used
by the ODE likelihoods (Song et al. 2021, appendix D.2; Grathwohl et al. 2019).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from baselines.common.unet import UNet, unet_hparams
from bench.errors import GenbenchError
from bench.method import (
    LOG_LIKELIHOOD,
    SAMPLE,
    Batch,
    DataSpec,
    Method,
    Update,
    from_levels,
    scale_table,
    to_levels,
)
from bench.metrics.likelihood import dequantize, dequantized_log_likelihood

#: one weight update per training step; the loop applies linear warm-up then constant
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    # Ho et al. use lr 2e-4, 5000 warm-up steps and EMA 0.9999 over 800k steps on CIFAR-10;
    # at the quick budget (about 940 steps) the warm-up and the EMA window scale down with it.
    "8x8": {"lr": 2e-3, "warmup_steps": 50, "ema": 0.99, "grad_clip": 1.0},
    "28x28": {"lr": 1e-3, "warmup_steps": 200, "ema": 0.995, "grad_clip": 1.0},
    "32x32": {"lr": 2e-4, "warmup_steps": 5000, "ema": 0.9999, "grad_clip": 1.0},
}


def denoiser_hparams(spec: DataSpec) -> dict[str, Any]:
    """U-Net size and optimiser settings of ``spec``'s data scale."""
    opt = scale_table(OPTIMIZER_DEFAULTS, spec, "the denoisers' optimiser table")
    return {**unet_hparams(spec), **opt}


class DenoiserMethod(Method):
    """A method whose one network is the shared U-Net, trained by minimising ``loss``.

    Subclasses implement ``loss(x, labels) -> Tensor`` on data ``x`` in [-1, 1]."""

    #: grad_clip 0 switches clipping off; attention_resolutions may be empty (no attention)
    hparam_ranges = {"grad_clip": (0, None)}
    hparam_empty_lists = frozenset({"attention_resolutions"})

    def __init__(
        self,
        spec: DataSpec,
        width: int,
        width_mults: list[int],
        blocks_per_level: int,
        attention_resolutions: list[int],
        dropout: float,
        lr: float,
        warmup_steps: int,
        ema: float,
        grad_clip: float,
        num_classes: int = 0,
    ) -> None:
        super().__init__(spec)
        self.net = UNet(
            spec.channels,
            spec.height,
            width=width,
            width_mults=tuple(width_mults),
            blocks_per_level=blocks_per_level,
            attention_resolutions=tuple(attention_resolutions),
            dropout=dropout,
            num_classes=num_classes,
        )
        self.ema_decay = ema  # the harness evaluates the EMA weights
        self.lr, self.warmup_steps, self.grad_clip = lr, warmup_steps, grad_clip
        # linear warm-up then constant, clipping at grad_clip (Ho et al., appendix B)
        self.add_optimizer(
            "adam",
            torch.optim.Adam(self.net.parameters(), lr=lr),
            grad_clip=grad_clip,
            schedule="warmup",
            warmup_steps=warmup_steps,
        )

    def noise(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """N(0, I) from the caller's generator (so sampling is a function of it), on our
        device."""
        return torch.randn(shape, generator=generator, device=generator.device).to(self.device)

    def scale(self, x: Tensor) -> Tensor:
        """Images in [0, 1] -> network data in [-1, 1]."""
        return x * 2.0 - 1.0

    def to_images(self, x: Tensor) -> Tensor:
        """Network data in [-1, 1] -> images on the dataset's L levels in [0, 1]."""
        return from_levels(to_levels((x + 1.0) / 2.0, self.spec.num_levels), self.spec.num_levels)

    def loss(self, x: Tensor, labels: Tensor, batch: Batch) -> Tensor:
        """The paper's loss on data ``x`` in [-1, 1]; per-example noise from ``batch``."""
        raise NotImplementedError

    def train_step(self, batch: Batch, step: int) -> Iterator[Update]:
        x = self.scale(batch.x)
        yield Update("adam", lambda: self.loss(x, batch.y, batch))


class DequantizedDenoiser(DenoiserMethod):
    """A continuous-density model of the levels: trained on uniformly dequantized data in
    [-1, 1) (PROTOCOL.md), so that its ODE density is a density of the dequantized data its
    likelihood is evaluated on; samples map back to levels by the same cells."""

    def dequantized(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return dequantize(to_levels(x, self.spec.num_levels), self.spec.num_levels, generator, True)

    def train_step(self, batch: Batch, step: int) -> Iterator[Update]:
        # (B, C, H, W) levels -> y = 2 (k + u) / L - 1, u per example from the batch's noise:
        # the base class's scaling is replaced
        levels = to_levels(batch.x, self.spec.num_levels).to(batch.x.dtype)
        y = 2.0 * (levels + batch.rand(*self.spec.shape)) / self.spec.num_levels - 1.0
        yield Update("adam", lambda: self.loss(y, batch.y, batch))

    capabilities = frozenset({SAMPLE, LOG_LIKELIHOOD})
    # the ODE density is exact, but with uniform dequantization it bounds log P(levels)
    # from below (Theis et al. 2016), like the flows': labelled a bound
    likelihood_is_bound = True
    #: set by subclasses: Hutchinson probes and the ODE solver's tolerances
    likelihood_probes: int = 1
    ode_rtol: float = 1e-5
    ode_atol: float = 1e-5

    def ode_bits_log_likelihood(
        self,
        x: Tensor,
        velocity: Callable[[float, Tensor], Tensor],
        t_data: float,
        t_prior: float,
        prior_log_density: Callable[[Tensor], Tensor],
    ) -> Tensor:
        """log P(levels) >= log p_ODE(y) - D log(L / 2) with y uniformly dequantized in
        [-1, 1) (one fixed noise pass, so the estimate is deterministic)."""
        generator = torch.Generator(device=x.device).manual_seed(0)
        y = self.dequantized(x, generator)
        log_density, self.likelihood_nfe = ode_log_likelihood(
            velocity,
            y,
            t_data,
            t_prior,
            prior_log_density,
            generator,
            self.likelihood_probes,
            self.ode_rtol,
            self.ode_atol,
        )
        return dequantized_log_likelihood(log_density, self.spec.dims, self.spec.num_levels, True)

    def likelihood_settings(self) -> dict[str, Any]:
        return {
            "estimator": "ODE, Hutchinson trace (Rademacher)",
            "probes": self.likelihood_probes,
            "ode_solver": "dopri5",
            "ode_rtol": self.ode_rtol,
            "ode_atol": self.ode_atol,
            "dequantization": "uniform, 1 pass",
            "last_batch_nfe": getattr(self, "likelihood_nfe", None),
        }

    def to_images(self, x: Tensor) -> Tensor:
        """y in [-1, 1) -> level floor((y + 1) L / 2): the dequantization cell y lies in."""
        levels_count = self.spec.num_levels
        levels = torch.floor((x + 1.0) / 2.0 * levels_count).clamp(0, levels_count - 1)
        return from_levels(levels.long(), levels_count)


# -- the discrete noise schedule of DDPM (Ho et al. 2020, section 4) ------------------------


def linear_betas(steps: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> Tensor:
    """beta_t linear from 1e-4 to 0.02 over T = 1000 steps (float64)."""
    return torch.linspace(beta_1, beta_T, steps, dtype=torch.float64)


def respaced_timesteps(num_timesteps: int, steps: int) -> Tensor:
    """``steps`` evenly spaced timesteps of 0..T-1, descending, ending at 0 (DDIM's
    "uniform" skip, Song et al. 2021, appendix D.2; Nichol & Dhariwal 2021, section 4)."""
    if steps < 1 or steps > num_timesteps:
        raise GenbenchError(f"steps must be in 1..{num_timesteps}, got {steps}")
    stride = num_timesteps // steps
    return torch.arange(0, stride * steps, stride).flip(0)


# -- ODE solver and divergence --------------------------------------------------------------

# Dormand-Prince 5(4) tableau (Dormand & Prince 1980), the method of scipy's RK45.
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_E = (  # b - b*, the embedded 4th-order error estimate
    71 / 57600,
    0.0,
    -71 / 16695,
    71 / 1920,
    -17253 / 339200,
    22 / 525,
    -1 / 40,
)


def odeint_dopri5(
    func: Callable[[float, Tensor], Tensor],
    y0: Tensor,
    t0: float,
    t1: float,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 10_000,
) -> tuple[Tensor, int]:
    """Integrate dy/dt = func(t, y) from t0 to t1 with adaptive Dormand-Prince steps.

    One step size for the whole batch, accepted when the RMS of the scaled error estimate is
    at most 1 (Hairer et al., "Solving ODEs I", II.4). Returns y(t1) and the number of
    function evaluations."""
    direction = 1.0 if t1 >= t0 else -1.0
    t, y = t0, y0
    k1 = func(t, y)
    nfe = 1
    span = abs(t1 - t0)
    h = 0.01 * span
    for _ in range(max_steps):
        if (t1 - t) * direction <= 1e-12 * max(1.0, span):
            return y, nfe
        h = min(h, abs(t1 - t))
        ks = [k1]
        for stage in range(1, 7):
            increment = sum(a * k for a, k in zip(_DP_A[stage], ks, strict=False) if a)
            ks.append(func(t + direction * h * _DP_C[stage], y + direction * h * increment))
            nfe += 1
        y_new = y + direction * h * sum(b * k for b, k in zip(_DP_B, ks, strict=True) if b)
        error = direction * h * sum(e * k for e, k in zip(_DP_E, ks, strict=True) if e)
        tolerance = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        error_norm = float((error / tolerance).square().mean().sqrt())
        if error_norm <= 1.0:
            t, y, k1 = t + direction * h, y_new, ks[6]  # first-same-as-last
        factor = 0.9 * error_norm ** (-1 / 5) if error_norm > 0 else 10.0
        h *= min(10.0, max(0.2, factor))
    raise RuntimeError(f"ODE solver did not reach t={t1} within {max_steps} steps")


def hutchinson_probes(
    shape: tuple[int, ...], count: int, generator: torch.Generator, kind: str = "rademacher"
) -> Tensor:
    """``count`` probe vectors per image (count, *shape): Rademacher or Gaussian."""
    device = generator.device
    if kind == "gaussian":
        return torch.randn((count, *shape), generator=generator, device=device)
    signs = torch.randint(0, 2, (count, *shape), generator=generator, device=device)
    return signs.float() * 2.0 - 1.0


def velocity_and_divergence(
    velocity: Callable[[Tensor], Tensor], x: Tensor, probes: Tensor
) -> tuple[Tensor, Tensor]:
    """v(x) and Hutchinson's estimate of div v(x) = tr(dv/dx) = E[eps^T (dv/dx) eps],
    averaged over the probes (K, B, ...): one vector-Jacobian product per probe."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = velocity(x)
        divergence = torch.zeros(x.shape[0], device=x.device)
        for i, eps in enumerate(probes):
            (vjp,) = torch.autograd.grad(v, x, eps, retain_graph=i < len(probes) - 1)
            divergence = divergence + (vjp * eps).flatten(1).sum(1)
    return v.detach(), divergence / len(probes)


def standard_normal_log_density(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed per image."""
    dims = z[0].numel()
    return -0.5 * z.flatten(1).square().sum(1) - 0.5 * dims * torch.log(
        torch.tensor(2 * torch.pi, device=z.device)
    )


def ode_log_likelihood(
    velocity: Callable[[float, Tensor], Tensor],
    y: Tensor,
    t_data: float,
    t_prior: float,
    prior_log_density: Callable[[Tensor], Tensor],
    generator: torch.Generator,
    probes: int,
    rtol: float,
    atol: float,
    probe_kind: str = "rademacher",
) -> tuple[Tensor, int]:
    """log p(y) of an ODE dx/dt = v(t, x) that carries the prior at ``t_prior`` to the data
    at ``t_data``: log p_data(y) = log p_prior(x(t_prior)) + int_{t_data}^{t_prior} div v dt
    (the instantaneous change of variables, Chen et al. 2018, eq. 4), integrated jointly with
    x from t_data to t_prior. The probes are drawn once and held fixed along the path."""
    eps = hutchinson_probes(tuple(y.shape), probes, generator, probe_kind)
    batch = y.shape[0]

    def augmented(t: float, state: Tensor) -> Tensor:
        x = state[:, :-1].view_as(y)
        v, div = velocity_and_divergence(lambda z: velocity(t, z), x, eps)
        return torch.cat([v.flatten(1), div[:, None]], dim=1)

    state0 = torch.cat([y.flatten(1), torch.zeros(batch, 1, device=y.device)], dim=1)
    state1, nfe = odeint_dopri5(augmented, state0, t_data, t_prior, rtol, atol)
    x_prior = state1[:, :-1].view_as(y)
    return prior_log_density(x_prior) + state1[:, -1], nfe
