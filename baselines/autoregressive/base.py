"""What every discrete autoregressive model here shares: p(x) = prod_d p(x_d | x_<d) over the
L levels of each of the D dimensions, in some ordering.

A model implements :meth:`DiscreteAutoregressive.conditional_log_probs`: for a batch of
integer levels (B, D), the normalised log-probabilities (B, D, L) of every dimension's
conditional given the dimensions before it, in one network call (teacher forcing). From that:

- exact log-likelihood log p(x) = sum_d log p(x_d | x_<d) (nats of the discrete data);
- training by maximum likelihood: ``train_step`` yields one update of the ``adam``
  optimiser (AdamW, registered by :meth:`DiscreteAutoregressive.setup_optimizer`) whose
  loss is the mean negative log-likelihood per dimension; the training loop does the rest;
- ancestral sampling: D network calls, each for the whole batch at once, filling one
  dimension per call in the model's sampling order (last_nfe = D).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from bench.method import (
    LOG_LIKELIHOOD,
    SAMPLE,
    Batch,
    DataSpec,
    Method,
    Update,
    from_levels,
    to_levels,
)

#: a sampling step: (levels (n, D) filled so far, dimension d) -> log-probs (n, L) of x_d
Conditional = Callable[[Tensor, int], Tensor]


def draw_categorical(log_probs: Tensor, generator: torch.Generator) -> Tensor:
    """One draw per row of (n, L) log-probabilities, all randomness from ``generator``."""
    probs = log_probs.exp().to(generator.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def ancestral_sample(
    num_samples: int,
    dims: int,
    order: Sequence[int],
    conditional: Conditional,
    generator: torch.Generator,
    device: torch.device,
) -> Tensor:
    """x_{o_1} ~ p(.), x_{o_2} ~ p(. | x_{o_1}), ...: one ``conditional`` call per position
    for the whole batch. Returns levels (n, D) (long)."""
    levels = torch.zeros(num_samples, dims, dtype=torch.long, device=device)
    for d in order:
        levels[:, d] = draw_categorical(conditional(levels, d), generator).to(device)
    return levels


class DiscreteAutoregressive(Method):
    """Base class: exact likelihood, maximum-likelihood training with Adam, ancestral sampling.

    Subclasses build their networks, then call :meth:`setup_optimizer` (which registers the
    optimiser with the training loop), and implement
    :meth:`conditional_log_probs` (and :meth:`sampling_order` if it is not raster order)."""

    capabilities = frozenset({SAMPLE, LOG_LIKELIHOOD})
    likelihood_is_bound = False

    def __init__(self, spec: DataSpec) -> None:
        super().__init__(spec)
        self.last_nfe = spec.dims

    def setup_optimizer(self, lr: float, weight_decay: float = 0.0) -> None:
        self.add_optimizer(
            "adam",
            torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay),
        )

    # -- the model --------------------------------------------------------------------------
    def conditional_log_probs(self, levels: Tensor) -> Tensor:
        """(B, D) levels -> (B, D, L) log p(x_d = l | x_<d), normalised over l."""
        raise NotImplementedError

    def log_prob_per_dim(self, levels: Tensor) -> Tensor:
        """(B, D) levels -> (B, D) log p(x_d | x_<d) at the observed levels."""
        log_probs = self.conditional_log_probs(levels)  # (B, D, L)
        return log_probs.gather(2, levels.unsqueeze(2)).squeeze(2)

    def sampling_order(self) -> list[int]:
        """Dimensions of the flattened (C, H, W) image in the order they are generated."""
        return list(range(self.spec.dims))

    def sampling_conditional(self, num_samples: int) -> Conditional:
        """The per-position conditional used by the sampler; by default one full network
        call per position, of which the column ``d`` is used."""
        return lambda levels, d: self.conditional_log_probs(levels)[:, d]

    # -- Method interface ---------------------------------------------------------------------
    def _levels(self, x: Tensor) -> Tensor:
        return to_levels(x, self.spec.num_levels).flatten(1)  # (B, C, H, W) -> (B, D)

    def log_likelihood(self, x: Tensor) -> Tensor:
        return self.log_prob_per_dim(self._levels(x)).sum(1)

    def training_log_likelihood(self, levels: Tensor, step: int) -> Tensor:
        """(B,) log-likelihood whose mean the training step maximises."""
        return self.log_prob_per_dim(levels).sum(1)

    def train_step(self, batch: Batch, step: int) -> Iterator[Update]:
        levels = self._levels(batch.x)

        def nll() -> tuple[Tensor, dict[str, Tensor]]:  # nats per dimension
            loss = -self.training_log_likelihood(levels, step).mean() / self.spec.dims
            return loss, {"bpd": loss.detach() / math.log(2.0)}

        yield Update("adam", nll)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, labels: Tensor | None = None) -> Tensor:
        levels = ancestral_sample(
            n,
            self.spec.dims,
            self.sampling_order(),
            self.sampling_conditional(n),
            generator,
            self.device,
        )
        self.last_nfe = self.spec.dims
        return from_levels(levels, self.spec.num_levels).view(n, *self.spec.shape)

    def sample_settings(self) -> dict[str, Any]:
        return {"sampler": "ancestral", "network_calls": self.spec.dims}

    def likelihood_settings(self) -> dict[str, Any]:
        return {"exact": True}
