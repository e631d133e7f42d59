"""VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017, "Neural Discrete Representation
Learning") with a gated PixelCNN prior over the code grid, both trained inside one run.

Stage 1, the autoencoder (section 3.1-3.2): encoder z_e(x) (B, E, h, w) (8x8 -> 4x4,
28x28 -> 7x7, 32x32 -> 8x8), nearest-neighbour quantisation to a codebook of K vectors,
the straight-through gradient, decoder p(x | z_q) over the L levels
(:mod:`baselines.vae.decoders`: categorical at 8x8, the discretised logistic mixture for 256
levels) and the loss of eq. 3 per image

    L = -log p(x | z_q(x)) + ||sg[z_e(x)] - e||^2 + beta ||z_e(x) - sg[e]||^2,  beta = 0.25,

(:mod:`baselines.common.vq`), or with ``codebook = ema`` the EMA codebook of appendix A.1
(decay 0.99, Laplace-smoothed counts) and only the commitment term; ``dead_code_restart``
re-initialises unused codes from the batch's encoder outputs (an option, not in the paper).

Stage 2, the prior (section 3.1, 4.2): with encoder, codebook and decoder frozen, a gated
PixelCNN (:class:`baselines.autoregressive.pixelcnn.GatedPixelCNNNetwork`, its input a
learnt embedding of the codes, K-way softmax output) is fitted by maximum likelihood to the
codes of the training images, p(c) = prod_i p(c_i | c_<i) in raster order.

Both stages share the run's budget: the training loop tells the method its length
(``Method.set_budget``) and the prior stage takes the last ``prior_fraction`` (0.3) of it,
from step * batch_size >= (1 - prior_fraction) budget_images on (batch_size the GLOBAL
batch, the same on every rank and micro-batch). Outside a training loop (no budget) only the
first stage trains. Each ``train_step`` yields the update of the stage it is in: the
``autoencoder`` optimiser's (eq. 3), then the codebook's EMA / restart update from the
step's global batch (:mod:`baselines.common.vq`), or the ``prior`` optimiser's; the training
loop does the rest (backward, DDP, the optimiser step).

Likelihood, a labelled lower bound: the posterior q(c | x) is the one-hot code of x, so
ELBO = log p(x | z_q(x)) + log p_prior(c(x)) - 0 (its entropy) <= log P(x). The bound with
the first stage's uniform prior (log p(c) = -n log K, as in the paper's section 3.1) is
recorded next to it, with the codebook usage: perplexity and used codes of K on the test
images (likelihood settings) and on up to 10,000 training images with the final encoder
(sampler settings), and the last training batch's perplexity.

Sampling: codes ancestrally from the prior, one network call per code position for the
whole batch (h w calls; each evaluates the PixelCNN on the rows and columns up to that
position only, exact for its causal kernels), then one decoder call; pixels are the
decoder's per-pixel mode (``sample_pixels``; the mean and independent draws are extra
sampler rows, see :mod:`baselines.vae.vae` for why the mode). ``encode`` returns the
continuous encoder output z_e(x), flattened (E h w features).

Departures, for the quick budget: Adam at 3e-3 (8x8) / 1e-3 (the paper: 2e-4 for 250k
steps) and smaller networks (width 64; K = 16 codes of dimension 16 at 8x8, all of which
are used, 128 of dimension 32 at 28x28; the paper's ImageNet model: 256 channels, K = 512).
The codebook starts as in the authors' Sonnet code (uniform unit scaling); vqgan uses the
taming initialisation U(-1/K, 1/K).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from baselines.autoregressive.base import ancestral_sample
from baselines.autoregressive.pixelcnn import GatedPixelCNNNetwork
from baselines.common.vq import (
    CODEBOOK_INITS,
    CODEBOOK_UPDATES,
    Quantised,
    VectorQuantizer,
    code_perplexity,
)
from baselines.vae.decoders import (
    DECODER_OUTPUTS,
    SAMPLE_PIXELS,
    DiscreteDecoder,
    code_grid_size,
    decoder_stack,
    encoder_stack,
    pixel_variants,
    to_network,
)
from bench.errors import GenbenchError
from bench.method import (
    ENCODE,
    LOG_LIKELIHOOD,
    SAMPLE,
    Batch,
    DataSpec,
    Method,
    Update,
    scale_table,
    to_levels,
)
from bench.registry import register_method

#: training images whose codes give the reported codebook usage
USAGE_IMAGES = 10_000
#: the autoencoder's sizes per data scale (shared by vq-vae and vqgan; each picks K)
#: codebook size K per data scale
NUM_CODES = {"8x8": 16, "28x28": 128, "32x32": 512}

AUTOENCODER_SIZES: dict[str, dict[str, int]] = {
    "8x8": {"width": 64, "downsamples": 1, "residual_blocks": 1, "code_dim": 16},
    "28x28": {"width": 64, "downsamples": 2, "residual_blocks": 1, "code_dim": 32},
    "32x32": {"width": 128, "downsamples": 2, "residual_blocks": 2, "code_dim": 64},
}


def global_batch_size(batch: Batch) -> int:
    """The global batch's size (all ranks and micro-batches of the step): what a stage
    schedule in images counts, the same on every part of the step."""
    return batch.noise.global_size if batch.noise is not None else len(batch)


def schedule_hparams() -> dict[str, Any]:
    """The two-stage schedule within the run's budget (see the module docstring)."""
    return {"prior_fraction": 0.3}


