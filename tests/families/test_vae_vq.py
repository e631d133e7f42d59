"""Vector quantisation and the VQ-VAE: nearest codes against brute force, the straight-through
gradient, the EMA codebook update against its formula, dead-code restarts; the code prior is
causal and normalised, its sampler batched; the VQ-VAE bound is below the exact
log-likelihood computed by enumerating every code grid; the two stages switch on the budget."""

from __future__ import annotations

import itertools

import pytest
import torch

from baselines.common.vq import VectorQuantizer, code_perplexity, nearest_codes
from baselines.vae.vq_vae import VQVAE, PixelCNNPrior, prior_log_prob
from bench.method import Batch, BatchNoise, DataSpec, from_levels, to_levels
from bench.optim import run_step
from bench.registry import METHODS

DIGITS = DataSpec("digits", 1, 8, 8, 17, 10)
#: a VQ-VAE small enough to enumerate: a 2x2 grid of 3 codes (81 code grids)
TINY = {
    "width": 8,
    "downsamples": 2,
    "num_codes": 3,
    "code_dim": 2,
    "prior_embedding_dim": 4,
    "prior_width": 8,
    "prior_blocks": 1,
    "prior_first_kernel": 3,
}


def test_nearest_codes_match_brute_force() -> None:
    torch.manual_seed(0)
    vectors, codebook = torch.randn(500, 5), torch.randn(17, 5)
    brute = torch.cdist(vectors, codebook).argmin(1)
    assert torch.equal(nearest_codes(vectors, codebook), brute)
    quantizer = VectorQuantizer(17, 5)
    quantizer.codebook.data.copy_(codebook)
    z_e = vectors.view(5, 10, 10, 5).permute(0, 3, 1, 2)  # (B, E, h, w)
    out = quantizer(z_e)
    assert torch.equal(out.codes.flatten(), brute)
    assert torch.allclose(out.z_q, codebook[brute].view(5, 10, 10, 5).permute(0, 3, 1, 2))


def test_straight_through_gradient_is_the_identity_and_losses_go_where_they_should() -> None:
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 3)
    z_e = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = quantizer(z_e)
    upstream = torch.randn_like(z_e)
    (grad,) = torch.autograd.grad((out.z_q * upstream).sum(), z_e)
    assert torch.equal(grad, upstream)
    e = quantizer.embed(out.codes)
    # the codebook term moves only the codes: d/de ||sg[z_e] - e||^2 = 2 (e - z_e)
    out.codebook_loss.sum().backward()
    assert z_e.grad is None
    expected = torch.zeros_like(quantizer.codebook)
    flat_codes = out.codes.flatten()
    diff = (e - z_e.detach()).permute(0, 2, 3, 1).reshape(-1, 3)
    expected.index_add_(0, flat_codes, 2 * diff)
    assert torch.allclose(quantizer.codebook.grad, expected, atol=1e-5)
    # the commitment term moves only the encoder output: 2 (z_e - e)
    quantizer.codebook.grad = None
    quantizer(z_e).commitment_loss.sum().backward()
    assert quantizer.codebook.grad is None
    assert torch.allclose(z_e.grad, 2 * (z_e - e).detach(), atol=1e-5)


def test_ema_codebook_update_follows_the_formula() -> None:
    torch.manual_seed(0)
    num_codes, decay, eps = 4, 0.9, 1e-5
    quantizer = VectorQuantizer(num_codes, 2, codebook="ema", ema_decay=decay, epsilon=eps)
    assert not quantizer.codebook.requires_grad
    size, code_sum = quantizer.ema_cluster_size.clone(), quantizer.ema_code_sum.clone()
    z_e = torch.randn(3, 2, 2, 2)
    codes = quantizer.quantise(z_e).flatten()
    before = quantizer.codebook.clone()
    quantizer(z_e, update=True)
    assert torch.equal(quantizer.codebook, before)  # recorded, applied after the update
    assert quantizer.apply_update() is not None
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 2)
    counts = torch.bincount(codes, minlength=num_codes).float()
    sums = torch.zeros(num_codes, 2).index_add_(0, codes, flat)
    size = decay * size + (1 - decay) * counts
    code_sum = decay * code_sum + (1 - decay) * sums
    smoothed = (size + eps) / (size.sum() + num_codes * eps) * size.sum()
    assert torch.allclose(quantizer.codebook, code_sum / smoothed[:, None], atol=1e-6)
    # without update (evaluation) nothing moves
    before = quantizer.codebook.clone()
    quantizer(z_e)
    assert quantizer.apply_update() is None
    assert torch.equal(quantizer.codebook, before)


