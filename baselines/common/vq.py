"""Vector quantisation (van den Oord et al. 2017, "Neural Discrete Representation Learning"),
shared by ``vq-vae`` and ``vqgan``.

- Nearest-neighbour assignment (eq. 1-2): k(x) = argmin_j ||z_e(x) - e_j||_2, z_q = e_k.
- Straight-through gradient (section 3.2): the decoder's gradient at z_q is copied to z_e,
  z_q = z_e + sg[e_k - z_e], so the forward value is e_k and d z_q / d z_e = I.
- The two codebook terms of eq. 3, returned per image (summed over positions and code
  dimensions): the codebook loss ||sg[z_e] - e||^2 (moves the codes) and the commitment loss
  ||z_e - sg[e]||^2 (the caller multiplies it by beta = 0.25).
- EMA codebook (appendix A.1), ``codebook="ema"``: N_k <- g N_k + (1 - g) n_k,
  m_k <- g m_k + (1 - g) sum_{i: k(i) = k} z_e,i, e_k = m_k / N_k with decay g = 0.99 and
  Laplace-smoothed counts N_k <- (N_k + eps) / (N + K eps) N (as in the authors' Sonnet
  code); the codebook is then not a gradient parameter and the codebook loss is not used.
- Dead-code restarts (an option, not in the paper; Dhariwal et al. 2020, Jukebox): a code
  whose running usage (EMA of its assignment count per batch) falls below a threshold is
  re-initialised to a random encoder output of the current batch.

The codebook moves once per training step, from the whole global batch. A training forward
pass (``update=True``, inside the loss closure) only RECORDS the batch's assignment counts
n_k and code sums (and, for restarts, its encoder outputs); ``apply_update``, called by the
method after the step's update, applies the EMA (and the restarts) from everything recorded
since the last call: every accumulated micro-batch of the step and, under torchrun, every
rank's statistics, summed with ``torch.distributed.all_reduce``. So every rank applies the
update one process applies for the whole batch, and the codebook buffers stay identical on
all ranks. The step's loss therefore quantises with the codebook as it was before the step
(quantise, then move the embeddings: the order of Sonnet's ``VectorQuantizerEMA``). A
restart draws its encoder outputs uniformly from the global batch with a generator seeded
from the step's noise seed (:func:`bench.seeds.derive` ``(seed, "vq-dead-code-restart")``),
the same draw on every rank; each rank fills in the picks its own examples hold and a sum
over ranks completes them.

Codebook usage is reported as the perplexity exp(H(p)) of the average assignment p over a
batch (K when every code is used equally, 1 when one code takes everything).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from bench import distributed, seeds
from bench.errors import GenbenchError
from bench.method import BatchNoise

CODEBOOK_UPDATES = ("loss", "ema")
CODEBOOK_INITS = ("uniform_unit_scaling", "taming")


@dataclasses.dataclass
class Quantised:
    """The quantiser's outputs for a batch of encoder outputs z_e (B, E, h, w)."""

    #: z_e + sg[e_k - z_e]: the codes' values with the straight-through gradient (B, E, h, w)
    z_q: Tensor
    #: code indices (B, h, w)
    codes: Tensor
    #: ||sg[z_e] - e||^2 per image, summed over positions and dimensions (B,)
    codebook_loss: Tensor
    #: ||z_e - sg[e]||^2 per image (B,) (without beta)
    commitment_loss: Tensor
    #: exp(entropy of the average one-hot assignment over the batch)
    perplexity: float


@dataclasses.dataclass
class _Pending:
    """Assignment statistics recorded since the last codebook update (one training step)."""

    #: assignments per code n_k (K,) and the sums of the encoder outputs per code (K, E)
    counts: Tensor
    sums: Tensor
    #: the global batch's size and the step's noise seed (None: a batch built by hand)
    global_size: int
    seed: int | None
    #: for restarts: (positions in the global batch (n,), encoder outputs (n, h w, E)) per
    #: recorded batch
    parts: list[tuple[Tensor, Tensor]]


def nearest_codes(vectors: Tensor, codebook: Tensor) -> Tensor:
    """(N, E) vectors, (K, E) codebook -> (N,) index of the nearest code (Euclidean), by
    ||z||^2 - 2 z.e + ||e||^2 (the ||z||^2 term does not change the argmin)."""
    distances = codebook.pow(2).sum(1)[None, :] - 2.0 * vectors @ codebook.t()  # (N, K)
    return distances.argmin(1)


