from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench.method import Batch, DataSpec, Method, Update
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

    def train_step(self, batch: Batch, step: int) -> Iterator[Update]:
        self.seen.append(batch.x.clone())

        def loss() -> torch.Tensor:
            value = ((batch.x.flatten(1) @ self.weight - 1.0) ** 2).mean()
            return value * float("nan") if step == self.nan_at else value

        yield Update("sgd", loss, images=len(batch) * (self.images_factor - 1))

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

    def recording_step(batch: Batch, step: int) -> Iterator[Update]:
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


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3)
        self.norm = torch.nn.BatchNorm2d(3)
        self.register_buffer("scale", torch.ones(3))


def test_ema_update_is_bit_identical_to_a_lerp_per_tensor_and_follows_replaced_tensors() -> None:
    """The foreach update caches its tensor lists: it must track a layout change (which
    swaps a Parameter's .data), a buffer a method replaces, and a resumed shadow."""
    torch.manual_seed(0)
    net, ema = _Net(), None
    ema = EMA(net, decay=0.93)
    expected = {k: v.clone() for k, v in ema.shadow.items()}

    def reference_update() -> None:
        for key, value in net.state_dict().items():
            if key in expected:
                expected[key].lerp_(value, 1.0 - 0.93)

    for step in range(6):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net.norm.running_mean.add_(1.0)
        if step == 2:
            net.to(memory_format=torch.channels_last)  # swaps conv.weight.data
            net.scale = torch.full((3,), 5.0)  # a replaced buffer object
        if step == 4:  # a resume sets the shadow: the cache is rebuilt from it
            ema.shadow = {k: v.clone() for k, v in ema.shadow.items()}
        ema.update(net)
        reference_update()
    assert ema.shadow.keys() == expected.keys()
    for key in expected:
        assert torch.equal(ema.shadow[key], expected[key]), key
    assert "norm.num_batches_tracked" not in ema.shadow


def test_batch_indices_keep_their_values_when_the_cached_permutation_is_reused() -> None:
    first = [batch_indices(50, 8, 3, s).clone() for s in range(12)]
    again = [batch_indices(50, 8, 3, s) for s in range(12)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[6])  # step 6 starts the next epoch's permutation


def test_the_loop_fuses_adam_unless_the_method_chose_an_implementation() -> None:
    """Optimisation switches plain Adam/AdamW to the fused kernel (same update up to
    rounding) and leaves an optimiser alone whose method asked for foreach, or any other."""
    from bench.optim import Optimisation, fuse_optimizer

    torch.manual_seed(0)
    make = lambda: torch.nn.Linear(4, 3)  # noqa: E731
    plain, fused = make(), make()
    fused.load_state_dict(plain.state_dict())
    a = torch.optim.Adam(plain.parameters(), lr=0.1, weight_decay=0.01)
    b = torch.optim.Adam(fused.parameters(), lr=0.1, weight_decay=0.01)
    assert fuse_optimizer(b) and b.param_groups[0]["fused"] is True
    for _ in range(5):
        for net, opt in ((plain, a), (fused, b)):
            opt.zero_grad()
            net(torch.ones(2, 4)).square().sum().backward()
            opt.step()
    for p, q in zip(plain.parameters(), fused.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)
    assert not fuse_optimizer(torch.optim.Adam(make().parameters(), foreach=True))
    assert not fuse_optimizer(torch.optim.RMSprop(make().parameters()))
    assert fuse_optimizer(torch.optim.AdamW(make().parameters()))

    assert Optimisation(Toy(SPEC), CPU).fused == []  # SGD: no fused kernel used here
    from bench.registry import METHODS

    gan = METHODS.get("gan").build(DataSpec("digits", 1, 8, 8, num_levels=17, num_classes=10))
    assert sorted(Optimisation(gan, CPU).fused) == ["critic", "generator"]


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


# -- the loop owns optimisation ---------------------------------------------------------------


