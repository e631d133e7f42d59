"""cpc: van den Oord et al. 2018, "Representation Learning with Contrastive Predictive
Coding", in its image form and with the training of Henaff et al. 2020 ("Data-Efficient Image
Recognition with Contrastive Predictive Coding", CPC v2).

- The image is cut into a G x G grid of OVERLAPPING p x p patches with stride s < p
  (``patch_grid``: one ``unfold``; 28x28: 8x8 patches, stride 6, a 4x4 grid covering the
  top-left 26x26 pixels (MNIST's border is blank); 8x8 digits: 4x4 patches, stride 2, a 3x3
  grid; 32x32: 8x8 patches, stride 4, a 7x7 grid, the papers' half overlap).
- Every patch of the batch is encoded at once by the shared ResNet encoder f_theta (the patch
  encoder): z_{i,j} = f_theta(x_{i,j}) (globally pooled features).
- An autoregressive context network g_phi over the rows of the grid (PixelCNN-style, as both
  papers do for images): residual blocks of masked convolutions whose kernels cover only the
  current row and the rows above, so c_{i,j} = g_phi({z_{u,v}: u <= i}).
- Predictions of the embeddings k = 1..K rows below: zhat_{i+k,j} = W_k c_{i,j} (a linear map
  per offset), scored against every patch embedding at that offset in the batch,
  score(zhat_p, z_q) = zhat_p . z_q, with InfoNCE (eq. 4 of van den Oord et al.):
      L_k = -E_p[log exp(zhat_p . z_p) / sum_q exp(zhat_p . z_q)],
  q running over all the targets of offset k in the batch (other locations of the same image
  and all locations of the other images: the negatives of CPC v2); L = mean_k L_k.
- Directions (CPC v2, "predicting lengths and directions"): ``directions`` = 4 (default)
  predicts top-down, bottom-up, left-to-right and right-to-left, 2 only the first two (about
  half the training cost: `--set cpc.directions=2`); each direction turns the grid
  so that it runs down the rows and has its own context network and W_k; the loss is the
  mean over directions. ``directions=1`` is CPC v1's top-down only.

The negatives are those of the GLOBAL batch: on several ranks each rank encodes its own
images' patches and the embeddings z are gathered (:func:`bench.distributed.gather`,
differentiable), so that every rank computes the loss over the whole batch (the context
networks and W_k, small next to the patch encoder, run on the gathered grid on every rank).
The loss has no randomness. With gradient accumulation the negatives are one micro-batch's.

The representation (``encode``, the papers' linear evaluation): the patch encoder's
embeddings mean-pooled over the grid, (B, feature_dim).
Departures: the shared encoder keeps its batch normalisation (CPC v2 replaces it with layer
normalisation because batch statistics can leak information between patches; with 64 images
per batch, each patch's statistics are shared by thousands of others); no patch-level
augmentation (CPC v2's colour dropping and spatial jitter); a small context network (three
bottleneck blocks of row-causal 2x3 convolutions); on 28x28 a 4x4 grid of 8x8 patches with a
2-pixel overlap rather than the papers' half overlap (a 6x6 grid, stride 4, is ``--set
cpc.patch_stride=4``): the patch encoder runs once per patch, and 36 patches per image cost
about 3x the quick budget's time on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.ssl.base import SelfSupervisedMethod
from baselines.ssl.losses import diagonal_info_nce
from bench.distributed import gather
from bench.method import Batch, DataSpec, Update, scale_table
from bench.registry import register_method

#: per data scale: patch size, stride (< patch size: overlapping patches), rows predicted
GRIDS: dict[str, dict[str, int]] = {
    "8x8": {"patch_size": 4, "patch_stride": 2, "prediction_steps": 2},
    "28x28": {"patch_size": 8, "patch_stride": 6, "prediction_steps": 2},
    "32x32": {"patch_size": 8, "patch_stride": 4, "prediction_steps": 3},
}


#: quarter turns of the grid per prediction direction: top-down (CPC v1), bottom-up, then
#: left-to-right and right-to-left (CPC v2 predicts in several directions)
QUARTER_TURNS = (0, 2, 1, 3)


def patch_grid(x: Tensor, patch_size: int, stride: int) -> Tensor:
    """(B, C, H, W) -> (B, G_h, G_w, C, p, p): the overlapping patches, row-major,
    G = (H - p) // s + 1 (pixels beyond the last full patch are dropped)."""
    b, c, h, w = x.shape
    gh, gw = (h - patch_size) // stride + 1, (w - patch_size) // stride + 1
    cols = F.unfold(x, patch_size, stride=stride)  # (B, C p p, G_h G_w)
    return cols.transpose(1, 2).reshape(b, gh, gw, c, patch_size, patch_size)


