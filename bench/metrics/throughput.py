"""Throughput: images per second (train and sample), NFE, peak memory, parameters, FLOPs.

Timings synchronise the device and exclude a warm-up. Absolute numbers compare only on the
same device and precision (both recorded); across devices compare ratios from one run.
Forward FLOPs per image are counted by ``torch.utils.flop_counter`` over the method's
``flops_forward`` (its main network on a data batch). Training MFU on a GPU assumes the usual
3x forward FLOPs for forward + backward against the device's dense peak.
Peak memory is per run (:class:`MemoryMonitor` around it), not the process's lifetime peak,
which would give every run of a study the value of its hungriest predecessor.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense peak FLOP/s by device-name substring and precision (vendor data sheets, no sparsity).
PEAK_FLOPS = {
    ("H100", "bf16"): 989e12,
    ("H100", "fp32"): 67e12,
    ("H200", "bf16"): 989e12,
    ("H200", "fp32"): 67e12,
    ("A100", "bf16"): 312e12,
    ("A100", "fp32"): 19.5e12,
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class StepTimer:
    """Times training steps after a warm-up window, with device synchronisation."""

    def __init__(self, device: torch.device, warmup_steps: int) -> None:
        self.device = device
        self.warmup_steps = warmup_steps
        self.steps = 0
        self.images = 0
        self.seconds = 0.0
        self._start = 0.0

    def start(self) -> None:
        synchronize(self.device)
        self._start = time.perf_counter()

    def stop(self, images: int) -> None:
        synchronize(self.device)
        elapsed = time.perf_counter() - self._start
        self.steps += 1
        if self.steps > self.warmup_steps:
            self.images += images
            self.seconds += elapsed

    def images_per_second(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int = 1) -> float:
    """Seconds per call after one warm-up call."""
    fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def _lifetime_peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 2**10  # bytes on macOS, KiB on Linux
    return rss * scale


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """The process's peak so far (CUDA's since the last reset). Kept for callers that want
    it; a run's own peak comes from :class:`MemoryMonitor`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max allocated"
    return _lifetime_peak_rss_mb(), "process peak RSS"


_STATM = "/proc/self/statm"
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_mb() -> float | None:
    """Resident set size now, from /proc/self/statm (Linux); None where there is no /proc."""
    try:
        with open(_STATM) as handle:
            resident_pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * _PAGE_BYTES / 2**20


class MemoryMonitor:
    """Peak memory of what runs inside ``with MemoryMonitor(device) as mon:`` (``mon.peak_mb``,
    ``mon.kind``), so each run of a study records its own peak.

    - CUDA: the allocator's peak is reset on entry and read on exit (``"cuda-allocated"``:
      tensors only, not the caching allocator's reserve or the CUDA context).
    - CPU: a daemon thread samples the process's resident set every ``interval_s`` seconds
      (``"cpu-rss-sampled"``: the whole process, so it includes the interpreter, libraries
      and data already loaded; a spike shorter than the interval can be missed). Without
      /proc (macOS) it falls back to the lifetime peak and says so
      (``"cpu-rss-lifetime-peak"``).
    """

    def __init__(self, device: torch.device, interval_s: float = 0.02) -> None:
        self.device = device
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self.kind = "cuda-allocated" if device.type == "cuda" else "cpu-rss-sampled"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        rss = current_rss_mb()
        if rss is not None and rss > self.peak_mb:
            self.peak_mb = rss

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> MemoryMonitor:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        if current_rss_mb() is None:
            self.kind = "cpu-rss-lifetime-peak"
            return self
        self._sample()
        self._thread = threading.Thread(
            target=self._sample_until_stopped, name="genbench-memory-monitor", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._thread is None:
            self.peak_mb = _lifetime_peak_rss_mb()
        else:
            self._stop.set()
            self._thread.join()
            self._sample()


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def forward_flops_per_image(method: Any, x: torch.Tensor) -> float | None:
    counter = FlopCounterMode(display=False)
    was_training = method.training
    method.eval()
    try:
        with torch.no_grad(), counter:
            method.flops_forward(x)
    finally:
        method.train(was_training)
    total = counter.get_total_flops()
    return total / x.shape[0] if total else None


def mfu(
    flops_per_image: float | None,
    train_images_per_second: float | None,
    device: torch.device,
    precision: str,
) -> float | None:
    if device.type != "cuda" or not flops_per_image or not train_images_per_second:
        return None
    name = torch.cuda.get_device_name(device)
    for (key, prec), peak in PEAK_FLOPS.items():
        if key in name and prec == precision:
            return 3.0 * flops_per_image * train_images_per_second / peak
    return None
