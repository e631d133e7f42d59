"""Deep InfoMax, CPC and MAE against values computed independently of their code: estimator
values by hand, the patch grid by slicing, the context network's causality by perturbation
and gradients, MAE's masking and what its encoder and decoder see by hooks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from baselines.common.vit import patchify, sincos_position_embedding, unpatchify
from baselines.ssl.cpc import ContextNetwork, patch_grid
from baselines.ssl.dim import infonce_mi, jsd_mi
from baselines.ssl.mae import masked_patch_loss, random_masking
from bench.method import Batch, BatchNoise, DataSpec
from bench.optim import lr_factor, run_step
from bench.registry import METHODS

DIGITS = DataSpec("tiny", 1, 8, 8, 17, 10)
MNIST = DataSpec("mnist-like", 1, 28, 28, 256, 10)


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


# -- Deep InfoMax ------------------------------------------------------------------------------

#: scores[i, j, l] = T(local feature l of image j, Y of image i) for B = 2 images, 2 locations
SCORES = torch.tensor([[[2.0, 1.0], [-1.0, 0.5]], [[0.0, -2.0], [3.0, 1.5]]])


def test_jsd_estimator_matches_a_hand_computation() -> None:
    positives = [2.0, 1.0, 3.0, 1.5]  # i == j: [0, 0, :] and [1, 1, :]
    negatives = [-1.0, 0.5, 0.0, -2.0]  # i != j
    expected = sum(-softplus(-t) for t in positives) / 4 - sum(softplus(t) for t in negatives) / 4
    assert float(jsd_mi(SCORES)) == pytest.approx(expected, abs=1e-6)


def test_infonce_estimator_matches_a_hand_computation() -> None:
    # per location l and row i (image i's Y): log softmax over the images j at column i
    total = 0.0
    for l in range(2):
        for i in range(2):
            row = [float(SCORES[i, j, l]) for j in range(2)]
            total += row[i] - math.log(sum(math.exp(v) for v in row))
    expected = math.log(2) + total / 4
    assert float(infonce_mi(SCORES)) == pytest.approx(expected, abs=1e-6)


def test_dim_local_scores_pair_every_y_with_every_local_feature() -> None:
    torch.manual_seed(0)
    method = METHODS.get("dim").build(DIGITS)
    local_map = torch.randn(3, 64, 2, 2)  # stage-2 map of the digits encoder
    y = torch.randn(3, 64)
    scores = method.local_scores(local_map, y)
    assert scores.shape == (3, 3, 4)
    m = method.local_map_embed(local_map)  # (3, width, 2, 2)
    g = method.local_global_embed(y)  # (3, width)
    for i in range(3):
        for j in range(3):
            for loc in range(4):
                expected = torch.dot(g[i], m[j, :, loc // 2, loc % 2])
                assert torch.allclose(scores[i, j, loc], expected, atol=1e-4)


def test_dim_prior_discriminator_is_updated_only_by_its_own_optimizer() -> None:
    """With the prior discriminator's learning rate at 0 its weights must not move, although
    the encoder's loss back-propagates through it (eq. 7: D only ascends its objective)."""
    torch.manual_seed(0)
    method = METHODS.get("dim").build(DIGITS, {"prior_lr": 0.0, "alpha": 0.5})
    before = [p.detach().clone() for p in method.prior_discriminator.parameters()]
    head_before = method.global_head[0].weight.detach().clone()
    x = torch.rand(8, *DIGITS.shape)
    logs = run_step(method, Batch(x, torch.zeros(8, dtype=torch.long)), 0)
    assert {"local_mi", "global_mi", "encoder_loss", "prior_loss"} <= set(logs)
    for p, p0 in zip(method.prior_discriminator.parameters(), before, strict=True):
        assert torch.equal(p, p0)
    assert not torch.equal(method.global_head[0].weight, head_before)


def test_dim_infonce_option_trains() -> None:
    torch.manual_seed(0)
    method = METHODS.get("dim").build(DIGITS, {"estimator": "infonce"})
    logs = run_step(method, Batch(torch.rand(8, *DIGITS.shape), torch.zeros(8).long()), 0)
    assert -1.0 < logs["local_mi"] <= math.log(8) + 1e-6  # InfoNCE is at most log B


