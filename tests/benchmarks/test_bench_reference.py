"""The reference step every other benchmark is divided by (tools/bench_gate.py).

A fixed small convolution + matmul forward/backward in plain torch, independent of genbench's
code: it moves only with the machine (load, clock, thread count, torch build), so a
benchmark's time divided by this one's in the same session cancels a noisy neighbour and
keeps what our code changed. Do not edit it without refreshing every saved baseline.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


@pytest.mark.benchmark(group="reference")
def test_reference_step(benchmark) -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(64, 1, 8, 8, generator=gen)  # a digits-sized batch
    kernel = torch.randn(32, 1, 3, 3, generator=gen, requires_grad=True)
    weight = torch.randn(32 * 64, 256, generator=gen, requires_grad=True)

    def step() -> float:
        hidden = F.relu(F.conv2d(images, kernel, padding=1))  # (64, 32, 8, 8)
        out = hidden.flatten(1) @ weight  # (64, 2048) @ (2048, 256)
        loss = out.square().mean()
        loss.backward()
        kernel.grad = None
        weight.grad = None
        return float(loss)

    benchmark(step)
