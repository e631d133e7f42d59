"""The method interface every baseline implements.

The harness never asks what family a method is; it asks what the method can do. A method is
an ``nn.Module`` built from the dataset's :class:`DataSpec` and keyword hyper-parameters, with

- ``train_step(batch, step) -> dict[str, float]``: one optimisation step, optimizer calls
  included. The loop owns batching, the budget, EMA, checkpoints and timing. A step that
  consumes more images than the batch it was given (a GAN's generator batch) reports the
  total under the key ``"images"``.
- the optional capabilities declared in ``capabilities``:
  ``sample(n, generator, labels=None)`` images in [0, 1] of shape (n, C, H, W) (a
  ``class_conditional`` method gets labels (n,) and should draw images of those classes);
  ``log_likelihood(x)`` per-image log-likelihood in nats of the discrete data (a bound when
  ``likelihood_is_bound``); ``encode(x)`` (n, d) frozen features.

Images handed to a method are float tensors in [0, 1] holding ``level / (num_levels - 1)``;
:func:`to_levels` recovers the integer levels.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bench.errors import GenbenchError

SAMPLE = "sample"
LOG_LIKELIHOOD = "log_likelihood"
ENCODE = "encode"
CAPABILITIES = (SAMPLE, LOG_LIKELIHOOD, ENCODE)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a method needs to know about its data to build itself."""

    name: str
    channels: int
    height: int
    width: int
    num_levels: int
    num_classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def dims(self) -> int:
        """D, the number of scalar dimensions of one image."""
        return self.channels * self.height * self.width

    @property
    def scale(self) -> str:
        """The data-scale key per-method defaults are keyed by: '8x8', '28x28', '32x32'."""
        return f"{self.height}x{self.width}"


