"""Representation quality: linear-probe and kNN accuracy on frozen ``encode`` features
(:mod:`bench.metrics.probe` fits and scores; this is the sharded pass that extracts them).

The features of both splits are states indexed by image (float64, zero where another rank
fills in), so the probe is fitted on rank 0 on exactly the features one process extracts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.evaluators.base import Chunk, Column, register_evaluator
from bench.evaluators.feeds import FeatureEvaluator

if TYPE_CHECKING:
    from torch import Tensor


@register_evaluator("probe")
class Probe(FeatureEvaluator):
    """Logistic regression (C picked on a validation split of train) and weighted kNN."""

    needs_labels = True
    columns = (
        Column("linear_acc", "linear acc", higher_is_better=True, range=(0.0, 1.0)),
        Column("knn_acc", "kNN acc", higher_is_better=True, range=(0.0, 1.0)),
    )
    settings = (
        "eval_batch_size",
        "probe_val_fraction",
        "probe_c_grid",
        "probe_max_iter",
        "knn_k",
        "knn_temperature",
    )
    order = 30

    train: Tensor
    test: Tensor
    seen: Tensor

    @classmethod
    def section_name(cls, index: int) -> str | None:
        return "probe"

    def setup(self, feature_dim: int) -> None:
        import torch

        data = self.context.data
        sizes = {split: len(data.levels(split)) for split in self.SPLITS}
        for split, size in sizes.items():
            self.add_state(split, torch.zeros(size, feature_dim, dtype=torch.float64))
        self.add_state("seen", torch.zeros(sum(sizes.values()), dtype=torch.float64))

    def update(self, features: Tensor, split: str, chunk: Chunk) -> None:
        getattr(self, split)[chunk.start : chunk.stop] = features
        offset = 0 if split == "train" else len(self.train)
        self.seen[offset + chunk.start : offset + chunk.stop] += 1

    def result(self) -> dict[str, Any]:
        """The scores, and the retrieval grid in the run folder (the run's own probe, not a
        learning curve's point): :func:`bench.pictures.save_retrieval_grid`."""
        scores = self.compute()
        context = self.context
        if self.section == self.section_name(0) and context.directory is not None:
            from bench.pictures import RETRIEVAL_FILE, save_retrieval_grid
            from bench.seeds import derive

            save_retrieval_grid(
                self.train.cpu(),
                self.test.cpu(),
                context.data.images("train"),
                context.data.images("test"),
                derive(context.seed, "retrieval"),
                context.directory / RETRIEVAL_FILE,
            )
        return scores

    def compute(self) -> dict[str, Any]:
        from bench.metrics.probe import probe_scores

        if not bool((self.seen == 1).all()):
            raise RuntimeError("probe: the ranks did not encode every image exactly once")
        data = self.context.data
        return probe_scores(
            self.train.cpu(),
            data.labels("train"),
            self.test.cpu(),
            data.labels("test"),
            data.spec.num_classes,
            self.context.settings,
        )