def quantiser_hparams() -> dict[str, Any]:
    return {
        "beta": 0.25,
        "codebook": "loss",
        "codebook_decay": 0.99,
        "dead_code_restart": False,
        # the authors' Sonnet initialisation (vqgan: taming's)
        "codebook_init": "uniform_unit_scaling",
    }


class CodePrior(nn.Module):
    """An autoregressive prior p(c) = prod_i p(c_i | c_<i) over the raster-ordered code
    grid; ``forward`` maps codes (B, n) to the logits (B, n, K) of every position's
    conditional given the positions before it (teacher forcing)."""

    def forward(self, codes: Tensor) -> Tensor:
        raise NotImplementedError

    def conditional_log_probs(self, codes: Tensor, position: int) -> Tensor:
        """log p(c_d | c_<d) (B, K) for d = ``position``, the codes from d on ignored: by
        default one full network call."""
        return self(codes)[:, position].log_softmax(-1)


class PixelCNNPrior(CodePrior):
    """Gated PixelCNN over the (h, w) code grid: learnt code embedding (B, F, h, w) in,
    K logits per position out."""

    def __init__(
        self,
        num_codes: int,
        grid: tuple[int, int],
        embedding_dim: int,
        width: int,
        num_blocks: int,
        first_kernel: int,
    ) -> None:
        super().__init__()
        self.grid = grid
        self.embedding = nn.Embedding(num_codes, embedding_dim)
        self.network = GatedPixelCNNNetwork(
            embedding_dim, width, num_blocks, 3, first_kernel, num_codes, groups=1
        )

    def forward(self, codes: Tensor) -> Tensor:
        embedded = self.embedding(codes.view(len(codes), *self.grid))  # (B, h, w, F)
        logits = self.network(embedded.permute(0, 3, 1, 2))  # (B, K, h, w)
        return logits.flatten(2).transpose(1, 2)  # -> (B, n, K)

    def conditional_log_probs(self, codes: Tensor, position: int) -> Tensor:
        """The network on the rows up to d's (vertical stack) and the columns up to d's on
        its row (horizontal stack) only: the causal kernels make this crop exact, as in the
        gated PixelCNN's own sampler."""
        row, column = divmod(position, self.grid[1])
        embedded = self.embedding(codes.view(len(codes), *self.grid)[:, : row + 1])
        embedded = embedded.permute(0, 3, 1, 2)  # (B, F, row + 1, w)
        sent = [v_to_h[:, :, row:, : column + 1] for v_to_h in self.network.vertical_pass(embedded)]
        current = embedded[:, :, row:, : column + 1]
        logits = self.network.horizontal_pass(current, sent)[:, :, 0, column]  # (B, K)
        return logits.log_softmax(-1)


