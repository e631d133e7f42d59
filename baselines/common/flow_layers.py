"""Invertible layers with exact log-determinants, shared by the normalizing flows (NICE,
RealNVP, Glow).

Every layer maps x -> (y, log|det dy/dx|) with one log-determinant per sample (B,), and has
``inverse(y) -> x``. Images are (B, C, H, W) throughout; vector flows (NICE) see the
flattened pixels through :class:`PartitionCoupling`.

- :class:`Squeeze`: 2x2 space-to-depth, (C, H, W) -> (4C, H/2, W/2) (RealNVP section 3.6).
- :class:`ActNorm`: per-channel affine with data-dependent initialisation (Glow section 3.1).
- :class:`InvertibleConv1x1`: W = P L (U + diag(sign(s) exp(log|s|))), log-det
  H W sum log|s| (Glow section 3.2, LU-decomposed).
- couplings y_b = f(x_b; NN(x_a)), y_a = x_a (NICE eq. 5, RealNVP eqs. 7-9, Glow Table 1),
  with the transform ``kind``: ``additive`` (y = x + t), ``affine_tanh`` (RealNVP:
  y = x exp(s) + t, s = scale * tanh(raw)), ``affine_sigmoid`` (Glow: y = (x + t) sigmoid(raw
  + 2)); the split of x into (x_a, x_b) is a spatial mask (:class:`MaskedCoupling`,
  RealNVP's checkerboard), the two halves of the channels (:class:`ChannelCoupling`) or a
  fixed partition of the flattened dimensions (:class:`PartitionCoupling`, NICE).
- :class:`DiagonalScaling`: y = exp(S) x (NICE section 3.3).
- :class:`Split` and :class:`MultiScaleFlow`: RealNVP's multi-scale architecture, factoring
  out half of the dimensions after each scale, optionally with Glow's learned conditional
  prior N(mu(h), sigma(h)) for the factored half, written as the bijection
  eps = (z - mu(h)) / sigma(h) so that every latent is standard.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import GenbenchError

Shape = tuple[int, int, int]
COUPLING_KINDS = ("additive", "affine_tanh", "affine_sigmoid")
PRIORS = ("gaussian", "logistic")


def _per_sample(t: Tensor) -> Tensor:
    return t.flatten(1).sum(1)


class FlowLayer(nn.Module):
    """x -> (y, log|det dy/dx| per sample); ``inverse`` undoes ``forward``."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def output_shape(self, shape: Shape) -> Shape:
        return shape