def test_one_schedule_function_for_every_method() -> None:
    from bench.optim import lr_factor

    assert [lr_factor(s, "warmup", 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cosine = [lr_factor(s, "warmup-cosine", 2, 10) for s in range(11)]
    assert cosine[:2] == [0.5, 1.0] and cosine[2] == 1.0 and cosine[10] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(cosine[2:], cosine[3:], strict=False))  # decays
    assert lr_factor(6, "warmup-cosine", 2, 10) == pytest.approx(0.5)  # half-way down
    assert lr_factor(10, "warmup-cosine", 0, 10, final_fraction=0.1) == pytest.approx(0.1)
    assert lr_factor(3, "constant", 100) == 1.0


def test_the_loop_applies_the_registered_schedule_and_clip() -> None:
    from bench.optim import Optimisation

    images, labels = data()
    toy = Toy(SPEC)
    toy.optimizer_settings["sgd"] = dataclasses.replace(
        toy.optimizer_settings["sgd"], schedule="warmup", warmup_steps=4, grad_clip=1e-3
    )
    toy.optimizers["sgd"].param_groups[0]["initial_lr"] = 0.1
    optimisation = Optimisation(toy, CPU)
    rates, norms = [], []
    for step in range(5):
        batch = Batch(images[:8], labels[:8])
        logs, _ = optimisation.step([batch], step)
        rates.append(toy.optimizers["sgd"].param_groups[0]["lr"])
        norms.append(logs["grad_norm"])
    assert rates == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])
    assert all(n > 1e-3 for n in norms)  # the clip binds: the logged norm is the unclipped one
    # clipped: the SGD step with momentum is at most lr * clip per step in norm
    assert float(toy.weight.detach().norm()) < sum(rates) * 1e-3 * 10


def test_an_update_of_an_unregistered_optimizer_is_one_clear_error() -> None:
    from bench.errors import GenbenchError

    class Wrong(Toy):
        def train_step(self, batch: Batch, step: int) -> Iterator[Update]:
            yield Update("adam", lambda: self.weight.sum())

    images, labels = data()
    with pytest.raises(GenbenchError, match="never registered"):
        train(Wrong(SPEC), images, labels, TrainSettings(16, 8), 0, CPU)


@pytest.mark.parametrize("name", ["ddpm", "gan"])
def test_compile_and_channels_last_train_on_cpu(name: str) -> None:
    """``--compile`` (torch.compile of every network, in place) and ``--channels-last`` run
    the real step on CPU for the U-Net and the DCGAN (tiny networks: compiling is minutes
    for the full-size ones on 2 cores) and give the eager step's losses."""
    from bench.data import load_dataset
    from bench.registry import METHODS
    from bench.runner import seed_everything

    tiny = {
        "ddpm": {"width": 8, "width_mults": [1], "blocks_per_level": 1,
                 "attention_resolutions": []},
        "gan": {"generator_width": 16, "critic_width": 8, "generator_fc_width": 16,
                "critic_fc_width": 16, "latent_dim": 8},
    }[name]  # fmt: skip
    digits = load_dataset("digits", None, False)
    settings = TrainSettings(budget_images=64, batch_size=16, throughput_warmup_steps=0)
    losses = []
    for fast in (False, True):
        seed_everything(0)
        method = METHODS.get(name).build(digits.spec, tiny)
        outcome = train(
            method,
            digits.images("train"),
            digits.labels("train"),
            settings,
            0,
            CPU,
            channels_last=fast,
            compile=fast,
        )
        losses.append(outcome.last_losses)
    assert losses[0].keys() == losses[1].keys()
    for key, value in losses[0].items():
        assert losses[1][key] == pytest.approx(value, rel=1e-3, abs=1e-5), key


def test_a_data_scale_no_table_covers_is_an_error_when_a_study_is_planned() -> None:
    """Inside a study (``strict_scales``, as ``plan_study`` builds methods) a size no default
    table covers is one clear error; outside, a toy build warns and uses the nearest row."""
    from bench.errors import GenbenchError
    from bench.method import strict_scales
    from bench.registry import METHODS

    odd = DataSpec("odd", 1, 16, 16, 256, 10)
    for name in ("ddpm", "glow", "gan", "made", "vae", "simclr"):
        with strict_scales(), pytest.raises(GenbenchError, match="no defaults for 16x16"):
            METHODS.get(name).validate(odd, {})  # what plan_study runs: schema + trial build
    with pytest.warns(UserWarning, match="using its"):
        METHODS.get("made").resolve_hparams(odd, {})
