"""Autoregressive models: the ordering is respected (perturbation), the distribution over all
L^D images sums to one, and the batched ancestral sampler draws from that distribution."""

from __future__ import annotations

import itertools

import pytest
import torch

from baselines.autoregressive.base import DiscreteAutoregressive
from baselines.autoregressive.made import MADE
from baselines.autoregressive.nade import NADE
from bench.method import DataSpec, from_levels
from bench.registry import METHODS

TINY = DataSpec("tiny", 1, 2, 2, 3, 10)
DIGITS = DataSpec("digits", 1, 8, 8, 17, 10)

#: (method, hyper-parameter overrides): every output head and ordering option
VARIANTS = [
    ("fvsbn", {}),
    ("fvsbn", {"input_encoding": "one_hot"}),
    ("nade", {}),
    ("nade", {"input_encoding": "one_hot"}),
    ("made", {}),
    ("made", {"num_masks": 3, "order": "random", "direct_connection": True}),
    ("pixelcnn", {"width": 8}),
    ("pixelcnn", {"width": 8, "output": "logistic_mixture"}),
]
IDS = [f"{name}-{'-'.join(map(str, kw.values())) or 'default'}" for name, kw in VARIANTS]


def build(name: str, spec: DataSpec, overrides: dict, seed: int = 0) -> DiscreteAutoregressive:
    """A method with random, non-trivial parameters (zero initialisations would hide
    dependencies), in eval mode."""
    torch.manual_seed(seed)
    method = METHODS.get(name).build(spec, dict(overrides))
    with torch.no_grad():
        for param in method.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    return method.eval()


def all_images(spec: DataSpec) -> torch.Tensor:
    """Every one of the L^D images of ``spec`` as levels (L^D, D)."""
    grid = itertools.product(range(spec.num_levels), repeat=spec.dims)
    return torch.tensor(list(grid))


def orderings(method: DiscreteAutoregressive) -> list[tuple[int, list[int]]]:
    """(mask index, order) pairs: MADE has one ordering per mask."""
    if isinstance(method, MADE):
        return [(k, order.tolist()) for k, order in enumerate(method.orders)]
    return [(0, method.sampling_order())]


def conditionals(method: DiscreteAutoregressive, levels: torch.Tensor, mask: int) -> torch.Tensor:
    if isinstance(method, MADE):
        return method.conditional_log_probs(levels, mask)
    return method.conditional_log_probs(levels)


@pytest.mark.parametrize(("name", "overrides"), VARIANTS, ids=IDS)
def test_probabilities_of_all_images_sum_to_one(name: str, overrides: dict) -> None:
    method = build(name, TINY, overrides)
    levels = all_images(TINY)  # (81, 4)
    with torch.no_grad():
        log_p = method.log_likelihood(from_levels(levels, 3).view(-1, *TINY.shape))
    assert torch.isfinite(log_p).all() and (log_p < 0).all()
    assert float(log_p.exp().sum()) == pytest.approx(1.0, abs=1e-5)
    # and not trivially: the model is far from uniform
    assert float(log_p.max() - log_p.min()) > 1.0


@pytest.mark.parametrize(("name", "overrides"), VARIANTS, ids=IDS)
def test_changing_a_pixel_changes_only_later_conditionals(name: str, overrides: dict) -> None:
    """Perturb the pixel at position t of the ordering: the predicted distributions of the
    pixels at positions <= t must not move, and some later one must."""
    method = build(name, DIGITS, overrides)
    levels = torch.randint(0, DIGITS.num_levels, (3, DIGITS.dims))
    with torch.no_grad():
        for mask, order in orderings(method):
            base = conditionals(method, levels, mask)  # (B, D, L)
            for t in range(0, DIGITS.dims, 3):
                changed = levels.clone()
                changed[:, order[t]] = (changed[:, order[t]] + 5) % DIGITS.num_levels
                moved = (conditionals(method, changed, mask) - base).abs().amax((0, 2))  # (D,)
                assert float(moved[order[: t + 1]].max()) < 1e-6, f"position {t} leaks"
                if t < DIGITS.dims - 1:
                    assert float(moved[order[t + 1 :]].max()) > 1e-4


