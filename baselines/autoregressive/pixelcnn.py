"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
Decoders"), with a categorical softmax over the L levels (the paper's output) or, as an option
(``output = logistic_mixture``), the discretised logistic mixture of PixelCNN++ (Salimans et
al. 2017, section 2.1).

p(x) = prod_i prod_c p(x_{i,c} | x_{<i}, x_{i,<c}) in raster order over pixels i and, within
a pixel, channels c (R, G, B). The network (section 2.1-2.2, Figure 2):

- a vertical stack that sees every pixel in the rows strictly above (its first convolution,
  ``first_kernel`` wide, covers rows i-k/2 .. i-1; later ones rows i-k/2 .. i of the vertical
  features, which themselves only see rows above) and a horizontal stack that sees the
  pixels to the left in the current row (first convolution: strictly left, "mask A"; later
  ones: left and centre, "mask B"). The vertical features feed the horizontal stack at every
  layer, so together they cover the whole causal past: no blind spot (a plain stack of
  masked 3x3 convolutions, PixelCNN 2016a, misses a growing region up and to the right);
- gated activations y = tanh(W_f * x) . sigmoid(W_g * x) (eq. 2) in both stacks, a residual
  connection and a 1x1 convolution on the horizontal stack;
- for C > 1 channels with the categorical output, the features are split into C groups
  (channel j belongs to group j mod C) and the centre taps and 1x1 convolutions of the
  horizontal stack are masked so that group c sees groups < c (mask A) or <= c (mask B) of
  the same pixel (the channel masks of PixelRNN, van den Oord et al. 2016a, section 3.4);
- an output head ReLU -> 1x1 -> ReLU -> 1x1 to C x L logits.

Implementation choices that leave the model class unchanged: convolutions use exactly the
kernel rows / columns the causal masks keep (asymmetric padding) instead of zeroing most of a
square kernel; and the vertical-to-horizontal link, a 1x1 convolution of the vertical stack's
(linear) convolution outputs in Figure 2, is computed by the vertical convolution itself
with 2F extra output channels (a 1x1 map after a k/2+1 x k kernel is again such a kernel).

The logistic mixture output (PixelCNN++): per pixel K components with logits pi_k, means
mu_{k,c}, log-scales s_{k,c} and, for C > 1, coefficients so that mu_{k,G} += alpha_k x_R and
mu_{k,B} += beta_k x_R + gamma_k x_G; each level's probability is the logistic CDF mass of
its bin (data in [-1, 1], bin half-width 1 / (L - 1), edge bins to +-infinity). The network
then sees only the pixels before i (channel groups = 1). Departure: when sampling a pixel with
C > 1 channels, the coefficients multiply the already QUANTISED channel values (the values
the model was trained to condition on), so samples follow the likelihood exactly; PixelCNN++'s
code uses the unquantised draw.

Sampling: one network evaluation per pixel (per channel, for the categorical output) for the
whole batch, D in all; the vertical stack only sees rows above, so it runs once per row and
the horizontal stack once per pixel on the current row.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.autoregressive.base import DiscreteAutoregressive, draw_categorical
from baselines.common.masked import MaskedConv2d
from bench.errors import GenbenchError
from bench.method import DataSpec, from_levels, scale_table
from bench.registry import register_method

OUTPUTS = ("categorical", "logistic_mixture")
# 32x32 is RGB: the categorical output splits the width into 3 channel groups
WIDTHS = {"8x8": 16, "28x28": 64, "32x32": 120}
BLOCKS = {"8x8": 3, "28x28": 7, "32x32": 12}
MIN_LOG_SCALE = -7.0  # PixelCNN++'s floor on the logistic log-scales


def channel_mask(out_channels: int, in_channels: int, groups: int, strict: bool) -> Tensor:
    """(out, in) mask of the centre tap: out group j mod G sees in group i mod G iff
    g_out > g_in (mask A, strict) or g_out >= g_in (mask B). With G = 1: none / all."""
    g_out = torch.arange(out_channels)[:, None] % groups
    g_in = torch.arange(in_channels)[None, :] % groups
    return (g_out > g_in).float() if strict else (g_out >= g_in).float()


