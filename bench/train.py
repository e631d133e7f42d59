"""The one training loop: a budget in images seen, seeded batches, EMA, checkpoints, resume,
divergence detection and throughput timing. Every method trains here; a method only says
what one step does (``Method.train_step``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from bench import distributed
from bench.errors import GenbenchError
from bench.method import Batch, Method
from bench.metrics.throughput import StepTimer
from bench.protocol import TrainSettings

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "checkpoint.pt"


class Diverged(Exception):
    """A loss became NaN or inf: the run is recorded as diverged at ``step``."""

    def __init__(self, step: int, key: str, value: float) -> None:
        super().__init__(f"loss {key!r} became {value} at step {step}")
        self.step = step
        self.key = key


@dataclasses.dataclass
class TrainOutcome:
    images_seen: int
    steps: int
    train_images_per_second: float | None
    timed_steps: int
    resumed_from_images: int
    last_losses: dict[str, float]


class EMA:
    """Exponential moving average of a module's floating-point parameters and buffers."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {
            k: v.detach().clone()
            for k, v in module.state_dict().items()
            if v.dtype.is_floating_point
        }

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for key, value in module.state_dict().items():
            if key in self.shadow:
                self.shadow[key].lerp_(value.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> None:
        state = module.state_dict()
        for key, value in self.shadow.items():
            state[key].copy_(value)


def batch_indices(num_items: int, batch_size: int, seed: int, step: int) -> Tensor:
    """Indices of the batch at ``step``: epochs are seeded permutations, the last partial
    batch of an epoch is dropped. A function of (seed, step) only, so a resumed run sees
    exactly the batches an uninterrupted one would."""
    batch_size = min(batch_size, num_items)
    per_epoch = num_items // batch_size
    epoch, offset = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(num_items, generator=generator)
    return perm[offset * batch_size : (offset + 1) * batch_size]


def autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def progress_enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


def train(
    method: Method,
    images: Tensor,
    labels: Tensor,
    settings: TrainSettings,
    seed: int,
    device: torch.device,
    run_dir: Path | None = None,
    precision: str = "fp32",
    description: str = "",
    resume_key: str = "",
) -> TrainOutcome:
    """Train ``method`` on ``images`` (float, [0, 1]) until ``settings.budget_images``.

    Under torchrun each rank trains on its share of every global batch (see
    :mod:`bench.distributed`); images seen count the whole global batch."""
    budget = settings.budget_images
    dist_info = distributed.current()
    if dist_info.enabled and settings.batch_size % dist_info.world_size:
        raise GenbenchError(
            f"batch_size {settings.batch_size} is not divisible by the {dist_info.world_size} ranks"
        )
    method.set_budget(budget, settings.batch_size)
    ema = EMA(method, method.ema_decay) if method.ema_decay else None
    images_seen, step = 0, 0
    checkpoint = run_dir / CHECKPOINT_FILE if run_dir else None
    state = None
    if checkpoint and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        if state.get("resume_key") != resume_key:  # a checkpoint of another config
            log.info("%s: ignoring a checkpoint of a different configuration", description)
            state = None
    if state is not None:
        method.load_training_state(state["method"])
        if ema and state.get("ema"):
            ema.shadow = state["ema"]
        images_seen, step = state["images_seen"], state["step"]
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        log.info("%s: resumed at %d images (step %d)", description, images_seen, step)
    resumed_from = images_seen
    timer = StepTimer(device, settings.throughput_warmup_steps)
    if state is not None and state.get("timer"):  # throughput of the part before the resume
        timer.images, timer.seconds = state["timer"]["images"], state["timer"]["seconds"]
    next_checkpoint = _next_multiple(images_seen, settings.checkpoint_every_images)
    losses: dict[str, float] = {}
    method.train()
    with tqdm(
        total=budget,
        initial=images_seen,
        unit="img",
        desc=description,
        disable=not progress_enabled(),
        leave=False,
    ) as bar:
        while images_seen < budget:
            idx = batch_indices(len(images), settings.batch_size, seed, step)
            idx = distributed.local_slice(idx, dist_info)
            batch = Batch(
                images[idx].to(device, non_blocking=True), labels[idx].to(device, non_blocking=True)
            )
            timer.start()
            with autocast(device, precision):
                losses = method.train_step(batch, step)
            used = int(losses.pop("images", len(batch))) * dist_info.world_size
            timer.stop(used)
            losses = distributed.all_reduce_mean(losses, device)
            for key, value in losses.items():
                if not math.isfinite(value):
                    raise Diverged(step, key, value)
            images_seen += used
            step += 1
            if ema:
                ema.update(method)
            bar.update(used)
            due = next_checkpoint and images_seen >= next_checkpoint and images_seen < budget
            if due and dist_info.is_main:
                _save(checkpoint, method, ema, images_seen, step, device, resume_key, timer)
                next_checkpoint = _next_multiple(images_seen, settings.checkpoint_every_images)
    if checkpoint is not None and images_seen > resumed_from and dist_info.is_main:
        _save(checkpoint, method, ema, images_seen, step, device, resume_key, timer)
    if ema:
        ema.copy_to(method)
    distributed.broadcast_module(method)  # rank-local buffers -> rank 0's
    return TrainOutcome(
        images_seen,
        step,
        timer.images_per_second(),
        max(0, timer.steps - timer.warmup_steps),
        resumed_from,
        losses,
    )


def _next_multiple(images_seen: int, every: int) -> int:
    return (images_seen // every + 1) * every if every > 0 else 0


def _save(
    path: Path | None,
    method: Method,
    ema: EMA | None,
    images_seen: int,
    step: int,
    device: torch.device,
    resume_key: str,
    timer: StepTimer,
) -> None:
    if path is None:
        return
    state = {
        "method": method.training_state(),
        "ema": ema.shadow if ema else None,
        "images_seen": images_seen,
        "step": step,
        "resume_key": resume_key,
        "timer": {"images": timer.images, "seconds": timer.seconds},
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
