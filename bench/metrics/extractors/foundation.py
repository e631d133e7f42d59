"""DINOv2 and CLIP feature extractors for RGB data: FD on their features (dgm-eval, Stein et
al., "Exposing flaws of generative model evaluation metrics and their unfair treatment of
diffusion models", NeurIPS 2023, made FD on DINOv2 ViT-L/14 its default) and CMMD on CLIP's
(Jayasumana et al., "Rethinking FID: Towards a Better Evaluation Metric for Image
Generation", CVPR 2024; :mod:`bench.evaluators.fidelity_metrics.cmmd`).

Both take uint8 RGB images and preprocess them exactly as torch-fidelity 0.4's own
extractors do (TF1-compatible bilinear resize to the network's resolution, then the
network's mean and std): ``dinov2-vit-s-14`` gives the normalised class token of DINOv2
ViT-S/14 (Oquab et al. 2023, 384-d), ``clip-vit-b-32`` CLIP ViT-B/32's image embedding
(Radford et al. 2021, 512-d). Nothing here unpickles:

- DINOv2 is our own copy of the architecture of facebookresearch/dinov2's
  ``DinoVisionTransformer`` (pre-norm blocks with LayerScale, qkv bias, GELU MLP, the
  position embedding of 518-pixel training bicubically interpolated with the 0.1 offset),
  so its weights are a plain state dict read with ``torch.load(weights_only=True)``: the
  official ``dinov2_vits14_pretrain.pth`` or ``--feature-weights PATH`` to a copy of it;
- CLIP is torch-fidelity's port of OpenAI's model (``build_model``), fed a state dict read
  with ``weights_only=True`` from ``--feature-weights PATH``. OpenAI's own file is a
  TorchScript archive; when it is downloaded here its sha256 is checked against the one in
  its URL before ``torch.jit.load`` converts it, once, into a plain state dict in the cache.

Weights of the right architecture made locally (a smaller ViT, a smaller CLIP) load the
same way: the architecture is read off the state dict's shapes. That is how the tests run
both paths without internet.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import GenbenchError

DINOV2 = "dinov2-vit-s-14"
CLIP = "clip-vit-b-32"
URLS = {
    DINOV2: "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
    CLIP: "https://openaipublic.azureedge.net/clip/models/"
    "40d3657591ef2d98da9a18ebc2b29a4b6e9b5ac53c7d4ab5e1a49ec3b75f7c8c/ViT-B-32.pt",
}
#: the feature (layer) name of each, torch-fidelity's
LAYERS = {DINOV2: "dinov2", CLIP: "clip"}


# ---------------------------------------------------------------- DINOv2


class _Attention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)


class _LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))


class _PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)


class _Block(nn.Module):
    """DINOv2's ``Block``: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim)
        self.ls1 = _LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, hidden)
        self.ls2 = _LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads)
        q, k, v = (t.transpose(1, 2) for t in torch.unbind(qkv, 2))
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        x = x + self.attn.proj(attended) * self.ls1.gamma
        hidden = self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))
        return x + hidden * self.ls2.gamma


