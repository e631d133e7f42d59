"""The GAN family (METHODS.md, "GANs"): six objectives and constraints on one shared DCGAN
generator and critic. Importing this package registers them all."""

from baselines.gan import gan as gan  # noqa: F401
from baselines.gan import gan_qp as gan_qp  # noqa: F401
from baselines.gan import sngan as sngan  # noqa: F401
from baselines.gan import wgan as wgan  # noqa: F401
from baselines.gan import wgan_div as wgan_div  # noqa: F401
from baselines.gan import wgan_gp as wgan_gp  # noqa: F401
