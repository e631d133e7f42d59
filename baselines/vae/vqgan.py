"""VQGAN (Esser, Rombach & Ommer 2021, "Taming Transformers for High-Resolution Image
Synthesis"): the VQ autoencoder of :mod:`baselines.vae.vq_vae` trained with a patch-based
adversarial loss, and a GPT-style transformer prior over the code sequence, both inside one
run (the two-stage schedule of vq-vae: ``prior_fraction`` of the run's budget).

Stage 1 (section 3.1-3.2, eq. 4-7, and the authors' ``VQLPIPSWithDiscriminator``):

    L = L_rec + ||sg[E(x)] - z_q||^2 + beta ||sg[z_q] - E(x)||^2 + lambda L_GAN,

- L_rec = |x - x_hat| (L1, mean over pixels) + ``perceptual_weight`` * a perceptual
  distance, the latter ONLY where a feature network can be loaded: there is no internet, so
  by default it is off and recorded as unavailable; ``perceptual_weights = <path>`` loads
  torchvision VGG16 features from a local state dict and uses the LPIPS distance with
  uniform channel weights (LPIPS's ``lpips=False`` branch: channel-normalised features,
  squared differences summed over channels, averaged over space, summed over relu1_2 ..
  relu5_3; LPIPS's learnt linear weights need their own file). The benchmark's FID feature
  extractors are never used for this (that would train against the evaluator);
- the codebook terms as in the paper (the taming code's ``legacy`` quantiser puts beta on
  the codebook term instead; here beta = 0.25 multiplies the commitment term, as in eq. 4);
- L_GAN: a PatchGAN critic (Isola et al. 2017, taming's ``NLayerDiscriminator``: 4x4
  convolutions, batch norm, LeakyReLU 0.2, one logit per patch) with the hinge loss,
  critic 1/2 (E relu(1 - D(x)) + E relu(1 + D(x_hat))), generator -E D(x_hat);
- the adaptive weight (eq. 7) lambda = ||grad_GL L_rec|| / (||grad_GL L_GAN|| + 1e-4) at the
  decoder's last layer GL, clamped to [0, 1e4], detached, times ``disc_weight`` = 0.8 (the
  taming configs); the critic and the GAN term start at ``disc_start_fraction`` of the
  first stage (taming: a fixed ``disc_start`` step, here scaled to the budget).

One first-stage step yields the autoencoder's update (its loss closure computes lambda with
``torch.autograd.grad`` at GL, as taming's ``calculate_adaptive_weight``; the critic's
``requires_grad`` is off meanwhile, so the generator term trains the autoencoder only), then
the codebook's EMA update, then, once the critic is on, the critic's update on the same real
batch and the reconstructions of the autoencoder's closure (taming's ``optimizer_idx`` 1).
Under torchrun the two gradients at GL are averaged over the ranks (an all-reduce inside the
closure) before their norms are taken, so every rank uses lambda of the whole batch; with
gradient accumulation each micro-batch's closure computes lambda from its own micro-batch
(a closure sees one micro-batch), a small departure from one process.

Stage 2 (section 3.2): a causal transformer (GPT: token and position embeddings, pre-norm
blocks of causal self-attention and a 4x MLP, a start-of-sequence token so that the first
code has a distribution) trained by maximum likelihood on the frozen encoder's codes in
raster order, AdamW (0.9, 0.95) with weight decay 0.01 on the weight matrices, as minGPT.

Capabilities: SAMPLE (codes ancestrally from the transformer, n calls, then the decoder;
the decoder's image clamped to [0, 1] and rounded to the L levels; the row samples the full
distribution, an extra sampler row uses the top-k sampling of the authors' scripts with
k = K / 4) and ENCODE (z_e(x)).
No likelihood: the L1 / adversarial decoder is not a distribution over the levels.

Departures, for the quick budget: small networks (the vq-vae autoencoder, K = 64 codes at
8x8, a 32-wide critic, a 2-layer 64-wide transformer at 8x8); Adam(2.88e-4 = 4.5e-6 x
batch 64, the taming scaling; betas 0.5, 0.9); the EMA codebook (VQ-VAE appendix A.1) by
default, because taming's codebook loss collapsed to 8-19 of 64 codes at this budget
(``codebook = loss`` restores it); half of the budget for the transformer (``prior_fraction
= 0.5``) at a learning rate of 3e-3 (taming: 4.5e-6 x batch): with 30% of the budget at
1e-3 it had too few updates to model the codes; no dropout.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.common.dcgan import dcgan_init
from baselines.common.vq import CODEBOOK_INITS, CODEBOOK_UPDATES
from baselines.gan.losses import hinge_critic_loss, wasserstein_generator_loss
from baselines.vae.decoders import to_network
from baselines.vae.vq_vae import (
    AUTOENCODER_SIZES,
    CodePrior,
    VQAutoencoder,
    global_batch_size,
    quantiser_hparams,
    schedule_hparams,
)
from bench import distributed
from bench.errors import GenbenchError
from bench.method import Batch, DataSpec, Update, from_levels, scale_table, to_levels
from bench.registry import register_method

PERCEPTUAL_UNAVAILABLE = "unavailable (no LPIPS/VGG weights)"
#: the relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 boundaries of torchvision's VGG16 features
VGG16_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
#: LPIPS's input scaling (its ScalingLayer): (x - shift) / scale for x in [-1, 1]
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
#: codebook size K per data scale
NUM_CODES = {"8x8": 64, "28x28": 128, "32x32": 512}
PRIOR_SIZES = {"8x8": (2, 4, 64), "28x28": (4, 4, 128), "32x32": (6, 8, 256)}
CRITIC_LAYERS = {"8x8": 1, "28x28": 2, "32x32": 3}


# -- the loss terms ------------------------------------------------------------------------------
def adaptive_weight(
    reconstruction_loss: Tensor, generator_loss: Tensor, last_layer: Tensor, disc_weight: float
) -> Tensor:
    """lambda = ||grad_GL L_rec|| / (||grad_GL L_GAN|| + 1e-4), clamped to [0, 1e4] and
    detached, times ``disc_weight`` (VQGAN eq. 7).

    The gradients come from ``torch.autograd.grad`` (they never touch ``.grad``, nor DDP's
    hooks, which fire on gradient accumulation only); under torchrun they are averaged over
    the ranks first (every rank calls this in the same step), so that lambda is the one of
    the global batch's mean losses on every rank."""
    (rec_grad,) = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)
    (gan_grad,) = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)
    if distributed.current().enabled:
        both = torch.stack([rec_grad, gan_grad]).float()
        dist.all_reduce(both)
        rec_grad, gan_grad = both / dist.get_world_size()
    weight = rec_grad.norm() / (gan_grad.norm() + 1e-4)
    return weight.clamp(0.0, 1e4).detach() * disc_weight


