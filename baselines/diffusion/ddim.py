"""DDIM: Song, Meng & Ermon, "Denoising Diffusion Implicit Models", ICLR 2021.

A sampler, not a method: DDIM needs no training of its own (the paper samples models
trained with DDPM's L_simple), so it is sampler rows of ``ddpm``,
``ddpm[sampler=ddim,steps=k]``, scored on the same trained weights in the same run. The
generalised non-Markovian reverse process of eq. 12 on a subsequence tau of the timesteps
(section 4.2, the "uniform" skip of appendix D.2):

    x_{tau_{i-1}} = sqrt(abar_{i-1}) x0_hat + sqrt(1 - abar_{i-1} - sigma_i^2) eps_theta
                    + sigma_i z,
    x0_hat = (x_{tau_i} - sqrt(1 - abar_i) eps_theta) / sqrt(abar_i),
    sigma_i = eta sqrt((1 - abar_{i-1}) / (1 - abar_i)) sqrt(1 - abar_i / abar_{i-1})  (eq. 16)

eta = 0 (default) is the deterministic DDIM; eta = 1 is DDPM's ancestral chain with
sigma^2 = beta~ on the subsequence. Reported at 10, 20, 50 and 100 steps (Table 1), each its
own leaderboard row with its NFE (one network evaluation per step). Guidance uses the same
function with guided noise predictions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from baselines.diffusion.common import respaced_timesteps

if TYPE_CHECKING:
    from baselines.diffusion.ddpm import DiscreteDiffusion

#: the step counts of Table 1 that get a row each (``ddpm.ddim_steps``)
DDIM_STEP_COUNTS = [50, 10, 20, 100]


def ddim_sample(
    eps_fn: Callable[[Tensor, Tensor], Tensor],
    diffusion: DiscreteDiffusion,
    x_T: Tensor,
    steps: int,
    eta: float,
    generator: torch.Generator,
) -> Tensor:
    """The generalised reverse process (eq. 12) from x_T over ``steps`` uniform timesteps.

    ``eps_fn(x_t, t)`` is the (possibly guided) noise prediction for a batch at timestep t."""
    timesteps = respaced_timesteps(diffusion.num_timesteps, steps)
    chain = diffusion.chain(timesteps)
    abar_t = chain["abar_t"].float().tolist()
    abar_s = chain["abar_s"].float().tolist()  # 1.0 after the last step: x_0 itself
    x, device = x_T, x_T.device
    for i, t in enumerate(timesteps.tolist()):
        t_batch = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
        eps = eps_fn(x, t_batch)
        x0 = (x - (1.0 - abar_t[i]) ** 0.5 * eps) / abar_t[i] ** 0.5
        sigma = eta * ((1 - abar_s[i]) / (1 - abar_t[i]) * (1 - abar_t[i] / abar_s[i])) ** 0.5
        direction = max(0.0, 1.0 - abar_s[i] - sigma**2) ** 0.5 * eps
        x = abar_s[i] ** 0.5 * x0 + direction
        if sigma > 0:
            noise = torch.randn(x.shape, generator=generator, device=generator.device)
            x = x + sigma * noise.to(device)
    return x
