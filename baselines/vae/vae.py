"""Variational autoencoder (Kingma & Welling 2014, "Auto-Encoding Variational Bayes") with the
importance-weighted bound of Burda et al. 2016 ("Importance Weighted Autoencoders") for
evaluation.

Model: prior p(z) = N(0, I); decoder p(x | z) a proper distribution over the L levels of
every pixel (:mod:`baselines.vae.decoders`, ``decoder``: a categorical softmax over the
levels, the default at 8x8 with its 17 levels, or the discretised logistic mixture of Salimans
et al. 2017, the default for 256 levels, where a 256-way softmax output layer would dominate
the cost); approximate posterior
q(z | x) = N(mu(x), diag sigma^2(x)) from a convolutional encoder.

Training maximises the ELBO with the SGVB estimator of Kingma & Welling (eq. 10): one
reparameterised sample z = mu + sigma * eps, eps ~ N(0, I) (section 2.4) and the analytic
KL(q || p) = 1/2 sum_j (mu_j^2 + sigma_j^2 - log sigma_j^2 - 1) (appendix B):

    L(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z)) <= log P(x).

``train_step`` yields one update of the ``adam`` optimiser whose closure is -L averaged over
the batch, per dimension (the training loop does backward and the step); eps comes from the
batch (``batch.randn_like``): a function of the run's seed, the step and the example's
position in the global batch, so two ranks or accumulated micro-batches draw for each image
the eps one process draws (:meth:`VAE.training_elbo`).

Evaluation (``log_likelihood``) returns the IWAE bound with k = ``iwae_samples`` (100)
importance samples z_i ~ q(z | x) (Burda et al. eq. 8):

    L_k(x) = log (1/k) sum_i p(x | z_i) p(z_i) / q(z_i | x),   L = L_1 <= L_k <= log P(x).

The ELBO is reported too, as a likelihood variant with a leaderboard row of its own
(``vae[bound=elbo]``): K&W's estimator B on the test images, the analytic KL and the
reconstruction term averaged over ``elbo_samples`` (10) posterior samples per image
(both bounds). ``encode`` returns the posterior mean mu(x).

Sampling: z ~ N(0, I), then the decoder's per-pixel MODE (the most probable level of every
pixel given z), ``sample_pixels = mode``. The paper's figures show decoder means; for its
Gaussian decoder mean and mode coincide, for a distribution over levels they do not: the
mean of a bimodal pixel (ink or paper) is a grey that no digit has (quick digits: FID 75 for
the mean against 20 for the mode), and independent draws of every pixel from p(x | z), the
literal generative model, are speckled (FID 61). The mean and the draws are reported as
extra sampler rows (``sample_variants``). Departures: the networks are convolutional (the
paper used one-hidden-layer MLPs) and Adam at 1e-3 replaces the paper's Adagrad, to fit the
quick budget.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

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

#: decoder evaluations per chunk when scoring k importance samples (bounds memory)
DECODE_CHUNK_ELEMENTS = 2**24

SIZES: dict[str, dict[str, int]] = {
    "8x8": {"latent_dim": 16, "width": 64, "downsamples": 1, "residual_blocks": 1},
    "28x28": {"latent_dim": 32, "width": 64, "downsamples": 2, "residual_blocks": 1},
    "32x32": {"latent_dim": 128, "width": 128, "downsamples": 2, "residual_blocks": 2},
}


# -- the bounds, as pure functions ------------------------------------------------------------
def gaussian_kl(mean: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mu, diag sigma^2) || N(0, I)) summed over the last dimension (K&W appendix B)."""
    return 0.5 * (mean.pow(2) + log_var.exp() - log_var - 1.0).sum(-1)


def gaussian_log_density(z: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """log N(z; mu, diag sigma^2) summed over the last dimension."""
    squared = (z - mean).pow(2) * torch.exp(-log_var)
    return -0.5 * (squared + log_var + math.log(2.0 * math.pi)).sum(-1)


def elbo(log_px_given_z: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """E_q[log p(x | z)] - KL(q || p) with the KL analytic (K&W's estimator B, eq. 10): the
    reconstruction term averaged over the k samples of ``log_px_given_z`` (B, k). (B,)."""
    return log_px_given_z.mean(1) - gaussian_kl(mean, log_var)


def importance_log_weights(
    log_px_given_z: Tensor, z: Tensor, mean: Tensor, log_var: Tensor
) -> Tensor:
    """log w_i = log p(x | z_i) + log p(z_i) - log q(z_i | x) for z (B, k, d): (B, k)."""
    prior = gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z))
    posterior = gaussian_log_density(z, mean.unsqueeze(1), log_var.unsqueeze(1))
    return log_px_given_z + prior - posterior


