"""Guided diffusion: classifier-free guidance and classifier guidance.

Ho & Salimans, "Classifier-Free Diffusion Guidance", NeurIPS 2021 workshop (arXiv:2207.12598);
Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021.

- One class-conditional eps-network on DDPM's forward process (linear beta, T = 1000,
  L_simple), trained with label dropout: the label is replaced by the null label with
  probability p_uncond = 0.1 (Ho & Salimans, Algorithm 1), so the same network gives
  eps(x_t, c) and eps(x_t, null).
- Classifier-free guidance (Ho & Salimans eq. 6): eps~ = (1 + w) eps(x_t, c) - w eps(x_t, null),
  sampled at w in {0, 1, 3}; w = 0 is the plain conditional model. Both predictions come
  from one network call on the doubled batch.
- Classifier guidance (Dhariwal & Nichol, Algorithm 2, the DDIM form): a noise-aware
  classifier p_phi(y | x_t, t) (the U-Net's down half with a linear head, section 4) is
  trained on noised images alongside the diffusion model, on the same batches; sampling
  uses eps^ = eps(x_t, null) - sqrt(1 - abar_t) s grad_x log p_phi(y | x_t) on the
  unconditional prediction with gradient scale s.
- Sampler: DDIM (Song et al. 2021, eq. 12) with ``steps`` uniform steps and ``eta``
  (eta = 0, deterministic, as in Dhariwal & Nichol's Algorithm 2; eta = 1 is the ancestral
  sampler of Ho & Salimans on the respaced chain).

Every row reports the domain classifier's accuracy on its samples (does a sample drawn for
label y look like a y); a stronger guidance should raise it at some cost in diversity.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from baselines.common.unet import EncoderUNet
from baselines.diffusion.common import DenoiserMethod, denoiser_hparams
from baselines.diffusion.ddim import ddim_sample
from baselines.diffusion.ddpm import DiscreteDiffusion
from bench.method import SAMPLE, Batch, DataSpec, Update
from bench.registry import register_method

#: the classifier-free guidance weights that get a row each (the first is the method's row)
GUIDANCE_WEIGHTS = (1.0, 0.0, 3.0)


@register_method("guidance")
class Guidance(DenoiserMethod):
    """Class-conditional diffusion with classifier-free and classifier guidance."""

    capabilities = frozenset({SAMPLE})
    class_conditional = True
    summary = "guided diffusion: classifier-free (w = 0, 1, 3) and noise-aware classifier guidance"

    hparam_ranges = {
        **DenoiserMethod.hparam_ranges,
        "p_uncond": (0, 1),
        "guidance_weight": (0, None),  # 0: the conditional model without guidance
        "classifier_scale": (0, None),  # 0: no classifier guidance
        "eta": (0, 1),
    }

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        cpu_scale = spec.scale in ("8x8", "28x28")
        return {
            **denoiser_hparams(spec),
            "num_timesteps": 1000,
            "p_uncond": 0.1,
            "guidance_weight": GUIDANCE_WEIGHTS[0],
            "classifier_scale": 3.0,
            "classifier_lr": 1e-3 if cpu_scale else 3e-4,
            "steps": 20 if cpu_scale else 100,
            "eta": 0.0,
        }

    def __init__(
        self,
        spec: DataSpec,
        num_timesteps: int = 1000,
        p_uncond: float = 0.1,
        guidance_weight: float = 1.0,
        classifier_scale: float = 3.0,
        classifier_lr: float = 3e-4,
        steps: int = 100,
        eta: float = 0.0,
        **denoiser: Any,
    ) -> None:
        super().__init__(spec, num_classes=spec.num_classes, **denoiser)
        self.diffusion = DiscreteDiffusion(num_timesteps)
        self.p_uncond, self.guidance_weight = p_uncond, guidance_weight
        self.classifier_scale, self.steps, self.eta = classifier_scale, steps, eta
        self.classifier = EncoderUNet(
            spec.channels,
            spec.height,
            spec.num_classes,
            width=denoiser["width"],
            width_mults=tuple(denoiser["width_mults"]),
            blocks_per_level=denoiser["blocks_per_level"],
            attention_resolutions=tuple(denoiser["attention_resolutions"]),
        )
        self.add_optimizer(
            "classifier", torch.optim.Adam(self.classifier.parameters(), lr=classifier_lr)
        )

    # -- training ---------------------------------------------------------------------------
    def loss(self, x: Tensor, labels: Tensor, batch: Batch) -> Tensor:
        """L_simple with the label dropped to null with probability p_uncond."""
        drop = batch.rand() < self.p_uncond
        labels = torch.where(drop, torch.full_like(labels, self.spec.num_classes), labels)
        t = batch.randint(self.diffusion.num_timesteps)
        noise = batch.randn_like(x)
        eps = self.net(self.diffusion.q_sample(x, t, noise), t.float(), labels)
        return (eps - noise).square().mean()

    def train_step(self, batch: Batch, step: int) -> Iterator[Update]:
        yield from super().train_step(batch, step)
        # the noise-aware classifier: cross-entropy on x_t at uniform t, same batch
        x = self.scale(batch.x)

        def classifier_loss() -> Tensor:
            t = batch.randint(self.diffusion.num_timesteps)
            x_t = self.diffusion.q_sample(x, t, batch.randn_like(x))
            return F.cross_entropy(self.classifier(x_t, t.float()), batch.y)

        yield Update("classifier", classifier_loss)

    # -- sampling ---------------------------------------------------------------------------
    def sample_variants(self) -> list[dict[str, Any]]:
        weights = [
            self.guidance_weight,
            *(w for w in GUIDANCE_WEIGHTS if w != self.guidance_weight),
        ]
        return [
            *({"guidance_weight": w} for w in weights),
            {"classifier_scale": self.classifier_scale},
        ]

    def guided_eps(self, x_t: Tensor, t: Tensor, labels: Tensor, guidance_weight: float) -> Tensor:
        """eps~ = (1 + w) eps(x_t, c) - w eps(x_t, null), one call on the doubled batch."""
        if guidance_weight == 0:
            return self.net(x_t, t.float(), labels)
        null = torch.full_like(labels, self.spec.num_classes)
        both = self.net(torch.cat([x_t, x_t]), torch.cat([t, t]).float(), torch.cat([labels, null]))
        conditional, unconditional = both.chunk(2)
        return (1.0 + guidance_weight) * conditional - guidance_weight * unconditional

    def classifier_guided_eps(self, x_t: Tensor, t: Tensor, labels: Tensor, scale: float) -> Tensor:
        """eps^ = eps(x_t, null) - sqrt(1 - abar_t) s grad log p_phi(y | x_t) (Algorithm 2)."""
        null = torch.full_like(labels, self.spec.num_classes)
        eps = self.net(x_t, t.float(), null)
        with torch.enable_grad():
            x_in = x_t.detach().requires_grad_(True)
            log_probs = F.log_softmax(self.classifier(x_in, t.float()), dim=1)
            selected = log_probs.gather(1, labels[:, None]).sum()
            (grad,) = torch.autograd.grad(selected, x_in)
        abar = self.diffusion.abar(t, x_t.device)[:, None, None, None]
        return eps - (1.0 - abar).sqrt() * scale * grad

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator,
        labels: Tensor | None = None,
        guidance_weight: float | None = None,
        classifier_scale: float | None = None,
    ) -> Tensor:
        x_T = self.noise((n, *self.spec.shape), generator)
        if labels is None:  # no labels asked for: the unconditional model
            null = torch.full((n,), self.spec.num_classes, device=self.device, dtype=torch.long)
            eps_fn = lambda x, t: self.net(x, t.float(), null)  # noqa: E731
            calls = 1
        elif classifier_scale is not None:
            labels = labels.to(self.device)
            eps_fn = lambda x, t: self.classifier_guided_eps(x, t, labels, classifier_scale)  # noqa: E731
            calls = 2  # the denoiser and the classifier's forward and backward
        else:
            labels = labels.to(self.device)
            weight = self.guidance_weight if guidance_weight is None else guidance_weight
            eps_fn = lambda x, t: self.guided_eps(x, t, labels, weight)  # noqa: E731
            calls = 1 if weight == 0 else 2
        x = ddim_sample(eps_fn, self.diffusion, x_T, self.steps, self.eta, generator)
        self.last_nfe = calls * self.steps
        return self.to_images(x)

    def sample_settings(self) -> dict[str, Any]:
        return {
            "sampler": "ddim",
            "steps": self.steps,
            "eta": self.eta,
            "p_uncond": self.p_uncond,
        }

    def flops_forward(self, x: Tensor) -> None:
        labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        self.net(self.scale(x), torch.zeros(x.shape[0], device=x.device), labels)
