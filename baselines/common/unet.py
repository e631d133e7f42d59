"""The shared U-Net of the diffusion, score and flow-matching methods.

The DDPM architecture (Ho et al. 2020, appendix B; itself PixelCNN++'s backbone): a
sinusoidal embedding of the noise level passed through an MLP and added inside every residual
block, GroupNorm + SiLU residual blocks, self-attention at the low resolutions, skip
connections from every down block to its up block. Optional class conditioning adds a
learned label embedding to the noise embedding, with one extra "null" label for
classifier-free guidance (Ho & Salimans 2022). Sized per data scale by :data:`UNET_SIZES`.

The network is noise-label agnostic: each method passes the label its paper uses (DDPM the
integer step t, VP-SDE 999 t, EDM ln(sigma) / 4, ...). ``EncoderUNet`` is the down half with
a pooled linear head, the noise-aware classifier of classifier guidance (Dhariwal & Nichol
2021, section 4).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.method import DataSpec, scale_table

#: per data scale: base width, width multipliers per resolution, residual blocks per
#: resolution, resolutions (side length) with self-attention
UNET_SIZES: dict[str, dict[str, Any]] = {
    "8x8": {"width": 16, "mults": (1, 2), "blocks": 1, "attention": (4,)},
    "28x28": {"width": 32, "mults": (1, 2, 2), "blocks": 1, "attention": (7,)},
    "32x32": {"width": 128, "mults": (1, 2, 2, 2), "blocks": 2, "attention": (16,)},
}


def unet_hparams(spec: DataSpec) -> dict[str, Any]:
    """The U-Net hyper-parameters of ``spec``'s scale, as method hyper-parameters."""
    size = scale_table(UNET_SIZES, spec, "the U-Net size table")
    return {
        "width": size["width"],
        "width_mults": list(size["mults"]),
        "blocks_per_level": size["blocks"],
        "attention_resolutions": list(size["attention"]),
        "dropout": 0.1 if spec.scale == "32x32" else 0.0,
    }


def timestep_embedding(labels: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer-style sinusoidal embedding of per-image noise labels: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=labels.device, dtype=torch.float32) / half
    )
    args = labels.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _norm(channels: int) -> nn.GroupNorm:
    groups = math.gcd(32, channels // 4) if channels >= 8 else 1  # 32 groups at full width
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the projected embedding, GroupNorm-SiLU-dropout-conv."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, 1, 1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, c_out))
        self.out_layers = nn.Sequential(
            _norm(c_out), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(c_out, c_out, 3, 1, 1)
        )
        nn.init.zeros_(self.out_layers[-1].weight)  # each block starts as the identity
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x) + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class Attention(nn.Module):
    """Single-head self-attention over the H*W positions, residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, HW, C)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Level(nn.Module):
    """Residual blocks, one per input width, each followed by attention at the attention
    resolutions."""

    def __init__(
        self, c_ins: list[int], c_out: int, emb_dim: int, attention: bool, dropout: float
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c, c_out, emb_dim, dropout) for c in c_ins)
        self.attns = nn.ModuleList(Attention(c_out) if attention else nn.Identity() for _ in c_ins)


class UNet(nn.Module):
    """(B, C, H, W) images and (B,) noise labels [and (B,) class labels] -> (B, C_out, H, W).

    ``num_classes`` > 0 adds a label embedding with index ``num_classes`` meaning "no label".
    """

    def __init__(
        self,
        channels: int,
        resolution: int,
        width: int = 32,
        width_mults: tuple[int, ...] | list[int] = (1, 2),
        blocks_per_level: int = 1,
        attention_resolutions: tuple[int, ...] | list[int] = (4,),
        dropout: float = 0.0,
        num_classes: int = 0,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        emb_dim = 4 * width
        self.width = width
        self.num_classes = num_classes
        self.embed = nn.Sequential(
            nn.Linear(width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.label_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.stem = nn.Conv2d(channels, width, 3, 1, 1)
        widths = [width * m for m in width_mults]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_widths, c, res = [width], width, resolution
        for i, w in enumerate(widths):
            attn = res in attention_resolutions
            c_ins = [c] + [w] * (blocks_per_level - 1)
            self.down.append(Level(c_ins, w, emb_dim, attn, dropout))
            c = w
            skip_widths += [w] * blocks_per_level
            last = i == len(widths) - 1
            # a stride-2 conv; the last level has none. Odd sizes (7x7) round up.
            self.downsample.append(nn.Identity() if last else nn.Conv2d(c, c, 3, 2, 1))
            if not last:
                skip_widths.append(c)
                res = (res + 1) // 2
        self.mid1 = ResBlock(c, c, emb_dim, dropout)
        self.mid_attn = Attention(c)
        self.mid2 = ResBlock(c, c, emb_dim, dropout)
        self.feature_dim = c
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            attn = res in attention_resolutions
            c_ins = []
            for _ in range(blocks_per_level + 1):  # each block takes one skip
                c_ins.append(c + skip_widths.pop())
                c = w
            self.up.append(Level(c_ins, w, emb_dim, attn, dropout))
            self.upsample.append(nn.Identity() if i == 0 else nn.Conv2d(c, c, 3, 1, 1))
            if i:
                res = res * 2
        self.out = nn.Sequential(
            _norm(c), nn.SiLU(), nn.Conv2d(c, out_channels or channels, 3, 1, 1)
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def embedding(self, noise_labels: Tensor, class_labels: Tensor | None) -> Tensor:
        emb = self.embed(timestep_embedding(noise_labels, self.width))
        if self.label_embed is not None:
            if class_labels is None:  # unconditional: the null label
                class_labels = torch.full_like(noise_labels, self.num_classes, dtype=torch.long)
            emb = emb + self.label_embed(class_labels)
        return emb

    def forward(
        self,
        x: Tensor,
        noise_labels: Tensor,
        class_labels: Tensor | None = None,
        return_features: bool = False,
    ) -> Tensor:
        emb = self.embedding(noise_labels, class_labels)
        h = self.stem(x)
        skips = [h]
        for level, down in zip(self.down, self.downsample, strict=True):
            for block, attn in zip(level.blocks, level.attns, strict=True):
                h = attn(block(h, emb))
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        if return_features:
            return h.mean(dim=(2, 3))  # (B, C_mid): the pooled mid-level features
        for level, up in zip(self.up, self.upsample, strict=True):
            for block, attn in zip(level.blocks, level.attns, strict=True):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))
            if not isinstance(up, nn.Identity):
                h = F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest")
                h = up(h)
        return self.out(h)


class EncoderUNet(nn.Module):
    """The U-Net's down half and middle, pooled, then a linear head: the noise-aware
    classifier p(y | x_t, t) of classifier guidance."""

    def __init__(self, channels: int, resolution: int, num_outputs: int, **unet: Any) -> None:
        super().__init__()
        self.body = UNet(channels, resolution, **unet)
        del self.body.up, self.body.upsample, self.body.out
        self.head = nn.Sequential(_norm(self.body.feature_dim), nn.SiLU())
        self.linear = nn.Linear(self.body.feature_dim, num_outputs)

    def forward(self, x: Tensor, noise_labels: Tensor) -> Tensor:
        emb = self.body.embedding(noise_labels, None)
        h = self.body.stem(x)
        for level, down in zip(self.body.down, self.body.downsample, strict=True):
            for block, attn in zip(level.blocks, level.attns, strict=True):
                h = attn(block(h, emb))
            h = down(h)
        h = self.body.mid2(self.body.mid_attn(self.body.mid1(h, emb)), emb)
        return self.linear(self.head(h).mean(dim=(2, 3)))
