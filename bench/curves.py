"""Learning curves: the cheap metrics at points along one training run.

A protocol (or ``--set eval.at_images=[...]``) lists images-seen counts; when training
crosses each, the loop (:func:`bench.train.train`) pauses and scores the model as the final
evaluation would, only cheaper:

- FID / KID / precision-recall on ``eval.curve_fid_samples`` samples of the method's own
  sampler (the first sampler variant);
- bits/dim on the first ``eval.curve_test_images`` test images (the first estimator);
- the linear and kNN probe (fitted on the train split, scored on that test subset).

The model scored is the one the final evaluation would score at that point: the EMA weights
when the method keeps an EMA, in eval mode. Every random stream of a point is seeded by (run
seed, point, section), and torch's generators are restored afterwards, so a run with a curve
trains exactly the weights of a run without one, and a point equals a separate evaluation of
the model at that point (:func:`evaluate_point`; ``tests/bench/test_curves.py``).

Each point records ``images`` (seen), ``step``, ``train_wall_s`` (seconds spent in training
steps so far, evaluation and checkpoints excluded), ``train_flops`` (3 x the forward FLOPs
per image, counted once per method with torch's FLOP counter, x images seen: the usual
forward + backward estimate) and the scores. The series lives in the checkpoint, so a
resumed run keeps it, and ends up in the result as ``metrics.curve``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any

import torch

from bench import distributed

log = logging.getLogger(__name__)

#: what a point keeps of each evaluator's scores (settings and timings stay out)
KEPT = {
    "fidelity": ("fid", "kid", "precision", "recall"),
    "likelihood": ("bpd",),
    "probe": ("linear_acc", "knn_acc"),
}
CURVE_KEYS = ("at_images", "curve_fid_samples", "curve_test_images")


def curve_settings(settings: Any) -> dict[str, Any]:
    """The settings a series depends on (kept with it: another setting starts it afresh)."""
    return {key: getattr(settings, key) for key in CURVE_KEYS}


def points_within(settings: Any, budget: int) -> list[int]:
    """The curve's points a run of ``budget`` images reaches, in order."""
    return sorted({int(p) for p in settings.at_images if 0 < int(p) <= budget})


@contextlib.contextmanager
def scoring_weights(method: Any, ema: Any) -> Iterator[None]:
    """The method as the final evaluation scores it (EMA weights, eval mode), then back to
    its training weights and mode; torch's random state is untouched afterwards."""
    backup = None
    if ema is not None:
        backup = {k: v.detach().clone() for k, v in method.state_dict().items() if k in ema.shadow}
        ema.copy_to(method)
    was_training = method.training
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    method.eval()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        method.train(was_training)
        if backup is not None:
            state = method.state_dict()
            with torch.no_grad():
                for key, value in backup.items():
                    state[key].copy_(value)


def train_flops_per_image(method: Any, images: torch.Tensor, device: torch.device) -> float | None:
    """3 x forward FLOPs per image of the method's main forward pass (FLOP counter, once)."""
    from bench.metrics.throughput import forward_flops_per_image

    batch = images[: min(8, len(images))].to(device)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            forward = forward_flops_per_image(method, batch)
    except Exception as exc:  # noqa: BLE001 - a method the counter cannot trace: no FLOPs
        log.warning("FLOP count of %s failed (%s): curve without FLOPs", method.name, exc)
        return None
    return 3.0 * forward if forward else None


def evaluate_point(
    method: Any,
    data: Any,
    settings: Any,
    seed: int,
    images: int,
    device: torch.device,
    extractor: str,
    feature_weights: str | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """The curve's scores of ``method`` as it is now, for the point at ``images``: the same
    numbers whether called during training or on a model trained to that point and loaded.
    Every rank calls it under torchrun (evaluation is sharded); all ranks get the scores."""
    from bench.evaluators import EvalContext, evaluators_for
    from bench.runner import seed_everything
    from bench.seeds import section_seed

    reduced = dataclasses.replace(settings, fid_samples=settings.curve_fid_samples)
    subset = dataclasses.replace(
        data,
        test_levels=data.test_levels[: settings.curve_test_images],
        test_labels=data.test_labels[: settings.curve_test_images],
    )
    context = EvalContext(
        method=method,
        data=subset,
        settings=reduced,
        device=device,
        seed=seed,
        directory=None,  # type: ignore[arg-type]  # no files: curve sections save nothing
        precision=precision,
        extractor=extractor,
        feature_weights=feature_weights,
        fidelity_metrics=False,
    )
    scores: dict[str, Any] = {}
    with torch.no_grad():
        for kind in evaluators_for(method):
            if kind.name not in KEPT:
                continue
            if kind.needs_labels and not data.labeled:
                continue
            variant = kind.variants(method)[0]
            section = f"curve@{images}:{kind.name}"
            seed_everything(section_seed(seed, section))
            value = kind(context, variant, section).run()
            if value is None:
                continue
            found = value.get("scores", value) if isinstance(value, dict) else {}
            scores[kind.name] = {k: found.get(k) for k in KEPT[kind.name] if k in found}
    return distributed.broadcast_object(scores)


class Curve:
    """The series of one run and the bookkeeping the loop needs to extend it."""

    def __init__(
        self,
        method: Any,
        data: Any,
        settings: Any,
        seed: int,
        device: torch.device,
        extractor: str,
        feature_weights: str | None,
        precision: str,
        budget: int,
    ) -> None:
        self.method, self.data, self.settings, self.seed = method, data, settings, seed
        self.device, self.extractor, self.feature_weights = device, extractor, feature_weights
        self.precision = precision
        self.pending = points_within(settings, budget)
        self.points: list[dict[str, Any]] = []
        self.flops_per_image: float | None = None
        self.eval_seconds = 0.0

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the series."""
        return {"settings": curve_settings(self.settings), "points": list(self.points)}

    def restore(self, saved: Any) -> None:
        if not isinstance(saved, dict) or saved.get("settings") != curve_settings(self.settings):
            if saved:
                log.info("curve settings changed since the checkpoint: its series is dropped")
            return
        self.points = list(saved.get("points") or [])
        done = {int(p["images"]) for p in self.points}
        self.pending = [p for p in self.pending if p not in done]

    def due(self, images_seen: int) -> bool:
        return bool(self.pending) and images_seen >= self.pending[0]

    def record(self, images_seen: int, step: int, train_seconds: float, ema: Any) -> None:
        """Score every point crossed by ``images_seen`` (a step can cross more than one: the
        model is the same, the point's label and seeds are its own)."""
        tick = time.perf_counter()
        if self.flops_per_image is None:
            self.flops_per_image = (
                train_flops_per_image(self.method, self.data.images("train"), self.device) or 0.0
            )
        while self.pending and images_seen >= self.pending[0]:
            point = self.pending.pop(0)
            with scoring_weights(self.method, ema):
                scores = evaluate_point(
                    self.method,
                    self.data,
                    self.settings,
                    self.seed,
                    point,
                    self.device,
                    self.extractor,
                    self.feature_weights,
                    self.precision,
                )
            self.points.append(
                {
                    "images": point,
                    "images_seen": images_seen,
                    "step": step,
                    "train_wall_s": round(train_seconds, 3),
                    "train_flops": (self.flops_per_image * images_seen) or None,
                    **scores,
                }
            )
            log.info(
                "%s: curve point at %s images: %s",
                self.method.name,
                f"{point:,}",
                " ".join(
                    f"{k}={v:.4g}"
                    for section in scores.values()
                    for k, v in section.items()
                    if isinstance(v, float)
                ),
            )
        self.eval_seconds += time.perf_counter() - tick