class PatchCritic(nn.Module):
    """PatchGAN critic (taming's NLayerDiscriminator): images (B, C, H, W) in [-1, 1] ->
    one logit per patch (B, 1, h', w'). ``layers`` stride-2 convolutions (8x8: 1, 28x28: 2,
    32x32: 3, taming's default for 256 px), then two stride-1 ones."""

    def __init__(self, channels: int, width: int, layers: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        multiple = 1
        for n in range(1, layers + 1):
            previous, multiple = multiple, min(2**n, 8)
            stride = 2 if n < layers else 1  # the last of these keeps the resolution
            blocks += [
                nn.Conv2d(width * previous, width * multiple, 4, stride, 1, bias=False),
                nn.BatchNorm2d(width * multiple),
                nn.LeakyReLU(0.2),
            ]
        blocks.append(nn.Conv2d(width * multiple, 1, 4, 1, 1))
        self.body = nn.Sequential(*blocks)
        self.apply(dcgan_init)  # N(0, 0.02) convolutions, N(1, 0.02) norm scales: as taming

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class VGGPerceptual(nn.Module):
    """LPIPS-style distance on VGG16 features loaded from a local file (no learnt linear
    weights): per layer, features normalised to unit length over channels, squared
    differences summed over channels and averaged over space; summed over the five layers.
    Images in [-1, 1]; grey images are repeated to RGB and all are upsampled to at least
    32 px so that relu5_3 has a 2x2 map."""

    def __init__(self, weights: str) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        features = make_layers(cfgs["D"])  # torchvision's VGG16 ``features``
        for module in features:
            if isinstance(module, nn.ReLU):
                module.inplace = False
        path = Path(weights)
        if not path.is_file():
            raise GenbenchError(f"vqgan.perceptual_weights: no file {weights!r}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        # a whole VGG16 state dict ('features.0.weight', ...) or its features only
        state = {k.removeprefix("features."): v for k, v in state.items() if "classifier" not in k}
        features.load_state_dict(state)
        self.slices = nn.ModuleList(features[a:b] for a, b in VGG16_SLICES)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """(B,) distances between images x and y (B, C, H, W)."""
        h, w = x.shape[-2:]
        size = (max(h, 32), max(w, 32))
        both = torch.cat([x, y])
        if both.shape[1] == 1:
            both = both.expand(-1, 3, -1, -1)
        if (h, w) != size:
            both = F.interpolate(both, size=size, mode="bilinear", align_corners=False)
        features = (both - self.shift) / self.scale
        distance = torch.zeros(len(x), device=x.device)
        for block in self.slices:
            features = block(features)
            normed = features / (features.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fx, fy = normed.chunk(2)
            distance = distance + (fx - fy).pow(2).sum(1).mean((1, 2))
        return distance


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        # (B, T, 3D) -> 3 x (B, heads, T, D / heads)
        q, k, v = (
            t.view(batch, length, self.heads, dim // self.heads).transpose(1, 2)
            for t in self.qkv(x).chunk(3, -1)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(batch, length, dim))


class TransformerBlock(nn.Module):
    """Pre-norm GPT block: x + attn(LN(x)), then x + MLP(LN(x)) with a 4x GELU MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = CausalSelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerPrior(CodePrior):
    """GPT over the raster-ordered codes: input [SOS, c_1 .. c_{n-1}], output at position i
    the logits of c_i given c_<i: (B, n) codes -> (B, n, K)."""

    def __init__(self, num_codes: int, positions: int, layers: int, heads: int, dim: int) -> None:
        super().__init__()
        if dim % heads:
            raise GenbenchError(f"vqgan.prior_dim {dim} must be divisible by prior_heads {heads}")
        self.start_token = num_codes
        self.token_embedding = nn.Embedding(num_codes + 1, dim)
        self.position_embedding = nn.Parameter(torch.zeros(1, positions, dim))
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_codes, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        """minGPT's initialisation: N(0, 0.02) weights, zero biases."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, codes: Tensor) -> Tensor:
        start = torch.full_like(codes[:, :1], self.start_token)
        tokens = torch.cat([start, codes[:, :-1]], 1)  # shifted right by one
        h = self.token_embedding(tokens) + self.position_embedding[:, : tokens.shape[1]]
        return self.head(self.norm(self.blocks(h)))

    def optimizer_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """minGPT: weight decay on the linear layers' weight matrices only."""
        decay = [m.weight for m in self.modules() if isinstance(m, nn.Linear)]
        ids = {id(p) for p in decay}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ]


@register_method("vqgan")
class VQGAN(VQAutoencoder):
    summary = "VQGAN: VQ autoencoder + PatchGAN hinge loss (adaptive weight), transformer prior"
    hparam_choices = {"codebook": CODEBOOK_UPDATES, "codebook_init": CODEBOOK_INITS}
    autoencoder_betas = (0.5, 0.9)

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        layers, heads, dim = scale_table(PRIOR_SIZES, spec, "vqgan's prior table")
        return {
            **scale_table(AUTOENCODER_SIZES, spec, "vqgan's autoencoder table"),
            "num_codes": scale_table(NUM_CODES, spec, "vqgan's codebook table"),
            **quantiser_hparams(),
            # taming's codebook loss collapsed to 8-19 of 64 codes within the quick budget;
            # the EMA codebook (VQ-VAE appendix A.1) keeps 50-64 in use
            "codebook": "ema",
            "codebook_init": "taming",
            "lr": 4.5e-6 * 64,
            "critic_width": 32,
            "critic_layers": scale_table(CRITIC_LAYERS, spec, "vqgan's critic table"),
            "disc_weight": 0.8,
            "disc_start_fraction": 0.25,
            "codebook_weight": 1.0,
            "perceptual_weight": 1.0,
            "perceptual_weights": "",
            "prior_layers": layers,
            "prior_heads": heads,
            "prior_dim": dim,
            "prior_lr": 3e-3,
            "prior_weight_decay": 0.01,
            **schedule_hparams(),
            # the transformer needs more steps than the PixelCNN of vq-vae to model the codes
            "prior_fraction": 0.5,
        }

    def __init__(self, spec: DataSpec, **hparams: Any) -> None:
        super().__init__(spec, **hparams)
        self.critic = PatchCritic(spec.channels, hparams["critic_width"], hparams["critic_layers"])
        self.add_optimizer(
            "critic",
            torch.optim.Adam(self.critic.parameters(), hparams["lr"], self.autoencoder_betas),
        )
        self.disc_start_images = sys.maxsize  # set with the budget (``set_budget``)
        # kept out of the module tree: a frozen loss network is not part of the model (no
        # checkpoint, no parameter count); moved to the device when first used
        self._perceptual: list[VGGPerceptual] = []
        if hparams["perceptual_weights"]:
            self._perceptual.append(VGGPerceptual(hparams["perceptual_weights"]))

    def set_budget(self, budget_images: int, batch_size: int) -> None:
        super().set_budget(budget_images, batch_size)
        self.disc_start_images = round(
            self.hparams["disc_start_fraction"] * self.prior_start_images
        )

    def decoder_channels(self) -> int:
        return self.spec.channels  # the image itself, in [-1, 1]

    def build_prior(self) -> TransformerPrior:
        h = self.hparams
        return TransformerPrior(
            h["num_codes"], self.positions, h["prior_layers"], h["prior_heads"], h["prior_dim"]
        )

    def prior_optimizer(self) -> torch.optim.Optimizer:
        assert isinstance(self.prior, TransformerPrior)
        groups = self.prior.optimizer_groups(self.hparams["prior_weight_decay"])
        return torch.optim.AdamW(groups, lr=self.hparams["prior_lr"], betas=(0.9, 0.95))

    def reconstruction_loss(self, x: Tensor, reconstruction: Tensor) -> Tensor:
        """L1 (+ perceptual where available), averaged: the taming ``nll_loss``."""
        per_pixel = (x - reconstruction).abs()
        if not self._perceptual:
            return per_pixel.mean()
        perceptual = self._perceptual[0].to(x.device)
        distance = perceptual(x, reconstruction).view(-1, 1, 1, 1)
        return (per_pixel + self.hparams["perceptual_weight"] * distance).mean()

    def autoencoder_step(self, batch: Batch, step: int) -> Iterator[Update]:
        h = self.hparams
        real = to_network(batch.x)
        critic_on = step * global_batch_size(batch) >= self.disc_start_images
        reconstructions: list[Tensor] = []  # the autoencoder closure's, for the critic

        def autoencoder_loss() -> tuple[Tensor, dict[str, Any]]:
            quantised = self.quantise_for_training(batch)
            reconstruction = self.decoder(quantised.z_q)  # (B, C, H, W) in about [-1, 1]
            rec_loss = self.reconstruction_loss(real, reconstruction)
            # eq. 4's codebook terms as means over the code elements (taming's reduction)
            elements = h["code_dim"] * self.positions
            codebook_loss = self.codebook_terms(quantised).mean() / elements
            loss = rec_loss + h["codebook_weight"] * codebook_loss
            logs: dict[str, Any] = {"l1": rec_loss.detach(), "perplexity": quantised.perplexity}
            if critic_on:
                generator_loss = wasserstein_generator_loss(self.critic(reconstruction))
                last_layer = self.decoder[-1].weight
                weight = adaptive_weight(rec_loss, generator_loss, last_layer, h["disc_weight"])
                loss = loss + weight * generator_loss
                logs.update(generator_loss=generator_loss.detach(), adaptive_weight=weight)
            reconstructions.append(reconstruction.detach())
            return loss, logs

        if critic_on:
            self.critic.requires_grad_(False)  # the generator term does not train the critic
        yield Update("autoencoder", autoencoder_loss)
        self.critic.requires_grad_(True)
        self.update_codebook()
        if critic_on:  # the critic's step on the same batch (taming's optimizer_idx 1)

            def critic_loss() -> Tensor:
                fake = reconstructions[-1]
                return 0.5 * hinge_critic_loss(
                    self.critic(real).flatten(1), self.critic(fake).flatten(1)
                )

            yield Update("critic", critic_loss)

    def images_from_decoder(
        self, outputs: Tensor, generator: torch.Generator, **options: Any
    ) -> Tensor:
        images = ((outputs + 1.0) / 2.0).clamp(0.0, 1.0)
        return from_levels(to_levels(images, self.spec.num_levels), self.spec.num_levels)

    def sample_variants(self) -> list[dict[str, Any]]:
        """The model's own distribution first; then top-k sampling with k = K / 4, the
        proportion of taming's ``sample_fast`` default (250 of 1024 codes)."""
        return [{}, {"top_k": max(1, self.quantizer.num_codes // 4)}]

    def sample_settings(self) -> dict[str, Any]:
        perceptual = (
            f"VGG16 LPIPS-style (uniform weights) from {self.hparams['perceptual_weights']}"
            if self._perceptual
            else PERCEPTUAL_UNAVAILABLE
        )
        return {
            **super().sample_settings(),
            "top_k": 0,
            "perceptual": perceptual,
            "disc_start_images": self.disc_start_images,
        }