def vertical_conv(c_in: int, c_out: int, kernel: int, first: bool) -> MaskedConv2d:
    """k-wide convolution over the rows above: rows i-k/2..i-1 (first) or i-k/2..i."""
    half = kernel // 2
    if first:  # kernel of height k/2 over rows shifted down by one: strictly above
        return MaskedConv2d(c_in, c_out, torch.ones(half, kernel), (half, half, half, -1))
    return MaskedConv2d(c_in, c_out, torch.ones(half + 1, kernel), (half, half, half, 0))


def horizontal_conv(c_in: int, c_out: int, kernel: int, first: bool, groups: int) -> MaskedConv2d:
    """1 x (k/2 + 1) convolution over columns j-k/2..j of the current row; the centre tap
    (last column) is channel-masked: mask A (first) or mask B."""
    half = kernel // 2
    mask = torch.ones(c_out, c_in, 1, half + 1)
    mask[:, :, 0, half] = channel_mask(c_out, c_in, groups, strict=first)
    return MaskedConv2d(c_in, c_out, mask, (half, 0, 0, 0))


def pointwise_conv(c_in: int, c_out: int, groups: int) -> MaskedConv2d:
    """1x1 convolution with mask B between channel groups."""
    mask = channel_mask(c_out, c_in, groups, strict=False)[:, :, None, None]
    return MaskedConv2d(c_in, c_out, mask, (0, 0, 0, 0))


def gated(features: Tensor) -> Tensor:
    """tanh(f) * sigmoid(g) (eq. 2): (B, 2F, H, W) -> (B, F, H, W)."""
    value, gate = features.chunk(2, 1)
    return torch.tanh(value) * torch.sigmoid(gate)


class GatedBlock(nn.Module):
    """One gated layer with its vertical and horizontal stacks (Figure 2)."""

    def __init__(self, width: int, kernel: int, groups: int) -> None:
        super().__init__()
        # one convolution gives the vertical stack's 2F features and the 2F features it
        # sends to the horizontal stack: the paper's 1x1 convolution of the (linear) vertical
        # features composed with the vertical kernel is again a kernel of the same shape
        self.vertical = vertical_conv(width, 4 * width, kernel, first=False)
        self.horizontal = horizontal_conv(width, 2 * width, kernel, False, groups)
        self.horizontal_out = pointwise_conv(width, width, groups)

    def vertical_step(self, vertical: Tensor) -> tuple[Tensor, Tensor]:
        """-> (next vertical features (B, F, H, W), what goes to the horizontal stack
        (B, 2F, H, W)); both see only the rows above."""
        v_features, v_to_h = self.vertical(vertical).chunk(2, 1)
        return gated(v_features), v_to_h

    def horizontal_step(self, horizontal: Tensor, v_to_h: Tensor) -> Tensor:
        """Gated horizontal features with the residual connection: (B, F, H, W)."""
        h_features = self.horizontal(horizontal) + v_to_h
        return horizontal + self.horizontal_out(gated(h_features))


