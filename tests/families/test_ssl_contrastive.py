"""SimCLR and MoCo v2: their losses against hand-written formulas, the momentum update and the
queue against their definitions, the batched augmentations against their geometry, and
their per-example randomness against every split of the global batch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

from baselines.ssl import augment as augment_module
from baselines.ssl.augment import NUM_DRAWS, BatchAugment, augment_hparams
from baselines.ssl.losses import info_nce, nt_xent
from baselines.ssl.moco import MoCo
from baselines.ssl.simclr import SimCLR
from bench.method import Batch, BatchNoise, DataSpec
from bench.optim import Optimisation, lr_factor, run_step
from bench.registry import METHODS

DIGITS = DataSpec("digits", 1, 8, 8, 17, 10)
RGB = DataSpec("tiny-rgb", 3, 16, 16, 256, 10)
#: no augmentation at all: crop of the whole image, no flip, no jitter, no blur
IDENTITY = {"crop_scale": (1.0, 1.0), "flip": False, "jitter_prob": 0.0, "blur_prob": 0.0}


def _batch(size: int = 6, seed: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    return Batch(torch.rand(size, *DIGITS.shape, generator=generator), torch.zeros(size).long())


def _draws(size: int, seed: int = 0) -> Tensor:
    """Uniforms for ``size`` augmented images (what the methods draw from the batch)."""
    return torch.rand(size, NUM_DRAWS, generator=torch.Generator().manual_seed(seed))


def _part(x: Tensor, positions: list[int], seed: int = 7) -> Batch:
    """The examples at ``positions`` of the global batch ``x``, with their per-example noise."""
    index = torch.tensor(positions)
    return Batch(x[index], torch.zeros(len(index)).long(), BatchNoise(seed, index, len(x)))


# -- losses -------------------------------------------------------------------------------------


def _cosine(u: list[float], v: list[float]) -> float:
    dot = sum(a * b for a, b in zip(u, v, strict=True))
    return dot / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def test_nt_xent_equals_its_definition_computed_by_hand() -> None:
    """SimCLR eq. 1: l(i, j) = -log exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau) over the
    2N views, averaged over both orders of every positive pair."""
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(3, 4, generator=generator), torch.randn(3, 4, generator=generator)
    tau, n = 0.5, 3
    views = [row.tolist() for row in z1] + [row.tolist() for row in z2]
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)  # the other view of the same image
        denominator = sum(
            math.exp(_cosine(views[i], views[k]) / tau) for k in range(2 * n) if k != i
        )
        total += -math.log(math.exp(_cosine(views[i], views[j]) / tau) / denominator)
    assert nt_xent(z1, z2, tau).item() == pytest.approx(total / (2 * n), rel=1e-5)


def test_info_nce_equals_its_definition_computed_by_hand() -> None:
    """MoCo eq. 1: L_q = -log exp(q.k+ / tau) / (exp(q.k+ / tau) + sum_i exp(q.k_i / tau))."""
    generator = torch.Generator().manual_seed(1)
    query = F.normalize(torch.randn(3, 4, generator=generator), dim=1)
    positive = F.normalize(torch.randn(3, 4, generator=generator), dim=1)
    negatives = F.normalize(torch.randn(5, 4, generator=generator), dim=1)
    tau = 0.2
    total = 0.0
    for q, k in zip(query.tolist(), positive.tolist(), strict=True):
        pos = math.exp(sum(a * b for a, b in zip(q, k, strict=True)) / tau)
        neg = sum(
            math.exp(sum(a * b for a, b in zip(q, key, strict=True)) / tau)
            for key in negatives.tolist()
        )
        total += -math.log(pos / (pos + neg))
    assert info_nce(query, positive, negatives, tau).item() == pytest.approx(total / 3, rel=1e-5)


@pytest.mark.parametrize("name", ["simclr", "moco"])
def test_the_loop_warms_up_over_the_warmup_fraction_then_decays_by_a_cosine(name: str) -> None:
    """The paper's schedule (SimCLR B.1) is registered with the loop once the run's length
    is known: warm-up over warmup_fraction of budget_steps, cosine to 0 at the end."""
    torch.manual_seed(0)
    method = METHODS.get(name).build(DIGITS, {"warmup_fraction": 0.1, "lr": 1e-3})
    assert method.optimizer_settings["adamw"].schedule == "constant"  # length unknown yet
    method.set_budget(800, 8)  # 100 steps
    settings = method.optimizer_settings["adamw"]
    assert (settings.schedule, settings.warmup_steps) == ("warmup-cosine", 10)
    assert settings.final_lr_fraction == 0.0
    method.train()
    optimizer = method.optimizers["adamw"]
    for step in (0, 9, 55):
        run_step(method, _batch(8, step), step)
        expected = 1e-3 * lr_factor(step, "warmup-cosine", 10, 100)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    assert lr_factor(0, "warmup-cosine", 10, 100) == pytest.approx(0.1)
    assert lr_factor(55, "warmup-cosine", 10, 100) == pytest.approx(0.5)


# -- MoCo: momentum encoder and queue -------------------------------------------------------------


def _moco(**overrides: object) -> MoCo:
    torch.manual_seed(0)
    method = METHODS.get("moco").build(DIGITS, overrides)
    assert isinstance(method, MoCo)
    return method


def test_momentum_update_is_an_exact_ema_of_every_query_parameter() -> None:
    method = _moco(momentum=0.9)
    # the key encoder starts as a copy of the query encoder
    for key, query in zip(method.key_parameters(), method.query_parameters(), strict=True):
        assert torch.equal(key, query) and not key.requires_grad
    with torch.no_grad():  # move the query encoder away from the key encoder
        for query in method.query_parameters():
            query.add_(torch.randn_like(query))
    keys_before = [key.clone() for key in method.key_parameters()]
    method.momentum_update()
    named_keys = dict(method.key_encoder.named_parameters()) | {
        f"head.{k}": v for k, v in method.key_head.named_parameters()
    }
    assert len(named_keys) == len(keys_before) == len(list(method.query_parameters()))
    for before, after, query in zip(
        keys_before, method.key_parameters(), method.query_parameters(), strict=True
    ):
        expected = 0.9 * before + 0.1 * query.detach()
        assert torch.allclose(after, expected, rtol=0, atol=1e-6)
        assert not torch.equal(after, before)


def test_queue_is_a_fifo_ring_buffer_that_wraps_around() -> None:
    method = _moco(queue_size=5, projection_dim=2)
    keys = torch.arange(1, 15, dtype=torch.float32)[:, None].repeat(1, 2)  # key i = (i, i)
    method.enqueue(keys[0:3])  # rows 0..2 <- 1, 2, 3
    assert method.queue[:3, 0].tolist() == [1, 2, 3] and int(method.queue_ptr) == 3
    method.enqueue(keys[3:6])  # rows 3, 4, then wraps to 0 <- 4, 5, 6
    assert method.queue[:, 0].tolist() == [6, 2, 3, 4, 5] and int(method.queue_ptr) == 1
    # 7 keys from row 1 on: 7..10 -> rows 1..4, 11 -> 0, 12 -> 1, 13 -> 2; the last 5 stay
    method.enqueue(keys[6:13])
    assert method.queue[:, 0].tolist() == [11, 12, 13, 9, 10] and int(method.queue_ptr) == 3
    # the queue and its pointer are part of the checkpoint
    state = method.state_dict()
    assert torch.equal(state["queue"], method.queue) and int(state["queue_ptr"]) == 3


def test_moco_step_enqueues_the_normalised_keys_of_the_batch() -> None:
    method = _moco(queue_size=16)
    method.train()
    before = method.queue.clone()
    run_step(method, _batch(6), 0)
    assert int(method.queue_ptr) == 6
    assert torch.allclose(method.queue[:6].norm(dim=1), torch.ones(6), atol=1e-5)
    assert not torch.equal(method.queue[:6], before[:6])
    assert torch.equal(method.queue[6:], before[6:])


# -- augmentations ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["simclr", "moco"])
def test_augmentation_is_one_batched_call_per_train_step(name: str, monkeypatch) -> None:
    """Both views of the whole batch come from one augmentation call: one grid_sample for
    every crop, whatever the batch size."""
    calls = {"grid_sample": 0, "augment": 0}
    grid_sample = F.grid_sample

    def counting_grid_sample(*args, **kwargs):
        calls["grid_sample"] += 1
        return grid_sample(*args, **kwargs)

    monkeypatch.setattr(augment_module.F, "grid_sample", counting_grid_sample)
    torch.manual_seed(0)
    method = METHODS.get(name).build(DIGITS)
    forward = method.augment.forward

    def counting_forward(x, uniforms):
        calls["augment"] += 1
        assert x.shape[0] == 2 * batch_size  # both views at once
        assert uniforms.shape == (2 * batch_size, NUM_DRAWS)
        return forward(x, uniforms)

    monkeypatch.setattr(method.augment, "forward", counting_forward)
    method.train()
    for step, batch_size in enumerate([4, 16]):
        run_step(method, _batch(batch_size), step)
        assert calls == {"grid_sample": step + 1, "augment": step + 1}


def test_two_views_of_each_image_differ() -> None:
    torch.manual_seed(0)
    method = METHODS.get("simclr").build(DIGITS)
    views = method.two_views(_batch(8))
    assert views.shape == (16, *DIGITS.shape)
    per_image_difference = (views[:8] - views[8:]).abs().flatten(1).amax(1)
    assert (per_image_difference > 1e-3).all()


def test_augmentations_are_a_function_of_the_draws_only() -> None:
    """No state, no global RNG: the same uniforms give the same views; each image reads
    only its own row."""
    x = torch.rand(8, *RGB.shape, generator=torch.Generator().manual_seed(0))
    augment = BatchAugment(RGB.channels, **augment_hparams(RGB) | {"blur_prob": 0.5})
    assert not list(augment.state_dict())  # nothing to checkpoint
    outputs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed + 100)  # the global RNG plays no part
        outputs.append(augment(x, _draws(8, seed)))
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], outputs[2])
    rows = augment(x[2:5], _draws(8, 3)[2:5])  # a sub-batch with its rows of uniforms
    assert torch.allclose(rows, outputs[0][2:5], atol=1e-6)


@pytest.mark.parametrize(
    "parts",
    [
        [list(range(8)), list(range(8, 16))],  # two accumulation micro-batches
        [list(range(0, 16, 2)), list(range(1, 16, 2))],  # two ranks: r, r + 2, ...
    ],
)
@pytest.mark.parametrize("name", ["simclr", "moco"])
def test_views_of_an_example_do_not_depend_on_the_batch_split(name: str, parts) -> None:
    """An example's two views are a function of (seed, step noise, its position in the
    global batch): the views of a part of the batch are the rows of the whole batch's."""
    torch.manual_seed(0)
    method = METHODS.get(name).build(RGB, {"blur_prob": 0.5})
    x = torch.rand(16, *RGB.shape, generator=torch.Generator().manual_seed(1))
    whole = method.two_views(_part(x, list(range(16))))  # (32, ...): first views, second
    first, second = whole[:16], whole[16:]
    assert not torch.allclose(first, second)
    for part in parts:
        views = method.two_views(_part(x, part))
        assert torch.allclose(views[:8], first[part], atol=1e-6)
        assert torch.allclose(views[8:], second[part], atol=1e-6)
    other_step = method.two_views(_part(x, list(range(16)), seed=8))
    assert not torch.allclose(other_step, whole)  # another step's noise: other views


