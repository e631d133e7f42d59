"""The one training loop: a budget in images seen, seeded batches, EMA, checkpoints, resume,
divergence detection and throughput timing. Every method trains here; a method only says
which losses one step minimises (``Method.train_step`` yields :class:`~bench.method.Update` s)
and :mod:`bench.optim` applies them (backward, DDP, clipping, schedule, accumulation, bf16).

Every random stream of training is derived in :mod:`bench.seeds` from the run's seed: the
batch order (:func:`batch_indices`), each step's per-example noise
(:class:`~bench.method.BatchNoise`), nothing from the rank: a 2-rank or accumulated run
draws what one process draws.

Checkpoints are what make a study survive ``kill -9``:

- one is written every ``checkpoint_every_images`` images (when the protocol sets it) and at
  least every :data:`CHECKPOINT_EVERY_S` seconds of training (whatever the protocol), and
  at the end; a write goes to a temp file that is fsynced and renamed, so a kill while
  writing leaves the previous checkpoint intact;
- they hold tensors and plain containers only and are read with
  ``torch.load(..., weights_only=True)``: a file that needs anything else (a pickle that would
  run code, a truncated file) is refused, moved aside as ``checkpoint.pt.corrupt-*`` and the
  run starts again from scratch; nothing in it is executed;
- each names the run it belongs to (method, dataset, protocol, seed): a checkpoint of another
  run is refused with one line; one of the same run with other training settings (another
  ``resume_key``) is ignored and replaced.

Without a terminal (CI, ``nohup``, a redirected log) the loop logs a heartbeat line at most
every :data:`HEARTBEAT_S` seconds instead of drawing a progress bar.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from bench import distributed, seeds
from bench.errors import GenbenchError
from bench.killpoints import kill_point
from bench.method import Batch, BatchNoise, Method
from bench.metrics.throughput import StepTimer
from bench.optim import Optimisation, channels_last_networks, prepare_fast_paths
from bench.protocol import TrainSettings

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "checkpoint.pt"
#: seconds of training between two checkpoints when the protocol sets no image cadence
#: (override with GENBENCH_CHECKPOINT_SECONDS; measured cost below 1% of a quick run)
CHECKPOINT_EVERY_S = float(os.environ.get("GENBENCH_CHECKPOINT_SECONDS", "60"))
#: seconds between two progress lines in logs without a terminal
HEARTBEAT_S = float(os.environ.get("GENBENCH_HEARTBEAT_SECONDS", "30"))


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
    #: checkpoints written by this process and the seconds they took (their overhead)
    checkpoints: int = 0
    checkpoint_seconds: float = 0.0
    #: the kernels the step ran with: fused optimisers, channels_last networks
    kernels: dict[str, list[str]] = dataclasses.field(default_factory=dict)


class EMA:
    """Exponential moving average of a module's floating-point parameters and buffers.

    ``update`` is one ``torch._foreach_lerp_`` over the shadow and live tensors, both lists
    built once (on the first update after the shadow is set, so after the loop's fast paths
    have re-laid the weights out) instead of a ``state_dict()`` and a lerp per tensor every
    step; the arithmetic is the same lerp, so the averages are bit-identical."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {
            k: v.detach().clone()
            for k, v in module.state_dict().items()
            if v.dtype.is_floating_point
        }

    @property
    def shadow(self) -> dict[str, Tensor]:
        return self._shadow

    @shadow.setter
    def shadow(self, value: dict[str, Tensor]) -> None:  # a resume replaces it
        self._shadow = value
        self._pairs: tuple[Any, ...] | None = None

    def _tensors(self, module: torch.nn.Module) -> tuple[list[Tensor], list[Tensor]]:
        """(shadow, live) lists, built once per module and shadow. Parameters are held as
        the Parameter objects (they stay valid when a layout change swaps their ``.data``);
        buffers, which a method may replace, are looked up on their module every step."""
        if self._pairs is None or self._pairs[0] is not module:
            params = dict(module.named_parameters())
            shadow, live, buffers = [], [], []
            for key, value in self._shadow.items():
                if key in params:
                    shadow.append(value)
                    live.append(params[key])
                else:
                    owner, _, name = key.rpartition(".")
                    buffers.append((value, module.get_submodule(owner), name))
            self._pairs = (module, shadow, live, buffers)
        _, shadow, live, buffers = self._pairs
        if buffers:
            shadow = shadow + [value for value, _, _ in buffers]
            live = live + [getattr(owner, name) for _, owner, name in buffers]
        return shadow, live

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        shadow, live = self._tensors(module)
        torch._foreach_lerp_(shadow, live, 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> None:
        state = module.state_dict()
        for key, value in self.shadow.items():
            state[key].copy_(value)


def batch_indices(num_items: int, batch_size: int, seed: int, step: int) -> Tensor:
    """Indices of the batch at ``step``: epochs are seeded permutations, the last partial
    batch of an epoch is dropped. A function of (seed, step) only, so a resumed run sees
    exactly the batches an uninterrupted one would. The epoch's permutation is drawn once
    and kept (:func:`_epoch_permutation`), not once per step."""
    batch_size = min(batch_size, num_items)
    per_epoch = num_items // batch_size
    epoch, offset = divmod(step, per_epoch)
    perm = _epoch_permutation(num_items, seed, epoch)
    return perm[offset * batch_size : (offset + 1) * batch_size]


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_items: int, seed: int, epoch: int) -> Tensor:
    generator = torch.Generator().manual_seed(seeds.epoch_seed(seed, epoch))
    perm = torch.randperm(num_items, generator=generator)
    perm.requires_grad_(False)
    return perm


