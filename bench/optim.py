"""The loop owns optimisation: what happens around every :class:`~bench.method.Update` a
method's ``train_step`` yields (the shape of NVlabs/edm's ``training_loop``).

For one training step the loop hands the method one :class:`~bench.method.Batch` per
micro-batch (``train.accumulate`` of them per rank) and advances the ``train_step``
generators in lockstep. For each update they yield (they must name the same optimiser) it

1. zero-grads the optimiser's parameters;
2. calls each micro-batch's loss closure (under autocast when ``--precision bf16``), scales
   it by the micro-batch's share of the rank's batch and backpropagates it; under torchrun the
   closure runs inside that optimiser group's ``DistributedDataParallel`` and every
   micro-batch but the last runs in ``no_sync()``, so DDP's bucketed all-reduce overlaps the
   last backward pass and averages the gradient across ranks exactly once;
3. clips the global gradient norm (after the average: every rank clips the same gradient,
   the one one process would have) and logs it;
4. sets the learning rate from the one schedule function, :func:`lr_factor`, and steps.

The loss scaling makes ``accumulate`` micro-batches on ``world_size`` ranks compute the
gradient of the mean loss over the global batch, the gradient one process computes on the
whole batch (up to float summation order), for every loss that is a mean over examples.

**Why a DDP per optimiser group, and why it wraps a closure.** DDP synchronises the
gradients of the parameters of the module whose ``forward`` produced the loss. A GAN's
generator update backpropagates through the critic without training it, and its critic
update runs the generator without gradients; a VQ-VAE's prior trains on codes of a frozen
autoencoder. Wrapping the method as one module would make every update all-reduce every
parameter (and need ``requires_grad`` toggling DDP forbids after construction). Instead each
registered optimiser's parameters form one :class:`_Group` module (a ``ParameterList`` of
the very same ``Parameter`` objects, so checkpoints and the method's own attributes are
unchanged) wrapped in its own DDP, whose ``forward`` simply calls the update's loss closure.
The closure runs the method's networks as usual; DDP's autograd hooks sit on the group's
parameters, so exactly the trained parameters are reduced, bucketed and overlapped with
backward. Gradients that reach another group's parameters in passing are discarded by that
group's own zero_grad before its own update. ``find_unused_parameters`` is on, so an update
that leaves some of its group's parameters unused in a step (a class embedding, a codebook
kept by EMA) still synchronises.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from bench import distributed
from bench.errors import GenbenchError
from bench.method import SCHEDULES, Batch, Method, OptimizerSettings, Update


def lr_factor(
    step: int,
    schedule: str,
    warmup_steps: int = 0,
    total_steps: int = 0,
    final_fraction: float = 0.0,
) -> float:
    """The learning rate of optimiser step ``step`` (0-based) as a fraction of the base rate.

    - ``constant``: 1.
    - ``warmup``: linear warm-up, (step + 1) / warmup_steps, then constant (Goyal et al. 2017;
      DDPM appendix B; Glow).
    - ``warmup-cosine``: the same warm-up, then half a cosine from 1 down to
      ``final_fraction`` at ``total_steps`` (Loshchilov & Hutter 2017; SimCLR section B.1;
      MAE appendix A.1)."""
    if schedule not in SCHEDULES:
        raise GenbenchError(f"unknown schedule {schedule!r}. Valid: {', '.join(SCHEDULES)}")
    if schedule == "constant":
        return 1.0
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "warmup":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


def autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    """bf16 autocast on any device (CPU included); nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


