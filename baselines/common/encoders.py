"""The shared small ResNet encoder (He et al. 2016, basic blocks, pre-pooling BatchNorm).

Used by the random-encoder and supervised reference rows and by the self-supervised methods,
so that their probes compare objectives, not architectures. ``forward`` returns the globally
average-pooled final features, the representation the probe evaluates (PROTOCOL.md).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.method import DataSpec, scale_table

#: widths of the three stages per data scale; stages 2 and 3 halve the resolution
ENCODER_WIDTHS = {"8x8": (32, 64, 128), "28x28": (32, 64, 128), "32x32": (64, 128, 256)}
#: stride of the stem convolution per data scale. 28x28 halves the resolution in the stem
#: (28 -> 14 -> 7 -> 4), as ImageNet ResNets do, so that the self-supervised methods, which
#: run the encoder on two views or on an extra momentum copy, fit the quick protocol on 2 CPU
#: cores (3.3x the training throughput of stride 1, measured). 8x8 and 32x32 keep stride 1
#: (the CIFAR ResNet stem).
ENCODER_STEM_STRIDE = {"8x8": 1, "28x28": 2, "32x32": 1}


#: the encoder computes in channels_last (NHWC) on every device: measured 1.15-1.18x faster
#: training steps on 2 CPU cores for cpc, simclr, moco and supervised (digits, interleaved
#: A/B, tests/benchmarks/test_bench_families.py::test_encoder_memory_format), and the layout
#: GPU tensor cores want. The values are those of NCHW up to float rounding.
CHANNELS_LAST = True


@functools.lru_cache(maxsize=256)
def live_taps(
    size: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> tuple[slice, slice] | None:
    """The kernel rows and columns a convolution over a ``size`` map ever applies to a real
    pixel, when the others only ever read zero padding and dropping them (with the padding)
    gives the same output map; None when every tap is live or the crop is not exact.

    E.g. a 3x3 convolution with padding 1 on a 1x1 map (stride 1) reads a real pixel only
    through its centre tap; on a 2x2 map with stride 2 only through its bottom-right 2x2."""
    crops = []
    for n, k, s, p in zip(size, kernel, stride, padding, strict=True):
        out = (n + 2 * p - k) // s + 1
        live = [r for r in range(k) if any(0 <= o * s - p + r < n for o in range(out))]
        if not live:
            return None
        first, last = live[0], live[-1] + 1
        exact = (
            first == p
            and (n - (last - first)) // s + 1 == out
            and all(0 <= o * s - p + r < n for o in range(out) for r in range(first, last))
        )
        if not exact:
            return None
        crops.append(slice(first, last))
    if all(c.stop - c.start == k for c, k in zip(crops, kernel, strict=True)):
        return None
    return crops[0], crops[1]


class TapConv2d(nn.Conv2d):
    """``nn.Conv2d`` (zero padding, no dilation or groups) that skips the kernel taps which,
    on the map it is given, only ever multiply padding (:func:`live_taps`): the same output
    with a fraction of the work, e.g. the last stage of the shared encoder on cpc's 4x4
    patches runs on 2x2 and 1x1 maps, where 5 and 8 of the 9 taps read zeros. The dropped
    taps get a zero gradient, as they did before."""

    def forward(self, x: Tensor) -> Tensor:
        taps = live_taps(
            (x.shape[-2], x.shape[-1]),
            self.kernel_size,  # type: ignore[arg-type]
            self.stride,  # type: ignore[arg-type]
            self.padding,  # type: ignore[arg-type]
        )
        if taps is None:
            return super().forward(x)
        return F.conv2d(x, self.weight[:, :, taps[0], taps[1]], self.bias, self.stride)


def encoder_widths(spec: DataSpec) -> tuple[int, int, int]:
    return scale_table(ENCODER_WIDTHS, spec, "the shared encoder's width table")


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            TapConv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            TapConv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """(B, C, H, W) in [0, 1] -> (B, widths[-1]) globally pooled features."""

    def __init__(
        self,
        channels: int,
        widths: tuple[int, ...] = (32, 64, 128),
        blocks_per_stage: int = 1,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        self.feature_dim = widths[-1]
        self.stem = nn.Sequential(
            nn.Conv2d(channels, widths[0], 3, stem_stride, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        stages: list[nn.Module] = []
        c_in = widths[0]
        for i, width in enumerate(widths):
            for j in range(blocks_per_stage):
                stages.append(BasicBlock(c_in, width, 2 if (i > 0 and j == 0) else 1))
                c_in = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.channels_last = CHANNELS_LAST
        if self.channels_last:
            self.to(memory_format=torch.channels_last)  # type: ignore[call-arg]

    def feature_map(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.stages(self.stem(x * 2.0 - 1.0))  # (B, C, H, W) -> (B, w, H/(4s), W/(4s))

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.feature_map(x)).flatten(1)  # -> (B, w)


def shared_encoder(spec: DataSpec) -> ResNetEncoder:
    """The one encoder architecture of the reference rows and the self-supervised methods."""
    return ResNetEncoder(
        spec.channels,
        encoder_widths(spec),
        stem_stride=scale_table(ENCODER_STEM_STRIDE, spec, "the encoder stem table"),
    )