class DinoV2(nn.Module):
    """DINOv2's ``DinoVisionTransformer`` at inference: the normalised class token."""

    def __init__(self, dim: int, depth: int, heads: int, patch: int, grid: int) -> None:
        super().__init__()
        self.patch = patch
        self.patch_embed = _PatchEmbed(dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # in the checkpoint; unused here
        self.blocks = nn.ModuleList(_Block(dim, heads, 4 * dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> DinoV2:
        """The architecture read off the checkpoint's shapes (64-d heads, as every DINOv2)."""
        dim = state["cls_token"].shape[-1]
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        patch = state["patch_embed.proj.weight"].shape[-1]
        grid = math.isqrt(state["pos_embed"].shape[1] - 1)
        model = cls(dim, depth, max(1, dim // 64), patch, grid)
        model.load_state_dict(state)
        return model.eval().requires_grad_(False)

    def position_embedding(self, w: int, h: int) -> Tensor:
        """The position embedding for a w x h patch grid: bicubic interpolation with
        DINOv2's 0.1 offset, no antialiasing (``interpolate_pos_encoding``)."""
        pos = self.pos_embed.float()
        count = pos.shape[1] - 1
        side = math.isqrt(count)
        if count == w * h and w == h:
            return self.pos_embed
        grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(
            grid,
            scale_factor=((w + 0.1) / side, (h + 0.1) / side),
            mode="bicubic",
            antialias=False,
        )
        grid = grid.permute(0, 2, 3, 1).reshape(1, w * h, -1)
        return torch.cat([pos[:, :1], grid], dim=1).to(self.pos_embed.dtype)

    def forward(self, x: Tensor) -> Tensor:
        w, h = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        tokens = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(w, h)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]


# ---------------------------------------------------------------- weights


def _cache_path(url: str, suffix: str = "") -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / (Path(url).name + suffix)


def _download(url: str, name: str) -> Path:
    from bench.metrics.extractors import download_weights

    return download_weights(url, name, "a state dict of them")


def _official_clip_state() -> Path:
    """OpenAI's CLIP file converted once into a plain state dict (sha256 checked first)."""
    from bench.metrics.extractors import sha256_file

    converted = _cache_path(URLS[CLIP], ".state_dict.pt")
    if converted.exists():
        return converted
    archive = _download(URLS[CLIP], CLIP)
    expected = URLS[CLIP].split("/")[-2]
    if sha256_file(archive) != expected:
        raise GenbenchError(f"{archive} is not OpenAI's ViT-B/32 file (sha256 differs); delete it")
    state = torch.jit.load(str(archive), map_location="cpu").state_dict()  # verified file
    torch.save({k: v.detach().clone() for k, v in state.items()}, converted)
    return converted


@cache
def foundation_weights(name: str, weights_path: str | None) -> tuple[dict[str, Tensor], str]:
    """The state dict of ``name`` (given file or the official one) and its file's sha256."""
    from bench.metrics.extractors import load_weights_file

    if weights_path:
        return load_weights_file(Path(weights_path), "--feature-weights")
    path = _official_clip_state() if name == CLIP else _download(URLS[name], name)
    return load_weights_file(path, f"{name} weights")


def build_network(name: str, weights_path: str | None) -> nn.Module:
    """The frozen network of ``name`` with its weights, or one clear error."""
    state = foundation_weights(name, weights_path)[0]
    what = f"--feature-weights {weights_path}" if weights_path else f"the {name} weights"
    try:
        if name == DINOV2:
            return DinoV2.from_state_dict(state)
        from torch_fidelity.feature_extractor_clip import build_model

        return build_model(dict(state), torch.float32)
    except (KeyError, RuntimeError, ValueError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:160]
        raise GenbenchError(f"{what} do not fit the {name} architecture: {first}") from None


def preprocess(x: Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """torch-fidelity's: uint8 -> float, TF1-compatible bilinear resize, mean/std on 0..255."""
    from torch_fidelity.interpolate_compat_tensorflow import (
        interpolate_bilinear_2d_like_tensorflow1x,
    )
    from torchvision.transforms.functional import normalize

    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise GenbenchError(f"expects uint8 RGB images (N, 3, H, W), got {x.dtype} {x.shape}")
    x = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(size, size), align_corners=False)
    return normalize(x, tuple(255 * m for m in mean), tuple(255 * s for s in std))


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_STATS = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def features(name: str, network: nn.Module, x: Tensor) -> Tensor:
    """(N, d) float32 features of uint8 RGB images, as torch-fidelity's extractor gives."""
    if name == DINOV2:
        return network(preprocess(x, 224, *IMAGENET)).float()
    visual: Any = network.visual
    return visual(preprocess(x, int(visual.input_resolution), *CLIP_STATS)).float()
