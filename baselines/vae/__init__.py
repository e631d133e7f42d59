"""The latent-variable autoencoders (METHODS.md, "Autoencoders"): vae, vq-vae, vqgan.
Importing this package registers them all."""

from baselines.vae import vae as vae  # noqa: F401
from baselines.vae import vq_vae as vq_vae  # noqa: F401
from baselines.vae import vqgan as vqgan  # noqa: F401