@pytest.mark.parametrize(("gamma", "updates"), [(0.1, ["encoder", "prior"]), (0.0, ["encoder"])])
def test_dim_step_updates_the_encoder_then_the_prior_discriminator(gamma, updates) -> None:
    """One forward pass: the encoder's update, then D_phi's on the same sigma(Y) (eq. 7's
    two players); no D_phi update when prior matching is off."""
    torch.manual_seed(0)
    method = METHODS.get("dim").build(DIGITS, {"gamma": gamma})
    batch = Batch(torch.rand(8, *DIGITS.shape), torch.zeros(8).long())
    names = []
    for update in method.train_step(batch, 0):
        names.append(update.optimizer)
        update.loss()
        if update.optimizer == "encoder":  # D_phi is not trained by the encoder's loss
            assert not any(p.requires_grad for p in method.prior_discriminator.parameters())
    assert names == updates
    assert all(p.requires_grad for p in method.prior_discriminator.parameters())


# -- CPC ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "grid", "patch", "stride"), [(MNIST, 4, 8, 6), (DIGITS, 3, 4, 2)])
def test_cpc_default_patch_grid_shape_and_overlap(
    spec: DataSpec, grid: int, patch: int, stride: int
) -> None:
    hparams = METHODS.get("cpc").default_hparams(spec)
    assert (hparams["patch_size"], hparams["patch_stride"]) == (patch, stride)
    x = torch.rand(2, *spec.shape)
    patches = patch_grid(x, patch, stride)
    assert patches.shape == (2, grid, grid, 1, patch, patch)
    for i in range(grid):
        for j in range(grid):
            expected = x[:, :, i * stride : i * stride + patch, j * stride : j * stride + patch]
            assert torch.equal(patches[:, i, j], expected)
    overlap = patch - stride  # neighbours share this many pixel columns and rows
    assert overlap > 0
    assert torch.equal(patches[:, 0, 0, :, :, stride:], patches[:, 0, 1, :, :, :overlap])
    assert torch.equal(patches[:, 0, 0, :, stride:, :], patches[:, 1, 0, :, :overlap, :])


def test_cpc_context_at_row_i_ignores_rows_below() -> None:
    torch.manual_seed(0)
    context = ContextNetwork(16, blocks=3)
    z = torch.randn(2, 16, 5, 5)
    c = context(z)
    for i in range(5):
        perturbed = z.clone()
        perturbed[:, :, i + 1 :] += torch.randn_like(perturbed[:, :, i + 1 :])
        c2 = context(perturbed)
        assert torch.equal(c2[:, :, : i + 1], c[:, :, : i + 1])
        if i < 4:
            assert not torch.allclose(c2[:, :, i + 1 :], c[:, :, i + 1 :])


def test_cpc_context_gradient_reaches_rows_above_only() -> None:
    torch.manual_seed(0)
    context = ContextNetwork(16, blocks=3)
    z = torch.randn(1, 16, 5, 5, requires_grad=True)
    row = 2
    (grad,) = torch.autograd.grad(context(z)[:, :, row].sum(), z)
    per_row = grad.abs().sum(dim=(0, 1, 3))  # (5,)
    assert (per_row[row + 1 :] == 0).all()
    assert (per_row[: row + 1] > 0).all()  # three blocks reach three rows up


def _loop_loss(z: Tensor, context, predictors, steps: int) -> float:
    """L = mean_k L_k, L_k = -mean_p log softmax_q(W_k c_p . z_q)[p], q over every target
    at offset k in the batch, by explicit loops over (image, row, column)."""
    b, d, g, _ = z.shape
    with torch.no_grad():
        c = context(z)
    weight, bias = predictors.weight[:, :, 0, 0], predictors.bias  # (K d, d), (K d,)
    losses = []
    for k in range(1, steps + 1):
        w, w_bias = weight[(k - 1) * d : k * d], bias[(k - 1) * d : k * d]
        sources = [(n, i, j) for n in range(b) for i in range(g - k) for j in range(g)]
        total = 0.0
        for n, i, j in sources:
            pred = w @ c[n, :, i, j] + w_bias
            logits = torch.stack([pred @ z[m, :, u + k, v] for m, u, v in sources])
            total += -F.log_softmax(logits.detach(), 0)[sources.index((n, i, j))].item()
        losses.append(total / len(sources))
    return sum(losses) / steps


