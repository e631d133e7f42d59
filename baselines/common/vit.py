"""A small Vision Transformer (Dosovitskiy et al. 2021) in the form MAE uses (He et al. 2022).

Images are cut into non-overlapping p x p patches (``patchify``), each flattened patch is
embedded linearly, fixed 2-D sin-cos position embeddings are added (MAE's
``get_2d_sincos_pos_embed``: half of the channels encode the row, half the column, each as
[sin(pos * omega_i), cos(pos * omega_i)] with omega_i = 10000^(-i / (d/4))), and pre-norm
transformer blocks follow: x + MSA(LN(x)), then x + MLP(LN(x)) (GELU, 4x width by default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, N, p*p*C) with N = (H/p)(W/p) patches in row-major order; each
    patch flattened as (p, p, C), the order of MAE's ``patchify``."""
    b, c, h, w = x.shape
    gh, gw = h // patch_size, w // patch_size
    x = x.reshape(b, c, gh, patch_size, gw, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch_size * patch_size * c)


def unpatchify(tokens: Tensor, patch_size: int, channels: int, grid: tuple[int, int]) -> Tensor:
    """(B, N, p*p*C) -> (B, C, H, W), the inverse of ``patchify``."""
    b = tokens.shape[0]
    gh, gw = grid
    x = tokens.reshape(b, gh, gw, patch_size, patch_size, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, gh * patch_size, gw * patch_size)


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """(N,) positions -> (N, dim) embeddings [sin(pos * omega), cos(pos * omega)]."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.double()[:, None] * omega[None]  # (N, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_position_embedding(dim: int, grid: tuple[int, int]) -> Tensor:
    """Fixed 2-D sin-cos position embeddings (N, dim) of a gh x gw grid, row-major."""
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(
        torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij"
    )  # (gh, gw) each
    # MAE's code embeds the width coordinate in the first half, the height in the second
    emb = torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], 1)
    return emb.float()


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, d/heads)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + MSA(LN(x)); x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def transformer(dim: int, depth: int, heads: int, mlp_ratio: float) -> nn.Sequential:
    return nn.Sequential(*(Block(dim, heads, mlp_ratio) for _ in range(depth)))


def init_vit_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linear layers with zero bias, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