class GatedPixelCNNNetwork(nn.Module):
    """(B, C, H, W) in [-1, 1] -> (B, out_channels, H, W) causal outputs.

    The vertical pass (rows above) and the horizontal pass (current row, given what the
    vertical stack sends) are separate methods, so the sampler runs the vertical stack once
    per row and the horizontal stack, on one row, once per pixel."""

    def __init__(
        self,
        channels: int,
        width: int,
        num_blocks: int,
        kernel: int,
        first_kernel: int,
        out_channels: int,
        groups: int,
    ) -> None:
        super().__init__()
        if width % groups or out_channels % groups:
            raise GenbenchError(f"pixelcnn.width {width} must be divisible by {groups} channels")
        self.vertical_in = vertical_conv(channels, width, first_kernel, first=True)
        self.horizontal_in = horizontal_conv(channels, width, first_kernel, True, groups)
        self.blocks = nn.ModuleList(GatedBlock(width, kernel, groups) for _ in range(num_blocks))
        self.head = nn.Sequential(
            nn.ReLU(),
            pointwise_conv(width, width, groups),
            nn.ReLU(),
            pointwise_conv(width, out_channels, groups),
        )

    def vertical_pass(self, x: Tensor) -> list[Tensor]:
        """(B, C, H, W) -> per block, the (B, 2F, H, W) input of the horizontal stack."""
        vertical = self.vertical_in(x)
        sent = []
        for block in self.blocks:
            vertical, v_to_h = block.vertical_step(vertical)
            sent.append(v_to_h)
        return sent

    def horizontal_pass(self, x: Tensor, sent: list[Tensor]) -> Tensor:
        """Rows of x (B, C, H', W') with the matching rows of ``sent`` -> outputs; every
        horizontal kernel is one row high and causal, so any crop of rows and of the columns
        up to j gives the outputs of those positions."""
        horizontal = self.horizontal_in(x)
        for block, v_to_h in zip(self.blocks, sent, strict=True):
            horizontal = block.horizontal_step(horizontal, v_to_h)
        return self.head(horizontal)

    def forward(self, x: Tensor) -> Tensor:
        return self.horizontal_pass(x, self.vertical_pass(x))


def logistic_bin_log_mass(
    level: Tensor, centred: Tensor, log_scale: Tensor, num_levels: int
) -> Tensor:
    """log P(level) under a logistic discretised to L bins of [-1, 1]: log(sigma(a) - sigma(b))
    with a, b the bin edges minus the mean over the scale; the edge bins extend to
    +-infinity. Uses sigma(a) - sigma(b) = (1 - e^{b-a}) sigma(a) sigma(-b), stable for all a>b.
    ``centred`` = x - mu (x the bin centre); shapes broadcast."""
    inv_scale = torch.exp(-log_scale)
    half_width = 1.0 / (num_levels - 1)
    upper = (centred + half_width) * inv_scale
    lower = (centred - half_width) * inv_scale
    interior = torch.log(-torch.expm1(lower - upper)) + F.logsigmoid(upper) + F.logsigmoid(-lower)
    log_mass = torch.where(level == 0, F.logsigmoid(upper), interior)
    return torch.where(level == num_levels - 1, F.logsigmoid(-lower), log_mass)


