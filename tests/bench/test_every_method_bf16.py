"""Every registered method trains a few steps under bf16 autocast on CPU (the loop wraps
every update's loss in autocast; a method must not break in it), with finite losses, and
gradient accumulation runs for every method too."""

from __future__ import annotations

import math

import pytest
import torch

from bench.data import load_dataset
from bench.protocol import TrainSettings
from bench.registry import METHODS
from bench.runner import seed_everything
from bench.train import train

TRAINABLE = [name for name in METHODS.names() if METHODS.get(name).trainable]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", None, False)


@pytest.mark.parametrize("name", TRAINABLE)
def test_three_steps_under_bf16(name: str, digits) -> None:
    seed_everything(0)
    method = METHODS.get(name).build(digits.spec, {})
    method.prepare(digits.images("train"), digits.labels("train"), digits.images("test"))
    settings = TrainSettings(budget_images=48, batch_size=16, throughput_warmup_steps=0)
    outcome = train(
        method,
        digits.images("train"),
        digits.labels("train"),
        settings,
        0,
        torch.device("cpu"),
        precision="bf16",
    )
    assert outcome.steps >= 2 and outcome.last_losses
    assert all(math.isfinite(v) for v in outcome.last_losses.values()), outcome.last_losses


@pytest.mark.parametrize("name", TRAINABLE)
def test_two_accumulated_micro_batches(name: str, digits) -> None:
    seed_everything(0)
    method = METHODS.get(name).build(digits.spec, {})
    method.prepare(digits.images("train"), digits.labels("train"), digits.images("test"))
    settings = TrainSettings(budget_images=32, batch_size=16, accumulate=2)
    outcome = train(
        method, digits.images("train"), digits.labels("train"), settings, 0, torch.device("cpu")
    )
    assert all(math.isfinite(v) for v in outcome.last_losses.values()), outcome.last_losses
