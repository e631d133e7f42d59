"""Throughput: images per second (train and sample), NFE, peak memory, parameters, FLOPs.

Timings synchronise the device and exclude a warm-up. Absolute numbers compare only on the
same device and precision (both recorded); across devices compare ratios from one run.
Forward FLOPs per image are counted by ``torch.utils.flop_counter`` over the method's
``flops_forward`` (its main network on a data batch). Training MFU on a GPU assumes the usual
3x forward FLOPs for forward + backward against the device's dense peak.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
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


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 2**10  # bytes on macOS, KiB on Linux
    return rss * scale, "process peak RSS"


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