@dataclasses.dataclass
class Batch:
    """A training batch: images in [0, 1] (B, C, H, W) and integer labels (B,)."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])


def to_levels(x: Tensor, num_levels: int) -> Tensor:
    """Images in [0, 1] -> integer levels 0..L-1 (long)."""
    return torch.round(x.clamp(0, 1) * (num_levels - 1)).long()


def from_levels(levels: Tensor, num_levels: int) -> Tensor:
    """Integer levels 0..L-1 -> float images in [0, 1]."""
    return levels.float() / (num_levels - 1)


class Method(nn.Module):
    """Base class of every registered method. Subclasses set the class attributes below."""

    #: registry name, set by the registering decorator's caller for error messages
    name: ClassVar[str] = ""
    #: subset of CAPABILITIES
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: True when log_likelihood returns a lower bound (ELBO, VLB), not the exact value
    likelihood_is_bound: ClassVar[bool] = False
    #: False for rows fitted in closed form in ``prepare`` (no training loop at all)
    trainable: ClassVar[bool] = True
    #: True when ``sample`` honours ``labels``: the harness then draws class-balanced labels
    #: and reports the domain classifier's accuracy on the samples
    class_conditional: ClassVar[bool] = False
    #: EMA decay of the parameters used for evaluation, or None for no EMA
    ema_decay: ClassVar[float | None] = None
    #: one line for ``genbench list``
    summary: ClassVar[str] = ""
    #: string-valued hyper-parameters and their valid values, checked before any run starts
    hparam_choices: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: a sampler row that evaluates another method's trained weights instead of training:
    #: the name of that method. The harness runs it after that method's run of the same
    #: study (same protocol, dataset and seed), gives it that run's network hyper-parameters
    #: and loads its final (EMA) weights; e.g. ``ddim`` reuses ``ddpm``.
    weights_from: ClassVar[str | None] = None
    #: the length of the run, set by the training loop (``set_budget``) before the first
    #: step and 0 outside it: for schedules that must know it (cosine decay, warm-up as a
    #: fraction, a second training stage such as a VQ-VAE's prior)
    budget_images: int = 0
    #: steps the budget allows when every step consumes one batch (``len(batch.x)`` images)
    budget_steps: int = 0

    def __init__(self, spec: DataSpec) -> None:
        super().__init__()
        self.spec = spec
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    # -- hyper-parameters ---------------------------------------------------------------
    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        """Documented defaults for the data scale of ``spec``. Override per method."""
        return {}

    @classmethod
    def build(cls, spec: DataSpec, overrides: dict[str, Any] | None = None) -> Method:
        """Build with defaults for ``spec`` updated by ``overrides`` (unknown keys rejected)."""
        hparams = cls.resolve_hparams(spec, overrides or {})
        return cls(spec, **hparams)

    @classmethod
    def resolve_hparams(cls, spec: DataSpec, overrides: dict[str, Any]) -> dict[str, Any]:
        hparams = cls.default_hparams(spec)
        unknown = sorted(set(overrides) - set(hparams))
        if unknown:
            valid = ", ".join(sorted(hparams)) or "(this method has no hyper-parameters)"
            raise GenbenchError(
                f"method {cls.name!r} has no hyper-parameter {unknown[0]!r}. Valid: {valid}"
            )
        for key, value in overrides.items():
            default = hparams[key]
            hparams[key] = _coerce(cls.name, key, value, default)
        for key, choices in cls.hparam_choices.items():
            if hparams[key] not in choices:
                raise GenbenchError(
                    f"bad value {hparams[key]!r} for {cls.name}.{key}. Valid: {', '.join(choices)}"
                )
        return hparams

    # -- data-dependent set-up ------------------------------------------------------------
    def prepare(self, train_x: Tensor, train_y: Tensor, held_out_x: Tensor) -> None:
        """Called once before training with the whole train split (and the held-out split,
        which only the real-data reference row may use). Closed-form rows fit here."""

    # -- training ----------------------------------------------------------------------------
    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        raise NotImplementedError(f"{self.name} does not train")

    def set_budget(self, budget_images: int, batch_size: int) -> None:
        """Called by the training loop before the first step (and again on resume)."""
        self.budget_images = budget_images
        self.budget_steps = -(-budget_images // batch_size)

    def add_optimizer(self, name: str, optimizer: torch.optim.Optimizer) -> None:
        """Register an optimizer so that checkpoints (and resumed runs) include its state."""
        self.optimizers[name] = optimizer

    def training_state(self) -> dict[str, Any]:
        """Weights, buffers and optimizer states: everything a resumed run needs."""
        return {
            "module": self.state_dict(),
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["module"])
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])

    # -- capabilities (override the ones declared) ---------------------------------------
    def sample(self, n: int, generator: torch.Generator, labels: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def log_likelihood(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    #: number of network evaluations of the last ``sample`` call (1 for one-shot samplers)
    last_nfe: int = 1

    def sample_variants(self) -> list[dict[str, Any]]:
        """Sampler settings to evaluate, each passed to ``sample`` as keyword arguments: the
        first is the default (the method's row); each other one gets a leaderboard row of its
        own, e.g. ``[{"steps": 50}, {"steps": 10}, {"steps": 20}, {"steps": 100}]``."""
        return [{}]

    def likelihood_variants(self) -> list[dict[str, Any]]:
        """Likelihood estimators to evaluate, each passed to ``log_likelihood`` as keyword
        arguments: the first is the method's bits/dim; each other one gets a leaderboard row
        of its own, e.g. a VAE's ``[{"bound": "iwae", "k": 100}, {"bound": "elbo"}]``."""
        return [{}]

    def sample_settings(self) -> dict[str, Any]:
        """Sampler settings recorded with the fidelity metrics (steps, guidance, ...)."""
        return {}

    def likelihood_settings(self) -> dict[str, Any]:
        """Settings recorded with bits/dim (IWAE k, dequantization passes, ODE tolerance...)."""
        return {}

    def flops_forward(self, x: Tensor) -> None:
        """The forward pass whose FLOPs per image are reported: by default the method's
        cheapest capability on a data batch. Methods with a main network override this."""
        if ENCODE in self.capabilities:
            self.encode(x)
        elif LOG_LIKELIHOOD in self.capabilities:
            self.log_likelihood(x)
        elif SAMPLE in self.capabilities:
            labels = None
            if self.class_conditional:
                labels = torch.arange(x.shape[0], device=x.device) % self.spec.num_classes
            self.sample(x.shape[0], torch.Generator(device=x.device).manual_seed(0), labels)

    @property
    def device(self) -> torch.device:
        for param in self.parameters():
            return param.device
        for buffer in self.buffers():
            return buffer.device
        return torch.device("cpu")


def _coerce(method: str, key: str, value: Any, default: Any) -> Any:
    """Coerce a --set string to the type of the default, with a clear error."""
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    try:
        if isinstance(default, bool):
            if value.lower() in ("true", "1", "yes"):
                return True
            if value.lower() in ("false", "0", "no"):
                return False
            raise ValueError(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, (list, tuple)):
            return type(default)(type(default[0])(v) for v in value.split(","))
    except ValueError:
        raise GenbenchError(
            f"bad value {value!r} for {method}.{key}: expected {type(default).__name__}"
        ) from None
    return value