def prior_log_prob(prior: CodePrior, codes: Tensor) -> Tensor:
    """log p(c) = sum_i log p(c_i | c_<i) of codes (B, n): (B,) nats."""
    log_probs = prior(codes).log_softmax(-1)  # (B, n, K)
    return log_probs.gather(2, codes.unsqueeze(2)).squeeze(2).sum(1)


def top_k_log_probs(log_probs: Tensor, top_k: int) -> Tensor:
    """Keep the ``top_k`` most probable codes of each row (B, K) and renormalise (taming's
    top-k sampling); 0 keeps the full distribution."""
    if not top_k or top_k >= log_probs.shape[-1]:
        return log_probs
    kth = log_probs.topk(top_k, -1).values[:, -1:]
    return log_probs.masked_fill(log_probs < kth, float("-inf")).log_softmax(-1)


def sample_codes(
    prior: CodePrior,
    n: int,
    positions: int,
    generator: torch.Generator,
    device: torch.device,
    top_k: int = 0,
) -> Tensor:
    """Ancestral sampling in raster order: one prior call per position for the whole batch
    (optionally from the ``top_k`` most probable codes only). Returns codes (n, positions)."""
    return ancestral_sample(
        n,
        positions,
        range(positions),
        lambda codes, d: top_k_log_probs(prior.conditional_log_probs(codes, d), top_k),
        generator,
        device,
    )


