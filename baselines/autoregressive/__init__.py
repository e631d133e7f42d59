"""Autoregressive models with exact likelihoods over the L discrete levels (METHODS.md,
"Autoregressive"): fvsbn, nade, made, pixelcnn."""

from baselines.autoregressive import fvsbn as fvsbn  # noqa: F401  (registers the methods)
from baselines.autoregressive import made as made  # noqa: F401
from baselines.autoregressive import nade as nade  # noqa: F401
from baselines.autoregressive import pixelcnn as pixelcnn  # noqa: F401
