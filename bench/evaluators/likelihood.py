"""Likelihood: bits per dimension of the test split (:mod:`bench.metrics.likelihood` knows
how bits/dim are computed; this is the sharded pass over the test split that feeds it).

States are per chunk of the test split (the chunk's summed NLL in nats and its image
count, float64), so ranks fill disjoint entries and the sum across ranks holds exactly what
one process holds: bits/dim sharded over any number of CPU ranks is bitwise the value of
one process. A stochastic estimator (an IWAE bound, dequantization noise) draws from torch's
global generator seeded per chunk, so it too does not depend on the ranks.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from bench.evaluators.base import Chunk, Column, register_evaluator
from bench.evaluators.feeds import LikelihoodEvaluator

if TYPE_CHECKING:
    from torch import Tensor


@register_evaluator("likelihood")
class Likelihood(LikelihoodEvaluator):
    """bits/dim of the discrete test images, labelled exact or bound (``is_bound``)."""

    columns = (
        Column("bpd", "bits/dim", higher_is_better=False, range=(0.0, math.inf), decimals=3),
    )
    settings = ("eval_batch_size",)
    order = 10  # first: a killed evaluation of a likelihood method keeps its bits/dim

    nll: Tensor
    count: Tensor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        import torch

        num_chunks = self.num_chunks()
        self.add_state("nll", torch.zeros(num_chunks, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(num_chunks, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, log_likelihood: Tensor, chunk: Chunk) -> None:
        from bench.metrics.likelihood import negative_log_likelihood

        self.nll[chunk.index] += negative_log_likelihood(log_likelihood)
        self.count[chunk.index] += log_likelihood.numel()

    def compute(self) -> dict[str, Any]:
        from bench.metrics.likelihood import bits_from_nll, likelihood_scores

        context = self.context
        spec = context.data.spec
        bpd = float(bits_from_nll(self.nll.sum(), self.count.sum(), spec.dims))
        num_images = int(self.count.sum())
        return likelihood_scores(bpd, context.method, num_images, spec.num_levels, self.variant)

    @classmethod
    def row(cls, scores: dict[str, Any]) -> dict[str, Any]:
        return {"bpd": scores.get("bpd"), "bpd_is_bound": bool(scores.get("is_bound"))}
