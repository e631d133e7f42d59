"""Masked layers for autoregressive models: weights multiplied by a fixed 0/1 mask so that an
output only sees the inputs the ordering allows.

- :func:`degree_mask`: MADE's connectivity rule (Germain et al. 2015, eqs. 12-13): a unit of
  degree m' sees a unit of degree m iff m' >= m (hidden layers) or m' > m (the output layer,
  ``strict=True``).
- :class:`MaskedLinear`: a linear map with a stack of such masks (one per MADE ordering /
  connectivity; FVSBN uses one strictly lower-triangular mask).
- :class:`MaskedConv2d`: a convolution with a fixed kernel mask (PixelCNN's masks A and B).
- :func:`encode_levels`: the input encoding of a pixel's level, one-hot over the L levels or
  the scaled value level / (L - 1).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import GenbenchError

#: how a pixel's level enters a network
INPUT_ENCODINGS = ("one_hot", "scaled")


def encode_levels(levels: Tensor, num_levels: int, encoding: str) -> Tensor:
    """(B, D) integer levels -> (B, D * E) network inputs, pixel-major: E = L for one_hot
    (pixel d occupies columns d*L .. d*L + L - 1), E = 1 for scaled (level / (L - 1))."""
    encoding_width(num_levels, encoding)  # rejects unknown encodings
    if encoding == "one_hot":
        return F.one_hot(levels, num_levels).flatten(1).float()  # (B, D, L) -> (B, D*L)
    return levels.float() / (num_levels - 1)


def encoding_width(num_levels: int, encoding: str) -> int:
    """E, the number of network inputs per pixel for ``encoding``."""
    if encoding not in INPUT_ENCODINGS:
        raise GenbenchError(
            f"unknown input_encoding {encoding!r}. Valid: {', '.join(INPUT_ENCODINGS)}"
        )
    return num_levels if encoding == "one_hot" else 1


def degree_mask(in_degrees: Tensor, out_degrees: Tensor, strict: bool) -> Tensor:
    """(out, in) 0/1 mask: out unit j sees in unit i iff out_deg[j] > in_deg[i] (strict) or
    out_deg[j] >= in_deg[i] (not strict)."""
    if strict:
        return (out_degrees[:, None] > in_degrees[None, :]).float()
    return (out_degrees[:, None] >= in_degrees[None, :]).float()


class MaskedLinear(nn.Linear):
    """y = x (W * M_k)^T + b for a stack of masks M_k (num_masks, out, in); ``mask_index``
    picks one. Masked weights receive zero gradient, so the constraint holds throughout."""

    masks: Tensor

    def __init__(self, in_features: int, out_features: int, masks: Tensor) -> None:
        super().__init__(in_features, out_features)
        if masks.dim() == 2:
            masks = masks[None]
        if masks.shape[1:] != (out_features, in_features):
            raise ValueError(f"mask shape {tuple(masks.shape)} for ({out_features}, {in_features})")
        self.register_buffer("masks", masks.float())

    def forward(self, x: Tensor, mask_index: int = 0) -> Tensor:
        return F.linear(x, self.weight * self.masks[mask_index], self.bias)


class MaskedConv2d(nn.Conv2d):
    """A convolution whose kernel is multiplied by a fixed mask (kh, kw) or (out, in, kh, kw).

    ``padding`` is (left, right, top, bottom) as in ``F.pad`` (negative crops), so causal
    convolutions can use exactly the kernel rows and columns they need; the default keeps the
    size for odd kernels ('same')."""

    mask: Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mask: Tensor,
        padding: tuple[int, int, int, int] | None = None,
    ) -> None:
        kh, kw = mask.shape[-2:]
        super().__init__(in_channels, out_channels, (kh, kw))
        self.pad = padding if padding is not None else (kw // 2, kw // 2, kh // 2, kh // 2)
        self.register_buffer("mask", mask.expand(out_channels, in_channels, kh, kw).clone())
        #: a mask of ones (a causal convolution whose padding already crops the kernel to
        #: what it may see) is not applied: the product would return the weight unchanged
        self.full_mask = not self.mask.is_meta and bool(self.mask.all())  # meta: a trial build

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight if self.full_mask else self.weight * self.mask
        return self._conv_forward(F.pad(x, self.pad), weight, self.bias)
