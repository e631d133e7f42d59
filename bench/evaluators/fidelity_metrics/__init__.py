"""Metrics computed from the fidelity evaluator's samples and features, one file each.

Drawing samples and putting them through the feature network is the expensive part of
scoring a generative model, so the metrics researchers now ask for beside FID (density and
coverage, memorization, Vendi, FD-infinity, intra-class FID) do not draw or extract again:
the ``fidelity`` evaluator (:mod:`bench.evaluators.fidelity`) hands each registered
:class:`FidelityMetric` one :class:`SampleSets` (the samples, the train split that is FID's
reference and the test split, as features of the study's extractor and as pixels) and adds
the metric's scores to its own. Their columns are fidelity columns, named by the extractor
like FID's (``density[digits-cnn]``) or ``[pixels]`` for pixel-space scores, and declared
here with their directions and ranges, so leaderboards and the regression gate read them
from the registry like every other column.

Adding one is adding a module to this package (it imports every module in it) with a
:class:`FidelityMetric` subclass under ``@register_fidelity_metric("name")``. Like the rest
of :mod:`bench.evaluators`, importing it does not import torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from bench.evaluators.base import Column

if TYPE_CHECKING:
    from torch import Tensor

    from bench.protocol import EvalSettings


@dataclasses.dataclass
class SampleSets:
    """What a fidelity metric reads. Feature rows are images, float64, in the extractor's
    space: ``samples`` / ``train`` / ``test`` at the layer precision/recall use,
    ``samples_fid`` / ``train_fid`` at FID's layer (often the same tensors); pixel rows are
    the images flattened, float64 in [0, 1], quantised as a saved image file holds them."""

    extractor: str
    samples: Tensor
    train: Tensor
    test: Tensor
    samples_fid: Tensor
    train_fid: Tensor
    samples_px: Tensor
    train_px: Tensor
    test_px: Tensor
    #: the class each sample was drawn for (class-conditional methods), else None
    sample_labels: Tensor | None
    train_labels: Tensor | None
    settings: EvalSettings
    #: the run's seed: random subsets (FD-infinity) derive from it
    seed: int


class FidelityMetric:
    """One metric over :class:`SampleSets`: its columns, the ``eval.*`` settings it reads,
    and :meth:`compute`."""

    name: ClassVar[str] = ""
    columns: ClassVar[tuple[Column, ...]] = ()
    settings: ClassVar[tuple[str, ...]] = ()
    #: True: only for methods that draw samples for a given class (guidance)
    class_conditional: ClassVar[bool] = False

    @classmethod
    def applies(cls, sets: SampleSets) -> bool:
        if cls.class_conditional:
            return sets.sample_labels is not None and sets.train_labels is not None
        return True

    def compute(self, sets: SampleSets) -> dict[str, Any]:
        """``{column: value, ...}``; pixel-space values under ``"pixels"`` (``{column:
        value}``) and anything worth keeping about how they were computed under
        ``"settings"``."""
        raise NotImplementedError


_METRICS: dict[str, type[FidelityMetric]] = {}
#: called with each newly registered metric (the fidelity evaluator extends its columns)
_listeners: list[Callable[[type[FidelityMetric]], None]] = []


def register_fidelity_metric(
    name: str,
) -> Callable[[type[FidelityMetric]], type[FidelityMetric]]:
    def decorator(cls: type[FidelityMetric]) -> type[FidelityMetric]:
        from bench.evaluators.base import columns as registered_columns

        if name in _METRICS:
            raise ValueError(f"fidelity metric {name!r} is registered already")
        taken = set(registered_columns()) | {c.name for m in _METRICS.values() for c in m.columns}
        for column in cls.columns:
            if column.name in taken:
                raise ValueError(f"fidelity metric {name!r}: column {column.name!r} is taken")
        cls.name = name
        _METRICS[name] = cls
        for listener in _listeners:
            listener(cls)
        return cls

    return decorator


def fidelity_metrics() -> list[type[FidelityMetric]]:
    """Every registered metric, in registration order (the order of their columns)."""
    return list(_METRICS.values())


def on_register(listener: Callable[[type[FidelityMetric]], None]) -> None:
    _listeners.append(listener)


def score_sets(sets: SampleSets, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every registered metric that applies to ``sets``, merged into one scores dict (the
    ``settings`` of each under ``settings[<metric name>]``, pixel-space values under
    ``pixels``)."""
    scores: dict[str, Any] = {"settings": {}, "pixels": {}}
    for kind in fidelity_metrics():
        if kind.name in skip or not kind.applies(sets):
            continue
        found = dict(kind().compute(sets))
        if not found:  # nothing to score here (no class with two samples)
            continue
        scores["settings"][kind.name] = found.pop("settings", {})  # or why nothing was scored
        scores["pixels"].update(found.pop("pixels", {}))
        scores.update(found)
    return scores


def build_sets(
    found: dict[str, Any],
    samples: Tensor,
    data: Any,
    extractor: str,
    settings: EvalSettings,
    seed: int,
    sample_labels: Tensor | None,
) -> SampleSets:
    """The :class:`SampleSets` of one scoring: ``found`` is what
    :func:`bench.metrics.fidelity.evaluate_uint8_samples` left in its ``features_out``,
    ``samples`` the uint8 images it scored, ``data`` the study's :class:`bench.data.ImageData`."""
    from bench.metrics.fidelity import levels_to_uint8

    layers = found["layers"]

    def layer(which: str, metric: str) -> Tensor:
        return found[which][layers[metric]].double()

    def pixels(images: Tensor) -> Tensor:
        return images.reshape(len(images), -1).double() / 255.0

    num_levels = data.spec.num_levels
    return SampleSets(
        extractor=extractor,
        samples=layer("generated", "prc"),
        train=layer("reference", "prc"),
        test=layer("holdout", "prc"),
        samples_fid=layer("generated", "fid"),
        train_fid=layer("reference", "fid"),
        samples_px=pixels(samples.cpu()),
        train_px=pixels(levels_to_uint8(data.levels("train"), num_levels)),
        test_px=pixels(levels_to_uint8(data.levels("test"), num_levels)),
        sample_labels=None if sample_labels is None else sample_labels.cpu(),
        train_labels=data.labels("train") if data.labeled else None,
        settings=settings,
        seed=seed,
    )


for _module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