def test_cpc_prediction_loss_matches_a_loop_over_pairs() -> None:
    torch.manual_seed(0)
    method = METHODS.get("cpc").build(DIGITS, {"directions": 2})  # 3x3 grid, K = 2
    z = torch.randn(2, 128, 3, 3)
    top_down = _loop_loss(z, method.contexts[0], method.predictors[0], 2)
    # the second direction predicts bottom-up: the same computation on the turned grid
    bottom_up = _loop_loss(z.flip(2, 3), method.contexts[1], method.predictors[1], 2)
    with torch.no_grad():
        loss = method.prediction_loss(z).item()
    assert loss == pytest.approx((top_down + bottom_up) / 2, rel=1e-4)


@pytest.mark.parametrize("grid", [3, 4])
@pytest.mark.parametrize("directions", [1, 2, 4])
def test_cpc_batched_directions_equal_one_pass_per_direction(grid: int, directions: int) -> None:
    """The one batched pass over every direction (stacked per-direction weights, the
    row-causal convolution as one product over shifted copies) computes the loss and the
    gradients of the per-direction convolution modules."""
    from baselines.ssl.cpc import QUARTER_TURNS

    torch.manual_seed(0)
    method = METHODS.get("cpc").build(DIGITS, {"directions": directions}).double()
    for p in method.parameters():  # away from the zero-initialised defaults
        torch.nn.init.normal_(p, std=0.2)
    z = torch.randn(3, 128, grid, grid, dtype=torch.float64)
    params = list(method.contexts.parameters()) + list(method.predictors.parameters())
    looped = torch.stack(
        [
            method.direction_loss(torch.rot90(z, t, dims=(2, 3)), c, w)
            for t, c, w in zip(QUARTER_TURNS, method.contexts, method.predictors, strict=False)
        ]
    ).mean()
    batched = method.batched_loss(z)
    assert batched.item() == pytest.approx(looped.item(), rel=1e-12)
    for a, b in zip(torch.autograd.grad(looped, params), torch.autograd.grad(batched, params),
                    strict=True):  # fmt: skip
        assert torch.allclose(a, b, atol=1e-12)


def test_cpc_non_square_grid_turns_one_direction_at_a_time() -> None:
    torch.manual_seed(0)
    method = METHODS.get("cpc").build(DIGITS, {"directions": 4})
    z = torch.randn(2, 128, 3, 4)  # a wide image's grid: turned, it is 4 x 3
    assert torch.isfinite(method.prediction_loss(z))


def test_tap_conv_drops_only_taps_that_read_padding() -> None:
    """The shared encoder's convolution equals nn.Conv2d on every map size, forward and
    backward, and crops exactly where whole kernel rows/columns only meet zero padding."""
    from baselines.common.encoders import TapConv2d, live_taps

    assert live_taps((1, 1), (3, 3), (1, 1), (1, 1)) == (slice(1, 2), slice(1, 2))
    assert live_taps((2, 2), (3, 3), (2, 2), (1, 1)) == (slice(1, 3), slice(1, 3))
    assert live_taps((4, 4), (3, 3), (2, 2), (1, 1)) is None
    assert live_taps((2, 2), (3, 3), (1, 1), (1, 1)) is None  # every tap meets a pixel
    assert live_taps((8, 8), (3, 3), (1, 1), (1, 1)) is None
    torch.manual_seed(0)
    for size, stride in ((1, 1), (2, 2), (2, 1), (4, 2), (5, 1)):
        tap = TapConv2d(6, 5, 3, stride, 1, bias=False).double()
        plain = torch.nn.Conv2d(6, 5, 3, stride, 1, bias=False).double()
        plain.weight.data.copy_(tap.weight.data)
        x = torch.randn(4, 6, size, size, dtype=torch.float64, requires_grad=True)
        ours, theirs = tap(x), plain(x)
        assert torch.allclose(ours, theirs, atol=1e-12), (size, stride)
        g = torch.randn_like(ours)
        (gx, gw), (hx, hw) = (torch.autograd.grad(o, (x, m.weight), g)
                              for o, m in ((ours, tap), (theirs, plain)))  # fmt: skip
        assert torch.allclose(gx, hx, atol=1e-12) and torch.allclose(gw, hw, atol=1e-12)