@pytest.mark.parametrize(("name", "overrides"), VARIANTS, ids=IDS)
def test_ancestral_samples_follow_the_model(name: str, overrides: dict) -> None:
    """Empirical frequencies of 40,000 samples against the exact probabilities of all 81
    images: total variation within sampling noise."""
    method = build(name, TINY, overrides)
    levels = all_images(TINY)
    with torch.no_grad():
        probs = method.log_likelihood(from_levels(levels, 3).view(-1, *TINY.shape)).exp()
        samples = method.sample(40_000, torch.Generator().manual_seed(1))
    assert method.last_nfe == TINY.dims * (len(method.orders) if isinstance(method, MADE) else 1)
    index = (torch.round(samples.flatten(1) * 2).long() * torch.tensor([27, 9, 3, 1])).sum(1)
    empirical = torch.bincount(index, minlength=81).float() / len(index)
    assert 0.5 * float((empirical - probs).abs().sum()) < 0.03


class CountingNetwork(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls, self.batch_sizes = inner, 0, set()

    def forward(self, *args, **kwargs):
        self.calls += 1
        self.batch_sizes.add(len(args[0]))
        return self.inner(*args, **kwargs)


@pytest.mark.parametrize(("name", "attribute"), [("fvsbn", "linear"), ("made", "output")])
@pytest.mark.parametrize("spec", [TINY, DIGITS], ids=["tiny", "digits"])
def test_sampling_is_one_batched_network_call_per_position(
    name: str, attribute: str, spec: DataSpec
) -> None:
    method = build(name, spec, {})
    counter = CountingNetwork(getattr(method, attribute))
    setattr(method, attribute, counter)
    method.sample(7, torch.Generator().manual_seed(0))
    assert counter.calls == spec.dims == method.last_nfe
    assert counter.batch_sizes == {7}


def test_nade_recursive_sampler_matches_the_full_conditionals() -> None:
    """The O(H L) per-pixel recursion of the sampler gives the same conditionals as the
    teacher-forced pass (exclusive cumulative sum) on the sampled images."""
    method = build("nade", DIGITS, {})
    assert isinstance(method, NADE)
    with torch.no_grad():
        levels = (method.sample(5, torch.Generator().manual_seed(0)) * 16).round().long()
        levels = levels.flatten(1)
        full = method.conditional_log_probs(levels)
        step = method.sampling_conditional(5)
        recursive = torch.stack([step(levels, d) for d in range(DIGITS.dims)], 1)
    torch.testing.assert_close(recursive, full, atol=1e-5, rtol=1e-5)


def test_made_masks_have_valid_connectivity() -> None:
    """The product of MADE's masks is strictly lower-triangular in each mask's ordering and
    uses the connections it may (eqs. 12-13)."""
    levels = width = TINY.num_levels  # one-hot inputs and L logits per pixel
    method = build(
        "made",
        TINY,
        {"num_masks": 4, "order": "random", "hidden_sizes": (8, 8), "input_encoding": "one_hot"},
    )
    for k, order in enumerate(method.orders.tolist()):
        path = method.output.masks[k]
        for layer in reversed(method.hidden):
            path = path @ layer.masks[k]
        pixel_path = path.view(TINY.dims, levels, TINY.dims, width).amax((1, 3))  # (out, in)
        position = torch.empty(TINY.dims, dtype=torch.long)
        position[torch.tensor(order)] = torch.arange(TINY.dims)
        allowed = position[:, None] > position[None, :]
        assert not bool((pixel_path > 0)[~allowed].any())
        assert bool((pixel_path > 0)[allowed].any())