def test_whole_image_crop_is_the_identity_and_flip_mirrors() -> None:
    """crop_scale (1, 1): no aspect ratio but 1 fits, so the crop falls back to the whole
    image (torchvision's fallback), sampled exactly at the pixel centres."""
    x = torch.rand(16, *RGB.shape, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    identity = BatchAugment(RGB.channels, **IDENTITY, grayscale_prob=0.0)
    assert torch.allclose(identity(x, _draws(16)), x, atol=1e-6)
    flipping = BatchAugment(RGB.channels, **IDENTITY | {"flip": True}, grayscale_prob=0.0)
    out = flipping(x, _draws(16))
    pairs = list(zip(out, x, strict=True))
    flipped = torch.tensor([torch.allclose(o, xi.flip(-1), atol=1e-6) for o, xi in pairs])
    kept = torch.tensor([torch.allclose(o, xi, atol=1e-6) for o, xi in pairs])
    assert (flipped ^ kept).all() and flipped.any() and kept.any()


def test_random_resized_crops_have_the_drawn_area_and_aspect_ratio() -> None:
    """On ramp images (channel 0 = x, channel 1 = y coordinate of the pixel centre), bilinear
    resampling between pixel centres is exact, so each output's ramps give its crop's box in
    the input. (The outermost output pixels may fall outside the outermost input centres,
    where the border clamps: the box is read from the second and second-to-last pixels,
    which lie inside for crops wider than a third of the image.)"""
    size, batch = 16, 2000
    centres = (torch.arange(size) + 0.5) / size
    ramps = torch.stack(
        [centres.expand(size, size), centres[:, None].expand(size, size), torch.zeros(size, size)]
    )
    x = ramps.expand(batch, 3, size, size)
    torch.manual_seed(0)
    scale = (0.3, 0.6)
    augment = BatchAugment(3, **IDENTITY | {"crop_scale": scale}, grayscale_prob=0.0)
    out = augment(x, _draws(batch))
    # output pixel j samples the input at left + (j + 1/2) width / size
    width = (out[:, 0, 0, -2] - out[:, 0, 0, 1]) * size / (size - 3)
    height = (out[:, 1, -2, 0] - out[:, 1, 1, 0]) * size / (size - 3)
    left = out[:, 0, 0, 1] - 1.5 * width / size
    top = out[:, 1, 1, 0] - 1.5 * height / size
    area, ratio = width * height, width / height
    tol = 1e-4
    assert (area > scale[0] - tol).all() and (area < scale[1] + tol).all()
    assert (ratio > 3 / 4 - tol).all() and (ratio < 4 / 3 + tol).all()
    assert (left > -tol).all() and (left + width < 1 + tol).all()  # inside the image
    assert (top > -tol).all() and (top + height < 1 + tol).all()
    # uniform draws: mean area and mean log aspect ratio of the ranges
    assert float(area.mean()) == pytest.approx(0.45, abs=0.01)
    assert float(ratio.log().mean()) == pytest.approx(0.0, abs=0.02)


def test_blur_matches_torchvision_per_image_sigma() -> None:
    """With blur always on and a fixed sigma, every image equals torchvision's Gaussian blur
    (same kernel, reflect padding); each image of a batch gets its own sigma."""
    x = torch.rand(4, *RGB.shape, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    blur = IDENTITY | {"blur_prob": 1.0, "blur_kernel": 5, "grayscale_prob": 0.0}
    fixed = BatchAugment(RGB.channels, **blur | {"blur_sigma": (0.8, 0.8)})
    expected = gaussian_blur(x, [5, 5], [0.8, 0.8])
    assert torch.allclose(fixed(x, _draws(4)), expected, atol=1e-5)
    varied = BatchAugment(RGB.channels, **blur | {"blur_sigma": (0.3, 2.0)})
    x_same = x[:1].expand(4, -1, -1, -1)
    out = varied(x_same, _draws(4))
    assert not torch.allclose(out[0], out[1], atol=1e-4)  # different sigmas per image


def test_blur_and_jitter_apply_with_their_probability() -> None:
    x = torch.rand(4000, *DIGITS.shape, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    torch.manual_seed(0)
    jitter = BatchAugment(1, **IDENTITY | {"jitter_prob": 0.8, "brightness": 0.4})
    changed = ((jitter(x, _draws(4000, 1)) - x).abs().flatten(1).amax(1) > 1e-6).float().mean()
    assert float(changed) == pytest.approx(0.8, abs=0.03)
    blur = BatchAugment(1, **IDENTITY | {"blur_prob": 0.5, "blur_sigma": (0.5, 1.0)})
    changed = ((blur(x, _draws(4000, 2)) - x).abs().flatten(1).amax(1) > 1e-6).float().mean()
    assert float(changed) == pytest.approx(0.5, abs=0.03)


def test_brightness_scales_and_contrast_blends_with_the_mean() -> None:
    """Inputs in [0.3, 0.7], so that no factor in [0.6, 1.4] clips them."""
    x = 0.3 + 0.4 * torch.rand(64, *DIGITS.shape, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    brightness = BatchAugment(1, **IDENTITY | {"jitter_prob": 1.0, "contrast": 0.0})
    # b x: one factor b per image, in [0.6, 1.4]
    factor = (brightness(x, _draws(64, 1)) / x).flatten(1)
    assert torch.allclose(factor, factor[:, :1].expand_as(factor), atol=1e-5)
    assert (factor > 0.6 - 1e-6).all() and (factor < 1.4 + 1e-6).all()
    assert float(factor[:, 0].std()) > 0.1  # drawn per image
    contrast = BatchAugment(1, **IDENTITY | {"jitter_prob": 1.0, "brightness": 0.0})
    out = contrast(x, _draws(64, 2))  # c x + (1 - c) mean: the mean is kept, deviations scale by c
    assert torch.allclose(out.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-5)
    deviation_out = out - out.mean((1, 2, 3), keepdim=True)
    deviation_in = x - x.mean((1, 2, 3), keepdim=True)
    scale = (deviation_out * deviation_in).sum((1, 2, 3)) / (deviation_in**2).sum((1, 2, 3))
    assert torch.allclose(deviation_out, scale[:, None, None, None] * deviation_in, atol=1e-5)
    assert (scale > 0.6 - 1e-5).all() and (scale < 1.4 + 1e-5).all()


# -- methods -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["simclr", "moco"])
def test_training_is_deterministic_and_counts_the_batch_once(name: str) -> None:
    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        method = METHODS.get(name).build(DIGITS)
        method.train()
        out = [run_step(method, _batch(8, seed), seed) for seed in range(2)]
        losses.append([step["loss"] for step in out])
    assert losses[0] == losses[1]


def test_moco_accumulated_micro_batches_update_as_one_batch() -> None:
    """Two accumulation micro-batches of one step: one momentum update (not one per
    micro-batch) and the keys enqueued in their order in the global batch, as one batch
    does. Eval mode, so that batch norm does not depend on the split."""
    x = torch.rand(8, *DIGITS.shape, generator=torch.Generator().manual_seed(3))
    methods = []
    for parts in ([list(range(8))], [list(range(4)), list(range(4, 8))]):
        method = _moco(queue_size=12, momentum=0.5).eval()
        optimisation = Optimisation(method, torch.device("cpu"), accumulate=len(parts))
        for step in range(2):  # the second step reads the first's keys from the queue
            logs, images = optimisation.step([_part(x, p, seed=step) for p in parts], step)
            assert images == 8 and math.isfinite(logs["loss"])
        methods.append((method, logs["loss"]))
    (one, loss_one), (split, loss_split) = methods
    assert loss_split == pytest.approx(loss_one, rel=1e-5)
    assert int(one.queue_ptr) == int(split.queue_ptr) == 4
    assert torch.allclose(one.queue, split.queue, atol=1e-5)
    for a, b in zip(one.key_parameters(), split.key_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    for a, b in zip(one.query_parameters(), split.query_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_simclr_projection_head_is_linear_bn_relu_linear() -> None:
    torch.manual_seed(0)
    method = METHODS.get("simclr").build(DIGITS)
    assert isinstance(method, SimCLR)
    layers = [type(layer).__name__ for layer in method.head]
    assert layers == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert method.encode(_batch(4).x).shape == (4, method.encoder.feature_dim)
