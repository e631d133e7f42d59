"""The shared DCGAN-style generator and critic (Radford et al. 2016), sized per data scale.

Every GAN in ``baselines/gan`` uses these two networks, so that the GAN table compares
objectives and constraints, not architectures. What a paper changes in the critic is a
constructor argument: its normalisation (``"batch"`` as in DCGAN and WGAN, ``"layer"`` for
gradient-penalty critics whose per-sample gradients batch norm would couple, ``"none"`` for
SNGAN, whose constraint is spectral normalisation applied by the method).

Layout (w = width, halving towards the image in the generator and doubling away from it in
the critic at every stride-2 layer; s = the start resolution of the scale; f = an optional
fully connected hidden layer, as in the InfoGAN/DCGAN networks for MNIST):

- generator: z (B, latent) -> [linear -> (B, f), BN, ReLU] -> linear -> (B, w', s, s), BN,
  ReLU -> n x ConvTranspose 4x4 stride 2 (BN, ReLU between them) -> (B, C, H, W) -> tanh,
  values in [-1, 1];
- critic: (B, C, H, W) in [-1, 1] -> n x [Conv 4x4 stride 2, norm (none on the first layer,
  as in DCGAN), LeakyReLU 0.2] -> flatten (B, w' s s) -> [linear -> (B, f), norm,
  LeakyReLU] -> the features ``encode`` returns -> linear -> (B,) scores.

8x8 images use s = 4 and one stride-2 layer: at that size the fully connected layers carry
the capacity (on a CPU they also cost far less per parameter than 2x2 convolutions).

Weights are initialised as in DCGAN: N(0, 0.02) for convolutions and linear layers,
N(1, 0.02) for normalisation scales, zero biases.
"""

from __future__ import annotations

from torch import Tensor, nn

from bench.errors import GenbenchError
from bench.method import DataSpec

#: (start resolution s, number of stride-2 layers n) per data scale: s * 2^n = image side
SCALE_LAYOUT = {"8x8": (4, 1), "28x28": (7, 2), "32x32": (4, 3)}
CRITIC_NORMALISATIONS = ("batch", "layer", "none")


def scale_layout(spec: DataSpec) -> tuple[int, int]:
    """(start resolution, number of stride-2 layers) for the image size of ``spec``."""
    if spec.scale in SCALE_LAYOUT:
        return SCALE_LAYOUT[spec.scale]
    if spec.height != spec.width or spec.height % 4:
        raise GenbenchError(
            f"the DCGAN networks need square images with a side divisible by 4, got "
            f"{spec.scale}. Supported scales: {', '.join(SCALE_LAYOUT)}"
        )
    return spec.height // 4, 2


def dcgan_init(module: nn.Module) -> None:
    """DCGAN's initialisation; pass to ``nn.Module.apply``."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """z (B, latent_dim) -> images (B, C, H, W) in [-1, 1]."""

    def __init__(self, spec: DataSpec, latent_dim: int, width: int, fc_width: int = 0) -> None:
        super().__init__()
        start, layers = scale_layout(spec)
        channels = [width * 2 ** (layers - 1 - i) for i in range(layers)]  # widest first
        self.start_shape = (channels[0], start, start)
        project: list[nn.Module] = []
        c_in = latent_dim
        if fc_width:
            project += [nn.Linear(latent_dim, fc_width, bias=False), nn.BatchNorm1d(fc_width)]
            project += [nn.ReLU()]
            c_in = fc_width
        project += [
            nn.Linear(c_in, channels[0] * start * start, bias=False),
            nn.BatchNorm1d(channels[0] * start * start),
            nn.ReLU(),
        ]
        self.project = nn.Sequential(*project)
        blocks: list[nn.Module] = []
        for i in range(layers):
            c_in = channels[i]
            if i < layers - 1:
                blocks += [
                    nn.ConvTranspose2d(c_in, channels[i + 1], 4, 2, 1, bias=False),
                    nn.BatchNorm2d(channels[i + 1]),
                    nn.ReLU(),
                ]
            else:
                blocks += [nn.ConvTranspose2d(c_in, spec.channels, 4, 2, 1), nn.Tanh()]
        self.upsample = nn.Sequential(*blocks)
        self.apply(dcgan_init)

    def forward(self, z: Tensor) -> Tensor:
        h = self.project(z).view(-1, *self.start_shape)  # (B, latent) -> (B, w', s, s)
        return self.upsample(h)  # -> (B, C, H, W)


class Critic(nn.Module):
    """Images (B, C, H, W) in [-1, 1] -> scores (B,); ``features`` gives the penultimate
    (B, feature_dim) activations."""

    def __init__(self, spec: DataSpec, width: int, normalisation: str, fc_width: int = 0) -> None:
        super().__init__()
        if normalisation not in CRITIC_NORMALISATIONS:
            raise GenbenchError(
                f"unknown critic normalisation {normalisation!r}. "
                f"Valid: {', '.join(CRITIC_NORMALISATIONS)}"
            )
        start, layers = scale_layout(spec)
        blocks: list[nn.Module] = []
        c_in = spec.channels
        for i in range(layers):
            c_out = width * 2**i
            blocks.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=normalisation == "none" or i == 0))
            if i > 0 and normalisation == "batch":
                blocks.append(nn.BatchNorm2d(c_out))
            elif i > 0 and normalisation == "layer":
                # layer norm over (C, H, W) of each image, per-channel scale and offset, as in
                # the WGAN-GP code: no statistics shared across the batch
                blocks.append(nn.GroupNorm(1, c_out))
            blocks.append(nn.LeakyReLU(0.2))
            c_in = c_out
        blocks.append(nn.Flatten())
        self.feature_dim = c_in * start * start
        if fc_width:
            blocks.append(nn.Linear(self.feature_dim, fc_width, bias=normalisation == "none"))
            if normalisation == "batch":
                blocks.append(nn.BatchNorm1d(fc_width))
            elif normalisation == "layer":
                blocks.append(nn.LayerNorm(fc_width))
            blocks.append(nn.LeakyReLU(0.2))
            self.feature_dim = fc_width
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(self.feature_dim, 1)
        self.apply(dcgan_init)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)  # (B, C, H, W) -> (B, feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)).squeeze(1)  # -> (B,)