class RowCausalConv(nn.Conv2d):
    """A convolution over the grid whose output at row i sees only rows <= i: a kernel of
    height k placed on rows i - k + 1 .. i (top padding only), all columns (width 3)."""

    def __init__(self, channels: int, rows: int = 2) -> None:
        super().__init__(channels, channels, (rows, 3))
        self.rows = rows

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (1, 1, self.rows - 1, 0)))  # (left, right, top, bottom)


class ContextNetwork(nn.Module):
    """PixelCNN-style autoregressive context over the rows: z (B, d, G, G) -> c (B, d, G, G)
    with c[:, :, i] a function of z[:, :, :i + 1] only. Residual bottleneck blocks (1x1 down
    to d/2, a row-causal 2x3 convolution, 1x1 up); each block reaches one row further up."""

    def __init__(self, channels: int, blocks: int) -> None:
        super().__init__()
        inner = channels // 2
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(),
                nn.Conv2d(channels, inner, 1),
                nn.ReLU(),
                RowCausalConv(inner),
                nn.ReLU(),
                nn.Conv2d(inner, channels, 1),
            )
            for _ in range(blocks)
        )

    def forward(self, z: Tensor) -> Tensor:
        c = z
        for block in self.blocks:
            c = c + block(c)
        return c


def _pointwise(x: Tensor, convs: list[nn.Module]) -> Tensor:
    """D 1x1 convolutions (one per direction) on x (D, B, H, W, C_in), channels last:
    one batched matrix product -> (D, B, H, W, C_out)."""
    weight = torch.stack([conv.weight.flatten(1) for conv in convs])  # (D, C_out, C_in)
    bias = torch.stack([conv.bias for conv in convs])  # (D, C_out)
    flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (D, N, C_in)
    out = torch.baddbmm(bias[:, None], flat, weight.transpose(1, 2))
    return out.view(*x.shape[:-1], weight.shape[1])


def _row_causal(x: Tensor, convs: list[nn.Module]) -> Tensor:
    """D :class:`RowCausalConv` (one per direction) on x (D, B, H, W, C), channels last:
    the input padded as the module pads it (rows above, one column each side), its kh x 3
    shifted copies side by side (tap-major) and one batched product with the kernels laid
    out the same way."""
    rows = convs[0].rows
    d, b, h, w, c = x.shape
    padded = F.pad(x, (0, 0, 1, 1, rows - 1, 0))  # (D, B, H + rows - 1, W + 2, C)
    taps = torch.cat(
        [padded[:, :, r : r + h, s : s + w] for r in range(rows) for s in range(3)], dim=-1
    )  # (D, B, H, W, rows 3 C)
    weight = torch.stack(
        [conv.weight.permute(2, 3, 1, 0).reshape(-1, conv.weight.shape[0]) for conv in convs]
    )  # (D, rows 3 C_in, C_out)
    bias = torch.stack([conv.bias for conv in convs])
    out = torch.baddbmm(bias[:, None], taps.reshape(d, -1, taps.shape[-1]), weight)
    return out.view(d, b, h, w, weight.shape[-1])


