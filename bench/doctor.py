"""``genbench doctor --gpu``: one prepared check of a GPU machine, one JSON file, < 8 minutes.

What it measures, each part under its own time limit inside one wall-time budget (a part
that fails or runs out of time records its error and the rest goes on):

- ``train``: training throughput (img/s), MFU and peak memory of one method (default ddpm on
  a 32x32x3 data spec, its 32x32 U-Net, batch 64) through the loop's own step:
  :func:`bench.optim.prepare_fast_paths` then :class:`bench.optim.Optimisation` ``.step``
  on batches from :func:`bench.train.step_batches`, in the variants fp32, bf16,
  bf16 + channels_last and bf16 + ``torch.compile``. MFU is
  :func:`bench.metrics.throughput.mfu` (3x the forward FLOPs per image against the
  device's dense peak);
- ``fid``: feature-extraction throughput of the ``inception-v3-compat`` extractor on
  generated uint8 batches of 299x299 images: with the real weights when a file is at hand
  (``--feature-weights``, or torch-fidelity's file already in torch.hub's folder), else the
  same network randomly initialised (throughput does not depend on the weights; nothing is
  downloaded);
- ``ddp``: a data-parallel step of the same method in 2 processes sharing the one device
  (``torch.multiprocessing``, a file rendezvous; NCCL refuses two ranks on one GPU, so
  ``--ddp-backend auto`` tries nccl and falls back to gloo), with the step time and whether
  the parameters are equal across ranks after the steps (DDP's whole point).

Timings exclude warm-up steps (which include compilation and cuDNN's autotuning) and use
CUDA events on a GPU. Without a GPU (or with ``--dry-run``) the same code runs on the CPU at
tiny sizes (the 8x8 digits data spec, a few steps), and the file says ``"dry_run": true``:
it checks the code path, its numbers are not GPU numbers.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import io
import json
import logging
import math
import shlex
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import Tensor, nn

from bench import distributed
from bench.errors import GenbenchError
from bench.method import DataSpec, Method, from_levels
from bench.metrics import throughput
from bench.optim import Optimisation, prepare_fast_paths
from bench.train import step_batches

log = logging.getLogger("genbench.doctor")

SCHEMA = "genbench-doctor/1"
#: where a GPU run writes by default (commit it from a GPU machine only)
DEFAULT_OUT = Path("reports/gpu/doctor.json")
#: where a CPU dry run writes by default: under the ignored runs/, never beside GPU numbers
DRY_RUN_OUT = Path("runs/doctor/doctor-dry-run.json")
NO_GPU_LINE = (
    "genbench doctor: no GPU is present (torch.cuda.is_available() is False); "
    "running a CPU dry run at tiny sizes"
)

#: the data spec of a GPU check (CIFAR-10's shape) and of a dry run (digits')
GPU_SPEC = DataSpec("synthetic-32x32x3", 3, 32, 32, num_levels=256, num_classes=10)
DRY_RUN_SPEC = DataSpec("digits", 1, 8, 8, num_levels=17, num_classes=10)
#: steps and batches: a GPU check's, and the dry run's (the code path, in seconds)
GPU_SIZES = dict(batch=64, warmup=5, steps=20, fid_batch=64, fid_warmup=2, fid_steps=10,
                 ddp_warmup=3, ddp_steps=10)  # fmt: skip
DRY_RUN_SIZES = dict(batch=4, warmup=1, steps=2, fid_batch=1, fid_warmup=1, fid_steps=1,
                     ddp_warmup=1, ddp_steps=2)  # fmt: skip

#: training variants: name -> (precision, channels_last, compile); compile runs last, so a
#: slow compilation cannot eat the time of the other parts
TRAIN_VARIANTS: dict[str, tuple[str, bool, bool]] = {
    "fp32": ("fp32", False, False),
    "bf16": ("bf16", False, False),
    "bf16-channels-last": ("bf16", True, False),
    "bf16-compile": ("bf16", False, True),
}
PARTS = ("train", "fid", "ddp")
#: each part's time limit in seconds; their sum stays under the default budget
PART_LIMITS_S: dict[str, float] = {
    "train:flops": 20.0,
    "train:fp32": 45.0,
    "train:bf16": 45.0,
    "train:bf16-channels-last": 45.0,
    "fid": 45.0,
    "ddp": 90.0,
    "train:bf16-compile": 150.0,
}
#: the whole check's wall time (8 minutes less the interpreter's start and the writing)
DEFAULT_BUDGET_S = 450.0
#: a part starts only if its grant is at least this long
MIN_PART_S = 5.0
#: measured steps stop once this share of a part's limit is spent
SOFT_SHARE = 0.8


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes of one check; :meth:`defaults` gives the GPU ones or the dry run's."""

    method: str
    spec: DataSpec
    batch: int
    warmup: int
    steps: int
    fid_batch: int
    fid_warmup: int
    fid_steps: int
    ddp_warmup: int
    ddp_steps: int
    budget_s: float = DEFAULT_BUDGET_S
    parts: tuple[str, ...] = PARTS
    skip_compile: bool = False
    channels_last: bool = True
    ddp_backend: str = "auto"
    feature_weights: str | None = None
    dry_run: bool = False

    @classmethod
    def defaults(cls, dry_run: bool, **overrides: Any) -> Settings:
        sizes = (
            {"spec": DRY_RUN_SPEC, **DRY_RUN_SIZES} if dry_run else {"spec": GPU_SPEC, **GPU_SIZES}
        )
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(method=given.pop("method", "ddpm"), dry_run=dry_run, **{**sizes, **given})


