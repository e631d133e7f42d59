"""The shared small ResNet encoder (He et al. 2016, basic blocks, pre-pooling BatchNorm).

Used by the random-encoder and supervised reference rows and by the self-supervised methods,
so that their probes compare objectives, not architectures. ``forward`` returns the globally
average-pooled final features, the representation the probe evaluates (PROTOCOL.md).
"""

from __future__ import annotations

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


def encoder_widths(spec: DataSpec) -> tuple[int, int, int]:
    return scale_table(ENCODER_WIDTHS, spec, "the shared encoder's width table")


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
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

    def feature_map(self, x: Tensor) -> Tensor:
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