@register_method("cpc")
class CPC(SelfSupervisedMethod):
    summary = "Contrastive predictive coding (van den Oord 2018, Henaff 2020) on a patch grid"

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {
            **scale_table(GRIDS, spec, "cpc's patch-grid table"),
            "directions": 4,
            "context_blocks": 3,
            "lr": 1e-3,
        }

    def __init__(
        self,
        spec: DataSpec,
        patch_size: int,
        patch_stride: int,
        prediction_steps: int,
        directions: int,
        context_blocks: int,
        lr: float,
    ) -> None:
        super().__init__(spec)
        if patch_stride >= patch_size:
            raise ValueError("cpc patches overlap: patch_stride must be below patch_size")
        grid_rows = (spec.height - patch_size) // patch_stride + 1
        if not 1 <= prediction_steps < grid_rows:
            raise ValueError(f"prediction_steps must be in 1..{grid_rows - 1}")
        self.patch_size, self.patch_stride = patch_size, patch_stride
        self.prediction_steps = prediction_steps
        if directions not in (1, 2, 4):
            raise ValueError(f"cpc.directions must be 1, 2 or 4, got {directions}")
        dim = self.encoder.feature_dim
        # one context network and one set of W_k per direction; W_k, k = 1..K, as one 1x1
        # convolution with K d outputs
        self.contexts = nn.ModuleList(
            ContextNetwork(dim, context_blocks) for _ in range(directions)
        )
        self.predictors = nn.ModuleList(
            nn.Conv2d(dim, prediction_steps * dim, 1) for _ in range(directions)
        )
        self.add_optimizer("adam", torch.optim.Adam(self.parameters(), lr=lr))

    def patch_embeddings(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> z (B, d, G_h, G_w): every patch of the batch through the encoder."""
        patches = patch_grid(x, self.patch_size, self.patch_stride)  # (B, G_h, G_w, C, p, p)
        b, gh, gw = patches.shape[:3]
        z = self.encoder(patches.flatten(0, 2))  # (B G_h G_w, d)
        return z.view(b, gh, gw, -1).permute(0, 3, 1, 2)

    def prediction_loss(self, z: Tensor) -> Tensor:
        """z (B, d, G, G) patch embeddings -> the InfoNCE loss averaged over offsets k and
        directions (the grid turned so that each direction runs down the rows).

        All directions run as one batched pass (:meth:`batched_loss`) when their turned
        grids have one shape (a square grid, or directions <= 2); otherwise one direction
        after the other (:meth:`direction_loss`). Both compute the same loss."""
        gh, gw = z.shape[2:]
        if gh == gw or len(self.contexts) <= 2:
            return self.batched_loss(z)
        losses = [
            self.direction_loss(torch.rot90(z, turns, dims=(2, 3)), context, predictors)
            for turns, context, predictors in zip(
                QUARTER_TURNS, self.contexts, self.predictors, strict=False
            )
        ]
        return torch.stack(losses).mean()

    def batched_loss(self, z: Tensor) -> Tensor:
        """Every direction at once, channels last: the D turned grids (D, B, G, G, d); each
        1x1 convolution of the D context networks is one batched matrix product over the
        directions, the row-causal 2x3 convolution one product over its 6 shifted copies,
        the W_k one product, and the InfoNCE scores of all directions one batched product
        per offset k. The same function as :meth:`direction_loss` per direction (the
        weights are the per-direction modules', stacked), without 40-odd tiny convolution
        calls per step on a 3x3 grid (where they cost about 40% of cpc's step on a CPU)."""
        directions = len(self.contexts)
        x = torch.stack([torch.rot90(z, t, dims=(2, 3)) for t in QUARTER_TURNS[:directions]])
        x = x.permute(0, 1, 3, 4, 2)  # (D, B, G_h, G_w, d)
        shape = x.shape
        c = x
        for index in range(len(self.contexts[0].blocks)):
            blocks = [context.blocks[index] for context in self.contexts]
            h = _pointwise(F.relu(c), [b[1] for b in blocks])
            h = _row_causal(F.relu(h), [b[3] for b in blocks])
            c = c + _pointwise(F.relu(h), [b[5] for b in blocks])
        predictions = _pointwise(c, list(self.predictors))  # (D, B, G_h, G_w, K d)
        d = shape[-1]
        losses = []
        for k in range(1, self.prediction_steps + 1):
            pred = predictions[:, :, :-k, :, (k - 1) * d : k * d].reshape(directions, -1, d)
            target = x[:, :, k:].reshape(directions, -1, d)
            scores = torch.bmm(pred, target.transpose(1, 2))  # (D, N_k, N_k)
            n = scores.shape[1]
            labels = torch.arange(n, device=z.device).repeat(directions)
            losses.append(F.cross_entropy(scores.reshape(directions * n, n), labels))
        return torch.stack(losses).mean()

    def direction_loss(self, z: Tensor, context: nn.Module, predictors: nn.Module) -> Tensor:
        """Top-to-bottom predictions on z (B, d, G, G): mean over k = 1..K of L_k."""
        d = z.shape[1]
        predictions = predictors(context(z))  # (B, K d, G, G)
        losses = []
        for k in range(1, self.prediction_steps + 1):
            # context rows 0..G-1-k predict the embeddings k rows below
            pred = predictions[:, (k - 1) * d : k * d, :-k]  # (B, d, G - k, G)
            pred = pred.permute(0, 2, 3, 1).reshape(-1, d)  # (N_k, d)
            target = z[:, :, k:].permute(0, 2, 3, 1).reshape(-1, d)  # (N_k, d)
            losses.append(diagonal_info_nce(pred @ target.T))  # (N_k, N_k) scores
        return torch.stack(losses).mean()

    def train_step(self, batch: Batch, step: int) -> Iterator[Update]:
        def loss() -> Tensor:
            # every rank's patch embeddings (B_global, d, G, G): the global batch's negatives
            return self.prediction_loss(gather(self.patch_embeddings(batch.x)))

        yield Update("adam", loss)

    def encode(self, x: Tensor) -> Tensor:
        return self.patch_embeddings(x).mean(dim=(2, 3))  # (B, d, G, G) -> (B, d)