def straight_through(z_e: Tensor, e: Tensor) -> Tensor:
    """Forward value e, gradient with respect to z_e the identity (section 3.2)."""
    return z_e + (e - z_e).detach()


def code_perplexity(counts: Tensor) -> float:
    """exp(H(p)) of the assignment distribution p = counts / sum(counts)."""
    probs = counts.float() / counts.sum().clamp(min=1)
    entropy = -(probs * torch.log(probs.clamp(min=1e-12))).sum()
    return float(entropy.exp())


class VectorQuantizer(nn.Module):
    """A codebook of K vectors of dimension E with nearest-neighbour quantisation."""

    ema_cluster_size: Tensor
    ema_code_sum: Tensor
    usage: Tensor

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        codebook: str = "loss",
        ema_decay: float = 0.99,
        epsilon: float = 1e-5,
        dead_code_restart: bool = False,
        dead_code_threshold: float = 1.0,
        init: str = "uniform_unit_scaling",
    ) -> None:
        super().__init__()
        if codebook not in CODEBOOK_UPDATES:
            raise GenbenchError(
                f"unknown codebook update {codebook!r}. Valid: {', '.join(CODEBOOK_UPDATES)}"
            )
        self.num_codes, self.code_dim = num_codes, code_dim
        self.update_rule, self.ema_decay, self.epsilon = codebook, ema_decay, epsilon
        self.dead_code_restart, self.dead_code_threshold = dead_code_restart, dead_code_threshold
        if init not in CODEBOOK_INITS:
            raise GenbenchError(
                f"unknown codebook init {init!r}. Valid: {', '.join(CODEBOOK_INITS)}"
            )
        # the VQ-VAE authors' Sonnet code: uniform_unit_scaling, U(-sqrt(3/E), sqrt(3/E)) (codes
        # of about unit norm); taming-transformers: U(-1/K, 1/K)
        bound = math.sqrt(3.0 / code_dim) if init == "uniform_unit_scaling" else 1.0 / num_codes
        initial = torch.empty(num_codes, code_dim).uniform_(-bound, bound)
        self.codebook = nn.Parameter(initial, requires_grad=codebook == "loss")
        # the EMA starts at one assignment per code at its initial value: an unused code then
        # stays where it was initialised instead of drifting to m_k / eps
        self.register_buffer("ema_cluster_size", torch.ones(num_codes))
        self.register_buffer("ema_code_sum", initial.clone())
        # running assignments per batch of every code (for restarts and the usage report);
        # starts at the threshold, so that codes unused from the first batch on are restarted
        self.register_buffer("usage", torch.full((num_codes,), float(dead_code_threshold)))
        self._pending: _Pending | None = None  # statistics awaiting ``apply_update``

    def quantise(self, z_e: Tensor) -> Tensor:
        """(B, E, h, w) -> code indices (B, h, w)."""
        batch, dim, height, width = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, dim)  # (B*h*w, E)
        return nearest_codes(flat, self.codebook).view(batch, height, width)

    def embed(self, codes: Tensor) -> Tensor:
        """Code indices (B, h, w) -> code vectors (B, E, h, w)."""
        return self.codebook[codes].permute(0, 3, 1, 2)

    def forward(
        self, z_e: Tensor, update: bool = False, noise: BatchNoise | None = None
    ) -> Quantised:
        """Quantise z_e (B, E, h, w) with the current codebook; with ``update`` (training),
        also record this batch's assignment statistics for :meth:`apply_update`. ``noise``:
        the training batch's :class:`BatchNoise` (its examples' positions in the global batch
        and the step's seed, for restarts); None for a batch of its own."""
        codes = self.quantise(z_e)
        counts = torch.bincount(codes.flatten(), minlength=self.num_codes).float()
        if update:
            self._record(z_e.detach(), codes, counts, noise)
        e = self.embed(codes)
        squared = (z_e.detach() - e).pow(2).flatten(1).sum(1)  # the codebook term
        commitment = (z_e - e.detach()).pow(2).flatten(1).sum(1)
        return Quantised(
            straight_through(z_e, e), codes, squared, commitment, code_perplexity(counts)
        )

    @torch.no_grad()
    def _record(self, z_e: Tensor, codes: Tensor, counts: Tensor, noise: BatchNoise | None) -> None:
        batch = len(z_e)
        flat = z_e.float().permute(0, 2, 3, 1).reshape(-1, self.code_dim)  # (N, E)
        one_hot = torch.zeros(len(flat), self.num_codes, device=flat.device)
        one_hot.scatter_(1, codes.flatten()[:, None], 1.0)
        with torch.autocast(flat.device.type, enabled=False):  # fp32 sums under bf16 too
            sums = one_hot.t() @ flat  # (K, E)
        pending = self._pending
        if pending is None:
            size = noise.global_size if noise is not None else 0
            seed = noise.seed if noise is not None else None
            pending = _Pending(torch.zeros_like(counts), torch.zeros_like(sums), size, seed, [])
            self._pending = pending
        pending.counts += counts
        pending.sums += sums
        if noise is not None:
            positions = noise.positions.to(flat.device)
        else:  # a batch of its own: its examples follow those recorded before
            positions = torch.arange(batch, device=flat.device) + pending.global_size
            pending.global_size += batch
        if self.dead_code_restart:
            pending.parts.append((positions, flat.view(batch, -1, self.code_dim)))

    @torch.no_grad()
    def apply_update(self) -> float | None:
        """Apply the statistics recorded since the last call (one training step: every
        micro-batch, all-reduced over ranks under torchrun): the usage EMA, the EMA codebook
        and the dead-code restarts. Returns the step's perplexity over the global batch, or
        None when nothing was recorded (a later micro-batch of the same step)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        counts, sums = pending.counts, pending.sums
        if distributed.current().enabled:  # the global batch's statistics on every rank
            stats = torch.cat([counts[:, None], sums], 1)
            dist.all_reduce(stats)
            counts, sums = stats[:, 0], stats[:, 1:]
        self.usage.lerp_(counts, 1.0 - self.ema_decay)
        if self.update_rule == "ema":
            self.ema_cluster_size.lerp_(counts, 1.0 - self.ema_decay)
            self.ema_code_sum.lerp_(sums, 1.0 - self.ema_decay)
            total = self.ema_cluster_size.sum()
            smoothed = (
                (self.ema_cluster_size + self.epsilon)
                / (total + self.num_codes * self.epsilon)
                * total
            )
            self.codebook.data.copy_(self.ema_code_sum / smoothed[:, None])
        if self.dead_code_restart:
            dead = (self.usage < self.dead_code_threshold).nonzero().squeeze(1)
            if len(dead):  # the same decision on every rank: usage is identical
                picks = self._restart_vectors(pending, len(dead))
                self.codebook.data[dead] = picks
                self.ema_code_sum[dead] = picks
                self.ema_cluster_size[dead] = 1.0
                self.usage[dead] = self.dead_code_threshold
        return code_perplexity(counts)

    def _restart_vectors(self, pending: _Pending, count: int) -> Tensor:
        """``count`` encoder outputs drawn uniformly from the global batch's N h w vectors
        (vector i: example i // (h w), position i % (h w)), by a generator seeded from the
        step's seed (the global RNG for a batch built by hand): the same draw on every rank;
        each rank fills in the vectors its examples hold, a sum over ranks completes them."""
        per_example = pending.parts[0][1].shape[1]
        device = self.codebook.device
        generator = None
        if pending.seed is not None:
            seed = seeds.derive(pending.seed, "vq-dead-code-restart")
            generator = torch.Generator().manual_seed(seed)
        index = torch.randint(pending.global_size * per_example, (count,), generator=generator)
        index = index.to(device)
        example, where = index // per_example, index % per_example
        picks = torch.zeros(count, self.code_dim, device=device)
        for positions, vectors in pending.parts:
            row = torch.full((pending.global_size,), -1, dtype=torch.long, device=device)
            row[positions] = torch.arange(len(positions), device=device)
            held = row[example]
            mine = held >= 0
            picks[mine] = vectors[held[mine], where[mine]].to(picks.dtype)
        if distributed.current().enabled:
            dist.all_reduce(picks)
        return picks
