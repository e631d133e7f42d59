"""mae: He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners".

- A ViT encoder (``baselines.common.vit``: linear patch embedding, fixed 2-D sin-cos position
  embeddings, pre-norm blocks, a cls token) sees ONLY the visible patches.
- Random masking per sample (section 3, "Masking"; the reference code's ``random_masking``):
  noise ~ U(0, 1)^N, ids_shuffle = argsort(noise), the first int(N (1 - mask_ratio)) patches
  of that order are kept; ids_restore = argsort(ids_shuffle) undoes the shuffle. Mask ratio
  0.75. The noise is drawn per example from the training batch (``batch.rand(N)``): an
  image's mask is a function of (run seed, step, its position in the global batch), the
  same however the batch is split across ranks or accumulation micro-batches.
- A light decoder (narrower and shallower than the encoder) receives the encoded visible
  tokens, linearly projected to its width, plus ONE shared learned mask token at every masked
  position, unshuffled back to image order, with its own fixed sin-cos position embeddings; a
  linear layer predicts each patch's pixels.
- Loss: mean squared error on the MASKED patches only, the target pixels normalised per patch
  (norm_pix_loss: (x - mean) / sqrt(var + 1e-6); ``norm_pix_loss=False`` regresses raw pixels).
- AdamW(betas 0.9, 0.95), weight decay 0.05, linear warm-up then cosine decay to 0 over the
  run's steps (appendix A.1; the paper's 40 warm-up epochs of 800 are a 5% fraction,
  ``warmup_fraction``), applied by the training loop (``warmup-cosine`` with
  int(warmup_fraction x ``Method.budget_steps``) warm-up steps, known once the loop has
  called ``set_budget``).

The representation (``encode``): ALL patches, no masking, through the encoder and its final
LayerNorm; the probe gets the mean of the patch tokens (``feature="mean"``, the paper's
global-pool variant, its code's ``--global_pool``; default) or the cls token (``"cls"``,
``main_linprobe.py``'s default). At the quick budget the two are within a point of each
other; the mean was slightly ahead on mnist5k (0.90 against 0.89, measured).
Inputs are standardised with the train split's per-channel mean and std (``prepare``), as
the paper does with its dataset's statistics. The encoder is this ViT, not the shared ResNet
(METHODS.md).
Departures: the ViT is sized for the quick budget on a CPU (width 64, depth 3, 32-wide heads;
decoder width 32, depth 2, against ViT-B/16 with an 8-block, 512-wide decoder), and 2x2
patches on 8x8 and 28x28 images.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from baselines.common.vit import (
    init_vit_weights,
    patchify,
    sincos_position_embedding,
    transformer,
)
from baselines.ssl.base import SelfSupervisedMethod
from bench.method import Batch, DataSpec, Update, scale_table
from bench.registry import register_method

FEATURES = ("cls", "mean")

#: per data scale: patch size, encoder width / depth / heads, decoder width / depth / heads.
#: Heads are 32 wide (the paper's decoder heads; ViT-B's are 64), and the patches are small
#: (2x2: 16 tokens on 8x8, 196 on 28x28): at the quick budget (938 steps) a 28x28 ViT with
#: 4x4 patches (49 tokens) probes at about 0.88 on mnist5k, with 2x2 patches at about 0.90
#: (measured), and few heads keep CPU attention cheap.
VIT_SIZES: dict[str, dict[str, Any]] = {
    "8x8": {"patch_size": 2, "width": 64, "depth": 3, "heads": 2},
    "28x28": {"patch_size": 2, "width": 64, "depth": 3, "heads": 2},
    "32x32": {"patch_size": 4, "width": 192, "depth": 6, "heads": 6},
}
DECODER_SIZES: dict[str, dict[str, Any]] = {
    "8x8": {"decoder_width": 32, "decoder_depth": 2, "decoder_heads": 1},
    "28x28": {"decoder_width": 32, "decoder_depth": 2, "decoder_heads": 1},
    "32x32": {"decoder_width": 96, "decoder_depth": 2, "decoder_heads": 3},
}


def random_masking(
    tokens: Tensor, mask_ratio: float, noise: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample random masking by argsort of uniform noise (the paper's shuffle).

    tokens (B, N, D) and noise (B, N) ~ U[0, 1) (per example, from the training batch) ->
    visible (B, N_keep, D), mask (B, N) with 1 = masked in image order, ids_restore (B, N)
    that unshuffles [visible, masked] back to image order."""
    b, n, d = tokens.shape
    keep = int(n * (1 - mask_ratio))
    ids_shuffle = noise.to(tokens.device).argsort(dim=1)  # ascending: the first `keep` are kept
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :keep]
    visible = tokens.gather(1, ids_keep[..., None].expand(-1, -1, d))  # (B, N_keep, D)
    mask = torch.ones(b, n, device=tokens.device)
    mask[:, :keep] = 0
    mask = mask.gather(1, ids_restore)  # shuffled order -> image order
    return visible, mask, ids_restore