def iwae_bound(log_weights: Tensor) -> Tensor:
    """L_k = log (1/k) sum_i w_i (Burda et al. eq. 8) from (B, k) log-weights: (B,)."""
    return log_weights.logsumexp(1) - math.log(log_weights.shape[1])


@register_method("vae")
class VAE(Method):
    capabilities = frozenset({SAMPLE, LOG_LIKELIHOOD, ENCODE})
    likelihood_is_bound = True
    summary = "VAE: Gaussian posterior, discrete decoder; IWAE (k=100) and ELBO bounds"
    hparam_choices = {"decoder": DECODER_OUTPUTS, "sample_pixels": SAMPLE_PIXELS}

    hparam_ranges = {"residual_blocks": (0, None)}

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {
            **scale_table(SIZES, spec, "vae's size table"),
            # a softmax over 17 levels is cheap; over 256 levels the output layer would
            # dominate the cost, so the discretised logistic mixture (PixelCNN++'s reason)
            "decoder": "categorical" if spec.scale == "8x8" else "logistic_mixture",
            "mixture_components": 5,
            "lr": 1e-3,
            "iwae_samples": 100,
            "elbo_samples": 10,
            "sample_pixels": "mode",
        }

    def __init__(
        self,
        spec: DataSpec,
        latent_dim: int = 16,
        width: int = 64,
        downsamples: int = 1,
        residual_blocks: int = 1,
        decoder: str = "categorical",
        mixture_components: int = 5,
        lr: float = 1e-3,
        iwae_samples: int = 100,
        elbo_samples: int = 10,
        sample_pixels: str = "mode",
    ) -> None:
        super().__init__(spec)
        if iwae_samples < 1 or elbo_samples < 1:
            raise GenbenchError(
                f"vae.iwae_samples and vae.elbo_samples must be >= 1, got {iwae_samples}"
                f" and {elbo_samples}"
            )
        self.elbo_samples = elbo_samples
        self.latent_dim = latent_dim
        self.iwae_samples = iwae_samples
        self.sample_pixels = sample_pixels
        self.distribution = DiscreteDecoder(spec, decoder, mixture_components)
        grid_height, grid_width = code_grid_size(spec, downsamples)
        self.feature_shape = (width, grid_height, grid_width)  # the conv stacks' bottleneck
        features = width * grid_height * grid_width
        self.encoder = nn.Sequential(
            encoder_stack(spec.channels, width, downsamples, residual_blocks),
            nn.Flatten(),
            nn.Linear(features, 2 * latent_dim),  # -> (B, 2d): mu and log sigma^2
        )
        self.decoder_input = nn.Sequential(nn.Linear(latent_dim, features), nn.ReLU())
        self.decoder = decoder_stack(
            width, width, downsamples, residual_blocks, self.distribution.param_channels
        )
        self.add_optimizer("adam", torch.optim.Adam(self.parameters(), lr=lr))

    # -- the networks -----------------------------------------------------------------------
    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images in [0, 1] (B, C, H, W) -> mu, log sigma^2 of q(z | x), each (B, d)."""
        mean, log_var = self.encoder(to_network(x)).chunk(2, 1)
        return mean, log_var

    def decode(self, z: Tensor) -> Tensor:
        """z (B, d) -> the decoder distribution's parameters (B, P, H, W)."""
        return self.decoder(self.decoder_input(z).view(len(z), *self.feature_shape))

    def reconstruction_log_prob(self, z: Tensor, levels: Tensor) -> Tensor:
        """log p(x | z_i) for z (B, k, d) and levels (B, C, H, W): (B, k), decoded in chunks
        of images so that the (chunk, P, H, W) outputs stay small."""
        batch, k, _ = z.shape
        flat_z = z.flatten(0, 1)  # (B k, d); row r belongs to image r // k
        per_image = self.spec.dims * self.distribution.param_channels // self.spec.channels
        chunk = max(1, DECODE_CHUNK_ELEMENTS // per_image)
        out = []
        for start in range(0, len(flat_z), chunk):
            rows = torch.arange(start, min(start + chunk, len(flat_z)), device=z.device)
            out.append(self.distribution.log_prob(self.decode(flat_z[rows]), levels[rows // k]))
        return torch.cat(out).view(batch, k)

    def bounds(self, x: Tensor, num_samples: int, noise: Tensor | None = None) -> dict[str, Tensor]:
        """The ELBO and the IWAE bound L_k of images x with k = ``num_samples`` posterior
        samples, both (B,) in nats; ``noise`` (B, k, d) fixes eps (default: drawn)."""
        levels = to_levels(x, self.spec.num_levels)
        mean, log_var = self.posterior(x)
        if noise is None:
            noise = torch.randn(len(x), num_samples, self.latent_dim, device=x.device)
        z = mean.unsqueeze(1) + torch.exp(0.5 * log_var).unsqueeze(1) * noise  # (B, k, d)
        log_px_given_z = self.reconstruction_log_prob(z, levels)
        log_weights = importance_log_weights(log_px_given_z, z, mean, log_var)  # (B, k)
        # the ELBO on the same samples, E_q[log w] estimated by the mean log-weight: then
        # L_k >= ELBO holds for every image (Jensen), not only in expectation
        return {"elbo": log_weights.mean(1), "iwae": iwae_bound(log_weights)}

    # -- Method interface ---------------------------------------------------------------------
    def training_elbo(self, batch: Batch) -> Tensor:
        """K&W's estimator B (eq. 10) per image, (B,) nats: one reparameterised sample
        z = mu + sigma * eps for the reconstruction, the KL analytic; eps per example from
        the batch's noise."""
        levels = to_levels(batch.x, self.spec.num_levels)
        mean, log_var = self.posterior(batch.x)
        z = mean + torch.exp(0.5 * log_var) * batch.randn_like(mean)  # reparameterisation
        reconstruction = self.distribution.log_prob(self.decode(z), levels)
        return elbo(reconstruction[:, None], mean, log_var)

    def train_step(self, batch: Batch, step: int) -> Iterator[Update]:
        def negative_elbo() -> tuple[Tensor, dict[str, Tensor]]:
            loss = -self.training_elbo(batch).mean() / self.spec.dims  # nats per dimension
            return loss, {"elbo_bpd": loss.detach() / math.log(2.0)}

        yield Update("adam", negative_elbo)

    def likelihood_variants(self) -> list[dict[str, Any]]:
        return [{"bound": "iwae"}, {"bound": "elbo"}]

    def log_likelihood(self, x: Tensor, bound: str = "iwae") -> Tensor:
        """The IWAE bound L_k (k = iwae_samples), or with ``bound="elbo"`` the ELBO
        (analytic KL, reconstruction averaged over elbo_samples posterior samples)."""
        if bound == "elbo":
            levels = to_levels(x, self.spec.num_levels)
            mean, log_var = self.posterior(x)
            eps = torch.randn(len(x), self.elbo_samples, self.latent_dim, device=x.device)
            z = mean.unsqueeze(1) + torch.exp(0.5 * log_var).unsqueeze(1) * eps  # (B, k, d)
            return elbo(self.reconstruction_log_prob(z, levels), mean, log_var)
        return self.bounds(x, self.iwae_samples)["iwae"]

    def likelihood_settings(self) -> dict[str, Any]:
        return {
            "bound": f"IWAE (Burda et al. 2016), k = {self.iwae_samples} importance samples",
            "iwae_samples": self.iwae_samples,
            "elbo_samples": self.elbo_samples,
            "decoder": self.distribution.output,
        }

    def encode(self, x: Tensor) -> Tensor:
        return self.posterior(x)[0]  # the posterior mean (B, d)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator,
        labels: Tensor | None = None,
        pixels: str | None = None,
    ) -> Tensor:
        z = torch.randn(n, self.latent_dim, generator=generator, device=generator.device)
        params = self.decode(z.to(self.device))
        self.last_nfe = 1
        return self.distribution.read(params, pixels or self.sample_pixels, generator)

    def sample_variants(self) -> list[dict[str, Any]]:
        return pixel_variants(self.sample_pixels)

    def sample_settings(self) -> dict[str, Any]:
        return {"latent": "z ~ N(0, I)", "pixels": self.sample_pixels}

    def flops_forward(self, x: Tensor) -> None:
        mean, _ = self.posterior(x)
        self.decode(mean)