def test_shared_encoder_is_channels_last_and_gives_the_nchw_features() -> None:
    from baselines.common import encoders

    torch.manual_seed(0)
    nhwc = encoders.shared_encoder(DIGITS)
    assert nhwc.channels_last
    assert nhwc.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    nchw = encoders.shared_encoder(DIGITS)
    nchw.load_state_dict(nhwc.state_dict())
    nchw.channels_last = False
    nchw.to(memory_format=torch.contiguous_format)
    x = torch.rand(5, *DIGITS.shape)
    assert torch.allclose(nhwc.eval()(x), nchw.eval()(x), atol=1e-5)


def test_cpc_encode_mean_pools_the_patch_embeddings() -> None:
    torch.manual_seed(0)
    method = METHODS.get("cpc").build(DIGITS).eval()
    x = torch.rand(3, *DIGITS.shape)
    patches = patch_grid(x, 4, 2).flatten(0, 2)  # (27, 1, 4, 4)
    expected = method.encoder(patches).view(3, 9, -1).mean(1)
    assert torch.allclose(method.encode(x), expected, atol=1e-5)


# -- MAE ---------------------------------------------------------------------------------------


def test_patchify_round_trip_and_order() -> None:
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 16, 4)
    assert torch.equal(tokens[0, 1], x[0, 0, 0:2, 2:4].flatten())  # row-major patches
    assert torch.equal(unpatchify(tokens, 2, 1, (4, 4)), x)


def test_sincos_position_embedding_values() -> None:
    emb = sincos_position_embedding(8, (2, 3))  # 2 rows, 3 columns; 2 frequencies per axis
    assert emb.shape == (6, 8)
    # position (row 1, column 2): [sin(2 w), cos(2 w)] for the column, then the row's
    omega = torch.tensor([1.0, 1.0 / 100.0])
    col = torch.cat([(2 * omega).sin(), (2 * omega).cos()])
    row = torch.cat([(1 * omega).sin(), (1 * omega).cos()])
    assert torch.allclose(emb[5], torch.cat([col, row]), atol=1e-6)


def test_random_masking_keeps_the_fraction_per_sample_at_random_positions() -> None:
    torch.manual_seed(0)
    b, n = 64, 49
    tokens = torch.arange(n, dtype=torch.float32).view(1, n, 1).expand(b, n, 3)
    visible, mask, ids_restore = random_masking(tokens, 0.75, torch.rand(b, n))
    keep = int(n * 0.25)
    assert visible.shape == (b, keep, 3)
    assert (mask.sum(1) == n - keep).all()
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    # the visible tokens are exactly the unmasked positions (tokens carry their index)
    for row in range(b):
        kept = sorted(visible[row, :, 0].long().tolist())
        assert kept == torch.nonzero(mask[row] == 0).flatten().tolist()
    assert len({tuple(m.tolist()) for m in mask}) == b  # different positions per sample
    # ids_restore undoes the shuffle: [visible, masked] gathered -> image order
    assert torch.equal(ids_restore.argsort(1).argsort(1), ids_restore)


def _hooked_forward(method) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    mae = method.encoder
    seen: dict[str, Tensor] = {}
    hooks = [
        mae.blocks[0].register_forward_pre_hook(lambda m, a: seen.setdefault("enc", a[0])),
        mae.norm.register_forward_hook(lambda m, a, out: seen.setdefault("latent", out)),
        mae.decoder_blocks[0].register_forward_pre_hook(lambda m, a: seen.setdefault("dec", a[0])),
    ]
    x = torch.rand(4, *DIGITS.shape)
    with torch.no_grad():
        _, mask = mae(x, 0.75, torch.rand(4, mae.num_patches))
        tokens = mae.embed(x)
    for hook in hooks:
        hook.remove()
    return tokens, mask, seen["enc"], seen["latent"], seen["dec"]


def test_mae_encoder_receives_only_the_visible_tokens() -> None:
    torch.manual_seed(0)
    method = METHODS.get("mae").build(DIGITS)  # patch 2: 16 patches, 4 visible
    tokens, mask, enc_in, _, _ = _hooked_forward(method)
    assert enc_in.shape == (4, 1 + 4, tokens.shape[2])  # cls + the visible quarter
    for row in range(4):
        assert torch.equal(enc_in[row, 0], method.encoder.cls_token[0, 0])
        # each encoder input token is the embedding of one unmasked position
        match = torch.cdist(enc_in[row, 1:], tokens[row]).argmin(1)
        assert torch.allclose(enc_in[row, 1:], tokens[row, match])
        assert sorted(match.tolist()) == torch.nonzero(mask[row] == 0).flatten().tolist()


