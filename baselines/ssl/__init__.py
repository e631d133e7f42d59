"""Self-supervised representation learning (METHODS.md, "Self-supervised"): dim, cpc, simclr,
moco on the shared ResNet encoder, mae on a small ViT. Importing this package registers them."""

from baselines.ssl import cpc as cpc  # noqa: F401
from baselines.ssl import dim as dim  # noqa: F401
from baselines.ssl import mae as mae  # noqa: F401
from baselines.ssl import moco as moco  # noqa: F401
from baselines.ssl import simclr as simclr  # noqa: F401
