"""The machinery every GAN of this family shares; each method module adds only what its paper
changes: the critic and generator objectives, the critic's constraint (clipping, penalty,
spectral normalisation, normalisation layer) and the optimiser defaults.

Shared: the DCGAN generator and critic of :mod:`baselines.common.dcgan` (same widths and
latent size for all six methods at a given data scale), the mapping of images from [0, 1]
to the networks' [-1, 1], sampling from z ~ N(0, I) drawn from the caller's generator (the
same latent shape for every method, so a seed gives the same noise to all six), and
``encode`` = the critic's penultimate features.

One ``train_step`` is one CRITIC update on the batch the harness gives; every
``critic_steps``-th call also makes the GENERATOR update that follows them. So every critic
iteration reads a fresh real minibatch of the full batch size from the harness's seeded
stream, as in the papers' algorithms (WGAN Algorithm 1 samples a new real batch in each of
its n_critic iterations), and one cycle of ``critic_steps`` calls is one generator
iteration. Images seen count the real batch of every critic step plus the generated batch
of every generator update (``Update.images``; PROTOCOL.md: a GAN's critic and generator
batches both count): B (critic_steps + 1) per generator iteration for batch B.
The fake images the critic scores inside its own step are not counted again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from baselines.common.dcgan import Critic, Generator
from baselines.gan import losses
from bench.errors import GenbenchError
from bench.method import (
    ENCODE,
    SAMPLE,
    Batch,
    DataSpec,
    Method,
    Update,
    from_levels,
    scale_table,
    to_levels,
)

#: network sizes shared by all six methods, per data scale (identical latent shapes)
NETWORK_SIZES: dict[str, dict[str, int]] = {
    "8x8": {
        "latent_dim": 32,
        "generator_width": 512,
        "generator_fc_width": 256,
        "critic_width": 64,
        "critic_fc_width": 512,
    },
    "28x28": {
        "latent_dim": 64,
        "generator_width": 64,
        "generator_fc_width": 1024,
        "critic_width": 64,
        "critic_fc_width": 1024,
    },
    "32x32": {
        "latent_dim": 128,
        "generator_width": 64,
        "generator_fc_width": 0,
        "critic_width": 64,
        "critic_fc_width": 0,
    },
}


def adam_hparams(lr: float, beta1: float, beta2: float) -> dict[str, float]:
    """The optimiser entries of ``default_hparams`` for a method trained with Adam."""
    return {"lr": lr, "adam_beta1": beta1, "adam_beta2": beta2}


def random_interpolates(real: Tensor, fake: Tensor, batch: Batch) -> Tensor:
    """eps x_r + (1 - eps) x_f with eps ~ U[0, 1] per pair: the penalty points of WGAN-GP
    and WGAN-div."""
    alpha = batch.rand().to(real.dtype)
    return losses.interpolates(real, fake.detach(), alpha)


class GANMethod(Method):
    """Base class: a generator, a critic, their two optimisers and the alternating loop."""

    capabilities = frozenset({SAMPLE, ENCODE})
    #: the critic's normalisation layer (see baselines.common.dcgan.Critic)
    critic_normalisation: ClassVar[str] = "batch"

    #: a fully connected width of 0 means no fully connected layer (the 32x32 DCGAN)
    hparam_ranges: ClassVar[dict[str, tuple[Any, ...] | None]] = {
        "generator_fc_width": (0, None),
        "critic_fc_width": (0, None),
    }

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return dict(scale_table(NETWORK_SIZES, spec, f"{cls.name} (GAN network sizes)"))

    def __init__(self, spec: DataSpec, **hparams: Any) -> None:
        """``hparams``: exactly the keys of ``default_hparams``: the shared network sizes,
        ``critic_steps``, ``lr`` (and Adam's betas where the paper uses Adam) and the
        method's own terms, read by its objectives from ``self.hparams``."""
        super().__init__(spec)
        self.hparams = hparams
        self.critic_steps = int(hparams["critic_steps"])
        if self.critic_steps < 1:
            raise GenbenchError(f"{self.name}.critic_steps must be >= 1, got {self.critic_steps}")
        self.latent_dim = int(hparams["latent_dim"])
        self.generator = Generator(
            spec, self.latent_dim, hparams["generator_width"], hparams["generator_fc_width"]
        )
        self.critic = Critic(
            spec, hparams["critic_width"], self.critic_normalisation, hparams["critic_fc_width"]
        )
        self.constrain_critic()
        self.add_optimizer("generator", self.make_optimizer(self.generator.parameters()))
        self.add_optimizer("critic", self.make_optimizer(self.critic.parameters()))

    def make_optimizer(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        """Adam(lr, (adam_beta1, adam_beta2)) for each network; WGAN overrides (RMSProp)."""
        betas = (self.hparams["adam_beta1"], self.hparams["adam_beta2"])
        return torch.optim.Adam(params, lr=self.hparams["lr"], betas=betas)

    # -- what a paper changes --------------------------------------------------------------
    def critic_objective(
        self, real: Tensor, fake: Tensor, real_scores: Tensor, fake_scores: Tensor, batch: Batch
    ) -> tuple[Tensor, dict[str, float]]:
        """The critic's loss to minimise (real and fake images (B, C, H, W) in [-1, 1] and
        their scores (B,)), and extra terms to log; per-example randomness (penalty
        interpolates) comes from ``batch``."""
        raise NotImplementedError

    def generator_objective(self, real: Tensor, fake_scores: Tensor) -> Tensor:
        """The generator's loss to minimise, given the critic's scores of G(z) (B,); by
        default -E[D(G(z))], the generator loss of WGAN, WGAN-GP, WGAN-div and SNGAN."""
        return losses.wasserstein_generator_loss(fake_scores)

    def constrain_critic(self) -> None:
        """Hook once the critic is built, before its optimiser (SNGAN: spectral norm)."""

    def before_critic_step(self) -> None:
        """Hook before the critic's forward pass (SNGAN: its power iteration)."""

    def after_critic_step(self) -> None:
        """Hook after the critic's optimiser step (WGAN: weight clipping)."""

    # -- the shared loop -----------------------------------------------------------------------
    def latents(self, n: int, source: torch.Generator | Batch | None = None) -> Tensor:
        """z ~ N(0, I), (n, latent_dim): from a sampling generator, or per example from a
        training batch's noise (``source`` a :class:`Batch` of n examples)."""
        if isinstance(source, Batch):
            return source.randn(self.latent_dim).to(self.device)
        device = source.device if source is not None else self.device
        z = torch.randn(n, self.latent_dim, generator=source, device=device)
        return z.to(self.device)

    def train_step(self, batch: Batch, step: int) -> Iterator[Update]:
        real = batch.x * 2 - 1  # [0, 1] -> [-1, 1], the range of the generator's tanh
        size = len(batch)

        # critic iteration: a fresh real batch, a fresh fake batch
        def critic_loss() -> tuple[Tensor, dict[str, float]]:
            self.before_critic_step()
            with torch.no_grad():
                fake = self.generator(self.latents(size, batch))
            real_scores, fake_scores = self.critic(real), self.critic(fake)
            loss, terms = self.critic_objective(real, fake, real_scores, fake_scores, batch)
            return loss, {
                "real_score": real_scores.mean().detach(),
                "fake_score": fake_scores.mean().detach(),
                **terms,
            }

        yield Update("critic", critic_loss)
        self.after_critic_step()
        # generator iteration after every critic_steps critic iterations
        if (step + 1) % self.critic_steps == 0:

            def generator_loss() -> Tensor:
                fake_scores = self.critic(self.generator(self.latents(size, batch)))
                return self.generator_objective(real, fake_scores)

            self.critic.requires_grad_(False)  # gradients flow through it, not into it
            yield Update("generator", generator_loss, images=size)
            self.critic.requires_grad_(True)

    # -- capabilities --------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, labels: Tensor | None = None) -> Tensor:
        x = self.generator(self.latents(n, generator))  # (n, latent) -> (n, C, H, W)
        self.last_nfe = 1
        levels = to_levels((x + 1) / 2, self.spec.num_levels)  # onto the data's L levels
        return from_levels(levels, self.spec.num_levels)

    def encode(self, x: Tensor) -> Tensor:
        return self.critic.features(x * 2 - 1)  # (B, C, H, W) -> (B, feature_dim)

    def flops_forward(self, x: Tensor) -> None:
        """One generated image scored by the critic: the unit of a GAN's training work."""
        noise = torch.Generator(device=x.device).manual_seed(0)  # leaves the global RNG alone
        self.critic(self.generator(self.latents(x.shape[0], noise)))

    def sample_settings(self) -> dict[str, Any]:
        return {"latent": f"N(0, I_{self.latent_dim})", "quantised_to_levels": True}