# -- timing bookkeeping ----------------------------------------------------------------------


@dataclasses.dataclass
class Timing:
    """The seconds and images of each measured step (warm-up excluded)."""

    step_seconds: list[float] = dataclasses.field(default_factory=list)
    step_images: list[int] = dataclasses.field(default_factory=list)
    warmup_steps: int = 0
    warmup_seconds: float = 0.0
    #: True when the part's time limit ended the measurement before ``steps``
    truncated: bool = False

    def images_per_second(self) -> float | None:
        total = sum(self.step_seconds)
        return sum(self.step_images) / total if total > 0 else None

    def summary(self) -> dict[str, Any]:
        ms = [s * 1e3 for s in self.step_seconds]
        return {
            "images_per_s": self.images_per_second(),
            "measured_steps": len(ms),
            "images_per_step": self.step_images[0] if self.step_images else None,
            "step_ms_median": statistics.median(ms) if ms else None,
            "step_ms_min": min(ms) if ms else None,
            "step_ms_max": max(ms) if ms else None,
            "warmup_steps": self.warmup_steps,
            "warmup_s": self.warmup_seconds,
            "truncated_by_time_limit": self.truncated,
        }


class StepClock:
    """Seconds of one call: CUDA events on a GPU (the device's own clock; the end event is
    waited for, so queued kernels count), ``perf_counter`` between synchronisations
    elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def time(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        if self.device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            result = fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3, result
        throughput.synchronize(self.device)
        tick = time.perf_counter()
        result = fn()
        throughput.synchronize(self.device)
        return time.perf_counter() - tick, result


def measure(
    step: Callable[[int], int],
    clock: StepClock,
    warmup: int,
    steps: int,
    soft_deadline: float | None = None,
) -> Timing:
    """Call ``step(i)`` (which returns the images it consumed) ``warmup`` times untimed in
    the result, then up to ``steps`` times timed. Once ``time.monotonic()`` passes
    ``soft_deadline`` no new measured step starts (at least one always runs)."""
    timing = Timing(warmup_steps=warmup)
    for i in range(warmup):
        seconds, _ = clock.time(functools.partial(step, i))
        timing.warmup_seconds += seconds
    for i in range(warmup, warmup + steps):
        if timing.step_seconds and soft_deadline is not None and time.monotonic() > soft_deadline:
            timing.truncated = True
            break
        seconds, images = clock.time(functools.partial(step, i))
        timing.step_seconds.append(seconds)
        timing.step_images.append(int(images))
    return timing


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak FLOP/s at ``precision`` from throughput's table (None off
    GPU or for a device it does not list)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for (key, prec), peak in throughput.PEAK_FLOPS.items():
        if key in name and prec == precision:
            return peak
    return None


def training_mfu(
    flops_per_image: float | None, images_per_s: float | None, device: torch.device, precision: str
) -> float | None:
    """Training MFU: throughput's own formula (3x forward FLOPs per image, dense peak)."""
    return throughput.mfu(flops_per_image, images_per_s, device, precision)


