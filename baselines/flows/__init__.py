"""Normalizing flows with exact log-determinants on uniformly dequantized data (METHODS.md,
"Normalizing flows"): nice, realnvp, glow."""

from baselines.flows import glow as glow  # noqa: F401
from baselines.flows import nice as nice  # noqa: F401  (registers the methods)
from baselines.flows import realnvp as realnvp  # noqa: F401
