"""Sample quality: FID, KID, precision/recall (torch-fidelity, :mod:`bench.metrics.fidelity`)
and, for class-conditional methods, the domain classifier's accuracy on the samples.

Every rank draws its chunks of samples (each chunk from its own generator,
:func:`bench.seeds.chunk_seed`), quantised to the data's levels as uint8 into a state indexed
by sample position; the sum across ranks gathers the whole set in the order one process draws
it. Every rank then extracts its share of the features (the batches one process extracts,
round robin: :func:`bench.metrics.fidelity.extract_features`), the features are gathered the
same way, and rank 0 computes FID / KID / PR once, on the whole set: the numbers of one
process, with the drawing and the feature extraction split over the ranks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.evaluators.base import Chunk, Column, is_main_rank, register_evaluator
from bench.evaluators.feeds import SampleEvaluator
from bench.evaluators.fidelity_metrics import (
    FidelityMetric,
    SampleSets,
    build_sets,
    fidelity_metrics,
    on_register,
    score_sets,
)

if TYPE_CHECKING:
    from torch import Tensor

#: the sample grid of the method's default sampler, in the run folder
GRID_FILE = "samples.png"
GRID_IMAGES = 64


@register_evaluator("fidelity")
class Fidelity(SampleEvaluator):
    """FID / KID / precision-recall against the train split through the study's extractor."""

    #: FID / KID / PR and the class accuracy, then the columns of every registered fidelity
    #: metric (:mod:`bench.evaluators.fidelity_metrics`, kept current by :func:`_add_columns`)
    columns = (
        Column("fid", "FID", higher_is_better=False, range=(0.0, math.inf), decimals=2),
        # an unbiased MMD^2 estimate: below zero for near-identical sets, so no floor
        Column("kid", "KID", higher_is_better=False, decimals=4),
        Column("precision", "precision", higher_is_better=True, range=(0.0, 1.0)),
        Column("recall", "recall", higher_is_better=True, range=(0.0, 1.0)),
        Column("sample_acc", "sample class acc", higher_is_better=True, range=(0.0, 1.0)),
        *(c for metric in fidelity_metrics() for c in metric.columns),
    )
    settings = (
        "fid_samples",
        "sample_batch_size",
        "eval_batch_size",
        "kid_subset_size",
        "kid_subsets",
        "prc_neighborhood",
        *sorted({key for metric in fidelity_metrics() for key in metric.settings}),
    )
    order = 20

    images: Tensor
    drawn: Tensor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        import torch

        count, shape = self.sample_count(), self.context.data.spec.shape
        self.add_state("images", torch.zeros(count, *shape, dtype=torch.uint8))
        self.add_state("drawn", torch.zeros(count, dtype=torch.float64))
        #: FID / KID / PR of the gathered samples (rank 0), set by :meth:`run`
        self._scores: dict[str, Any] | None = None
        #: the features they came from (rank 0), for the fidelity metrics
        self._features: dict[str, Any] | None = None
        #: what the fidelity metrics read (rank 0), reused by the nearest-image picture
        self._sets: SampleSets | None = None

    def update(self, samples: Tensor, labels: Tensor | None, chunk: Chunk) -> None:
        from bench.method import to_levels
        from bench.metrics.fidelity import levels_to_uint8

        num_levels = self.context.data.spec.num_levels
        levels = to_levels(samples.detach(), num_levels)  # what a saved image file holds
        self.images[chunk.start : chunk.stop] = levels_to_uint8(levels, num_levels)
        self.drawn[chunk.start : chunk.stop] += 1

    def run(self) -> Any:
        """Draw (this rank's chunks), gather the samples, extract (this rank's share of the
        features, every rank), then rank 0 scores them."""
        self.feed()
        self.sync()
        self._scores = self._fidelity()
        return self.result() if is_main_rank() else None

    def _fidelity(self) -> dict[str, Any] | None:
        """FID / KID / PR of the gathered samples; collective under torchrun (rank 0 gets
        the scores, the others None)."""
        from bench.metrics import fidelity

        if not bool((self.drawn == 1).all()):
            raise RuntimeError("fidelity: the ranks did not draw every sample exactly once")
        context = self.context
        self._features = {} if context.fidelity_metrics else None
        images = self.images.cpu()
        scores = fidelity.evaluate_uint8_samples(
            images,
            context.data,
            context.extractor,
            context.settings,
            context.seed,
            context.device,
            context.feature_weights,
            features_out=self._features,
        )
        # FID under each independently trained network too (every rank: collective)
        second = fidelity.second_network_fids(
            images,
            context.data,
            context.second_extractors if context.fidelity_metrics else (),
            context.settings,
            context.seed,
            context.device,
        )
        if scores is not None and second:
            scores["second_extractors"] = second
        return scores

    def compute(self) -> dict[str, Any]:
        from bench.metrics import fidelity
        from bench.metrics.extractors import DOMAIN_EXTRACTORS

        found = self._scores if self._scores is not None else self._fidelity()
        if found is None:
            raise RuntimeError("fidelity: compute() is rank 0's")
        scores = dict(found, settings=dict(found["settings"]))
        context, samples = self.context, self.images.cpu()
        scores["settings"]["sampler"] = {**context.method.sample_settings(), **self.variant}
        labels = self.sample_labels(len(samples))
        if labels is not None and context.extractor in DOMAIN_EXTRACTORS:
            scores["sample_acc"] = fidelity.uint8_classifier_accuracy(
                samples, labels, context.extractor
            )
        if self._features:
            self._sets = build_sets(
                self._features,
                samples,
                context.data,
                context.extractor,
                context.settings,
                context.seed,
                labels,
            )
            add_fidelity_metrics(scores, self._sets)
        return scores

    def result(self) -> dict[str, Any]:
        scores = self.compute()
        if self.section == self.section_name(0):  # the method's own sampler
            images = self.images.cpu().float() / 255.0
            save_grid(images[:GRID_IMAGES], self.context.directory / GRID_FILE)
            if self._sets is not None:  # and each sample beside its nearest training image
                from bench.pictures import NEAREST_FILE, save_nearest_grid

                train = self._sets.train_px.view(-1, *images.shape[1:])  # the metrics' pixels
                save_nearest_grid(images, train, self.context.directory / NEAREST_FILE)
        return {"scores": scores, "speed": self.speed}

    @classmethod
    def record(
        cls, metrics: dict[str, Any], index: int, variant: dict[str, Any], value: Any
    ) -> None:
        scores, speed = dict(value["scores"]), value["speed"]
        if index == 0:
            metrics["fidelity"] = scores
            metrics.setdefault("throughput", {}).update(speed)
        else:
            scores.update(variant=variant, **speed)
            metrics.setdefault("fidelity_variants", []).append(scores)

    @classmethod
    def row(cls, scores: dict[str, Any]) -> dict[str, Any]:
        """Columns named by extractor (``fid[digits-cnn]``), or ``[pixels]`` for the
        pixel-space scores (``memorized[pixels]``); a variant's row adds its cost."""
        extractor = scores["settings"]["extractor"]
        pixels = scores.get("pixels") or {}
        row = {
            f"{c.name}[{extractor}]": scores[c.name]
            for c in cls.columns
            if scores.get(c.name) is not None
        }
        row.update({f"{c.name}[pixels]": pixels[c.name] for c in cls.columns if c.name in pixels})
        for name, found in (scores.get("second_extractors") or {}).items():
            if isinstance(found, dict) and found.get("fid") is not None:
                row[f"fid[{name}]"] = found["fid"]
        for key in ("sample_images_per_s", "nfe"):
            if scores.get(key) is not None:
                row[key] = scores[key]
        return row


def add_fidelity_metrics(scores: dict[str, Any], sets: SampleSets) -> None:
    """Every registered fidelity metric's scores of ``sets``, added to FID's ``scores``
    (their settings under ``settings["metrics"]``, pixel-space values under ``pixels``)."""
    extra = score_sets(sets)
    scores["settings"]["metrics"] = extra.pop("settings")
    pixels = extra.pop("pixels")
    if pixels:
        scores["pixels"] = pixels
    scores.update(extra)


def _add_columns(metric: type[FidelityMetric]) -> None:
    """A fidelity metric registered after this module (a plug-in's): its columns and
    settings join the fidelity evaluator's."""
    Fidelity.columns = (*Fidelity.columns, *metric.columns)
    Fidelity.settings = (
        *Fidelity.settings,
        *(k for k in metric.settings if k not in Fidelity.settings),
    )


on_register(_add_columns)


def save_grid(images: Tensor, path: Path) -> None:
    """An 8-wide grid of images in [0, 1], as a png."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, path, nrow=8, padding=1)