class VQAutoencoder(Method):
    """What vq-vae and vqgan share: encoder, quantiser, decoder, the code prior, the
    two-stage schedule, ancestral sampling of codes and ``encode`` = z_e(x).

    Subclasses give the decoder's output channels (:meth:`decoder_channels`), the prior
    (:meth:`build_prior`), the first stage's updates (:meth:`autoencoder_step`, a generator
    of :class:`Update` s) and how decoder outputs become images
    (:meth:`images_from_decoder`)."""

    capabilities = frozenset({SAMPLE, ENCODE})
    #: the optimiser of the first stage (vqgan adds its critic's)
    autoencoder_betas: ClassVar[tuple[float, float]] = (0.9, 0.999)

    #: shared by vq-vae and vqgan; prior_fraction splits the budget between the two stages
    hparam_ranges: ClassVar[dict[str, tuple[Any, ...] | None]] = {
        "residual_blocks": (0, None),
        "beta": (0, None),
        "prior_fraction": (0, 1, "()"),
    }

    def __init__(self, spec: DataSpec, **hparams: Any) -> None:
        super().__init__(spec)
        self.hparams = hparams
        if not 0.0 <= hparams["prior_fraction"] < 1.0:
            raise GenbenchError(
                f"prior_fraction must be in [0, 1), got {hparams['prior_fraction']}"
            )
        self.grid = code_grid_size(spec, hparams["downsamples"])
        self.positions = self.grid[0] * self.grid[1]
        width, code_dim = hparams["width"], hparams["code_dim"]
        self.encoder = nn.Sequential(
            encoder_stack(spec.channels, width, hparams["downsamples"], hparams["residual_blocks"]),
            nn.Conv2d(width, code_dim, 1),  # -> z_e (B, E, h, w), before the quantiser
        )
        self.quantizer = VectorQuantizer(
            hparams["num_codes"],
            code_dim,
            hparams["codebook"],
            hparams["codebook_decay"],
            dead_code_restart=hparams["dead_code_restart"],
            init=hparams["codebook_init"],
        )
        self.decoder = decoder_stack(
            code_dim,
            width,
            hparams["downsamples"],
            hparams["residual_blocks"],
            self.decoder_channels(),
        )
        self.prior = self.build_prior()
        autoencoder = [*self.encoder.parameters(), *self.decoder.parameters()]
        autoencoder += [p for p in self.quantizer.parameters() if p.requires_grad]
        self.add_optimizer(
            "autoencoder",
            torch.optim.Adam(autoencoder, hparams["lr"], self.autoencoder_betas),
        )
        self.add_optimizer("prior", self.prior_optimizer())
        self.prior_start_images = sys.maxsize  # until the loop gives the budget: stage 1 only
        self.last_perplexity = float("nan")
        self.usage_images = torch.zeros(0, *spec.shape)

    def set_budget(self, budget_images: int, batch_size: int) -> None:
        super().set_budget(budget_images, batch_size)
        self.prior_start_images = round((1.0 - self.hparams["prior_fraction"]) * budget_images)

    # -- what a subclass gives -----------------------------------------------------------------
    def decoder_channels(self) -> int:
        raise NotImplementedError

    def build_prior(self) -> CodePrior:
        raise NotImplementedError

    def prior_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.prior.parameters(), lr=self.hparams["prior_lr"])

    def autoencoder_step(self, batch: Batch, step: int) -> Iterator[Update]:
        """The first stage's updates of one step; after the autoencoder's update it calls
        :meth:`update_codebook`."""
        raise NotImplementedError

    def images_from_decoder(
        self, outputs: Tensor, generator: torch.Generator, **options: Any
    ) -> Tensor:
        raise NotImplementedError

    # -- shared pieces ----------------------------------------------------------------------------
    def encode_continuous(self, x: Tensor) -> Tensor:
        """Images in [0, 1] -> z_e (B, E, h, w)."""
        return self.encoder(to_network(x))

    def codes(self, x: Tensor) -> Tensor:
        """Images -> code indices in raster order (B, n)."""
        return self.quantizer.quantise(self.encode_continuous(x)).flatten(1)

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Codes (B, n) -> decoder outputs (B, P, H, W)."""
        return self.decoder(self.quantizer.embed(codes.view(len(codes), *self.grid)))

    def quantise_for_training(self, batch: Batch) -> Quantised:
        """z_e of a training batch, quantised; records the batch's assignment statistics for
        the codebook update of :meth:`update_codebook` (call it inside the loss closure)."""
        return self.quantizer(self.encode_continuous(batch.x), update=True, noise=batch.noise)

    def update_codebook(self) -> None:
        """After the autoencoder's update: the codebook's EMA / restart update from the
        statistics of the step's global batch (all-reduced across ranks, see
        :mod:`baselines.common.vq`); records the global batch's code perplexity."""
        perplexity = self.quantizer.apply_update()
        if perplexity is not None:
            self.last_perplexity = perplexity

    def codebook_terms(self, quantised: Quantised) -> Tensor:
        """Eq. 3's codebook and beta-weighted commitment terms per image (B,); the EMA
        codebook has no codebook term (appendix A.1)."""
        commitment = self.hparams["beta"] * quantised.commitment_loss
        if self.quantizer.update_rule == "ema":
            return commitment
        return quantised.codebook_loss + commitment

    def in_prior_stage(self, step: int, batch_size: int) -> bool:
        return step * batch_size >= self.prior_start_images

    def train_step(self, batch: Batch, step: int) -> Iterator[Update]:
        if not self.in_prior_stage(step, global_batch_size(batch)):
            yield from self.autoencoder_step(batch, step)
            return

        def prior_loss() -> Tensor:  # the mean negative log-likelihood per code
            with torch.no_grad():  # the autoencoder is frozen in the second stage
                codes = self.codes(batch.x)
            return -prior_log_prob(self.prior, codes).mean() / self.positions

        yield Update("prior", prior_loss)

    def encode(self, x: Tensor) -> Tensor:
        return self.encode_continuous(x).flatten(1)  # (B, E h w)

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator, labels: Tensor | None = None, **options: Any
    ) -> Tensor:
        top_k = options.pop("top_k", 0)
        codes = sample_codes(self.prior, n, self.positions, generator, self.device, top_k)
        self.last_nfe = self.positions + 1  # prior calls, then the decoder
        return self.images_from_decoder(self.decode_codes(codes), generator, **options)

    def prepare(self, train_x: Tensor, train_y: Tensor, held_out_x: Tensor) -> None:
        # kept (not a buffer: no checkpoint, no device copy) to report the final codebook usage
        self.usage_images = train_x[:USAGE_IMAGES]

    @torch.no_grad()
    def usage_settings(self) -> dict[str, Any]:
        """Codebook usage: the last training batch's perplexity, and the perplexity and the
        number of used codes over (up to 10,000) training images with the final encoder."""
        last = self.last_perplexity
        settings: dict[str, Any] = {
            "num_codes": self.quantizer.num_codes,
            # NaN until this process trains a batch: a run re-scored from its finished
            # checkpoint (an evaluation-only change) has no last batch to report
            "train_batch_perplexity": None if math.isnan(last) else last,
        }
        if len(self.usage_images):
            counts = torch.zeros(self.quantizer.num_codes, dtype=torch.long)
            for chunk in self.usage_images.split(500):
                codes = self.codes(chunk.to(self.device)).flatten().cpu()
                counts += torch.bincount(codes, minlength=len(counts))
            settings["train_code_perplexity"] = code_perplexity(counts)
            settings["train_used_codes"] = int((counts > 0).sum())
        return settings

    def sample_settings(self) -> dict[str, Any]:
        return {
            "codes": f"ancestral from the {self.prior.__class__.__name__}",
            "network_calls": self.positions + 1,
            "prior_start_images": self.prior_start_images,
            **self.usage_settings(),
        }

    def flops_forward(self, x: Tensor) -> None:
        codes = self.codes(x)
        self.decode_codes(codes)
        self.prior(codes)


