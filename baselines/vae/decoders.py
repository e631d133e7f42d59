"""What the autoencoders of this family share: the convolutional encoder and decoder stacks
and the decoder's distribution over the L discrete levels of every pixel.

Networks (the layout of the VQ-VAE paper, section 4.1, sized per data scale):

- encoder: ``downsamples`` x [Conv 4x4 stride 2, ReLU] (8x8 -> 4x4 or 2x2, 28x28 -> 7x7,
  32x32 -> 8x8), Conv 3x3, ``residual_blocks`` x [ReLU, Conv 3x3, ReLU, Conv 1x1, + skip],
  ReLU: (B, C, H, W) in [-1, 1] -> (B, width, h, w);
- decoder: the mirror image, Conv 3x3, residual blocks, ReLU, ``downsamples`` x
  [ConvTranspose 4x4 stride 2] with ReLU between: (B, in, h, w) -> (B, P, H, W) outputs.

Decoder distributions p(x | z), a proper distribution over the levels so that an ELBO with
it bounds log P(x) of the DISCRETE data (conditionally independent pixels given z):

- ``categorical``: a softmax over the L levels per pixel and channel (P = C L);
- ``logistic_mixture``: the discretised logistic mixture of PixelCNN++ (Salimans et al. 2017,
  eq. 2): K components per pixel and channel with logits pi, means mu and log-scales s
  (P = 3 K C), each level's mass the logistic CDF over its bin of [-1, 1], edge bins
  extended to +-infinity (:func:`baselines.autoregressive.pixelcnn.logistic_bin_log_mass`).
  Channels are independent given z (PixelCNN++'s channel coefficients model dependence
  between channels given the pixels before; here the latent carries it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from baselines.autoregressive.pixelcnn import MIN_LOG_SCALE, logistic_bin_log_mass
from bench.errors import GenbenchError
from bench.method import DataSpec, from_levels, to_levels

DECODER_OUTPUTS = ("categorical", "logistic_mixture")
#: how a sample's pixels are read from the decoder distribution
SAMPLE_PIXELS = ("mean", "mode", "draw")
#: images per chunk when the full (B, C, H, W, L) table of level probabilities is built
TABLE_CHUNK_ELEMENTS = 2**24


class ResidualBlock(nn.Module):
    """x + Conv1x1(ReLU(Conv3x3(ReLU(x)))) (VQ-VAE section 4.1)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(width, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, width, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def encoder_stack(channels: int, width: int, downsamples: int, residual_blocks: int) -> nn.Module:
    """(B, C, H, W) -> (B, width, H / 2^n, W / 2^n)."""
    layers: list[nn.Module] = []
    c_in = channels
    for i in range(downsamples):
        c_out = width // 2 ** (downsamples - 1 - i)  # widening towards the bottleneck
        layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.ReLU()]
        c_in = c_out
    layers.append(nn.Conv2d(c_in, width, 3, padding=1))
    layers += [ResidualBlock(width, width // 2) for _ in range(residual_blocks)]
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def decoder_stack(
    in_channels: int, width: int, upsamples: int, residual_blocks: int, out_channels: int
) -> nn.Sequential:
    """(B, in, h, w) -> (B, out_channels, h 2^n, w 2^n); the last layer is linear."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1)]
    layers += [ResidualBlock(width, width // 2) for _ in range(residual_blocks)]
    layers.append(nn.ReLU())
    c_in = width
    for i in range(upsamples):
        last = i == upsamples - 1
        c_out = out_channels if last else width // 2 ** (i + 1)
        layers.append(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1))
        if not last:
            layers.append(nn.ReLU())
        c_in = c_out
    if upsamples == 0:
        layers.append(nn.Conv2d(c_in, out_channels, 1))
    return nn.Sequential(*layers)


def code_grid_size(spec: DataSpec, downsamples: int) -> tuple[int, int]:
    """(h, w) of the encoder's output grid; the image side must divide by 2^downsamples."""
    factor = 2**downsamples
    if spec.height % factor or spec.width % factor:
        raise GenbenchError(
            f"{spec.scale} images cannot be downsampled {downsamples} times by 2; "
            f"use a smaller 'downsamples'"
        )
    return spec.height // factor, spec.width // factor


def pixel_variants(default: str) -> list[dict[str, str]]:
    """Sampler rows: the default reading of the pixels first, then the other two."""
    return [{}] + [{"pixels": mode} for mode in SAMPLE_PIXELS if mode != default]


def to_network(x: Tensor) -> Tensor:
    """Images in [0, 1] -> the networks' [-1, 1]."""
    return 2.0 * x - 1.0


class DiscreteDecoder:
    """The decoder's distribution over the L levels, from the decoder network's outputs
    ``params`` (B, P, H, W). Holds no parameters."""

    def __init__(self, spec: DataSpec, output: str, components: int) -> None:
        if output not in DECODER_OUTPUTS:
            raise GenbenchError(
                f"unknown decoder output {output!r}. Valid: {', '.join(DECODER_OUTPUTS)}"
            )
        self.spec, self.output, self.components = spec, output, components
        per_channel = spec.num_levels if output == "categorical" else 3 * components
        self.param_channels = spec.channels * per_channel

    def _bin_centres(self, levels: Tensor) -> Tensor:
        return 2.0 * levels.float() / (self.spec.num_levels - 1) - 1.0

    def _mixture(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, 3KC, H, W) -> log pi, mu, log s, each (B, C, K, H, W)."""
        batch, _, height, width = params.shape
        split = params.view(batch, self.spec.channels, 3, self.components, height, width)
        log_pi = split[:, :, 0].log_softmax(2)
        return log_pi, split[:, :, 1], split[:, :, 2].clamp(min=MIN_LOG_SCALE)

    def log_prob(self, params: Tensor, levels: Tensor) -> Tensor:
        """log p(x | z) of integer levels (B, C, H, W), summed over dimensions: (B,)."""
        if self.output == "categorical":
            table = self.level_log_probs(params)  # (B, C, H, W, L)
            per_dim = table.gather(-1, levels.unsqueeze(-1)).squeeze(-1)
        else:
            log_pi, means, log_scales = self._mixture(params)
            level = levels.unsqueeze(2)  # (B, C, 1, H, W) against K components
            centred = self._bin_centres(level) - means
            log_mass = logistic_bin_log_mass(level, centred, log_scales, self.spec.num_levels)
            per_dim = (log_pi + log_mass).logsumexp(2)
        return per_dim.flatten(1).sum(1)

    def level_log_probs(self, params: Tensor) -> Tensor:
        """(B, P, H, W) -> log p(x_d = l | z), (B, C, H, W, L), normalised over l."""
        batch, _, height, width = params.shape
        num_levels = self.spec.num_levels
        if self.output == "categorical":
            logits = params.view(batch, self.spec.channels, num_levels, height, width)
            return logits.permute(0, 1, 3, 4, 2).log_softmax(-1)
        log_pi, means, log_scales = self._mixture(params)
        level = torch.arange(num_levels, device=params.device)  # (L,)
        centred = self._bin_centres(level) - means.unsqueeze(-1)  # (B, C, K, H, W, L)
        log_mass = logistic_bin_log_mass(level, centred, log_scales.unsqueeze(-1), num_levels)
        return (log_pi.unsqueeze(-1) + log_mass).logsumexp(2)

    def level_probs(self, params: Tensor) -> Tensor:
        """p(x_d = l | z) as probabilities (B, C, H, W, L), for sampling: for the mixture from
        the logistic CDFs at the L - 1 inner bin edges (one sigmoid per edge and component,
        several times cheaper than the log-space table of :meth:`level_log_probs`)."""
        if self.output == "categorical":
            return self.level_log_probs(params).exp()
        log_pi, means, log_scales = self._mixture(params)
        num_levels = self.spec.num_levels
        edges = self._bin_centres(torch.arange(num_levels - 1, device=params.device))
        edges = edges + 1.0 / (num_levels - 1)  # upper edges of levels 0 .. L-2
        cdf = torch.sigmoid((edges - means.unsqueeze(-1)) * torch.exp(-log_scales).unsqueeze(-1))
        zero, one = torch.zeros_like(cdf[..., :1]), torch.ones_like(cdf[..., :1])
        per_component = torch.cat([cdf, one], -1) - torch.cat([zero, cdf], -1)  # (B,C,K,H,W,L)
        mixed = (log_pi.exp().unsqueeze(-1) * per_component.clamp(min=0.0)).sum(2)
        return mixed / mixed.sum(-1, keepdim=True)

    def _chunks(self, params: Tensor) -> list[Tensor]:
        """Split a batch so that one chunk's (b, C, H, W, L, K) table stays small."""
        per_level = 3 * self.components if self.output == "logistic_mixture" else 1
        per_image = self.spec.dims * self.spec.num_levels * per_level
        return list(params.split(max(1, TABLE_CHUNK_ELEMENTS // per_image)))

    def mean(self, params: Tensor) -> Tensor:
        """E[x | z] in [0, 1]: the expected level / (L - 1), (B, C, H, W)."""
        values = torch.linspace(0.0, 1.0, self.spec.num_levels, device=params.device)
        return torch.cat([self.level_probs(p) @ values for p in self._chunks(params)])

    def draw(self, params: Tensor, generator: torch.Generator) -> Tensor:
        """Independent draws of every pixel's level from p(x | z): (B, C, H, W) levels."""
        draws = []
        for chunk in self._chunks(params):
            table = self.level_probs(chunk).to(generator.device)  # (b, C, H, W, L)
            flat = torch.multinomial(table.flatten(0, 3), 1, generator=generator)
            draws.append(flat.view(table.shape[:-1]).to(params.device))
        return torch.cat(draws)

    def read(self, params: Tensor, pixels: str, generator: torch.Generator) -> Tensor:
        """Images in [0, 1] from decoder outputs (B, P, H, W): the mean E[x | z] rounded to
        the nearest level, the per-pixel mode, or independent draws of every pixel."""
        num_levels = self.spec.num_levels
        if pixels == "mean":
            return from_levels(to_levels(self.mean(params), num_levels), num_levels)
        if pixels == "mode":
            modes = [self.level_probs(chunk).argmax(-1) for chunk in self._chunks(params)]
            return from_levels(torch.cat(modes), num_levels)
        if pixels == "draw":
            return from_levels(self.draw(params, generator), num_levels)
        raise GenbenchError(f"unknown pixels {pixels!r}. Valid: {', '.join(SAMPLE_PIXELS)}")
