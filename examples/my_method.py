"""An example genbench plug-in: a mixture of factorised categoricals over pixel levels.

The mixture of Bernoulli distributions (Bishop, *Pattern Recognition and Machine Learning*,
2006, section 9.3.3, eq. 9.47) generalised from binary pixels to the data's L levels:

    p(x) = sum_k pi_k prod_d Cat(x_d | theta_kd)                          (eq. 9.47)

with pi = softmax(a) and theta_kd = softmax(b_kd). It is fitted here by maximum likelihood
with Adam on -log p(x) / D over minibatches (Bishop fits it with EM; the optimum is the
same), its log-likelihood is exact in nats of the discrete data, and sampling draws a
component k ~ pi, then every pixel x_d ~ Cat(theta_kd).

Nothing here is special to genbench's own methods: the same decorator and base class, and
the harness validates it, trains it and scores it under the protocol like ours.

    genbench run --include examples/my_method.py --methods pixel-mixture,independent-pixels \
        --dataset examples/digits-card.toml --protocol smoke
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
from bench.registry import register_method

__version__ = "1.0.0"


@register_method("pixel-mixture")
class PixelMixture(Method):
    """A mixture of K factorised categoricals (Bishop 2006, eq. 9.47, L levels)."""

    capabilities = frozenset({SAMPLE, LOG_LIKELIHOOD})
    summary = "example plug-in: mixture of factorised categoricals (Bishop 2006, 9.3.3)"

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, object]:
        return {"components": 32, "lr": 0.05}

    def __init__(self, spec: DataSpec, components: int, lr: float) -> None:
        super().__init__(spec)
        self.components = components
        self.mixture_logits = nn.Parameter(torch.zeros(components))
        # small random logits break the symmetry between components
        self.pixel_logits = nn.Parameter(0.01 * torch.randn(components, spec.dims, spec.num_levels))
        self.add_optimizer("model", torch.optim.Adam(self.parameters(), lr=lr))

    def log_joint(self, x: Tensor) -> Tensor:
        """log pi_k + sum_d log theta_kd(x_d): (B, K)."""
        levels = to_levels(x, self.spec.num_levels).flatten(1)  # (B, D)
        table = F.log_softmax(self.pixel_logits, dim=-1).permute(1, 2, 0)  # (D, L, K)
        picked = table[torch.arange(self.spec.dims, device=x.device)[None, :], levels]
        return picked.sum(1) + F.log_softmax(self.mixture_logits, dim=0)  # (B, K)

    def log_likelihood(self, x: Tensor) -> Tensor:
        return torch.logsumexp(self.log_joint(x), dim=1)

    def train_step(self, batch: Batch, step: int) -> Iterator[Update]:
        yield Update("model", lambda: -self.log_likelihood(batch.x).mean() / self.spec.dims)

    def sample(self, n: int, generator: torch.Generator, labels: Tensor | None = None) -> Tensor:
        weights = F.softmax(self.mixture_logits.float(), dim=0)
        component = torch.multinomial(weights, n, replacement=True, generator=generator)
        probs = F.softmax(self.pixel_logits.float()[component], dim=-1)  # (n, D, L)
        levels = torch.multinomial(probs.reshape(-1, self.spec.num_levels), 1, generator=generator)
        return from_levels(levels.reshape(n, *self.spec.shape), self.spec.num_levels)
