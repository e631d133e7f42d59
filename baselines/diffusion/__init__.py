"""Diffusion, score and flow-matching models on one shared U-Net (METHODS.md, "Diffusion and
ODE models")."""

from baselines.diffusion import ddim as ddim  # noqa: F401
from baselines.diffusion import ddpm as ddpm  # noqa: F401
from baselines.diffusion import edm as edm  # noqa: F401
from baselines.diffusion import flow_matching as flow_matching  # noqa: F401
from baselines.diffusion import guidance as guidance  # noqa: F401
from baselines.diffusion import score_sde as score_sde  # noqa: F401
