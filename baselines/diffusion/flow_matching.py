"""Flow matching with the linear (rectified / optimal-transport) path.

Lipman, Chen, Ben-Hamu, Nickel & Le, "Flow Matching for Generative Modeling", ICLR 2023;
Liu, Gong & Liu, "Flow Straight and Fast: Learning to Generate and Transfer Data with
Rectified Flow", ICLR 2023.

- Path (Lipman et al. eq. 20-23 with sigma_min = 0; Liu et al. eq. 1): x_t = (1 - t) x_0 +
  t x_1 with x_0 ~ N(0, I) noise at t = 0 and x_1 data at t = 1; the conditional velocity
  is u_t = x_1 - x_0.
- Conditional flow-matching loss (Lipman et al. eq. 9 / 23): E_{t~U[0,1]} ||v_theta(x_t, t)
  - (x_1 - x_0)||^2.
- Sampling: the ODE dx/dt = v_theta(x, t) from t = 0 to 1 with Euler or Heun steps; FID is
  reported per sampler and step count (each a leaderboard row with its NFE).
- Likelihood through the ODE (Lipman et al. section 3, the continuous change of variables of
  Chen et al. 2018): log p_1(x) = log N(x_0; 0, I) - int_0^1 div v dt, integrated backwards
  from the data with adaptive Dormand-Prince and a Hutchinson trace estimate (probes and
  tolerances recorded), on uniformly dequantized data.
- 2-rectified flow (Liu et al. section 2.3, "reflow"), an option: after ``reflow_after``
  training steps the current model draws (x_0, x_1 = ODE(x_0)) couplings with an Euler
  sampler of ``reflow_steps`` steps and training continues on those straightened pairs.

Deliberate departure, as for score-sde: training is on uniformly dequantized data, so that
the ODE density is a density of the dequantized data the likelihood is measured on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from baselines.diffusion.common import (
    DequantizedDenoiser,
    denoiser_hparams,
    standard_normal_log_density,
)
from bench.errors import GenbenchError
from bench.method import Batch, DataSpec, Update
from bench.registry import register_method
from bench.seeds import derive

#: "sampler:steps" of the rows: the first is the method's own row
SAMPLER_ROWS = ["heun:20", "euler:10", "euler:50", "heun:5"]


def parse_sampler_row(row: str) -> tuple[str, int]:
    """ "heun:20" -> ("heun", 20), with a clear error for anything else."""
    sampler, _, steps = row.partition(":")
    if sampler not in ("euler", "heun") or not steps.isdigit() or int(steps) < 1:
        raise GenbenchError(f"sampler rows are 'euler:N' or 'heun:N', got {row!r}")
    return sampler, int(steps)


def ode_sample(velocity: Any, x: Tensor, steps: int, method: str = "euler") -> tuple[Tensor, int]:
    """Integrate dx/dt = velocity(t, x) from t = 0 to 1 in ``steps`` equal steps; returns
    x(1) and the number of function evaluations. Heun's last step is a full trapezoid (the
    velocity at t = 1 is defined here, unlike EDM's sigma = 0)."""
    dt, nfe = 1.0 / steps, 0
    for i in range(steps):
        t = i * dt
        v = velocity(t, x)
        nfe += 1
        if method == "heun":
            x_euler = x + dt * v
            x = x + 0.5 * dt * (v + velocity(t + dt, x_euler))
            nfe += 1
        else:
            x = x + dt * v
    return x, nfe