class MaskedAutoencoderViT(nn.Module):
    def __init__(
        self,
        spec: DataSpec,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        decoder_width: int,
        decoder_depth: int,
        decoder_heads: int,
        mlp_ratio: float,
    ) -> None:
        super().__init__()
        for where, dim, count in (("", width, heads), ("decoder_", decoder_width, decoder_heads)):
            if dim % count:  # each attention head takes an equal share of the width
                raise ValueError(
                    f"mae.{where}width {dim} must be divisible by mae.{where}heads {count}"
                )
        if spec.height % patch_size or spec.width % patch_size:
            raise ValueError(f"patch size {patch_size} does not divide {spec.scale} images")
        self.patch_size = patch_size
        self.grid = (spec.height // patch_size, spec.width // patch_size)
        patch_dim = patch_size * patch_size * spec.channels
        # -- encoder
        self.patch_embed = nn.Linear(patch_dim, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        # per-channel input statistics of the train split (set by ``MAE.prepare``)
        self.register_buffer("pixel_mean", torch.full((1, spec.channels, 1, 1), 0.5))
        self.register_buffer("pixel_std", torch.full((1, spec.channels, 1, 1), 0.5))
        self.register_buffer("pos_embed", sincos_position_embedding(width, self.grid)[None])
        self.blocks = transformer(width, depth, heads, mlp_ratio)
        self.norm = nn.LayerNorm(width)
        # -- decoder
        self.decoder_embed = nn.Linear(width, decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_width))
        self.register_buffer(
            "decoder_pos_embed", sincos_position_embedding(decoder_width, self.grid)[None]
        )
        self.decoder_blocks = transformer(decoder_width, decoder_depth, decoder_heads, mlp_ratio)
        self.decoder_norm = nn.LayerNorm(decoder_width)
        self.decoder_pred = nn.Linear(decoder_width, patch_dim)
        init_vit_weights(self)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def embed(self, x: Tensor) -> Tensor:
        """(B, C, H, W) in [0, 1] -> (B, N, width) patch embeddings + position embeddings."""
        x = (x - self.pixel_mean) / self.pixel_std
        return self.patch_embed(patchify(x, self.patch_size)) + self.pos_embed

    def run_encoder(self, tokens: Tensor) -> Tensor:
        """(B, n, width) position-embedded patch tokens -> (B, 1 + n, width), cls first.
        The cls token's position embedding is zero (MAE), so it is added bare."""
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return self.norm(self.blocks(torch.cat([cls, tokens], dim=1)))

    def run_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """latent (B, 1 + N_keep, width) -> per-patch pixel predictions (B, N, p*p*C)."""
        x = self.decoder_embed(latent)  # (B, 1 + N_keep, d_dec)
        b, n = ids_restore.shape
        masked = self.mask_token.expand(b, n + 1 - x.shape[1], -1)  # (B, N - N_keep, d_dec)
        patches = torch.cat([x[:, 1:], masked], dim=1)  # shuffled order: visible, then masked
        patches = patches.gather(1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], patches + self.decoder_pos_embed], dim=1)  # (B, 1 + N, d_dec)
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x[:, 1:])  # drop cls -> (B, N, p*p*C)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward(self, x: Tensor, mask_ratio: float, noise: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, C, H, W) and the masking noise (B, N) -> predictions (B, N, p*p*C) and the
        mask (B, N), 1 = masked."""
        visible, mask, ids_restore = random_masking(self.embed(x), mask_ratio, noise)
        return self.run_decoder(self.run_encoder(visible), ids_restore), mask

    def features(self, x: Tensor, feature: str) -> Tensor:
        """All patches, no masking -> (B, width): the cls token or the mean patch token."""
        latent = self.run_encoder(self.embed(x))
        return latent[:, 0] if feature == "cls" else latent[:, 1:].mean(1)


def masked_patch_loss(
    images: Tensor, pred: Tensor, mask: Tensor, patch_size: int, norm_pix_loss: bool
) -> Tensor:
    """MSE per patch, averaged over the masked patches only (MAE's ``forward_loss``)."""
    target = patchify(images, patch_size)  # (B, N, p*p*C)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)  # unbiased, as in the reference code
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = (pred - target).pow(2).mean(dim=-1)  # (B, N)
    return (per_patch * mask).sum() / mask.sum()


@register_method("mae")
class MAE(SelfSupervisedMethod):
    summary = "Masked autoencoder (He 2022): ViT on 25% visible patches, light decoder"
    hparam_choices = {"feature": FEATURES}

    hparam_ranges = {"mask_ratio": (0, 1, "()"), "mlp_ratio": (0, None, "(]")}

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {
            **scale_table(VIT_SIZES, spec, "mae's ViT size table"),
            **scale_table(DECODER_SIZES, spec, "mae's decoder size table"),
            "mlp_ratio": 4.0,
            "mask_ratio": 0.75,
            "norm_pix_loss": True,
            "feature": "mean",
            "lr": 1.5e-3,
            "weight_decay": 0.05,
            "warmup_fraction": 0.05,
        }

    def __init__(
        self,
        spec: DataSpec,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        decoder_width: int,
        decoder_depth: int,
        decoder_heads: int,
        mlp_ratio: float,
        mask_ratio: float,
        norm_pix_loss: bool,
        feature: str,
        lr: float,
        weight_decay: float,
        warmup_fraction: float,
    ) -> None:
        super().__init__(spec)
        # the ViT (with its decoder) replaces the shared ResNet (METHODS.md)
        self.encoder: MaskedAutoencoderViT = MaskedAutoencoderViT(
            spec,
            patch_size,
            width,
            depth,
            heads,
            decoder_width,
            decoder_depth,
            decoder_heads,
            mlp_ratio,
        )
        self.mask_ratio, self.norm_pix_loss, self.feature = mask_ratio, norm_pix_loss, feature
        self.warmup_fraction = warmup_fraction
        # no weight decay on biases, norms and the cls / mask tokens (the reference code's
        # param_groups_weight_decay)
        decay = [p for p in self.encoder.parameters() if p.ndim >= 2 and p.shape[:2] != (1, 1)]
        no_decay = [p for p in self.encoder.parameters() if p.ndim < 2 or p.shape[:2] == (1, 1)]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay}],
            lr=lr,
            betas=(0.9, 0.95),
            weight_decay=0.0,
        )
        self.add_warmup_cosine_optimizer("adamw", optimizer, warmup_fraction)

    def prepare(self, train_x: Tensor, train_y: Tensor, held_out_x: Tensor) -> None:
        # the paper standardises its inputs with the dataset's per-channel mean and std
        self.encoder.pixel_mean.copy_(train_x.mean(dim=(0, 2, 3)).view_as(self.encoder.pixel_mean))
        self.encoder.pixel_std.copy_(train_x.std(dim=(0, 2, 3)).view_as(self.encoder.pixel_std))

    def train_step(self, batch: Batch, step: int) -> Iterator[Update]:
        noise = batch.rand(self.encoder.num_patches)  # (B, N): each image's own mask

        def loss() -> Tensor:
            pred, mask = self.encoder(batch.x, self.mask_ratio, noise)
            patch_size = self.encoder.patch_size
            return masked_patch_loss(batch.x, pred, mask, patch_size, self.norm_pix_loss)

        yield Update("adamw", loss)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder.features(x, self.feature)  # (B, C, H, W) -> (B, width)