def inference_mfu(
    flops_per_image: float | None, images_per_s: float | None, device: torch.device, precision: str
) -> float | None:
    """Forward-only MFU (feature extraction): forward FLOPs per image x img/s / peak."""
    peak = peak_flops(device, precision)
    if not peak or not flops_per_image or not images_per_s:
        return None
    return flops_per_image * images_per_s / peak


# -- the wall-time budget ----------------------------------------------------------------------


class PartTimeout(BaseException):
    """A part ran past its hard time limit. A BaseException, so that library code catching
    ``Exception`` (torch.compile does, in places) cannot swallow it."""


class WallBudget:
    """The check's wall time: each part is granted its own limit, or what is left of the
    budget when that is less; a part is skipped when less than ``MIN_PART_S`` is left."""

    def __init__(
        self, total_s: float, reserve_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.total_s, self.reserve_s, self.clock = total_s, reserve_s, clock
        self.started = clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def remaining(self) -> float:
        return self.total_s - self.elapsed()

    def grant(self, limit_s: float) -> float | None:
        allowed = min(limit_s, self.remaining() - self.reserve_s)
        return allowed if allowed >= MIN_PART_S else None


@contextmanager
def hard_limit(seconds: float, part: str) -> Iterator[None]:
    """Raise :class:`PartTimeout` in the main thread after ``seconds`` (SIGALRM; a long C
    call returns first). Elsewhere (another thread, no SIGALRM) only the soft deadlines
    hold."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise PartTimeout(f"{part} ran past its {seconds:.0f} s time limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def error_text(exc: BaseException) -> str:
    """An exception as one line for the report."""
    lines = str(exc).strip().splitlines()
    message = next((line for line in reversed(lines) if line.strip()), "") if lines else ""
    return f"{exc.__class__.__name__}: {message[:500]}" if message else exc.__class__.__name__


def run_part(
    name: str, work: Callable[[float], dict[str, Any]], budget: WallBudget
) -> dict[str, Any]:
    """``work(soft_deadline)`` under the part's limit: its section with ``status`` ok, or
    failed with the error, or skipped when the budget is spent."""
    allowed = budget.grant(PART_LIMITS_S.get(name, 60.0))
    if allowed is None:
        log.warning("%s: skipped, the wall-time budget is spent", name)
        return {"status": "skipped", "error": "the wall-time budget is spent"}
    log.info("%s: started (limit %.0f s)", name, allowed)
    started = time.monotonic()
    try:
        with hard_limit(allowed, name):
            section = {"status": "ok", **work(started + SOFT_SHARE * allowed)}
    except PartTimeout as exc:
        section = {"status": "failed", "error": str(exc)}
    except Exception as exc:  # one part's failure is a finding, not the end of the check
        section = {"status": "failed", "error": error_text(exc)}
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    section["wall_s"] = time.monotonic() - started
    section["limit_s"] = allowed
    log.info("%s: %s in %.1f s", name, section["status"], section["wall_s"])
    return section


# -- the parts ---------------------------------------------------------------------------------


def synthetic_data(spec: DataSpec, count: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``count`` random images on the spec's levels (in [0, 1]) and labels, on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    levels = torch.randint(0, spec.num_levels, (count, *spec.shape), generator=generator)
    labels = torch.randint(0, spec.num_classes, (count,), generator=generator)
    return from_levels(levels, spec.num_levels), labels


def build_method(name: str, spec: DataSpec, device: torch.device, steps: int, batch: int) -> Method:
    """The registered method with its defaults for ``spec``, seeded, on ``device``, told
    that its run lasts ``steps`` steps of ``batch`` images (schedules that need a length)."""
    from bench.registry import METHODS

    torch.manual_seed(0)
    method: Method = METHODS.get(name).build(spec, {}).to(device)
    method.set_budget(steps * batch, batch)
    return method


def loop_step(
    optimisation: Optimisation,
    images: Tensor,
    labels: Tensor,
    batch: int,
    device: torch.device,
    channels_last: bool,
) -> Callable[[int], int]:
    """One training step of the loop (its batching and its Optimisation), as ``step(i)``."""

    def step(i: int) -> int:
        batches = step_batches(images, labels, 0, i, batch, 1, device, channels_last)
        _, used = optimisation.step(batches, i)
        return int(used)

    return step


def count_flops(settings: Settings, device: torch.device) -> dict[str, Any]:
    method = build_method(settings.method, settings.spec, device, 1, settings.batch)
    probe = synthetic_data(settings.spec, min(8, settings.batch))[0].to(device)
    return {
        "parameters": throughput.count_parameters(method),
        "forward_flops_per_image": throughput.forward_flops_per_image(method, probe),
    }


def train_variant(
    settings: Settings,
    device: torch.device,
    precision: str,
    channels_last: bool,
    compile: bool,
    flops_per_image: float | None,
    soft_deadline: float,
) -> dict[str, Any]:
    """Throughput of the loop's training step in one variant (a fresh, seeded method)."""
    total = settings.warmup + settings.steps
    method = build_method(settings.method, settings.spec, device, total, settings.batch)
    distributed.sync_batchnorm(method, device)
    optimisation = Optimisation(method, device, precision)
    prepare_fast_paths(method, channels_last, compile)
    method.train()
    images, labels = synthetic_data(settings.spec, 2 * settings.batch)
    images, labels = images.to(device), labels.to(device)
    step = loop_step(optimisation, images, labels, settings.batch, device, channels_last)
    with throughput.MemoryMonitor(device) as memory:
        timing = measure(step, StepClock(device), settings.warmup, settings.steps, soft_deadline)
    ips = timing.images_per_second()
    return {
        "precision": precision,
        "channels_last": channels_last,
        "compile": compile,
        **timing.summary(),
        "mfu": training_mfu(flops_per_image, ips, device, precision),
        "peak_flops": peak_flops(device, precision),
        "peak_memory_mb": memory.peak_mb,
        "memory_kind": memory.kind,
    }


def inception_extractor(feature_weights: str | None) -> tuple[nn.Module, str]:
    """The ``inception-v3-compat`` network and what its weights are: the registered
    extractor with real weights when a file is here (``feature_weights`` or
    torch-fidelity's file in torch.hub's folder), else torch-fidelity's architecture with
    its random initialisation. Never downloads."""
    from torch_fidelity.feature_extractor_inceptionv3 import (
        URL_INCEPTION_V3,
        FeatureExtractorInceptionV3,
    )

    from bench.metrics.extractors import (
        INCEPTION,
        inception_feature_extractor,
        inception_weights_sha,
    )

    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(URL_INCEPTION_V3).name
    if feature_weights or hub_file.exists():
        module = inception_feature_extractor(["2048"], feature_weights)
        return module, f"sha256:{inception_weights_sha(feature_weights)}"

    class _Random(FeatureExtractorInceptionV3):  # type: ignore[misc]
        def load_state_dict(
            self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
        ) -> Any:
            if not state_dict:  # the empty file below: keep the random initialisation
                return None
            return super().load_state_dict(state_dict, strict, assign)

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    module = _Random(INCEPTION.name, ["2048"], feature_extractor_weights_path=empty)
    return module, "random-init (no weights file on this machine; throughput only)"


def forward_flops(module: nn.Module, shape: tuple[int, ...], dtype: torch.dtype) -> float | None:
    """FLOPs of one forward pass of ``module`` on one input of ``shape``, counted on a meta
    copy (no arithmetic runs: free on a CPU, where Inception takes seconds an image)."""
    meta = copy.deepcopy(module).to("meta")
    counter = throughput.FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        meta(torch.empty(shape, dtype=dtype, device="meta"))
    return float(counter.get_total_flops()) or None


def fid_extraction(
    settings: Settings, device: torch.device, soft_deadline: float
) -> dict[str, Any]:
    """Feature-extraction throughput of Inception on generated 299x299 uint8 batches."""
    extractor, weights = inception_extractor(settings.feature_weights)
    extractor = extractor.to(device).eval()
    side = 299
    generator = torch.Generator(device=device).manual_seed(0)
    shape = (settings.fid_batch, 3, side, side)
    batches = [  # two generated batches, alternated
        torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator, device=device)
        for _ in range(2)
    ]
    flops = forward_flops(extractor, (1, 3, side, side), torch.uint8)
    features: list[Tensor] = []

    def step(i: int) -> int:
        with torch.no_grad():
            out = extractor(batches[i % 2])[0]  # (B, 3, 299, 299) uint8 -> (B, 2048)
        features[:] = [out]
        return int(out.shape[0])

    with throughput.MemoryMonitor(device) as memory:
        timing = measure(
            step, StepClock(device), settings.fid_warmup, settings.fid_steps, soft_deadline
        )
    ips = timing.images_per_second()
    return {
        "extractor": "inception-v3-compat",
        "weights": weights,
        "input_shape": [settings.fid_batch, 3, side, side],
        "feature_dim": int(features[0].shape[1]) if features else None,
        "features_finite": bool(torch.isfinite(features[0]).all()) if features else None,
        **timing.summary(),
        "forward_flops_per_image": flops,
        "mfu": inference_mfu(flops, ips, device, "fp32"),
        "peak_flops": peak_flops(device, "fp32"),
        "peak_memory_mb": memory.peak_mb,
        "memory_kind": memory.kind,
    }