def test_codebook_update_is_one_update_from_the_whole_batch_however_it_is_split() -> None:
    """Statistics recorded by two micro-batches (or ranks) of a step give the update one
    process gives the whole batch, restarts included (drawn from the step's seed)."""
    torch.manual_seed(0)
    z_e = torch.randn(8, 2, 2, 2)
    z_e[:, :, 0, 0] += 50.0  # far from every code: most codes stay unused and restart
    positions = torch.arange(8)
    results = []
    for parts in ([positions], [positions[0::2], positions[1::2]]):
        torch.manual_seed(1)
        quantizer = VectorQuantizer(6, 2, codebook="ema", dead_code_restart=True)
        for part in parts:
            quantizer(z_e[part], update=True, noise=BatchNoise(5, part, 8))
        perplexity = quantizer.apply_update()
        assert quantizer.apply_update() is None  # once per step
        results.append((perplexity, {k: v.clone() for k, v in quantizer.state_dict().items()}))
    (whole_perplexity, whole), (split_perplexity, split) = results
    assert whole_perplexity == pytest.approx(split_perplexity)
    for key, value in whole.items():
        assert torch.allclose(value, split[key], atol=1e-5), key
    restarted = (whole["usage"] == 1.0).nonzero().squeeze(1)
    assert len(restarted) > 0
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 2)
    assert (whole["codebook"][restarted][:, None] == flat[None]).all(-1).any(1).all()


def test_dead_codes_restart_at_encoder_outputs() -> None:
    torch.manual_seed(0)
    quantizer = VectorQuantizer(6, 2, dead_code_restart=True)
    quantizer.codebook.data = torch.tensor([[0.0, 0.0]] + [[100.0, 100.0]] * 5)
    z_e = 0.1 * torch.randn(4, 2, 3, 3)  # everything is nearest to code 0
    quantizer(z_e, update=True)
    quantizer.apply_update()
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 2)
    restarted = quantizer.codebook[1:]
    # every unused code now sits on one of the batch's encoder outputs
    assert (restarted[:, None] == flat[None]).all(-1).any(1).all()
    assert torch.equal(quantizer.codebook[0], torch.zeros(2))


def test_code_perplexity() -> None:
    assert code_perplexity(torch.tensor([5, 5, 5, 5])) == pytest.approx(4.0)
    assert code_perplexity(torch.tensor([7, 0, 0])) == pytest.approx(1.0)


def tiny_vqvae(**overrides) -> VQVAE:
    torch.manual_seed(0)
    method = METHODS.get("vq-vae").build(DIGITS, {**TINY, **overrides})
    assert isinstance(method, VQVAE)
    return method


def all_grids(num_codes: int, positions: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(num_codes), repeat=positions)))


def test_prior_is_normalised_over_every_code_grid() -> None:
    vqvae = tiny_vqvae()
    grids = all_grids(3, vqvae.positions)  # (81, 4)
    with torch.no_grad():
        total = prior_log_prob(vqvae.prior, grids).logsumexp(0)
    assert total.item() == pytest.approx(0.0, abs=1e-5)


