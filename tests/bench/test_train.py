from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from bench.method import Batch, DataSpec, Method
from bench.protocol import TrainSettings
from bench.train import EMA, Diverged, batch_indices, train

SPEC = DataSpec("toy", 1, 2, 2, 3, 2)


class Toy(Method):
    """A linear regressor; optionally reports double images or blows up at a step."""

    capabilities = frozenset({"encode"})

    def __init__(
        self, spec: DataSpec, images_factor: int = 1, nan_at: int = -1, ema: float | None = None
    ) -> None:
        super().__init__(spec)
        self.weight = torch.nn.Parameter(torch.zeros(4))
        self.images_factor = images_factor
        self.nan_at = nan_at
        self.ema_decay = ema  # type: ignore[misc]
        self.add_optimizer("sgd", torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9))
        self.seen: list[torch.Tensor] = []

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        self.seen.append(batch.x.clone())
        loss = ((batch.x.flatten(1) @ self.weight - 1.0) ** 2).mean()
        if step == self.nan_at:
            loss = loss * float("nan")
        opt = self.optimizers["sgd"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "images": len(batch) * self.images_factor}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 2, 2, generator=gen), torch.zeros(n, dtype=torch.long)


CPU = torch.device("cpu")


def test_budget_is_counted_in_images_seen() -> None:
    images, labels = data()
    settings = TrainSettings(budget_images=100, batch_size=8)
    outcome = train(Toy(SPEC), images, labels, settings, 0, CPU)
    assert outcome.images_seen == 104 and outcome.steps == 13  # ceil(100 / 8) steps
    doubled = train(Toy(SPEC, images_factor=2), images, labels, settings, 0, CPU)
    assert doubled.steps == 7 and doubled.images_seen == 112  # generator batches count too


def test_method_is_told_its_budget_before_the_first_step() -> None:
    images, labels = data()
    toy = Toy(SPEC)
    assert (toy.budget_images, toy.budget_steps) == (0, 0)  # outside the loop
    seen_at_first_step: list[tuple[int, int]] = []
    original = toy.train_step

    def recording_step(batch: Batch, step: int) -> dict[str, float]:
        if step == 0:
            seen_at_first_step.append((toy.budget_images, toy.budget_steps))
        return original(batch, step)

    toy.train_step = recording_step  # type: ignore[method-assign]
    outcome = train(toy, images, labels, TrainSettings(budget_images=100, batch_size=8), 0, CPU)
    assert seen_at_first_step == [(100, 13)] and outcome.steps == 13


def test_nan_loss_is_diverged_at_its_step() -> None:
    images, labels = data()
    with pytest.raises(Diverged) as info:
        train(
            Toy(SPEC, nan_at=3),
            images,
            labels,
            TrainSettings(budget_images=100, batch_size=8),
            0,
            CPU,
        )
    assert info.value.step == 3 and info.value.key == "loss"


def test_batches_are_seeded_epochs() -> None:
    first_epoch = torch.cat([batch_indices(40, 8, 5, s) for s in range(5)])
    assert sorted(first_epoch.tolist()) == list(range(40))
    assert torch.equal(batch_indices(40, 8, 5, 7), batch_indices(40, 8, 5, 7))
    assert not torch.equal(batch_indices(40, 8, 5, 0), batch_indices(40, 8, 6, 0))


def test_ema_is_an_exact_exponential_average() -> None:
    module = torch.nn.Linear(1, 1, bias=False)
    module.weight.data.fill_(0.0)
    ema = EMA(module, decay=0.9)
    expected = 0.0
    for value in (1.0, 2.0, 3.0):
        module.weight.data.fill_(value)
        ema.update(module)
        expected = 0.9 * expected + 0.1 * value
    ema.copy_to(module)
    assert module.weight.item() == pytest.approx(expected)


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    images, labels = data()
    full = TrainSettings(budget_images=96, batch_size=8)
    torch.manual_seed(0)
    reference = Toy(SPEC, ema=0.5)
    train(reference, images, labels, full, 0, CPU)

    torch.manual_seed(0)
    interrupted = Toy(SPEC, ema=0.5)
    half = dataclasses.replace(full, budget_images=48)
    train(interrupted, images, labels, half, 0, CPU, run_dir=tmp_path, resume_key="k")
    resumed = Toy(SPEC, ema=0.5)
    outcome = train(resumed, images, labels, full, 0, CPU, run_dir=tmp_path, resume_key="k")
    assert outcome.resumed_from_images == 48
    assert torch.equal(resumed.weight, reference.weight)
    # a checkpoint of another configuration is not resumed
    fresh = Toy(SPEC, ema=0.5)
    outcome = train(fresh, images, labels, full, 0, CPU, run_dir=tmp_path, resume_key="other")
    assert outcome.resumed_from_images == 0