def step_batches(
    images: Tensor,
    labels: Tensor,
    seed: int,
    step: int,
    batch_size: int,
    accumulate: int,
    device: torch.device,
    channels_last: bool = False,
) -> list[Batch]:
    """This rank's micro-batches of global step ``step``: the global batch's indices, this
    rank's positions in it (:func:`bench.distributed.local_positions`), split into
    ``accumulate`` micro-batches, each with the per-example noise of its positions."""
    idx = batch_indices(len(images), batch_size, seed, step)
    positions = distributed.local_positions(len(idx))
    if accumulate > len(positions):
        raise GenbenchError(
            f"train.accumulate {accumulate} is larger than the {len(positions)} images of "
            "this rank's batch"
        )
    noise_seed = seeds.train_noise_seed(seed, step)
    batches = []
    for part in positions.chunk(accumulate):
        chosen = idx[part].to(images.device)
        x = images[chosen].to(device, non_blocking=True)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels[chosen].to(device, non_blocking=True)
        batches.append(Batch(x, y, BatchNoise(noise_seed, part, len(idx), device)))
    return batches


def progress_enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


class Heartbeat:
    """A log line at most every ``every`` seconds, where there is no progress bar."""

    def __init__(self, every: float = HEARTBEAT_S, enabled: bool | None = None) -> None:
        self.every = every
        self.enabled = (not progress_enabled()) if enabled is None else enabled
        self.last = time.monotonic()

    def beat(self, message: str, *args: Any) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            log.info(message, *args)


class Ticker:
    """``with Ticker("ddpm/seed-0: evaluating likelihood:0"):`` logs "... still running after
    N s" every ``every`` seconds from a daemon thread, for long calls that have no loop of
    ours to beat in (an ODE likelihood, a 1,000-step sampler). Silent under a terminal."""

    def __init__(self, what: str, every: float = HEARTBEAT_S, enabled: bool | None = None):
        self.what = what
        self.every = every
        self.enabled = (not progress_enabled()) if enabled is None else enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Ticker:
        if self.enabled and self.every > 0:
            self._thread = threading.Thread(target=self._run, daemon=True, name="genbench-tick")
            self._thread.start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(self.every):
            log.info("%s: still running after %.0f s", self.what, time.monotonic() - started)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)