def _ddp_worker(
    rank: int,
    world_size: int,
    backend: str,
    init_file: str,
    result_file: str,
    settings: Settings,
    device_text: str,
) -> None:
    """One rank of the DDP check: the loop's Optimisation wraps each optimiser group in DDP
    because the process group is initialised; rank 0 writes the timings and the check."""
    import torch.distributed as dist

    device = torch.device(device_text)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)  # two ranks on a few cores
    dist.init_process_group(
        backend, init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        total = settings.ddp_warmup + settings.ddp_steps
        method = build_method(settings.method, settings.spec, device, total, settings.batch)
        distributed.sync_batchnorm(method, device)
        distributed.broadcast_module(method)
        optimisation = Optimisation(method, device, "fp32")
        wrapped = sum(g.ddp is not None for g in optimisation.groups.values())
        method.train()
        images, labels = synthetic_data(settings.spec, 2 * settings.batch)
        images, labels = images.to(device), labels.to(device)
        step = loop_step(optimisation, images, labels, settings.batch, device, False)
        timing = measure(step, StepClock(device), settings.ddp_warmup, settings.ddp_steps)
        flat = torch.cat([p.detach().reshape(-1).float() for p in method.parameters()])
        reference = flat.clone()
        dist.broadcast(reference, src=0)
        difference = (flat - reference).abs().max().reshape(1)
        dist.all_reduce(difference, op=dist.ReduceOp.MAX)
        slowest = torch.tensor([sum(timing.step_seconds)], dtype=torch.float64, device=device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        if rank == 0:
            # images of the global batch (every rank consumes its share, as train.py counts),
            # over the slowest rank's time
            global_images = world_size * sum(timing.step_images)
            measured = slowest.item()
            payload = {
                **timing.summary(),
                "images_per_step": world_size * timing.step_images[0],
                "images_per_s": global_images / measured if measured > 0 else None,
                "ddp_groups": wrapped,
                "max_abs_parameter_difference": float(difference.item()),
                "parameters_equal": bool(difference.item() == 0.0),
            }
            Path(result_file).write_text(json.dumps(payload))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def ddp_attempt(
    settings: Settings, device: torch.device, backend: str, deadline: float
) -> dict[str, Any]:
    """Spawn 2 ranks with ``backend``; their result, or an exception with their error."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="genbench-doctor-ddp-") as folder:
        result_file = Path(folder) / "rank0.json"
        device_text = f"cuda:{torch.cuda.current_device()}" if device.type == "cuda" else "cpu"
        context = mp.start_processes(
            _ddp_worker,
            args=(2, backend, str(Path(folder) / "init"), str(result_file), settings, device_text),
            nprocs=2,
            join=False,
            start_method="spawn",
        )
        try:
            while not context.join(timeout=1.0):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the 2 {backend} ranks did not finish in time")
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
                    process.join(5)
        if not result_file.exists():
            raise RuntimeError(f"the {backend} ranks exited without a result")
        payload: dict[str, Any] = json.loads(result_file.read_text())
    return payload


def ddp_check(settings: Settings, device: torch.device, soft_deadline: float) -> dict[str, Any]:
    """2 ranks sharing ``device``: nccl then gloo on a GPU (``auto``), gloo on the CPU."""
    if settings.ddp_backend != "auto":
        backends = [settings.ddp_backend]
    else:
        backends = ["nccl", "gloo"] if device.type == "cuda" else ["gloo"]
    attempts: list[dict[str, Any]] = []
    for i, backend in enumerate(backends):
        # the first of two tries gets half the time left, so the fallback still fits
        share = 0.5 if i < len(backends) - 1 else 1.0
        deadline = time.monotonic() + share * (soft_deadline - time.monotonic())
        try:
            result = ddp_attempt(settings, device, backend, deadline)
        except Exception as exc:  # a refused backend is a finding; try the next one
            attempts.append({"backend": backend, "error": error_text(exc)})
            continue
        return {
            "world_size": 2,
            "backend": backend,
            "device": f"{device.type} (both ranks)",
            "precision": "fp32",
            "global_batch": settings.batch,
            **result,
            "attempts": attempts,
        }
    raise RuntimeError("; ".join(f"{a['backend']}: {a['error']}" for a in attempts))


# -- the whole check ---------------------------------------------------------------------------


def _nccl_version() -> str | None:
    try:
        version = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):  # a build without NCCL
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def device_report(device: torch.device) -> dict[str, Any]:
    """Device, versions and, on a GPU, what MFU is measured against. ``tf32_cudnn`` on
    (PyTorch's default) runs fp32 convolutions in TF32: their fp32 MFU, taken against the
    fp32 dense peak, can then pass 1."""
    report: dict[str, Any] = {
        "device": device.type,
        "device_name": throughput.device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        report["gpu"] = {
            "count": torch.cuda.device_count(),
            "capability": f"{props.major}.{props.minor}",
            "memory_gb": props.total_memory / 2**30,
            "multiprocessors": props.multi_processor_count,
            "nccl": _nccl_version(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "peak_flops": {p: peak_flops(device, p) for p in ("fp32", "bf16")},
        }
    return report


def run_check(settings: Settings, command: str) -> dict[str, Any]:
    """Every part of the check, in order, within the budget; the report as a dict."""
    from bench.results import environment

    device = torch.device("cpu") if settings.dry_run else torch.device("cuda")
    budget = WallBudget(settings.budget_s)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        **device_report(device),
        "dry_run": settings.dry_run,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "budget_s": settings.budget_s,
        "settings": {
            "method": settings.method,
            "data_spec": dataclasses.asdict(settings.spec),
            "batch": settings.batch,
            "warmup": settings.warmup,
            "steps": settings.steps,
            "fid_batch": settings.fid_batch,
            "fid_warmup": settings.fid_warmup,
            "fid_steps": settings.fid_steps,
            "ddp_warmup": settings.ddp_warmup,
            "ddp_steps": settings.ddp_steps,
            "parts": list(settings.parts),
        },
        "env": environment(device.type, "fp32,bf16"),
    }
    flops: float | None = None
    train: dict[str, Any] = {}
    if "train" in settings.parts:
        counted = run_part("train:flops", lambda _: count_flops(settings, device), budget)
        flops = counted.get("forward_flops_per_image")
        train = {"method": settings.method, "flops": counted, "variants": {}}
        report["train"] = train

    def variant(name: str) -> None:
        precision, channels_last, compile = TRAIN_VARIANTS[name]
        if compile and settings.skip_compile:
            train["variants"][name] = {"status": "skipped", "error": "--skip-compile"}
        elif channels_last and not settings.channels_last:
            train["variants"][name] = {"status": "skipped", "error": "--no-channels-last"}
        else:
            train["variants"][name] = run_part(
                f"train:{name}",
                lambda soft: train_variant(
                    settings, device, precision, channels_last, compile, flops, soft
                ),
                budget,
            )

    if "train" in settings.parts:
        for name in ("fp32", "bf16", "bf16-channels-last"):
            variant(name)
    if "fid" in settings.parts:
        report["fid"] = run_part("fid", lambda soft: fid_extraction(settings, device, soft), budget)
    if "ddp" in settings.parts:
        report["ddp"] = run_part("ddp", lambda soft: ddp_check(settings, device, soft), budget)
    if "train" in settings.parts:
        variant("bf16-compile")
    report["wall_s"] = budget.elapsed()
    report["failed"] = failed_parts(report)
    return report


def sections(report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every part's section by name (``train:fp32``, ``fid``, ...)."""
    found: dict[str, dict[str, Any]] = {}
    train = report.get("train") or {}
    if train:
        found["train:flops"] = train["flops"]
        for name, section in train["variants"].items():
            found[f"train:{name}"] = section
    for name in ("fid", "ddp"):
        if name in report:
            found[name] = report[name]
    return found


def failed_parts(report: Mapping[str, Any]) -> list[str]:
    return [name for name, s in sections(report).items() if s.get("status") == "failed"]


def finite(value: Any) -> Any:
    """NaN and inf become None (the JSON stays strict)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


# -- command line ------------------------------------------------------------------------------


def command_line(args: argparse.Namespace) -> str:
    """The options this check ran with, as a command that repeats it."""
    words = ["genbench", "doctor", "--gpu", "--out", str(args.out), "--method", args.method]
    for flag, value in (
        ("--batch", args.batch),
        ("--steps", args.steps),
        ("--warmup", args.warmup),
        ("--fid-batch", args.fid_batch),
        ("--ddp-backend", args.ddp_backend),
        ("--budget-s", args.budget_s),
        ("--parts", args.parts),
        ("--feature-weights", args.feature_weights),
    ):
        if value is not None:
            words += [flag, str(value)]
    switches = {
        "--dry-run": args.dry_run,
        "--skip-compile": args.skip_compile,
        "--no-channels-last": args.no_channels_last,
    }
    words += [flag for flag, on in switches.items() if on]
    return shlex.join(words)


def _parts(text: str | None) -> tuple[str, ...]:
    if text is None:
        return PARTS
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in names if p not in PARTS]
    if bad or not names:
        raise GenbenchError(
            f"--parts {text!r}: expected a comma-separated subset of {','.join(PARTS)}"
        )
    return names


def main(args: argparse.Namespace) -> int:
    """``genbench doctor``: 0 when every part that ran is ok, 1 when one failed (the file
    is written either way)."""
    from bench.registry import METHODS
    from bench.results import write_json_atomic

    if not args.gpu:
        raise GenbenchError("genbench doctor has one check: pass --gpu (see genbench doctor -h)")
    METHODS.get(args.method)  # an unknown method is one line, before anything runs
    if args.ddp_backend not in ("auto", "nccl", "gloo"):
        raise GenbenchError(f"--ddp-backend {args.ddp_backend!r}: expected auto, nccl or gloo")
    parts = _parts(args.parts)
    if args.budget_s is not None and not (math.isfinite(args.budget_s) and args.budget_s > 0):
        raise GenbenchError(f"--budget-s {args.budget_s}: expected a positive number of seconds")
    if args.out is not None and args.out.is_dir():  # found now, not after 8 minutes
        raise GenbenchError(f"--out {args.out} is a folder: give the JSON file's path")
    dry_run = args.dry_run or not torch.cuda.is_available()
    if not torch.cuda.is_available():
        print(NO_GPU_LINE, flush=True)
    elif args.dry_run:
        print("genbench doctor: --dry-run: a CPU dry run at tiny sizes", flush=True)
    settings = Settings.defaults(
        dry_run,
        method=args.method,
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup,
        fid_batch=args.fid_batch,
        budget_s=args.budget_s,
        parts=parts,
        skip_compile=args.skip_compile,
        channels_last=not args.no_channels_last,
        ddp_backend=args.ddp_backend,
        feature_weights=args.feature_weights,
    )
    out = args.out if args.out is not None else (DRY_RUN_OUT if dry_run else DEFAULT_OUT)
    args.out = out
    report = finite(run_check(settings, command_line(args)))
    write_json_atomic(out, report)
    for name, section in sections(report).items():
        rate = section.get("images_per_s")
        detail = f"{rate:.1f} img/s" if isinstance(rate, float) else section.get("error", "")
        print(f"  {name:<24} {section['status']:<8} {detail}")
    print(f"wrote {out} ({'CPU dry run' if dry_run else report['device_name']})")
    if report["failed"]:
        print(f"genbench doctor: failed: {', '.join(report['failed'])}", file=sys.stderr)
        return 1
    return 0