@register_method("vq-vae")
class VQVAE(VQAutoencoder):
    capabilities = frozenset({SAMPLE, LOG_LIKELIHOOD, ENCODE})
    likelihood_is_bound = True
    summary = "VQ-VAE: nearest-code quantisation, straight-through, PixelCNN prior over codes"
    hparam_choices = {
        "codebook": CODEBOOK_UPDATES,
        "codebook_init": CODEBOOK_INITS,
        "decoder": DECODER_OUTPUTS,
        "sample_pixels": SAMPLE_PIXELS,
    }

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        small = spec.scale == "8x8"
        return {
            **scale_table(AUTOENCODER_SIZES, spec, "vq-vae's autoencoder table"),
            # 8x8: 16 codes are all used (64 left 48 unused at the quick budget) and cost
            # 1 bit/dim less in the first stage's uniform-prior bound
            "num_codes": scale_table(NUM_CODES, spec, "vq-vae's codebook table"),
            **quantiser_hparams(),
            # a softmax over 17 levels is cheap; over 256 levels the output layer would
            # dominate the cost, so the discretised logistic mixture (PixelCNN++'s reason)
            "decoder": "categorical" if spec.scale == "8x8" else "logistic_mixture",
            "mixture_components": 5,
            "lr": 3e-3 if small else 1e-3,
            "prior_embedding_dim": 16 if small else 32,
            "prior_width": 32 if small else 64,
            # enough blocks for the receptive field to cover every earlier code (4x4: 2
            # blocks after a 5-wide first layer; 7x7 and 8x8: 3 after a 7-wide one)
            "prior_blocks": 2 if small else 4,
            "prior_first_kernel": 5 if small else 7,
            "prior_lr": 3e-3,
            **schedule_hparams(),
            "sample_pixels": "mode",
        }

    def __init__(self, spec: DataSpec, **hparams: Any) -> None:
        self.distribution = DiscreteDecoder(spec, hparams["decoder"], hparams["mixture_components"])
        super().__init__(spec, **hparams)
        self.reset_likelihood_sums()

    def decoder_channels(self) -> int:
        return self.distribution.param_channels

    def build_prior(self) -> CodePrior:
        h = self.hparams
        return PixelCNNPrior(
            h["num_codes"],
            self.grid,
            h["prior_embedding_dim"],
            h["prior_width"],
            h["prior_blocks"],
            h["prior_first_kernel"],
        )

    def train_step(self, batch: Batch, step: int) -> Iterator[Update]:
        self.reset_likelihood_sums()  # the recorded sums are of the final model
        yield from super().train_step(batch, step)

    def reset_likelihood_sums(self) -> None:
        self._sums = {"bound": 0.0, "uniform_prior": 0.0, "images": 0}
        self.code_counts = torch.zeros(self.quantizer.num_codes, dtype=torch.long)

    def autoencoder_step(self, batch: Batch, step: int) -> Iterator[Update]:
        levels = to_levels(batch.x, self.spec.num_levels)

        def autoencoder_loss() -> tuple[Tensor, dict[str, Any]]:
            """Eq. 3 per image, averaged, per dimension."""
            quantised = self.quantise_for_training(batch)
            reconstruction = self.distribution.log_prob(self.decoder(quantised.z_q), levels)
            loss = (-reconstruction + self.codebook_terms(quantised)).mean() / self.spec.dims
            bpd = -reconstruction.detach().mean() / (self.spec.dims * math.log(2))
            return loss, {"reconstruction_bpd": bpd, "perplexity": quantised.perplexity}

        yield Update("autoencoder", autoencoder_loss)
        self.update_codebook()

    def bound_terms(self, x: Tensor) -> dict[str, Tensor]:
        """log p(x | z_q(x)), log p_prior(c(x)) and the codes, per image."""
        codes = self.codes(x)
        levels = to_levels(x, self.spec.num_levels)
        return {
            "reconstruction": self.distribution.log_prob(self.decode_codes(codes), levels),
            "prior": prior_log_prob(self.prior, codes),
            "codes": codes,
        }

    def log_likelihood(self, x: Tensor) -> Tensor:
        """ELBO with the one-hot posterior: log p(x | z_q(x)) + log p_prior(c(x))."""
        terms = self.bound_terms(x)
        bound = terms["reconstruction"] + terms["prior"]
        uniform = terms["reconstruction"] - self.positions * math.log(self.quantizer.num_codes)
        self._sums["bound"] += float(bound.detach().double().sum())
        self._sums["uniform_prior"] += float(uniform.detach().double().sum())
        self._sums["images"] += len(x)
        counts = torch.bincount(terms["codes"].flatten().cpu(), minlength=len(self.code_counts))
        self.code_counts += counts
        return bound

    def likelihood_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "bound": "log p(x | z_q(x)) + log p_prior(c(x)) (one-hot posterior)",
            "decoder": self.distribution.output,
            "code_grid": list(self.grid),
            **self.usage_settings(),
        }
        images = self._sums["images"]
        if images:
            nats_to_bpd = 1.0 / (images * self.spec.dims * math.log(2.0))
            settings["uniform_prior_bpd"] = -self._sums["uniform_prior"] * nats_to_bpd
            settings["test_code_perplexity"] = code_perplexity(self.code_counts)
            settings["test_used_codes"] = int((self.code_counts > 0).sum())
        return settings

    def images_from_decoder(
        self, outputs: Tensor, generator: torch.Generator, **options: Any
    ) -> Tensor:
        pixels = options.get("pixels") or self.hparams["sample_pixels"]
        return self.distribution.read(outputs, pixels, generator)

    def sample_variants(self) -> list[dict[str, Any]]:
        return pixel_variants(self.hparams["sample_pixels"])

    def sample_settings(self) -> dict[str, Any]:
        return {**super().sample_settings(), "pixels": self.hparams["sample_pixels"]}
