"""One run on many devices: ``torchrun --nproc_per_node=N -m bench train --method M ...``.

Data parallel without wrapping the method, so that a method's own ``train_step`` (a GAN's
alternating optimizers, a VQ-VAE's codebook) runs unchanged:

- every rank builds the same method (same seed; parameters broadcast from rank 0);
- each global batch (the protocol's ``batch_size``) is split across ranks;
- every optimizer registered with ``Method.add_optimizer`` averages gradients across ranks
  in a step pre-hook, one coalesced all-reduce per step, so ranks take identical steps;
- logged losses are averaged across ranks, so divergence is detected on every rank at once;
- buffers (BatchNorm statistics, EMA codebooks) are rank-local during training and
  broadcast from rank 0 at its end; a method that needs them synchronised during training
  calls :func:`all_reduce_mean` itself;
- rank 0 evaluates and writes the result; the other ranks wait.
"""

from __future__ import annotations

import dataclasses
import os
from itertools import chain
from typing import Any

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            dist.get_rank(),
            dist.get_world_size(),
            int(os.environ.get("LOCAL_RANK", dist.get_rank())),
        )
    return DistInfo()


def init_from_env() -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op without it)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return current()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def local_slice(indices: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's share of a global batch."""
    return indices[info.rank :: info.world_size] if info.enabled else indices


def broadcast_module(module: torch.nn.Module) -> None:
    """Make every rank's parameters and buffers rank 0's."""
    if not current().enabled:
        return
    with torch.no_grad():
        for tensor in chain(module.parameters(), module.buffers()):
            dist.broadcast(tensor.data, src=0)


def _average_gradients(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    grads = [
        p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None
    ]
    if not grads:
        return
    world = dist.get_world_size()
    for dtype in {g.dtype for g in grads}:
        same = [g for g in grads if g.dtype == dtype]
        flat = _flatten_dense_tensors(same)
        dist.all_reduce(flat)
        flat.div_(world)
        for grad, synced in zip(same, _unflatten_dense_tensors(flat, same), strict=True):
            grad.copy_(synced)


def attach_gradient_averaging(optimizers: dict[str, torch.optim.Optimizer]) -> None:
    if not current().enabled:
        return
    for optimizer in optimizers.values():
        optimizer.register_step_pre_hook(_average_gradients)


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average logged scalars across ranks (identity in a single process)."""
    if not current().enabled or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist(), strict=True))