def test_prior_is_causal_at_the_default_sizes() -> None:
    """Changing code j changes the logits of positions after j only, and every position sees
    every earlier one (no blind spot), on the default 4x4, 7x7 and 8x8 grids (8x8, 28x28 and
    32x32 images)."""
    for spec in (DIGITS, DataSpec("mnist", 1, 28, 28, 256, 10), DataSpec("c", 3, 32, 32, 256, 10)):
        defaults = VQVAE.default_hparams(spec)
        grid = (spec.height // 2 ** defaults["downsamples"],) * 2
        blocks, kernel = defaults["prior_blocks"], defaults["prior_first_kernel"]
        torch.manual_seed(0)
        prior = PixelCNNPrior(16, grid, 8, 16, blocks, kernel).double()
        positions = grid[0] * grid[1]
        embedded = torch.randn(2, positions, 8, dtype=torch.float64, requires_grad=True)
        logits = prior.network(embedded.view(2, *grid, 8).permute(0, 3, 1, 2)).flatten(2)
        for i in range(positions):
            (grad,) = torch.autograd.grad(logits[:, :, i].sum(), embedded, retain_graph=True)
            seen = (grad != 0).any(0).any(-1)
            assert torch.equal(seen, torch.arange(positions) < i), (grid, i)


def test_cropped_sampling_conditional_equals_the_full_network() -> None:
    torch.manual_seed(0)
    prior = PixelCNNPrior(10, (4, 5), 6, 12, 2, 5)
    codes = torch.randint(0, 10, (3, 20))
    full = prior(codes).log_softmax(-1)
    for position in range(20):
        cropped = prior.conditional_log_probs(codes, position)
        assert torch.allclose(cropped, full[:, position], atol=1e-5), position


def test_vqvae_bound_is_below_the_exact_log_likelihood() -> None:
    """log P(x) = logsumexp_c [log p(c) + log p(x | c)] over all 81 code grids; the bound
    keeps only the term of the encoder's code grid."""
    vqvae = tiny_vqvae()
    x = from_levels(
        torch.randint(0, 17, (5, 1, 8, 8), generator=torch.Generator().manual_seed(1)), 17
    )
    for step in range(3):  # a few steps, so the decoder is not uniform
        run_step(vqvae, Batch(x, torch.zeros(5)), step)
    vqvae.eval()
    grids = all_grids(3, vqvae.positions)
    levels = to_levels(x, 17)
    with torch.no_grad():
        bound = vqvae.log_likelihood(x)
        decoded = vqvae.decode_codes(grids)  # (81, P, 8, 8)
        log_px_given_c = torch.stack(
            [
                vqvae.distribution.log_prob(decoded, levels[i : i + 1].expand(81, -1, -1, -1))
                for i in range(5)
            ]
        )  # (5, 81)
        exact = (log_px_given_c + prior_log_prob(vqvae.prior, grids)[None]).logsumexp(1)
        terms = vqvae.bound_terms(x)
    assert (bound <= exact + 1e-4).all() and (bound < 0).all()
    # and it is exactly the encoder's term of that sum
    index = (terms["codes"][:, None, :] == grids[None]).all(-1).float().argmax(1)
    assert torch.allclose(
        bound, (log_px_given_c + prior_log_prob(vqvae.prior, grids)[None])[range(5), index]
    )
    settings = vqvae.likelihood_settings()
    assert 1 <= settings["test_used_codes"] <= 3
    assert settings["uniform_prior_bpd"] > 0


def test_prior_sampling_is_batched_and_a_function_of_the_generator() -> None:
    vqvae = tiny_vqvae()
    vqvae.eval()
    batch_sizes = []
    # the embedding runs once per prior evaluation
    hook = vqvae.prior.embedding.register_forward_hook(
        lambda m, args, out: batch_sizes.append(len(args[0]))
    )
    samples = vqvae.sample(7, torch.Generator().manual_seed(0))
    hook.remove()
    assert batch_sizes == [7] * vqvae.positions  # one prior call per code position, all 7 at once
    assert vqvae.last_nfe == vqvae.positions + 1
    assert samples.shape == (7, 1, 8, 8) and 0 <= samples.min() and samples.max() <= 1
    assert torch.equal(samples, vqvae.sample(7, torch.Generator().manual_seed(0)))
    for pixels in ("mean", "draw"):
        other = vqvae.sample(7, torch.Generator().manual_seed(0), pixels=pixels)
        assert other.shape == samples.shape


def test_stages_switch_on_the_budget_and_the_prior_stage_freezes_the_autoencoder() -> None:
    vqvae = tiny_vqvae(prior_fraction=0.5)
    assert vqvae.prior_start_images > 10**9  # no budget (outside a training loop): stage 1
    vqvae.set_budget(640, 64)  # as the training loop does: the prior from image 320 on
    x = from_levels(torch.randint(0, 17, (64, 1, 8, 8)), 17)
    batch = Batch(x, torch.zeros(64))
    logs = [run_step(vqvae, batch, step) for step in range(5)]
    assert all("perplexity" in log and "prior_loss" not in log for log in logs)
    assert all("autoencoder_loss" in log for log in logs)
    autoencoder = {k: v.clone() for k, v in vqvae.state_dict().items() if not k.startswith("prior")}
    prior = {k: v.clone() for k, v in vqvae.prior.state_dict().items()}
    log = run_step(vqvae, batch, 5)
    assert set(log) == {"prior_loss"}
    for key, value in vqvae.state_dict().items():
        if not key.startswith("prior"):
            assert torch.equal(value, autoencoder[key]), key
    assert any(not torch.equal(v, prior[k]) for k, v in vqvae.prior.state_dict().items())


@pytest.mark.parametrize("overrides", [{"codebook": "ema"}, {"dead_code_restart": True}])
def test_vqvae_options_train(overrides: dict) -> None:
    vqvae = tiny_vqvae(**overrides, num_codes=8)
    x = from_levels(torch.randint(0, 17, (16, 1, 8, 8)), 17)
    log = run_step(vqvae, Batch(x, torch.zeros(16)), 0)
    assert torch.isfinite(torch.tensor(log["autoencoder_loss"]))
    assert 1.0 <= log["perplexity"] <= 8.0 and 1.0 <= vqvae.last_perplexity <= 8.0
    vqvae.prepare(x, torch.zeros(16), x)
    usage = vqvae.sample_settings()
    assert 1 <= usage["train_used_codes"] <= 8 and usage["num_codes"] == 8
