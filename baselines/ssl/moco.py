"""MoCo v2 (He, Fan, Wu, Xie & Girshick 2020, "Momentum Contrast for Unsupervised Visual
Representation Learning"; Chen, Fan, Girshick & He 2020, "Improved Baselines with Momentum
Contrastive Learning", arXiv:2003.04297).

A query encoder f_q (the shared ResNet and an MLP head, v2's Linear-ReLU-Linear) and a key
encoder f_k of the same architecture. For a batch, two augmented views x_q, x_k of each image
(:mod:`baselines.ssl.augment`, v2's recipe: crop, colour jitter, grayscale, blur):

    q = normalize(f_q(x_q)),  k+ = normalize(f_k(x_k))          (no gradient through f_k)
    L_q = -log exp(q.k+ / tau) / (exp(q.k+ / tau) + sum_{i=1..K} exp(q.k_i / tau))   (eq. 1)

with the K negatives k_i a queue of the keys of the previous batches
(:func:`baselines.ssl.losses.info_nce`). After each step the batch's keys are enqueued and the
oldest dequeued: a FIFO ring buffer ``queue`` (K, d) with a write pointer ``queue_ptr``, both
registered buffers so that checkpoints carry them. On several ranks the keys of every rank
are gathered before they are enqueued (the official code's ``concat_all_gather``) and put in
their order in the global batch, so every rank's queue holds what one process's holds. After
each optimiser step of the query encoder (code after the ``yield`` of ``train_step``; once
per step, not once per accumulated micro-batch) the key encoder follows it by the momentum
update (eq. 2) over ALL its parameters (encoder and head): theta_k <- m theta_k + (1 - m)
theta_q. The official code updates just before computing the next batch's keys: the same
sequence, since its first update, before any optimiser step, is the identity on a copy of
the query encoder. Both views come from per-example draws of the batch
(:func:`baselines.ssl.augment.view_draws`). As in the official code, the key encoder
runs in training mode: its batch norm normalises each key batch with that batch's statistics;
its running statistics are its own (accumulated by those forward passes, neither copied nor
averaged from the query encoder) and are never read. The loss is v2's asymmetric one (queries
from one view, keys from the other); the representation is the query encoder's pooled
features.

Defaults and departures (v2: tau = 0.2, K = 65,536, m = 0.999, 128-d MLP head, SGD):
- tau = 0.2 and a 128-d projection with hidden width = the encoder's feature width: v2's;
- queue size K per data scale: v2's 65,536 keys are 5% of ImageNet's 1.28M images and span
  256 batches. On the small train splits here a queue that holds a large share of the data
  keeps stale keys and many keys of the query's own image (false negatives); K = 256 at 8x8
  (17% of the 1,500 digits), 1,024 at 28x28 (25% of mnist5k's 4,000; 2% of MNIST), 4,096 at
  32x32 (8% of CIFAR-10, the value of MoCo's own CIFAR-10 demo);
- momentum m per data scale: 0.999 averages over ~1,000 steps, the whole quick run (60,000
  images / 64 = 938 steps), so the keys would come from a nearly untrained encoder: m = 0.99
  (a 100-step window, as in MoCo's CIFAR-10 demo) at 8x8 and 28x28, v2's 0.999 at 32x32 where
  the standard protocol runs ~39,000 steps;
- optimiser: AdamW with warm-up and cosine decay, applied by the training loop (shared with
  SimCLR, :class:`baselines.ssl.simclr.ContrastiveMethod`) instead of SGD(0.03, momentum
  0.9), which needs hundreds of epochs;
- shuffled batch norm (section 3.3) is not implemented: in a batch the query and its
  positive key are normalised with statistics of the same images, while the queue's
  negatives were normalised with other batches' statistics, a difference the network can
  exploit as a shortcut (the paper's "cheating"); MoCo's own single-GPU CIFAR-10 demo
  emulates the shuffle with split batch norm. A known departure: the quick probes (mnist5k
  linear 0.947 against supervised 0.980) show no sign of that shortcut at these budgets.
  On several ranks the training loop makes every batch norm global-batch BN
  (:func:`bench.distributed.sync_batchnorm`), so the statistics are one process's, not
  the per-GPU ones the shuffle was designed against.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.ssl.base import positions
from baselines.ssl.losses import info_nce
from baselines.ssl.simclr import ContrastiveMethod, projection_head
from bench.distributed import gather_tensor
from bench.method import Batch, DataSpec, Update
from bench.registry import register_method

#: queue size (number of negative keys) per data scale (see the module docstring)
QUEUE_SIZE = {"8x8": 256, "28x28": 1024, "32x32": 4096}
#: momentum of the key encoder per data scale
MOMENTUM = {"8x8": 0.99, "28x28": 0.99, "32x32": 0.999}


@register_method("moco")
class MoCo(ContrastiveMethod):
    summary = "MoCo v2: momentum key encoder, queue of negatives, InfoNCE (He et al. 2020)"

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {
            "temperature": 0.2,
            "queue_size": QUEUE_SIZE.get(spec.scale, 4096),
            "momentum": MOMENTUM.get(spec.scale, 0.999),
            "projection_dim": 128,
            **cls.optimisation_hparams(spec),
        }

    def __init__(
        self,
        spec: DataSpec,
        temperature: float,
        queue_size: int,
        momentum: float,
        projection_dim: int,
        **optimisation: Any,
    ) -> None:
        super().__init__(spec, **optimisation)
        self.temperature, self.momentum = temperature, momentum
        self.head = projection_head(self.encoder.feature_dim, projection_dim, batch_norm=False)
        # the key encoder starts as a copy of the query encoder and never gets gradients
        self.key_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.key_head = copy.deepcopy(self.head).requires_grad_(False)
        # random unit keys until real ones arrive, as in the official code
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, projection_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.setup_optimizer(self.query_parameters())
        #: the last step whose momentum update was applied (one per step, see train_step)
        self._momentum_step: int | None = None

    def query_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters()) + list(self.head.parameters())

    def key_parameters(self) -> list[nn.Parameter]:
        return list(self.key_encoder.parameters()) + list(self.key_head.parameters())

    @torch.no_grad()
    def momentum_update(self) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q over every parameter (eq. 2)."""
        for key, query in zip(self.key_parameters(), self.query_parameters(), strict=True):
            key.mul_(self.momentum).add_(query.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` (B, d) over the oldest entries of the ring buffer (FIFO), wrapping
        around its end; of more keys than the queue holds, the last ones stay."""
        size, count = self.queue.shape[0], len(keys)
        ptr, skipped = int(self.queue_ptr), max(0, count - size)
        index = (ptr + skipped + torch.arange(count - skipped, device=keys.device)) % size
        self.queue[index] = keys[skipped:].to(self.queue.dtype)  # bf16 keys under autocast
        self.queue_ptr.fill_((ptr + count) % size)

    def train_step(self, batch: Batch, step: int) -> Iterator[Update]:
        view_q, view_k = self.two_views(batch).chunk(2)  # 2 x (B, C, H, W)
        keys: list[Tensor] = []

        def loss() -> Tensor:
            query = F.normalize(self.head(self.encoder(view_q)), dim=1)  # (B, d)
            with torch.no_grad():
                key = F.normalize(self.key_head(self.key_encoder(view_k)), dim=1)  # (B, d)
            keys.append(key)
            # 1 + K logits per query: its key and the queue (the keys of previous steps)
            return info_nce(query, key, self.queue.clone(), self.temperature)

        yield Update("adamw", loss)
        # the query encoder has been updated. The loop runs this code for each of a step's
        # accumulated micro-batches: the momentum update once, the enqueue of each one's keys
        if self._momentum_step != step:
            self.momentum_update()
            self._momentum_step = step
        # every rank's keys, in their order in the global batch (micro-batches come in order)
        key = keys[-1]
        order = gather_tensor(positions(batch).to(key.device)).argsort()
        self.enqueue(gather_tensor(key)[order])