@register_method("flow-matching")
class FlowMatching(DequantizedDenoiser):
    """Velocity regression on the linear noise-to-data path; Euler / Heun samplers; ODE
    likelihood; optional reflow."""

    summary = "flow matching / rectified flow (Lipman, Liu et al. 2023): linear path, ODE bits/dim"

    hparam_ranges = {
        **DequantizedDenoiser.hparam_ranges,
        "ode_rtol": (0, None, "(]"),
        "ode_atol": (0, None, "(]"),
        "reflow_after": (0, None),  # 0: no reflow stage
    }

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        cpu_scale = spec.scale in ("8x8", "28x28")
        return {
            **denoiser_hparams(spec),
            "samplers": list(SAMPLER_ROWS),  # each "sampler:steps" a row; the first is ours
            "ode_rtol": 1e-3 if cpu_scale else 1e-5,
            "ode_atol": 1e-3 if cpu_scale else 1e-5,
            "likelihood_probes": 1,
            "reflow_after": 0,  # training steps before reflow; 0: plain (1-)rectified flow
            "reflow_pairs": 2048,
            "reflow_steps": 20,
        }

    def __init__(
        self,
        spec: DataSpec,
        samplers: list[str] | None = None,
        ode_rtol: float = 1e-5,
        ode_atol: float = 1e-5,
        likelihood_probes: int = 1,
        reflow_after: int = 0,
        reflow_pairs: int = 2048,
        reflow_steps: int = 20,
        **denoiser: Any,
    ) -> None:
        super().__init__(spec, **denoiser)
        self.sampler_rows = [parse_sampler_row(row) for row in samplers or SAMPLER_ROWS]
        self.sampler, self.sample_steps = self.sampler_rows[0]
        self.ode_rtol, self.ode_atol, self.likelihood_probes = ode_rtol, ode_atol, likelihood_probes
        self.reflow_after, self.reflow_pairs, self.reflow_steps = (
            reflow_after,
            reflow_pairs,
            reflow_steps,
        )
        # the reflow couplings (x_0, x_1), drawn once at step ``reflow_after``; kept in the
        # checkpoint so that a resumed run trains on the same pairs
        pairs = reflow_pairs if reflow_after else 0
        self.register_buffer("reflow_noise", torch.zeros(pairs, *spec.shape))
        self.register_buffer("reflow_data", torch.zeros(pairs, *spec.shape))
        self.register_buffer("reflow_drawn", torch.zeros((), dtype=torch.bool))

    def velocity(self, t: float | Tensor, x: Tensor) -> Tensor:
        """v_theta(x, t); the network's noise label is 999 t, as for the VP models."""
        if not isinstance(t, Tensor):
            t = torch.full((x.shape[0],), t, device=x.device)
        return self.net(x, 999.0 * t)

    def loss(self, x: Tensor, labels: Tensor, batch: Batch) -> Tensor:
        x1, x0 = x, batch.randn_like(x)
        return self.flow_matching_loss(x0, x1, batch)

    def flow_matching_loss(self, x0: Tensor, x1: Tensor, batch: Batch) -> Tensor:
        """||v_theta(x_t, t) - (x_1 - x_0)||^2 with x_t = (1 - t) x_0 + t x_1, t ~ U[0, 1]."""
        t = batch.rand().to(x1.dtype)
        t4 = t[:, None, None, None]
        x_t = (1.0 - t4) * x0 + t4 * x1
        return (self.velocity(t, x_t) - (x1 - x0)).square().mean()

    def train_step(self, batch: Batch, step: int) -> Iterator[Update]:
        if not self.reflow_after or step < self.reflow_after:
            yield from super().train_step(batch, step)
            return
        if not self.reflow_drawn:
            self._draw_reflow_pairs(batch)
        # each example of the global batch draws its coupling index (rank-invariant)
        idx = batch.randint(len(self.reflow_data)).to(self.reflow_data.device)
        x0, x1 = self.reflow_noise[idx], self.reflow_data[idx]
        yield Update("adam", lambda: (self.flow_matching_loss(x0, x1, batch), {"reflow": 1.0}))

    @torch.no_grad()
    def _draw_reflow_pairs(self, batch: Batch | None = None) -> None:
        """Couplings (x_0, ODE_1-RF(x_0)) of the current model (Liu et al., Algorithm 1); the
        noise is seeded from the step's noise seed, the same on every rank."""
        was_training = self.training
        self.eval()
        seed = batch.noise.seed if batch is not None and batch.noise is not None else 0
        generator = torch.Generator().manual_seed(derive(seed, "reflow-noise"))
        noise = torch.randn(self.reflow_pairs, *self.spec.shape, generator=generator)
        noise = noise.to(self.device)
        data = torch.cat(
            [
                ode_sample(self.velocity, chunk, self.reflow_steps, "euler")[0]
                for chunk in noise.split(500)
            ]
        )
        self.reflow_noise.copy_(noise)
        self.reflow_data.copy_(data)
        self.reflow_drawn.fill_(True)
        self.train(was_training)

    # -- sampling ---------------------------------------------------------------------------
    def sample_variants(self) -> list[dict[str, Any]]:
        return [{"sampler": s, "steps": n} for s, n in self.sampler_rows]

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator,
        labels: Tensor | None = None,
        sampler: str | None = None,
        steps: int | None = None,
    ) -> Tensor:
        x0 = self.noise((n, *self.spec.shape), generator)
        x1, self.last_nfe = ode_sample(
            self.velocity, x0, steps or self.sample_steps, sampler or self.sampler
        )
        return self.to_images(x1)

    def sample_settings(self) -> dict[str, Any]:
        return {
            "sampler": self.sampler,
            "steps": self.sample_steps,
            "reflow": bool(self.reflow_after),
        }

    # -- likelihood -------------------------------------------------------------------------
    def log_likelihood(self, x: Tensor) -> Tensor:
        """log P(levels) >= log p_1(y) - D log(L / 2), y uniformly dequantized in [-1, 1)."""
        return self.ode_bits_log_likelihood(x, self.velocity, 1.0, 0.0, standard_normal_log_density)

    def flops_forward(self, x: Tensor) -> None:
        self.velocity(0.5, self.scale(x))