class _Group(nn.Module):
    """One optimiser's parameters as a module, so that DDP can own exactly them; its forward
    calls the update's loss closure (see the module docstring)."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        super().__init__()
        self.members = nn.ParameterList(params)

    def forward(self, closure: Callable[[], Any]) -> Any:
        return closure()


@dataclasses.dataclass
class _OptimizerGroup:
    name: str
    optimizer: torch.optim.Optimizer
    settings: OptimizerSettings
    params: list[nn.Parameter]
    ddp: nn.Module | None = None

    def call(self, closure: Callable[[], Any]) -> Any:
        return self.ddp(closure) if self.ddp is not None else closure()

    def no_sync(self) -> AbstractContextManager[Any]:
        if self.ddp is None:
            return nullcontext()
        return self.ddp.no_sync()  # type: ignore[operator]


def _split(out: Any, where: str) -> tuple[Tensor, dict[str, Any]]:
    loss, logs = (out[0], dict(out[1])) if isinstance(out, tuple) else (out, {})
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise GenbenchError(f"{where}: a loss closure must return a scalar tensor")
    return loss.reshape(()), logs


class Optimisation:
    """Applies the updates a method yields; one per training run (see the module docstring)."""

    def __init__(
        self, method: Method, device: torch.device, precision: str = "fp32", accumulate: int = 1
    ) -> None:
        if accumulate < 1:
            raise GenbenchError(f"train.accumulate must be >= 1, got {accumulate}")
        self.method, self.device, self.precision = method, device, precision
        self.accumulate = accumulate
        info = distributed.current()
        self.groups: dict[str, _OptimizerGroup] = {}
        #: the optimisers switched to their fused kernel (:func:`fuse_optimizer`)
        self.fused: list[str] = []
        for name, optimizer in method.optimizers.items():
            settings = method.optimizer_settings.get(name, OptimizerSettings())
            params = [p for g in optimizer.param_groups for p in g["params"]]
            if fuse_optimizer(optimizer):
                self.fused.append(name)
            group = _OptimizerGroup(name, optimizer, settings, params)
            if info.enabled:
                group.ddp = distributed.wrap_group(_Group(params), device)
            self.groups[name] = group
        self.single = len(self.groups) == 1

    # -- one training step ---------------------------------------------------------------
    def step(self, batches: list[Batch], step: int) -> tuple[dict[str, float], int]:
        """Run one training step over the micro-batches ``batches`` (this rank's share of the
        global batch): returns the logs (averaged over micro-batches, weighted by size) and
        the images this rank's step consumed (``len`` of the batches plus every update's
        ``images`` share)."""
        method = self.method
        total = sum(len(b) for b in batches)
        weights = [len(b) / total for b in batches]
        steps: list[Iterator[Update]] = []
        for batch in batches:
            gen = method.train_step(batch, step)
            if not isinstance(gen, Iterator):
                raise GenbenchError(
                    f"{method.name}.train_step must be a generator yielding Update(...) "
                    f"(the loop owns optimisation; see bench/method.py), got {type(gen).__name__}"
                )
            steps.append(gen)
        pending = [next(g, None) for g in steps]
        logs: dict[str, float] = {}
        images = total
        while any(u is not None for u in pending):
            if any(u is None for u in pending) or len({u.optimizer for u in pending}) != 1:  # type: ignore[union-attr]
                raise GenbenchError(
                    f"{method.name}.train_step yielded different updates for the micro-batches "
                    "of one step; updates must not depend on the batch's content"
                )
            updates: list[Update] = pending  # type: ignore[assignment]
            name = updates[0].optimizer
            group = self.groups.get(name)
            if group is None:
                raise GenbenchError(
                    f"{method.name}.train_step yielded an update of optimizer {name!r}, which "
                    f"was never registered with add_optimizer (registered: "
                    f"{', '.join(self.groups) or 'none'})"
                )
            group.optimizer.zero_grad(set_to_none=True)
            for i, (update, weight) in enumerate(zip(updates, weights, strict=True)):
                last = i == len(updates) - 1
                with group.no_sync() if not last else nullcontext():
                    with autocast(self.device, self.precision):
                        loss, extra = _split(group.call(update.loss), f"{method.name} {name}")
                    (loss.float() * weight).backward()
                key = "loss" if self.single else f"{name}_loss"
                extra = {key: loss, **extra}
                for k, v in extra.items():
                    value = v.detach() if isinstance(v, Tensor) else v
                    logs[k] = logs.get(k, 0.0) + weight * float(value)
                images += update.images
            norm = self._clip(group)
            if norm is not None:
                logs["grad_norm" if self.single else f"{name}_grad_norm"] = norm
            self._set_lr(group, step)
            group.optimizer.step()
            pending = [next(g, None) for g in steps]
        return logs, int(round(images))

    def _clip(self, group: _OptimizerGroup) -> float | None:
        """Clip (or, with clipping off, only measure) the global gradient norm of a group
        whose settings name a clip; None for groups that never clip."""
        clip = group.settings.grad_clip
        grads = [p for p in group.params if p.grad is not None]
        if clip <= 0 or not grads:
            return None
        return float(torch.nn.utils.clip_grad_norm_(grads, clip))

    def _set_lr(self, group: _OptimizerGroup, step: int) -> None:
        s = group.settings
        if s.schedule == "constant":
            return
        factor = lr_factor(
            step, s.schedule, s.warmup_steps, self.method.budget_steps, s.final_lr_fraction
        )
        for param_group in group.optimizer.param_groups:
            param_group["lr"] = param_group["initial_lr"] * factor


#: optimisers with a fused single-kernel step on CPU and CUDA (torch >= 2.4)
FUSABLE = (torch.optim.Adam, torch.optim.AdamW)
#: the devices torch's fused Adam kernels run on
FUSED_DEVICES = ("cpu", "cuda")


def fuse_optimizer(optimizer: torch.optim.Optimizer) -> bool:
    """Switch an Adam/AdamW optimiser whose method did not choose an implementation
    (``foreach`` and ``fused`` left at None) to its fused kernel: one kernel per parameter
    instead of about ten ops, the same update rule (Kingma & Ba, Algorithm 1, with decoupled
    weight decay for AdamW) up to float rounding. Measured on 2 CPU cores: the optimiser step
    of gan's 2.7 M parameters 10.0 -> 1.2 ms, ddpm's U-Net 3.5 -> 0.7 ms (the whole ddpm step
    about 33 ms). Called by :class:`Optimisation` after a resume has loaded the optimiser's
    state (a checkpoint's param groups carry the flag they were saved with), so a resumed run
    steps exactly like an uninterrupted one. Returns whether the optimiser is fused."""
    if type(optimizer) not in FUSABLE:
        return False
    groups = optimizer.param_groups
    if any(g.get("fused") for g in groups):
        return True  # the method asked for it
    for group in groups:
        if group.get("fused") is not None or group.get("foreach") or group.get("differentiable"):
            return False
        for p in group["params"]:
            if p.device.type not in FUSED_DEVICES or not p.dtype.is_floating_point or p.is_sparse:
                return False
    for group in groups:
        group["fused"], group["foreach"] = True, False
    return True


def channels_last_networks(method: Method) -> list[str]:
    """The method's networks whose convolution weights are laid out channels_last (NHWC)."""
    names = []
    for name, module in method.named_children():
        # kernels with one input channel or one tap are the same in both layouts
        weights = [
            p
            for p in module.parameters()
            if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1
        ]
        if weights and all(
            p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
            for p in weights
        ):
            names.append(name)
    return names


def trainable_modules(method: Method) -> list[nn.Module]:
    """The method's direct sub-modules that hold parameters (its networks)."""
    return [m for m in method.children() if any(True for _ in m.parameters())]


def prepare_fast_paths(method: Method, channels_last: bool = False, compile: bool = False) -> None:
    """The GPU fast paths, each a protocol-independent option recorded in the result:

    - ``channels_last``: convolution weights (and, in the loop, the batches) in NHWC, the
      layout cuDNN's tensor-core kernels want;
    - ``compile``: ``torch.compile`` of every network of the method, in place
      (``nn.Module.compile``: parameter names, checkpoints and the method's own attribute
      access are unchanged; the step's forward and backward run as compiled graphs)."""
    if channels_last:
        method.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
    if compile:
        for module in trainable_modules(method):
            module.compile()


def run_step(
    method: Method,
    batch: Batch,
    step: int = 0,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> dict[str, float]:
    """One training step of ``method`` on ``batch`` outside the training loop (tests,
    one-off checks): the loop's own :class:`Optimisation`, one process, no accumulation.
    Returns the step's logs."""
    optimisation = _ONE_OFF.get(id(method))
    if optimisation is None or optimisation.method is not method:
        optimisation = Optimisation(method, device or method.device, precision)
        _ONE_OFF[id(method)] = optimisation
    logs, _ = optimisation.step([batch], step)
    return logs


#: the Optimisation of each method stepped by :func:`run_step` (a method is stepped by one)
_ONE_OFF: dict[int, Optimisation] = {}
