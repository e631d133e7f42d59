"""The passes that run a method over its chunks and feed an evaluator's ``update``: one per
capability. An evaluator subclasses the one it needs and writes ``update`` and ``compute``.

- :class:`SampleEvaluator`: ``update(samples, labels, chunk)`` with this rank's chunks of
  samples, each drawn from the chunk's own generator (:meth:`Evaluator.chunk_generator`).
- :class:`LikelihoodEvaluator`: ``update(log_likelihood, chunk)`` over this rank's chunks
  of the test split, torch's global generators seeded per chunk.
- :class:`FeatureEvaluator`: ``update(features, split, chunk)`` with ``encode`` features
  (float64) of this rank's chunks of the train and test splits.

Each chunk is the same whichever rank takes it, so W ranks feed, between them, what one
process feeds.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

from bench.evaluators.base import Chunk, Evaluator, chunks, rank_chunks, rank_share

if TYPE_CHECKING:
    from torch import Tensor

    from bench.method import Method


def _method_name(method: Method) -> str:
    return method.name or type(method).__name__


class SampleEvaluator(Evaluator):
    """Scores samples of the method's sampler variants (one section per variant).

    ``sample_count()`` images (``fid_samples``, capped at the reference size and at a
    method's ``max_samples``) are drawn in chunks of ``sample_batch_size``; rank 0's chunks
    after its first are timed for sample throughput (:attr:`speed`). A class-conditional
    method gets class-balanced labels (:meth:`sample_labels`, by position)."""

    capability = "sample"
    settings: ClassVar[tuple[str, ...]] = ("fid_samples", "sample_batch_size")

    @classmethod
    def variants(cls, method: Method) -> list[dict[str, Any]]:
        return method.sample_variants()

    def sample_count(self) -> int:
        context = self.context
        count = min(context.settings.fid_samples, len(context.data.levels("train")))
        cap = getattr(context.method, "max_samples", None)  # the real-data row: its test split
        if cap is not None:
            count = min(count, int(cap))
        return count

    def chunk_size(self) -> int:
        """Images per chunk. A method drawing from a finite pool (``max_samples``: the
        real-data row's permutation of the test split) continues one permutation per
        generator, so its draw is one chunk: chunks with generators of their own would each
        start a permutation and repeat images."""
        if getattr(self.context.method, "max_samples", None) is not None:
            return max(1, self.sample_count())
        return self.context.settings.sample_batch_size

    def sample_labels(self, count: int) -> Tensor | None:
        """The label of every sample position (class-balanced), None when unconditional."""
        if not self.context.method.class_conditional:
            return None
        import torch

        return torch.arange(count) % self.context.data.spec.num_classes

    def update(self, samples: Tensor, labels: Tensor | None, chunk: Chunk) -> None:
        """``samples``: (n, C, H, W) float in [0, 1] for positions ``chunk.start:chunk.stop``."""
        raise NotImplementedError

    def feed(self) -> None:
        import torch

        from bench.errors import GenbenchError
        from bench.metrics import throughput
        from bench.optim import autocast

        context, method, device = self.context, self.context.method, self.context.device
        count = self.sample_count()
        labels = self.sample_labels(count)
        shape = context.data.spec.shape
        first_seconds, timed_images, timed_seconds, nfe = 0.0, 0, 0.0, None
        first_images = 0
        with torch.no_grad():
            for position, chunk in enumerate(rank_chunks(count, self.chunk_size())):
                generator = self.chunk_generator(chunk)
                chunk_labels = None if labels is None else labels[chunk.start : chunk.stop]
                if chunk_labels is not None:
                    chunk_labels = chunk_labels.to(device)
                throughput.synchronize(device)
                tick = time.perf_counter()
                with autocast(device, context.precision):
                    batch = method.sample(chunk.size, generator, chunk_labels, **self.variant)
                throughput.synchronize(device)
                elapsed = time.perf_counter() - tick
                if position == 0:
                    first_images, first_seconds = chunk.size, elapsed
                else:
                    timed_images, timed_seconds = timed_images + chunk.size, timed_seconds + elapsed
                name = _method_name(method)
                if tuple(batch.shape) != (chunk.size, *shape):
                    raise GenbenchError(
                        f"{name}.sample({chunk.size}) returned shape {tuple(batch.shape)}"
                    )
                batch = batch.float()
                if not torch.isfinite(batch).all():
                    raise GenbenchError(f"{name}.sample returned NaN or inf")
                if batch.min() < 0 or batch.max() > 1:
                    raise GenbenchError(f"{name}.sample returned values outside [0, 1]")
                nfe = method.last_nfe
                self.update(batch, chunk_labels, chunk)
        rate: float | None = None
        warm = timed_seconds > 0
        if warm:
            rate = timed_images / timed_seconds
        elif first_seconds > 0:
            rate = first_images / first_seconds
        #: this rank's sampling speed (rank 0's is the one recorded)
        self.speed = {"sample_images_per_s": rate, "sample_warmup_excluded": warm, "nfe": nfe}


class LikelihoodEvaluator(Evaluator):
    """Scores per-image log-likelihoods of the test split, one section per likelihood
    estimator of the method (``likelihood_variants``), in chunks of ``eval_batch_size``."""

    capability = "log_likelihood"
    settings: ClassVar[tuple[str, ...]] = ("eval_batch_size",)

    @classmethod
    def variants(cls, method: Method) -> list[dict[str, Any]]:
        return method.likelihood_variants()

    def num_chunks(self) -> int:
        return len(
            chunks(len(self.context.data.levels("test")), self.context.settings.eval_batch_size)
        )

    def update(self, log_likelihood: Tensor, chunk: Chunk) -> None:
        """``log_likelihood``: (n,) nats of test images ``chunk.start:chunk.stop``."""
        raise NotImplementedError

    def feed(self) -> None:
        import torch

        context = self.context
        test = context.data.images("test")
        with torch.no_grad():
            for chunk in rank_chunks(len(test), context.settings.eval_batch_size):
                self.seed_chunk(chunk)
                x = test[chunk.start : chunk.stop].to(context.device)
                self.update(context.method.log_likelihood(x, **self.variant), chunk)


class FeatureEvaluator(Evaluator):
    """Scores frozen ``encode`` features of both splits, in chunks of ``eval_batch_size``
    (the train chunks, then the test chunks, shared round robin over ranks)."""

    capability = "encode"
    settings: ClassVar[tuple[str, ...]] = ("eval_batch_size",)
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "test")

    def setup(self, feature_dim: int) -> None:
        """Called on every rank before the first update, with the features' width."""

    def update(self, features: Tensor, split: str, chunk: Chunk) -> None:
        """``features``: (n, d) float64 of ``split``'s images ``chunk.start:chunk.stop``."""
        raise NotImplementedError

    def feed(self) -> None:
        import torch

        from bench.metrics.probe import encode_features

        context, method = self.context, self.context.method
        size = context.settings.eval_batch_size
        images = {split: context.data.images(split) for split in self.SPLITS}
        work = [
            (split, chunk) for split in self.SPLITS for chunk in chunks(len(images[split]), size)
        ]
        was_training = method.training
        method.eval()
        with torch.no_grad():
            probe = images["test"][:1].to(context.device)
            self.setup(int(encode_features(method, probe).shape[1]))
            for index, (split, chunk) in rank_share(list(enumerate(work))):
                self.seed_chunk(Chunk(index, chunk.start, chunk.stop))
                x = images[split][chunk.start : chunk.stop].to(context.device)
                self.update(encode_features(method, x), split, chunk)
        method.train(was_training)