def load_checkpoint(
    path: Path, device: torch.device | str = "cpu", identity: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The checkpoint at ``path`` read with ``weights_only=True``, or None when there is none
    or it is unreadable (truncated, or a pickle that would run code: moved aside, never
    executed). A checkpoint of another run (``identity`` differs) is refused."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(state, dict) or "method" not in state:
            raise ValueError("not a genbench checkpoint")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is set aside, not trusted
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        os.replace(path, aside)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning(
            "unreadable checkpoint %s moved to %s, training from scratch (%s)",
            path,
            aside.name,
            reason[:200],
        )
        return None
    if identity is not None:
        theirs = state.get("identity")
        if not isinstance(theirs, dict) or any(theirs.get(k) != v for k, v in identity.items()):
            raise GenbenchError(
                f"checkpoint {path} belongs to another run ({_describe(theirs)}), not "
                f"{_describe(identity)}; move it away to train this run"
            )
    return state


def checkpoint_identity(path: Path) -> dict[str, Any] | None:
    """The run a checkpoint names, read without executing anything; None when it names none
    or cannot be read (the loop sets such a file aside when the run starts)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable: judged (and set aside) by the loop
        return None
    identity = state.get("identity") if isinstance(state, dict) else None
    return identity if isinstance(identity, dict) else None


def check_checkpoint_owner(path: Path, identity: dict[str, Any]) -> None:
    """Refuse, before any run starts, a checkpoint that names another run."""
    if not path.exists():
        return
    theirs = checkpoint_identity(path)
    if theirs is not None and any(theirs.get(k) != v for k, v in identity.items()):
        raise GenbenchError(
            f"checkpoint {path} belongs to another run ({_describe(theirs)}), not "
            f"{_describe(identity)}; move it away to train this run"
        )


def _describe(identity: Any) -> str:
    if not isinstance(identity, dict):
        return "no run named in it"
    return ", ".join(f"{k} {identity.get(k)!r}" for k in ("method", "dataset", "protocol", "seed"))


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
    identity: dict[str, Any] | None = None,
    channels_last: bool = False,
    compile: bool = False,
    curve: Any = None,
) -> TrainOutcome:
    """Train ``method`` on ``images`` (float, [0, 1]) until ``settings.budget_images``.

    ``resume_key`` names the training configuration: a checkpoint with another key is not
    resumed. ``identity`` (method, dataset, protocol, seed) names the run: a checkpoint of
    another run is refused. Under torchrun each rank trains on its share of every global
    batch (see :mod:`bench.distributed`); images seen count the whole global batch.
    ``channels_last`` and ``compile`` are the GPU fast paths of :func:`prepare_fast_paths`.
    ``curve`` (:class:`bench.curves.Curve`): score the learning curve's points as training
    crosses them; the series is kept in the checkpoint."""
    budget = settings.budget_images
    dist_info = distributed.current()
    if dist_info.enabled and settings.batch_size % dist_info.world_size:
        raise GenbenchError(
            f"batch_size {settings.batch_size} is not divisible by the {dist_info.world_size} ranks"
        )
    method.set_budget(budget, settings.batch_size)
    distributed.sync_batchnorm(method, device)
    ema = EMA(method, method.ema_decay) if method.ema_decay else None
    images_seen, step = 0, 0
    train_seconds = 0.0  # in training steps only: what a learning curve's wall axis counts
    checkpoint = run_dir / CHECKPOINT_FILE if run_dir else None
    state = None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, device, identity)
        if state is not None and state.get("resume_key") != resume_key:
            log.info("%s: ignoring a checkpoint of other training settings", description)
            state = None
    if state is not None:
        method.load_training_state(state["method"])
        if ema and state.get("ema"):
            ema.shadow = state["ema"]
        images_seen, step = state["images_seen"], state["step"]
        train_seconds = float(state.get("train_seconds") or 0.0)
        if curve is not None:
            curve.restore(state.get("curve"))
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        log.info("%s: resumed at %d images (step %d)", description, images_seen, step)
    resumed_from = images_seen
    optimisation = Optimisation(method, device, precision, settings.accumulate)
    prepare_fast_paths(method, channels_last, compile)
    images = keep_on_device(images, device)
    labels = labels.to(images.device)
    timer = StepTimer(device, settings.throughput_warmup_steps)
    if state is not None and state.get("timer"):  # throughput of the part before the resume
        timer.images, timer.seconds = state["timer"]["images"], state["timer"]["seconds"]
    next_checkpoint = _next_multiple(images_seen, settings.checkpoint_every_images)
    last_save = time.monotonic()
    saves, save_seconds = 0, 0.0
    heartbeat = Heartbeat()
    losses: dict[str, float] = {}
    save: dict[str, Any] = dict(identity=identity, resume_key=resume_key, device=device)
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
            batches = step_batches(
                images,
                labels,
                seed,
                step,
                settings.batch_size,
                settings.accumulate,
                device,
                channels_last,
            )
            timer.start()
            tick = time.perf_counter()
            losses, used = optimisation.step(batches, step)
            used *= dist_info.world_size
            timer.stop(used)
            train_seconds += time.perf_counter() - tick
            losses = distributed.all_reduce_mean(losses, device)
            for key, value in losses.items():
                if not math.isfinite(value):
                    raise Diverged(step, key, value)
            images_seen += used
            step += 1
            kill_point("train-step")
            if ema:
                ema.update(method)
            if curve is not None and curve.due(images_seen):
                curve.record(images_seen, step, train_seconds, ema)
                if dist_info.is_main and checkpoint is not None and images_seen < budget:
                    # the point is kept: a kill from here on does not score it again
                    _save(checkpoint, method, ema, images_seen, step, timer, **save,
                          curve=curve, train_seconds=train_seconds)  # fmt: skip
                    last_save = time.monotonic()
            bar.update(used)
            heartbeat.beat(
                "%s: %s/%s images, step %d, %s",
                description,
                f"{images_seen:,}",
                f"{budget:,}",
                step,
                " ".join(f"{k}={v:.4g}" for k, v in sorted(losses.items())[:4]),
            )
            if images_seen >= budget:
                break
            due_images = bool(next_checkpoint) and images_seen >= next_checkpoint
            due_time = time.monotonic() - last_save >= CHECKPOINT_EVERY_S
            if (due_images or due_time) and dist_info.is_main and checkpoint is not None:
                tick = time.perf_counter()
                _save(checkpoint, method, ema, images_seen, step, timer, **save,
                      curve=curve, train_seconds=train_seconds)  # fmt: skip
                saves, save_seconds = saves + 1, save_seconds + time.perf_counter() - tick
                next_checkpoint = _next_multiple(images_seen, settings.checkpoint_every_images)
                last_save = time.monotonic()
    if checkpoint is not None and images_seen > resumed_from and dist_info.is_main:
        tick = time.perf_counter()
        _save(checkpoint, method, ema, images_seen, step, timer, **save,
              curve=curve, train_seconds=train_seconds)  # fmt: skip
        saves, save_seconds = saves + 1, save_seconds + time.perf_counter() - tick
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
        saves,
        save_seconds,
        {
            "fused_optimizers": optimisation.fused,
            "channels_last_networks": channels_last_networks(method),
        },
    )


#: the share of free GPU memory the training images may take to be kept on the device
DEVICE_DATA_FRACTION = 0.25


def keep_on_device(images: Tensor, device: torch.device) -> Tensor:
    """The training images on ``device`` when they fit in a quarter of its free memory (no
    per-step host-to-device copies), else where they are (batches are copied per step)."""
    if device.type != "cuda" or images.device == device:
        return images
    free, _ = torch.cuda.mem_get_info(device)
    if images.numel() * images.element_size() > DEVICE_DATA_FRACTION * free:
        return images
    return images.to(device)


def _next_multiple(images_seen: int, every: int) -> int:
    return (images_seen // every + 1) * every if every > 0 else 0


def _save(
    path: Path | None,
    method: Method,
    ema: EMA | None,
    images_seen: int,
    step: int,
    timer: StepTimer,
    *,
    device: torch.device,
    resume_key: str,
    identity: dict[str, Any] | None,
    curve: Any = None,
    train_seconds: float = 0.0,
) -> None:
    """Write the checkpoint atomically: temp file, fsync, rename (a kill at any point leaves
    the previous checkpoint or the new one, never half of one)."""
    if path is None:
        return
    state = {
        "identity": dict(identity or {}),
        "method": method.training_state(),
        "ema": ema.shadow if ema else None,
        "images_seen": images_seen,
        "step": step,
        "resume_key": resume_key,
        "timer": {"images": timer.images, "seconds": timer.seconds},
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "train_seconds": train_seconds,
        "curve": curve.state() if curve is not None else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        kill_point("checkpoint-write")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
