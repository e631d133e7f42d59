"""Throughput: training and sampling speed, parameters, FLOPs and MFU, and the training
set-up they were measured under (:mod:`bench.metrics.throughput` measures). Timings are
rank 0's: the sampling speed is timed by the fidelity pass on rank 0's chunks
(:class:`~bench.evaluators.feeds.SampleEvaluator`), the training speed by the loop."""

from __future__ import annotations

import math
from typing import Any

from bench.evaluators.base import Column, Evaluator, register_evaluator

#: test images in the batch whose forward FLOPs are counted
FLOP_BATCH = 8


@register_evaluator("throughput")
class Throughput(Evaluator):
    """Every method gets it (no capability needed); not saved in the eval state: rank 0
    recomputes it when an evaluation resumes."""

    columns = (
        Column("train_images_per_s", "train img/s", True, (0.0, math.inf), 0, gated=False),
        Column("sample_images_per_s", "sample img/s", True, (0.0, math.inf), 0, gated=False),
        Column("nfe", "NFE", None, (0.0, math.inf), 0, gated=False),
        Column("params", "params", None, (0.0, math.inf), 0, gated=False),
        # the run's wall time, training and evaluation apart (the result's env; read by
        # bench.report.flatten): what the study cost, visible in every leaderboard
        Column("train_wall_s", "train s", None, (0.0, math.inf), 1, gated=False),
        Column("eval_wall_s", "eval s", None, (0.0, math.inf), 1, gated=False),
    )
    #: the columns the result's env carries, not the scores
    ENV_COLUMNS = ("train_wall_s", "eval_wall_s")
    order = 100  # last: it joins the sampling speed the fidelity sections measured

    @classmethod
    def section_name(cls, index: int) -> str | None:
        return None

    def compute(self) -> dict[str, Any]:
        from bench.metrics import throughput

        context = self.context
        method, device, outcome = context.method, context.device, context.outcome
        speed: dict[str, Any] = {
            "device": throughput.device_name(device),
            "precision": context.precision,
            "params": throughput.count_parameters(method),
            "train_images_per_s": outcome.train_images_per_second if outcome else None,
            "train_images_seen": outcome.images_seen if outcome else 0,
            "train_steps": outcome.steps if outcome else 0,
            "checkpoints_written": outcome.checkpoints if outcome else 0,
            "checkpoint_s": round(outcome.checkpoint_seconds, 4) if outcome else 0.0,
            "channels_last": context.channels_last,
            "compile": context.compile,
            "accumulate": context.accumulate,
        }
        batch = context.data.images("test")[:FLOP_BATCH].to(device)
        speed["forward_flops_per_image"] = throughput.forward_flops_per_image(method, batch)
        speed["mfu"] = throughput.mfu(
            speed["forward_flops_per_image"], speed["train_images_per_s"], device, context.precision
        )
        return speed

    @classmethod
    def record(
        cls, metrics: dict[str, Any], index: int, variant: dict[str, Any], value: Any
    ) -> None:
        # the sampling speed the fidelity section put there joins the rest
        metrics["throughput"] = {**value, **metrics.get("throughput", {})}