class FlowSequence(FlowLayer):
    """A composition: log-determinants add (chain rule)."""

    def __init__(self, layers: Sequence[FlowLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_det = x.new_zeros(len(x))
        for layer in self.layers:
            x, layer_log_det = layer(x)
            log_det = log_det + layer_log_det
        return x, log_det

    def inverse(self, y: Tensor) -> Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y

    def output_shape(self, shape: Shape) -> Shape:
        for layer in self.layers:
            shape = layer.output_shape(shape)  # type: ignore[operator]
        return shape


class Squeeze(FlowLayer):
    """Each 2x2 block of every channel becomes 4 channels: (B, C, H, W) -> (B, 4C, H/2, W/2);
    a permutation, log-det 0."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        y = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return y.reshape(b, 4 * c, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, y: Tensor) -> Tensor:
        b, c4, h, w = y.shape
        x = y.view(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c4 // 4, 2 * h, 2 * w)

    def output_shape(self, shape: Shape) -> Shape:
        c, h, w = shape
        if h % 2 or w % 2:
            raise GenbenchError(f"cannot squeeze a {h}x{w} image: the sides must be even")
        return (4 * c, h // 2, w // 2)


class ActNorm(FlowLayer):
    """y = (x + bias) * exp(log_scale) per channel; log-det H W sum(log_scale). The first
    forward pass in training mode (on a data batch: ``prepare``) sets bias and scale so that
    y has zero mean and unit variance per channel (Glow's data-dependent initialisation)."""

    initialized: Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        mean = x.mean((0, 2, 3), keepdim=True)
        std = x.std((0, 2, 3), keepdim=True, unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + 1e-6))
        self.initialized.fill_(True)

    def normalise(self, x: Tensor) -> Tensor:
        if self.training and not self.initialized:
            self._initialize(x)
        return (x + self.bias) * self.log_scale.exp()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = self.normalise(x)
        log_det = self.log_scale.sum() * (x.shape[2] * x.shape[3])
        return y, log_det.expand(len(x))

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


class ActNormFeatures(ActNorm):
    """ActNorm as a plain normalisation inside a coupling network (Glow's NN)."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return self.normalise(x)


class InvertibleConv1x1(FlowLayer):
    """y = W x at every pixel with W = P L (U + diag(sign_s exp(log_abs_s))) (Glow eq. 10):
    P fixed, L unit lower-triangular, U strictly upper; log-det H W sum(log_abs_s). Initialised
    at a random rotation, as in the paper."""

    permutation: Tensor
    sign_s: Tensor
    lower_mask: Tensor

    def __init__(self, channels: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        rotation = torch.linalg.qr(torch.randn(channels, channels, generator=generator))[0]
        permutation, lower, upper = torch.linalg.lu(rotation)
        s = torch.diagonal(upper)
        self.register_buffer("permutation", permutation)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_abs_s = nn.Parameter(torch.log(s.abs()))

    def weight(self) -> Tensor:
        eye = torch.eye(len(self.sign_s), dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * self.log_abs_s.exp())
        return self.permutation @ lower @ upper

    @staticmethod
    def _mix_channels(weight: Tensor, x: Tensor) -> Tensor:
        """A 1x1 convolution as one matrix product: (C, C) @ (B, C, H*W)."""
        return (weight @ x.flatten(2)).view_as(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = self._mix_channels(self.weight(), x)
        log_det = self.log_abs_s.sum() * (x.shape[2] * x.shape[3])
        return y, log_det.expand(len(x))

    def inverse(self, y: Tensor) -> Tensor:
        return self._mix_channels(torch.linalg.inv(self.weight()), y)


class Conv2dZeros(nn.Module):
    """Glow's zero-initialised last convolution, outputs scaled by exp(3 * logs): every
    coupling starts as the identity."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
        self.logs = nn.Parameter(torch.zeros(1, c_out, 1, 1))
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * torch.exp(3.0 * self.logs)


# -- couplings ----------------------------------------------------------------------------------
class _CouplingTransform(nn.Module):
    """The element-wise map of x_b given the network's outputs (raw scale, shift)."""

    def __init__(self, kind: str, channels: int) -> None:
        super().__init__()
        if kind not in COUPLING_KINDS:
            raise GenbenchError(f"unknown coupling {kind!r}. Valid: {', '.join(COUPLING_KINDS)}")
        self.kind = kind
        #: RealNVP's learned bound on the log-scale, s = scale * tanh(raw)
        self.tanh_scale = nn.Parameter(torch.ones(channels)) if kind == "affine_tanh" else None

    @property
    def outputs_per_dim(self) -> int:
        return 1 if self.kind == "additive" else 2

    def _log_scale(self, raw: Tensor) -> Tensor:
        if self.kind == "affine_tanh":
            assert self.tanh_scale is not None
            shape = (1, -1) + (1,) * (raw.dim() - 2)
            return self.tanh_scale.view(shape) * torch.tanh(raw)
        return F.logsigmoid(raw + 2.0)  # Glow: scale = sigmoid(raw + 2), starts near 1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """(y_b, log|dy_b/dx_b| elementwise)."""
        if self.kind == "additive":
            return x + params, torch.zeros_like(x)
        raw, shift = params[:, 0::2], params[:, 1::2]
        log_scale = self._log_scale(raw)
        if self.kind == "affine_tanh":
            return x * log_scale.exp() + shift, log_scale
        return (x + shift) * log_scale.exp(), log_scale

    def inverse(self, y: Tensor, params: Tensor) -> Tensor:
        if self.kind == "additive":
            return y - params
        raw, shift = params[:, 0::2], params[:, 1::2]
        log_scale = self._log_scale(raw)
        if self.kind == "affine_tanh":
            return (y - shift) * torch.exp(-log_scale)
        return y * torch.exp(-log_scale) - shift


#: builds the coupling network: (input channels, output channels) -> module
NetworkFactory = Callable[[int, int], nn.Module]


def checkerboard_mask(shape: Shape, parity: int) -> Tensor:
    """(1, C, H, W) 0/1: 1 where (i + j) % 2 == parity (the conditioning half)."""
    _, h, w = shape
    grid = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2 == parity
    return grid.float().expand(1, shape[0], h, w).clone()


class MaskedCoupling(FlowLayer):
    """y = b x + (1 - b) f(x; NN(b x)) with a fixed spatial mask b (RealNVP eq. 9)."""

    mask: Tensor

    def __init__(self, mask: Tensor, kind: str, make_network: NetworkFactory) -> None:
        super().__init__()
        channels = mask.shape[1]
        self.register_buffer("mask", mask)
        self.transform = _CouplingTransform(kind, channels)
        self.network = make_network(channels, channels * self.transform.outputs_per_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_a = x * self.mask
        y, log_scale = self.transform(x, self.network(x_a))
        keep = 1.0 - self.mask
        return x_a + keep * y, _per_sample(keep * log_scale)

    def inverse(self, y: Tensor) -> Tensor:
        y_a = y * self.mask
        return y_a + (1.0 - self.mask) * self.transform.inverse(y, self.network(y_a))


class ChannelCoupling(FlowLayer):
    """x_a, x_b = the two halves of the channels (swapped when ``swap``); y_b = f(x_b;
    NN(x_a)) (RealNVP's channel-wise mask, Glow's affine coupling)."""

    def __init__(self, channels: int, kind: str, make_network: NetworkFactory, swap: bool) -> None:
        super().__init__()
        self.half = channels // 2
        self.swap = swap
        changed = channels - self.half
        self.transform = _CouplingTransform(kind, changed)
        self.network = make_network(self.half, changed * self.transform.outputs_per_dim)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.swap:
            x_b, x_a = x[:, : x.shape[1] - self.half], x[:, x.shape[1] - self.half :]
        else:
            x_a, x_b = x[:, : self.half], x[:, self.half :]
        return x_a, x_b

    def _join(self, x_a: Tensor, x_b: Tensor) -> Tensor:
        return torch.cat([x_b, x_a] if self.swap else [x_a, x_b], 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_a, x_b = self._split(x)
        y_b, log_scale = self.transform(x_b, self.network(x_a))
        return self._join(x_a, y_b), _per_sample(log_scale)

    def inverse(self, y: Tensor) -> Tensor:
        y_a, y_b = self._split(y)
        return self._join(y_a, self.transform.inverse(y_b, self.network(y_a)))


class PartitionCoupling(FlowLayer):
    """NICE's coupling on the flattened dimensions: x_b += m(x_a) for a fixed partition
    (I_1, I_2) of {1..D} (eq. 5, additive), with m an MLP from |I_1| to |I_2| values."""

    index_a: Tensor
    index_b: Tensor

    def __init__(self, part_a: Tensor, kind: str, make_network: NetworkFactory) -> None:
        super().__init__()
        self.register_buffer("index_a", part_a.nonzero().squeeze(1))
        self.register_buffer("index_b", (~part_a).nonzero().squeeze(1))
        self.transform = _CouplingTransform(kind, 1)
        outputs = len(self.index_b) * self.transform.outputs_per_dim
        self.network = make_network(len(self.index_a), outputs)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        flat = x.flatten(1)
        x_a, x_b = flat[:, self.index_a], flat[:, self.index_b]
        y_b, log_scale = self.transform(x_b, self.network(x_a))
        y = flat.index_copy(1, self.index_b, y_b)
        return y.view_as(x), log_scale.sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        flat = y.flatten(1)
        y_a, y_b = flat[:, self.index_a], flat[:, self.index_b]
        x_b = self.transform.inverse(y_b, self.network(y_a))
        return flat.index_copy(1, self.index_b, x_b).view_as(y)


class DiagonalScaling(FlowLayer):
    """NICE's last layer: y = exp(S) x per dimension, log-det sum(S)."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(1, *shape))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * self.log_scale.exp(), self.log_scale.sum().expand(len(x))

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale)


# -- multi-scale architecture ---------------------------------------------------------------
class Split(nn.Module):
    """Factors out the second half of the channels. With ``learned_prior`` (Glow), the
    factored half z gets the prior N(mu(h), exp(log_sigma(h))^2) from the kept half h
    through a zero-initialised convolution; it is returned standardised,
    eps = (z - mu) / sigma, with log-det -sum(log_sigma)."""

    def __init__(self, channels: int, learned_prior: bool) -> None:
        super().__init__()
        self.keep = channels // 2
        out = channels - self.keep
        self.prior = Conv2dZeros(self.keep, 2 * out) if learned_prior else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        kept, factored = x[:, : self.keep], x[:, self.keep :]
        if self.prior is None:
            return kept, factored, x.new_zeros(len(x))
        mean, log_sigma = self.prior(kept).chunk(2, 1)
        return kept, (factored - mean) * torch.exp(-log_sigma), -_per_sample(log_sigma)

    def inverse(self, kept: Tensor, eps: Tensor) -> Tensor:
        if self.prior is None:
            return torch.cat([kept, eps], 1)
        mean, log_sigma = self.prior(kept).chunk(2, 1)
        return torch.cat([kept, mean + eps * log_sigma.exp()], 1)

    def output_shape(self, shape: Shape) -> Shape:
        return (self.keep, shape[1], shape[2])


class LearnedTopPrior(FlowLayer):
    """Glow's learn_top: a learned mean and log-scale per latent of the last scale (zero
    initialised), written as the bijection eps = (z - mu) * exp(-log_sigma)."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(1, *shape))
        self.log_sigma = nn.Parameter(torch.zeros(1, *shape))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return (x - self.mean) * torch.exp(-self.log_sigma), -self.log_sigma.sum().expand(len(x))

    def inverse(self, y: Tensor) -> Tensor:
        return self.mean + y * self.log_sigma.exp()


class MultiScaleFlow(nn.Module):
    """stage_1, split, stage_2, split, ..., stage_S (RealNVP section 3.6): the output is all
    factored latents and the last stage's output, flattened and concatenated: (B, D)."""

    def __init__(self, input_shape: Shape, stages: Sequence[FlowLayer], splits: Sequence[Split]):
        super().__init__()
        if len(splits) != len(stages) - 1:
            raise ValueError("one split between consecutive stages")
        self.stages = nn.ModuleList(stages)
        self.splits = nn.ModuleList(splits)
        self.input_shape = input_shape
        #: shapes of the factored latents and of the last stage's output, in output order
        self.latent_shapes: list[Shape] = []
        shape = input_shape
        for stage, split in zip(stages, [*splits, None], strict=True):
            shape = stage.output_shape(shape)
            if split is not None:
                kept = split.output_shape(shape)
                self.latent_shapes.append((shape[0] - kept[0], shape[1], shape[2]))
                shape = kept
        self.latent_shapes.append(shape)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_det = x.new_zeros(len(x))
        latents = []
        for stage, split in zip(self.stages, [*self.splits, None], strict=True):
            x, stage_log_det = stage(x)
            log_det = log_det + stage_log_det
            if split is not None:
                x, factored, split_log_det = split(x)
                latents.append(factored.flatten(1))
                log_det = log_det + split_log_det
        latents.append(x.flatten(1))
        return torch.cat(latents, 1), log_det

    def inverse(self, z: Tensor) -> Tensor:
        sizes = [math.prod(shape) for shape in self.latent_shapes]
        parts = [
            part.reshape(len(z), *shape)
            for part, shape in zip(z.split(sizes, 1), self.latent_shapes, strict=True)
        ]
        x = self.stages[-1].inverse(parts[-1])
        for index in reversed(range(len(self.splits))):
            x = self.splits[index].inverse(x, parts[index])
            x = self.stages[index].inverse(x)
        return x


# -- priors ---------------------------------------------------------------------------------
def prior_log_prob(z: Tensor, prior: str) -> Tensor:
    """(B, D) -> (B,): log N(z; 0, I) or the standard logistic log sigma(z) + log sigma(-z)."""
    if prior == "gaussian":
        return -0.5 * (z**2 + math.log(2 * math.pi)).sum(1)
    if prior == "logistic":
        return -(F.softplus(z) + F.softplus(-z)).sum(1)
    raise GenbenchError(f"unknown prior {prior!r}. Valid: {', '.join(PRIORS)}")


def prior_sample(
    shape: tuple[int, ...], prior: str, generator: torch.Generator, temperature: float = 1.0
) -> Tensor:
    """Draws from the prior (all randomness from ``generator``), scaled by ``temperature``."""
    if prior == "gaussian":
        z = torch.randn(shape, generator=generator, device=generator.device)
    else:  # inverse CDF of the logistic
        u = torch.rand(shape, generator=generator, device=generator.device).clamp(1e-6, 1 - 1e-6)
        z = torch.log(u) - torch.log1p(-u)
    return temperature * z
