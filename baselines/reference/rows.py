"""Reference rows: they prove every evaluator end to end and anchor every table.

- ``real-data``: held-out (test) images used as samples: the FID floor; its row
  ``real-data[split=train]`` draws training images instead, the ceiling of the memorization
  scores (a model that copies its training set).
- ``independent-pixels``: a per-pixel categorical over the L levels fitted on train by
  counting (add-alpha smoothing): the naive likelihood every likelihood method must beat.
- ``raw-pixels``: the identity representation: the probe a method must beat.
- ``random-encoder``: the shared ResNet encoder, randomly initialised and frozen.
- ``supervised``: the shared ResNet encoder trained with labels (cross-entropy): the
  probe's upper bound.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.common.encoders import ResNetEncoder, shared_encoder
from bench.method import (
    ENCODE,
    LOG_LIKELIHOOD,
    SAMPLE,
    Batch,
    DataSpec,
    Method,
    Update,
    from_levels,
    to_levels,
)
from bench.registry import register_method


@register_method("real-data")
class RealData(Method):
    """Held-out real images as 'samples': the test split in an order shuffled by the run's
    generator, each image once.

    Drawing with replacement made the floor an artefact: 1,000 draws from digits' 297 test
    images repeat most of them, and duplicates cover less of the real manifold, so recall
    fell to 0.43 where the same 297 images drawn once score 0.91. The harness therefore
    scores at most :attr:`max_samples` (the split's size) images of this row; asked for
    more, ``sample`` still returns ``n`` images, each repeated only after all were used.

    Its second sampler row, ``split="train"``, draws as many *training* images the same way:
    the row a memorising model would reach (memorized 1, authenticity 0, FID near 0), so
    that the memorization scores are read between two real anchors."""

    capabilities = frozenset({SAMPLE})
    trainable = False
    summary = "held-out real images as samples: the FID floor"

    def __init__(self, spec: DataSpec) -> None:
        super().__init__(spec)
        self.register_buffer("held_out", torch.zeros(0, *spec.shape), persistent=False)
        self.register_buffer("trained_on", torch.zeros(0, *spec.shape), persistent=False)
        self._split = "test"
        self._generator: torch.Generator | None = None
        self._order = torch.zeros(0, dtype=torch.long)
        self._drawn = 0  # images given to the current generator (the current draw)

    def prepare(self, train_x: Tensor, train_y: Tensor, held_out_x: Tensor) -> None:
        self.held_out = held_out_x.to(self.held_out.device)
        self.trained_on = train_x.to(self.trained_on.device)

    def sample_variants(self) -> list[dict[str, Any]]:
        return [{}, {"split": "train"}]

    @property
    def max_samples(self) -> int:
        """Samples this row can give without a duplicate: the harness caps fid_samples here."""
        return len(self.held_out)

    def sample(
        self,
        n: int,
        generator: torch.Generator,
        labels: Tensor | None = None,
        split: str = "test",
    ) -> Tensor:
        """The next ``n`` images of one permutation per generator: the harness draws a run's
        samples in batches from one generator, so batches continue the permutation instead of
        drawing afresh (which repeated images across batches); a new generator (a new draw)
        starts a new permutation, so a draw is reproducible from its seed alone.
        ``split="train"`` draws from the training images instead."""
        if split not in ("test", "train"):
            raise ValueError(f"real-data: split must be 'test' or 'train', not {split!r}")
        pool = self.held_out if split == "test" else self.trained_on
        available = len(pool)
        if available == 0:
            raise RuntimeError("real-data.sample called before prepare()")
        if generator is not self._generator or split != self._split:
            self._generator, self._split = generator, split
            self._order = torch.zeros(0, dtype=torch.long, device=generator.device)
            self._drawn = 0
        while len(self._order) < n:  # the permutation ran out: another one, after it
            fresh = torch.randperm(available, generator=generator, device=generator.device)
            self._order = torch.cat([self._order, fresh])
        idx, self._order = self._order[:n], self._order[n:]
        self._drawn += n
        return pool[idx.to(pool.device)]

    def sample_settings(self) -> dict[str, Any]:
        """How the last draw was made, including how many of its images were repeats."""
        return {
            "source": f"{self._split} split",
            "held_out_images": len(self.held_out),
            "draw": f"a permutation of the {self._split} split, without replacement",
            "max_samples": self.max_samples,
            "why_fewer_samples": (
                f"scored on at most the {self.max_samples} held-out images, each once: "
                "duplicates would shrink recall and make the floor an artefact"
            ),
            "images_drawn": self._drawn,
            "repeated_images": max(0, self._drawn - self.max_samples),
        }


@register_method("independent-pixels")
class IndependentPixels(Method):
    """p(x) = prod_d Cat(x_d; theta_d), theta_d = (count_d + alpha) / (N + L alpha)."""

    capabilities = frozenset({SAMPLE, LOG_LIKELIHOOD})
    trainable = False
    summary = "per-pixel categorical fitted by counting: the naive likelihood"
    #: alpha = 0 gives log 0 for a level never seen in training
    hparam_ranges = {"alpha": (0, None, "(]")}

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {"alpha": 1.0}  # Laplace smoothing

    def __init__(self, spec: DataSpec, alpha: float = 1.0) -> None:
        super().__init__(spec)
        self.alpha = alpha
        self.register_buffer(
            "log_probs", torch.full((spec.dims, spec.num_levels), -math.log(spec.num_levels))
        )

    def prepare(self, train_x: Tensor, train_y: Tensor, held_out_x: Tensor) -> None:
        levels = to_levels(train_x, self.spec.num_levels).flatten(1)  # (N, D)
        counts = F.one_hot(levels, self.spec.num_levels).sum(0).double()  # (D, L)
        probs = (counts + self.alpha) / (len(levels) + self.spec.num_levels * self.alpha)
        self.log_probs = probs.log().float().to(self.log_probs.device)

    def log_likelihood(self, x: Tensor) -> Tensor:
        levels = to_levels(x, self.spec.num_levels).flatten(1)  # (B, D)
        return self.log_probs.gather(1, levels.T).T.sum(1)  # (D, B) -> (B,)

    def sample(self, n: int, generator: torch.Generator, labels: Tensor | None = None) -> Tensor:
        probs = self.log_probs.exp().to(generator.device)
        levels = torch.multinomial(probs, n, replacement=True, generator=generator).T  # (n, D)
        return from_levels(levels, self.spec.num_levels).view(n, *self.spec.shape).to(self.device)


@register_method("raw-pixels")
class RawPixels(Method):
    """The identity representation: pixel values as features."""

    capabilities = frozenset({ENCODE})
    trainable = False
    summary = "pixels as features: the probe every encoder must beat"

    def encode(self, x: Tensor) -> Tensor:
        return x.flatten(1)


def _encoder(spec: DataSpec) -> ResNetEncoder:
    return shared_encoder(spec)


@register_method("random-encoder")
class RandomEncoder(Method):
    """The shared ResNet encoder at its random initialisation (seeded), frozen."""

    capabilities = frozenset({ENCODE})
    trainable = False
    summary = "shared ResNet encoder, random and frozen"

    def __init__(self, spec: DataSpec) -> None:
        super().__init__(spec)
        self.encoder = _encoder(spec)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)


@register_method("supervised")
class Supervised(Method):
    """The shared ResNet encoder and a linear head trained with cross-entropy on labels."""

    capabilities = frozenset({ENCODE})
    summary = "shared ResNet encoder trained with labels: the probe's upper bound"

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {"lr": 1e-3, "weight_decay": 5e-4}

    def __init__(self, spec: DataSpec, lr: float = 1e-3, weight_decay: float = 5e-4) -> None:
        super().__init__(spec)
        self.encoder = _encoder(spec)
        self.head = nn.Linear(self.encoder.feature_dim, spec.num_classes)
        self.add_optimizer(
            "adam", torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)
        )

    def train_step(self, batch: Batch, step: int) -> Iterator[Update]:
        yield Update("adam", lambda: F.cross_entropy(self.head(self.encoder(batch.x)), batch.y))

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)