@register_method("pixelcnn")
class PixelCNN(DiscreteAutoregressive):
    summary = "gated PixelCNN: vertical + horizontal masked stacks, softmax or logistic mixture"

    hparam_choices = {"output": OUTPUTS}
    hparam_ranges = {"first_kernel": (2, None)}  # the first (mask A) kernel keeps k // 2 rows

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {
            "width": scale_table(WIDTHS, spec, "pixelcnn's width table"),
            "num_blocks": scale_table(BLOCKS, spec, "pixelcnn's depth table"),
            "kernel": 3,
            # 8x8: a 9-wide first layer and 3 blocks reach every earlier pixel
            "first_kernel": 9 if spec.scale == "8x8" else 7,
            "output": "categorical",
            "mixture_components": 5 if spec.scale == "8x8" else 10,
            "lr": 3e-3,
            "weight_decay": 0.0,
        }

    def __init__(
        self,
        spec: DataSpec,
        width: int = 16,
        num_blocks: int = 3,
        kernel: int = 3,
        first_kernel: int = 9,
        output: str = "categorical",
        mixture_components: int = 5,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(spec)
        if output not in OUTPUTS:
            raise GenbenchError(f"unknown pixelcnn.output {output!r}. Valid: {', '.join(OUTPUTS)}")
        self.output = output
        self.components = mixture_components
        channels = spec.channels
        if output == "categorical":
            groups, out_channels = channels, channels * spec.num_levels
        else:  # pi, mu and log-scale per channel, and the C(C-1)/2 channel coefficients
            groups = 1
            out_channels = mixture_components * (1 + 2 * channels + channels * (channels - 1) // 2)
        self.network = GatedPixelCNNNetwork(
            channels, width, num_blocks, kernel, first_kernel, out_channels, groups
        )
        self.setup_optimizer(lr, weight_decay)

    # -- network inputs and outputs ------------------------------------------------------------
    def _scaled(self, levels: Tensor) -> Tensor:
        """Integer levels -> values in [-1, 1] (bin centres), any shape."""
        return 2.0 * levels.float() / (self.spec.num_levels - 1) - 1.0

    def _image(self, levels: Tensor) -> Tensor:
        """(B, D) levels -> (B, C, H, W) in [-1, 1]."""
        return self._scaled(levels).view(len(levels), *self.spec.shape)

    def _categorical_logits(self, outputs: Tensor) -> Tensor:
        """(B, L*C, H', W) with channel j = l*C + c -> (B, C, H', W, L)."""
        batch, _, height, width = outputs.shape
        logits = outputs.view(batch, self.spec.num_levels, self.spec.channels, height, width)
        return logits.permute(0, 2, 3, 4, 1)

    def _mixture_parameters(self, outputs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(B, P, ...) -> logits of pi (B, K, ...), means and log-scales (B, C, K, ...) and
        coefficients (B, C(C-1)/2, K, ...) (tanh, as PixelCNN++)."""
        k, channels = self.components, self.spec.channels
        rest = outputs.shape[2:]
        logit_pi = outputs[:, :k]
        means, log_scales, coefficients = outputs[:, k:].split(
            [channels * k, channels * k, channels * (channels - 1) // 2 * k], 1
        )
        means = means.reshape(len(outputs), channels, k, *rest)
        log_scales = log_scales.reshape(len(outputs), channels, k, *rest).clamp(min=MIN_LOG_SCALE)
        coefficients = torch.tanh(coefficients.reshape(len(outputs), -1, k, *rest))
        return logit_pi, means, log_scales, coefficients

    @staticmethod
    def _channel_mean(means: Tensor, coefficients: Tensor, x: Tensor, channel: int) -> Tensor:
        """mu_{k,c} + sum_{c' < c} coeff_{k,c,c'} x_{c'}: the channels before c in the pixel
        shift the mean of c linearly (PixelCNN++ section 2.2). x: (B, C, ...) values."""
        mean = means[:, channel]
        first = channel * (channel - 1) // 2  # coefficients of channel c start here
        for previous in range(channel):
            mean = mean + coefficients[:, first + previous] * x[:, previous].unsqueeze(1)
        return mean

    def _mixture_log_prob(self, outputs: Tensor, levels: Tensor) -> Tensor:
        """(B, P, H, W) network outputs, (B, C, H, W) levels -> (B, H, W) log p(pixel)."""
        logit_pi, means, log_scales, coefficients = self._mixture_parameters(outputs)
        x = self._scaled(levels)
        log_prob = logit_pi.log_softmax(1)  # (B, K, H, W)
        for c in range(self.spec.channels):
            centred = x[:, c].unsqueeze(1) - self._channel_mean(means, coefficients, x, c)
            log_prob = log_prob + logistic_bin_log_mass(
                levels[:, c].unsqueeze(1), centred, log_scales[:, c], self.spec.num_levels
            )
        return log_prob.logsumexp(1)

    # -- DiscreteAutoregressive ------------------------------------------------------------
    def conditional_log_probs(self, levels: Tensor) -> Tensor:
        outputs = self.network(self._image(levels))
        if self.output == "categorical":
            return self._categorical_logits(outputs).log_softmax(-1).flatten(1, 3)  # (B, D, L)
        if self.spec.channels != 1:
            raise GenbenchError("the per-dimension table of the mixture needs one channel")
        table = [
            self._mixture_log_prob(outputs, torch.full_like(levels, level).view_as(outputs[:, :1]))
            for level in range(self.spec.num_levels)
        ]
        return torch.stack(table, -1).flatten(1, 2)  # L x (B, H, W) -> (B, D, L)

    def log_prob_per_dim(self, levels: Tensor) -> Tensor:
        if self.output == "categorical":
            return super().log_prob_per_dim(levels)
        outputs = self.network(self._image(levels))
        # one joint term per pixel (its channels share the mixture component)
        pixels = self._mixture_log_prob(outputs, levels.view(len(levels), *self.spec.shape))
        return pixels.flatten(1)  # (B, H, W) -> (B, H*W)

    def sampling_order(self) -> list[int]:
        """Raster order over pixels, channels R, G, B within a pixel: d = c*H*W + i*W + j."""
        pixels = self.spec.height * self.spec.width
        return [c * pixels + p for p in range(pixels) for c in range(self.spec.channels)]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, labels: Tensor | None = None) -> Tensor:
        """Ancestral sampling in raster order, one network evaluation per pixel (per channel
        for the categorical output) for the whole batch: the vertical stack runs once per
        row (it only sees the rows above), the horizontal stack on the current row up to
        the current column."""
        levels = torch.zeros(n, *self.spec.shape, dtype=torch.long, device=self.device)
        channels = self.spec.channels
        for row in range(self.spec.height):
            image = self._scaled(levels[:, :, : row + 1])  # rows 0..i
            sent = [v_to_h[:, :, row : row + 1] for v_to_h in self.network.vertical_pass(image)]
            for column in range(self.spec.width):
                for channel in range(channels if self.output == "categorical" else 1):
                    current = self._scaled(levels[:, :, row : row + 1, : column + 1])
                    crop = [v_to_h[..., : column + 1] for v_to_h in sent]
                    outputs = self.network.horizontal_pass(current, crop)[:, :, 0, column]
                    if self.output == "categorical":
                        logits = self._categorical_logits(outputs[:, :, None, None])
                        log_probs = logits[:, channel, 0, 0].log_softmax(-1)  # (n, L)
                        draw = draw_categorical(log_probs, generator).to(levels.device)
                        levels[:, channel, row, column] = draw
                    else:
                        levels[:, :, row, column] = self._sample_mixture(outputs, generator)
        pixels = self.spec.height * self.spec.width
        self.last_nfe = self.spec.dims if self.output == "categorical" else pixels
        return from_levels(levels, self.spec.num_levels)

    def _sample_mixture(self, outputs: Tensor, generator: torch.Generator) -> Tensor:
        """(n, P) parameters of one pixel -> (n, C) levels: a component k ~ pi, then each
        channel from its logistic (inverse CDF of uniform noise), discretised to its bin."""
        logit_pi, means, log_scales, coefficients = self._mixture_parameters(outputs)
        component = draw_categorical(logit_pi.log_softmax(1), generator).to(outputs.device)
        pick = component.view(-1, 1, 1)

        def chosen(t: Tensor) -> Tensor:  # (n, X, K) -> (n, X) at the drawn component
            return t.gather(2, pick.expand(-1, t.shape[1], 1)).squeeze(2)

        means, log_scales, coefficients = chosen(means), chosen(log_scales), chosen(coefficients)
        channels, top = self.spec.channels, self.spec.num_levels - 1
        uniform = torch.rand(len(outputs), channels, generator=generator, device=generator.device)
        uniform = uniform.to(outputs.device)
        # inverse logistic CDF; u = 0 gives -inf, which the clamp below puts in the lowest bin
        logistic = torch.log(uniform) - torch.log1p(-uniform)
        quantised = torch.zeros(len(outputs), channels, device=outputs.device)
        levels = torch.zeros(len(outputs), channels, dtype=torch.long, device=outputs.device)
        for c in range(channels):
            mean = self._channel_mean(means.unsqueeze(2), coefficients.unsqueeze(2), quantised, c)
            value = mean.squeeze(1) + log_scales[:, c].exp() * logistic[:, c]
            levels[:, c] = torch.round((value + 1.0) / 2.0 * top).clamp(0, top).long()
            quantised[:, c] = self._scaled(levels[:, c])
        return levels

    def sample_settings(self) -> dict[str, Any]:
        pixels = self.spec.height * self.spec.width
        calls = self.spec.dims if self.output == "categorical" else pixels
        return {"sampler": "ancestral", "output": self.output, "network_calls": calls}

    def likelihood_settings(self) -> dict[str, Any]:
        return {"exact": True, "output": self.output}
