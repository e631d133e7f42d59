"""One run on many devices: ``torchrun --nproc_per_node=N -m bench train --method M ...``
(several nodes: the same command on each node with ``--nnodes`` and a rendezvous endpoint;
under Slurm, ``srun torchrun ...``; see README).

PyTorch's own data parallelism, not a hand-written replacement:

- every rank builds the same method (same seed) and DDP broadcasts rank 0's parameters;
- each global batch (the protocol's ``batch_size``) is split across ranks by position
  (:func:`local_positions`), and per-example random numbers come from
  :class:`bench.method.BatchNoise`, so each example gets the noise one process gives it;
- each registered optimiser's parameters are one
  :class:`torch.nn.parallel.DistributedDataParallel` group (:func:`wrap_group`; why per
  group: :mod:`bench.optim`), which averages gradients in buckets during backward;
  clipping happens after that, in the loop;
- batch normalisation uses the statistics of the global batch (:func:`sync_batchnorm`:
  ``torch.nn.SyncBatchNorm`` on GPUs, :class:`GlobalBatchNorm` with the same all-reduced
  moments on CPU, where torch's own refuses to run), so BN networks train as in one
  process; other buffers (EMA codebooks) are broadcast from rank 0 at the end of training;
- a loss over the whole batch (SimCLR's negatives) gathers embeddings with
  :func:`gather` (differentiable: each rank's gradient flows back to its own examples);
- logged losses are averaged across ranks, so divergence is detected on every rank at once;
- evaluation is sharded (:mod:`bench.evaluators`): each rank samples, extracts or scores its
  share of the chunks, rank 0 gathers and computes, and writes the result.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from itertools import chain
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


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


def local_positions(global_size: int, info: DistInfo | None = None) -> Tensor:
    """Positions (in the global batch) of this rank's share: rank r takes r, r + W, ..."""
    info = info or current()
    positions = torch.arange(global_size)
    return positions[info.rank :: info.world_size] if info.enabled else positions


def broadcast_module(module: nn.Module) -> None:
    """Make every rank's parameters and buffers rank 0's."""
    if not current().enabled:
        return
    with torch.no_grad():
        for tensor in chain(module.parameters(), module.buffers()):
            dist.broadcast(tensor.data, src=0)


def wrap_group(group: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` over one optimiser group (see :mod:`bench.optim`)."""
    kwargs: dict[str, Any] = dict(find_unused_parameters=True)  # the group holds no buffers
    if device.type == "cuda":
        kwargs["device_ids"] = [device.index if device.index is not None else 0]
    return nn.parallel.DistributedDataParallel(group, **kwargs)


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm over the global batch on CPU ranks (gloo): the per-channel sum and sum of
    squares are all-reduced with autograd (``torch.distributed.nn``), so forward and backward
    equal one process's BatchNorm on the whole batch (Ioffe & Szegedy 2015, Algorithm 1;
    what ``torch.nn.SyncBatchNorm`` does on GPUs). Outside training, or in one process, it is
    ``nn.BatchNorm2d``."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and current().enabled):
            return super().forward(x)
        with warnings.catch_warnings():  # deprecated for the private functional collectives
            warnings.simplefilter("ignore", FutureWarning)
            from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        # float64 moments: E[x^2] - E[x]^2 in float32 loses the variance to cancellation
        wide = x.double()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=wide.dtype, device=x.device)
        moments = torch.cat([count, wide.sum(dims), (wide * wide).sum(dims)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            moments = all_reduce(moments)
        n = moments[0]
        mean = moments[1 : 1 + x.shape[1]] / n
        var = (moments[1 + x.shape[1] :] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                momentum = 0.1 if self.momentum is None else self.momentum
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_mean.lerp_(mean.detach().to(x.dtype), momentum)
                self.running_var.lerp_(unbiased.detach().to(x.dtype), momentum)  # type: ignore[union-attr]
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
        shape = [1, -1] + [1] * (x.dim() - 2)
        y = ((wide - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)).to(x.dtype)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Swap every BatchNorm of ``module`` for its global-batch version under torchrun (the
    same parameters and buffers, so optimisers and checkpoints are unaffected)."""
    if not current().enabled:
        return module
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
            child, GlobalBatchNorm
        ):
            swapped = GlobalBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine,
                child.track_running_stats,
            )  # fmt: skip
            if child.affine:
                swapped.weight, swapped.bias = child.weight, child.bias
            swapped.running_mean = child.running_mean
            swapped.running_var = child.running_var
            swapped.num_batches_tracked = child.num_batches_tracked
            swapped.train(child.training)
            setattr(module, name, swapped)
        else:
            sync_batchnorm(child, device)
    return module


class _ContiguousGradient(torch.autograd.Function):
    """Identity forward; backward makes the incoming gradient contiguous."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.contiguous()


def gather(x: Tensor) -> Tensor:
    """Every rank's ``x`` concatenated along dim 0 in rank order, differentiable: the
    gradient of a loss every rank computes identically flows back to each rank's own part
    (identity in one process).

    The result's gradient is made contiguous before it reaches torch's all_gather backward,
    which allocates its receive buffers with ``empty_like`` of the incoming gradient (keeping
    a permuted gradient's strides, an einsum's or a rot90's) and fills them as if contiguous:
    without this, CPC's and DIM's encoder gradients on two gloo ranks were off by O(1);
    with it they equal one process's to 2e-6."""
    if not current().enabled:
        return x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from torch.distributed.nn.functional import all_gather

        parts = all_gather(x.contiguous())
    return _ContiguousGradient.apply(torch.cat(parts, dim=0))


def gather_tensor(x: Tensor) -> Tensor:
    """Every rank's ``x`` (same shape on every rank) concatenated along dim 0 in rank order,
    without autograd (evaluation)."""
    if not current().enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average logged scalars across ranks (identity in a single process)."""
    if not current().enabled or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist(), strict=True))


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object; identity in one process)."""
    if not current().enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