def test_mae_decoder_sees_mask_tokens_exactly_at_the_masked_positions() -> None:
    torch.manual_seed(0)
    method = METHODS.get("mae").build(DIGITS)
    mae = method.encoder
    tokens, mask, enc_in, latent, dec_in = _hooked_forward(method)
    content = dec_in[:, 1:] - mae.decoder_pos_embed  # (4, 16, d_dec) without positions
    with torch.no_grad():
        projected = mae.decoder_embed(latent)  # (4, 1 + 4, d_dec)
    for row in range(4):
        masked = mask[row].bool()
        assert torch.allclose(content[row, masked], mae.mask_token[0, 0].expand(12, -1), atol=1e-6)
        # the encoded visible tokens are put back at the positions they came from
        positions = torch.cdist(enc_in[row, 1:], tokens[row]).argmin(1)
        assert torch.allclose(content[row, positions], projected[row, 1:], atol=1e-6)
        assert not torch.allclose(content[row, ~masked], mae.mask_token[0, 0].expand(4, -1))


def test_mae_loss_is_the_normalised_mse_on_masked_patches_only() -> None:
    torch.manual_seed(0)
    images = torch.rand(2, 1, 4, 4)
    pred = torch.randn(2, 4, 4)
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    total = 0.0
    for b, n in [(0, 0), (0, 3), (1, 1)]:
        target = patchify(images, 2)[b, n]
        target = (target - target.mean()) / math.sqrt(float(target.var()) + 1e-6)
        total += float(((pred[b, n] - target) ** 2).mean())
    assert float(masked_patch_loss(images, pred, mask, 2, True)) == pytest.approx(total / 3)
    changed = pred.clone()
    changed[mask == 0] += 5.0  # predictions of visible patches do not count
    assert float(masked_patch_loss(images, changed, mask, 2, True)) == pytest.approx(total / 3)


def test_mae_encode_uses_all_patches_without_randomness() -> None:
    torch.manual_seed(0)
    method = METHODS.get("mae").build(DIGITS).eval()
    seen = []
    hook = method.encoder.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    x = torch.rand(3, *DIGITS.shape)
    features = method.encode(x)
    hook.remove()
    assert seen[0].shape[1] == 1 + 16
    assert features.shape == (3, 64)
    assert torch.equal(features, method.encode(x))


def test_mae_learning_rate_warms_up_then_decays_by_a_cosine_in_the_loop() -> None:
    """MAE A.1: the loop warms up over warmup_fraction of the run, then a cosine to 0."""
    torch.manual_seed(0)
    method = METHODS.get("mae").build(DIGITS, {"warmup_fraction": 0.1, "lr": 1e-3})
    assert method.optimizer_settings["adamw"].schedule == "constant"  # run length unknown
    method.set_budget(1000, 10)  # 100 steps
    settings = method.optimizer_settings["adamw"]
    assert (settings.schedule, settings.warmup_steps, settings.final_lr_fraction) == (
        "warmup-cosine",
        10,
        0.0,
    )
    optimizer = method.optimizers["adamw"]
    for step, factor in ((0, 0.1), (9, 1.0), (55, 0.5)):
        run_step(method, Batch(torch.rand(4, *DIGITS.shape), torch.zeros(4).long()), step)
        assert factor == pytest.approx(lr_factor(step, "warmup-cosine", 10, 100))
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(1e-3 * factor)


def test_mae_mask_of_an_example_does_not_depend_on_the_batch_split() -> None:
    """The masking noise of an image is a function of its position in the global batch:
    the masks of a part of the batch (a micro-batch, a rank's share) are the whole's rows."""
    torch.manual_seed(0)
    method = METHODS.get("mae").build(DIGITS)
    x = torch.rand(8, *DIGITS.shape)
    seen: list[Tensor] = []
    hook = method.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[2]))

    def noise(positions: list[int]) -> Tensor:
        index = torch.tensor(positions)
        batch = Batch(x[index], torch.zeros(len(index)).long(), BatchNoise(5, index, 8))
        with torch.no_grad():
            next(method.train_step(batch, 0)).loss()
        return seen[-1]

    whole = noise(list(range(8)))
    assert whole.shape == (8, method.encoder.num_patches)
    for part in ([0, 1, 2, 3], [4, 5, 6, 7], [0, 2, 4, 6], [1, 3, 5, 7]):
        assert torch.equal(noise(part), whole[part])
    hook.remove()
