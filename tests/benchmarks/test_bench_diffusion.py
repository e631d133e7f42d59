"""pytest-benchmark timings of the shared U-Net (`tox -e bench`).

``test_unet_train_step``: one training step of ddpm (the loop's step of its updates:
fused attention, foreach Adam and gradient clipping) against a plain eager step of the same
network and the same computation written the obvious way (naive softmax attention,
per-parameter Adam and clipping loops), on a digits batch. Compare the two rows of the
group: the method's step must not fall behind.
``test_sampler``: ddpm's DDIM rows at 50 steps and its ancestral chain, per batch of 100 images.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from baselines.common.unet import Attention
from bench.data import load_dataset
from bench.method import Batch
from bench.registry import METHODS


def _naive_attention(self: Attention, x: Tensor) -> Tensor:
    b, c, h, w = x.shape
    q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)  # (B, C, HW)
    weights = torch.softmax(q.transpose(1, 2) @ k / c**0.5, dim=-1)  # (B, HW, HW)
    out = (v @ weights.transpose(1, 2)).reshape(b, c, h, w)
    return x + self.proj(out)


@pytest.fixture(scope="module")
def digits_batch() -> Batch:
    data = load_dataset("digits")
    return Batch(data.images("train")[:64], data.labels("train")[:64])


@pytest.mark.benchmark(group="unet-train-step")
@pytest.mark.parametrize("implementation", ["genbench", "plain-eager"])
def test_unet_train_step(benchmark, digits_batch: Batch, implementation: str, monkeypatch) -> None:
    torch.manual_seed(0)
    method = METHODS.get("ddpm").build(load_dataset("digits").spec)
    step = iter(range(10**9))
    if implementation == "genbench":
        from bench.optim import Optimisation

        optimisation = Optimisation(method, torch.device("cpu"))
        benchmark(lambda: optimisation.step([digits_batch], next(step)))
        return
    monkeypatch.setattr(Attention, "forward", _naive_attention)
    net = method.net
    optimizer = torch.optim.Adam(net.parameters(), lr=method.lr, foreach=False)

    def plain_step() -> None:
        x = digits_batch.x * 2 - 1
        t = torch.randint(0, 1000, (x.shape[0],))
        noise = torch.randn_like(x)
        loss = F.mse_loss(net(method.diffusion.q_sample(x, t, noise), t.float()), noise)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), method.grad_clip, foreach=False)
        optimizer.step()

    benchmark(plain_step)


@pytest.mark.benchmark(group="diffusion-sampler")
@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_sampler(benchmark, sampler: str) -> None:
    method = METHODS.get("ddpm").build(load_dataset("digits").spec).eval()
    steps = 50 if sampler == "ddim" else None
    benchmark(lambda: method.sample(100, torch.Generator().manual_seed(0), None, steps, sampler))
