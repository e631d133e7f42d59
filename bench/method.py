"""The method interface every baseline implements.

The harness never asks what family a method is; it asks what the method can do. A method is
an ``nn.Module`` built from the dataset's :class:`DataSpec` and keyword hyper-parameters, with

- ``train_step(batch, step)``: a generator that yields the :class:`Update` s of one training
  step, each naming an optimiser registered with :meth:`Method.add_optimizer` and a closure
  computing its loss (a GAN yields a critic update and, every ``critic_steps``-th step, a
  generator update; code after a ``yield`` runs after that update was applied). The method
  owns its paper's losses and nothing else: the loop (:mod:`bench.optim`) does zero_grad,
  backward, gradient synchronisation across ranks (PyTorch DDP), clipping, the optimiser
  step, the learning-rate schedule, gradient accumulation and autocast; :mod:`bench.train`
  owns batching, the budget, EMA, checkpoints and timing. An update that consumes images
  beyond the batch it was given (a GAN's generator batch) says so in ``Update.images``.
  Per-example randomness of a loss (diffusion times and noise, latents, dequantization
  noise, augmentations) comes from ``batch.randn`` / ``batch.rand`` / ``batch.randint`` /
  ``batch.generator``: a function of (run seed, step, example), so two ranks, or four
  accumulated micro-batches, draw for each example what one process draws for it.
- the optional capabilities declared in ``capabilities``:
  ``sample(n, generator, labels=None)`` images in [0, 1] of shape (n, C, H, W) (a
  ``class_conditional`` method gets labels (n,) and should draw images of those classes);
  ``log_likelihood(x)`` per-image log-likelihood in nats of the discrete data (a bound when
  ``likelihood_is_bound``); ``encode(x)`` (n, d) frozen features.

Images handed to a method are float tensors in [0, 1] holding ``level / (num_levels - 1)``;
:func:`to_levels` recovers the integer levels.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from bench.errors import GenbenchError

T = TypeVar("T")

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


class BatchNoise:
    """Per-example random numbers of one training step, identical however the global batch
    is split (ranks, accumulation micro-batches).

    Every call draws the next block for the *whole* global batch, ``(global_size, *shape)``,
    from a generator seeded by (run seed, step) and returns the rows of this batch's
    examples (``positions`` in the global batch). Calls must come in the same order on every
    part, which they do: every part runs the same ``train_step``. The draw costs the global
    batch's numbers on every rank: negligible next to any network."""

    def __init__(
        self, seed: int, positions: Tensor, global_size: int, device: torch.device | str = "cpu"
    ) -> None:
        self.seed = seed
        self.positions = positions
        self.global_size = global_size
        self.device = torch.device(device)
        self._generator = torch.Generator(device=self.device).manual_seed(seed)
        self._index = positions.to(self.device)

    def randn(self, *shape: int) -> Tensor:
        """N(0, 1) of shape (batch, *shape)."""
        full = torch.randn(self.global_size, *shape, generator=self._generator, device=self.device)
        return full[self._index]

    def rand(self, *shape: int) -> Tensor:
        """U[0, 1) of shape (batch, *shape)."""
        full = torch.rand(self.global_size, *shape, generator=self._generator, device=self.device)
        return full[self._index]

    def randint(self, high: int, *shape: int) -> Tensor:
        """Integers in [0, high) of shape (batch, *shape)."""
        full = torch.randint(
            high, (self.global_size, *shape), generator=self._generator, device=self.device
        )
        return full[self._index]

    def generators(self) -> list[torch.Generator]:
        """One generator per example (seeded from this stream), for code that draws a
        variable amount per example (random augmentations)."""
        seeds = self.randint(2**62)
        return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds.tolist()]


@dataclasses.dataclass
class Batch:
    """A training batch: images in [0, 1] (B, C, H, W), integer labels (B,), and the
    per-example random numbers of this step (:class:`BatchNoise`)."""

    x: Tensor
    y: Tensor
    noise: BatchNoise | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def _noise(self) -> BatchNoise:
        if self.noise is None:  # a batch built by hand (tests, one-off calls)
            self.noise = BatchNoise(0, torch.arange(len(self)), len(self), self.x.device)
        return self.noise

    def randn(self, *shape: int) -> Tensor:
        """Per-example N(0, 1) of shape (B, *shape) on the batch's device."""
        return self._noise().randn(*shape).to(self.x.device)

    def randn_like(self, x: Tensor) -> Tensor:
        """Per-example N(0, 1) shaped and typed like ``x`` (whose first dimension is B)."""
        return self.randn(*x.shape[1:]).to(x.dtype)

    def rand(self, *shape: int) -> Tensor:
        """Per-example U[0, 1) of shape (B, *shape)."""
        return self._noise().rand(*shape).to(self.x.device)

    def randint(self, high: int, *shape: int) -> Tensor:
        """Per-example integers in [0, high) of shape (B, *shape)."""
        return self._noise().randint(high, *shape).to(self.x.device)

    def generators(self) -> list[torch.Generator]:
        """A CPU generator per example, for draws of variable size (augmentations)."""
        return self._noise().generators()


#: set while a study is planned: a data scale no default table covers is then an error
STRICT_SCALES: contextvars.ContextVar[bool] = contextvars.ContextVar("strict_scales", default=False)


@contextlib.contextmanager
def strict_scales() -> Iterator[None]:
    """Within it, :func:`scale_table` refuses a data scale its table does not cover (how
    :func:`bench.runner.plan_study` builds every method of a study)."""
    token = STRICT_SCALES.set(True)
    try:
        yield
    finally:
        STRICT_SCALES.reset(token)


def scale_table(table: Mapping[str, T], spec: DataSpec, what: str) -> T:
    """``table``'s row for ``spec``'s data scale.

    A scale no row covers is one clear error when a study is planned (:func:`strict_scales`:
    every ``genbench run``, ``sweep`` and ``train``), never another scale's values in
    silence. Outside a study (a method built by hand on toy images in a test or a notebook)
    the nearest row by pixel count is used, with a warning that says so."""
    if spec.scale in table:
        return table[spec.scale]
    if STRICT_SCALES.get():
        raise GenbenchError(
            f"{what} has no defaults for {spec.scale} images ({spec.name}); its table covers "
            f"{', '.join(table)}. Add a row for {spec.scale} to the method's table"
        )
    pixels = spec.height * spec.width

    def distance(scale: str) -> int:
        height, width = (int(v) for v in scale.split("x"))
        return abs(height * width - pixels)

    nearest = min(table, key=distance)
    warnings.warn(
        f"{what} has no row for {spec.scale} images; using its {nearest} row outside a study",
        stacklevel=2,
    )
    return table[nearest]


#: the schedules of :func:`bench.optim.lr_factor`
SCHEDULES = ("constant", "warmup", "warmup-cosine")


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """What the loop does around one registered optimiser (see :meth:`Method.add_optimizer`)."""

    #: max global gradient norm after synchronisation; 0: no clipping (the norm is logged)
    grad_clip: float = 0.0
    #: learning-rate schedule: constant, linear warm-up then constant, or warm-up + cosine
    schedule: str = "constant"
    warmup_steps: int = 0
    #: the cosine's floor as a fraction of the base learning rate
    final_lr_fraction: float = 0.0


@dataclasses.dataclass
class Update:
    """One optimiser update of a training step, applied by the loop.

    ``loss()`` returns the scalar to minimise, or ``(loss, logs)`` with extra scalars to log
    (floats or 0-d tensors). The loop calls it (inside the optimiser group's
    ``DistributedDataParallel`` under torchrun, under autocast with ``--precision bf16``),
    then zero_grad, backward, synchronises, clips and steps. ``images``: images this update
    consumed beyond the batch (a GAN generator update's fake batch)."""

    optimizer: str
    loss: Callable[[], Tensor | tuple[Tensor, dict[str, Any]]]
    images: int = 0


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
    #: numeric hyper-parameters' valid ranges, where the name-based rules of
    #: :func:`base_range` are wrong for this method: ``(lo, hi)`` inclusive, or
    #: ``(lo, hi, "[)")`` with the brackets saying which bound is open; None for no bound
    #: (``(0, None, "(]")``: > 0). A list-valued hyper-parameter's range applies to each
    #: item. ``None`` instead of a tuple switches the range check off for that key.
    hparam_ranges: ClassVar[dict[str, tuple[Any, ...] | None]] = {}
    #: list-valued hyper-parameters that may be empty (e.g. no attention resolutions)
    hparam_empty_lists: ClassVar[frozenset[str]] = frozenset()
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
        self.optimizer_settings: dict[str, OptimizerSettings] = {}

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
        """Defaults for ``spec`` updated by ``overrides`` (``--set`` strings or typed values
        from a protocol file), every value checked against the schema: unknown keys, wrong
        types, NaN/inf, out-of-range numbers and unknown string choices are one clear
        :class:`GenbenchError` before any run starts, not a failure (or garbage) mid-study."""
        hparams = cls.default_hparams(spec)
        unknown = sorted(set(overrides) - set(hparams))
        if unknown:
            valid = ", ".join(sorted(hparams)) or "(this method has no hyper-parameters)"
            raise GenbenchError(
                f"method {cls.name!r} has no hyper-parameter {unknown[0]!r}. Valid: {valid}"
            )
        resolved = {}
        for key, default in hparams.items():
            value = overrides.get(key, default)
            resolved[key] = check_hparam(
                f"{cls.name}.{key}",
                value,
                default,
                cls.hparam_ranges[key] if key in cls.hparam_ranges else base_range(key, default),
                key in cls.hparam_empty_lists,
            )
        for key, choices in cls.hparam_choices.items():
            values = resolved[key] if isinstance(resolved[key], (list, tuple)) else [resolved[key]]
            for value in values:
                if value not in choices:
                    raise GenbenchError(
                        f"bad value {_short(value)} for {cls.name}.{key}. "
                        f"Valid: {', '.join(choices)}"
                    )
        return resolved

    @classmethod
    def validate(cls, spec: DataSpec, hparams: dict[str, Any]) -> None:
        """Check ``hparams`` (resolved, or overrides of the defaults) before any run starts:
        the schema first, then a trial build on ``spec``, so that a value only the network
        can reject (a width its channel groups do not divide, a kernel that does not fit the
        image) is one line now instead of a failed run that replaces a good result later.

        The trial build runs under ``torch.device("meta")``: no memory is allocated and no
        weights are initialised, so a huge width costs nothing; the global RNG is restored
        afterwards (constructors that draw masks or seeds must not shift the run's stream).
        """
        resolved = cls.resolve_hparams(spec, hparams)
        defaults = cls.default_hparams(spec)
        changed = [f"{k}={_short(v)}" for k, v in resolved.items() if v != defaults.get(k)]
        settings = f"with {', '.join(changed)}" if changed else "with its defaults"
        try:
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                cls(spec, **resolved)
        except GenbenchError as exc:
            raise GenbenchError(f"method {cls.name!r} on {spec.name} {settings}: {exc}") from None
        except Exception as exc:  # the constructor's own complaint, in one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise GenbenchError(
                f"method {cls.name!r} cannot be built on {spec.name} {settings}: "
                f"{exc.__class__.__name__}: {first[:300]}"
            ) from None

    # -- data-dependent set-up ------------------------------------------------------------
    def prepare(self, train_x: Tensor, train_y: Tensor, held_out_x: Tensor) -> None:
        """Called once before training with the whole train split (and the held-out split,
        which only the real-data reference row may use). Closed-form rows fit here."""

    # -- training ----------------------------------------------------------------------------
    def train_step(self, batch: Batch, step: int) -> Iterator[Update]:
        """Yield the updates of one training step (see the module docstring)."""
        raise NotImplementedError(f"{self.name} does not train")

    def set_budget(self, budget_images: int, batch_size: int) -> None:
        """Called by the training loop before the first step (and again on resume)."""
        self.budget_images = budget_images
        self.budget_steps = -(-budget_images // batch_size)

    def add_optimizer(
        self,
        name: str,
        optimizer: torch.optim.Optimizer,
        *,
        grad_clip: float = 0.0,
        schedule: str = "constant",
        warmup_steps: int = 0,
        final_lr_fraction: float = 0.0,
    ) -> None:
        """Register an optimizer: the loop steps it for every :class:`Update` naming it, clips
        its parameters' global gradient norm to ``grad_clip`` (after the gradients were
        averaged across ranks; 0: no clipping) and sets its learning rate each step to the
        base rate times :func:`bench.optim.lr_factor` of ``schedule``. Checkpoints (and
        resumed runs) include its state. Its parameters are one DDP group under torchrun."""
        if schedule not in SCHEDULES:
            raise GenbenchError(
                f"{self.name}: unknown schedule {schedule!r}. Valid: {', '.join(SCHEDULES)}"
            )
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.optimizers[name] = optimizer
        self.optimizer_settings[name] = OptimizerSettings(
            float(grad_clip), schedule, int(warmup_steps), float(final_lr_fraction)
        )

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


#: ints beyond this are a typo (or an overflow), not a setting
MAX_INT = 2**31 - 1
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")

#: name-based range rules (first match wins), for keys a method does not declare itself
_DECAY_LIKE = ("ema", "momentum", "adam_beta1", "adam_beta2")
_PROBABILITIES = ("dropout",)
_COUNT_WORDS = (
    "width", "widths", "channels", "dim", "units", "sizes", "size", "layers", "depth",
    "heads", "blocks", "steps", "batch", "levels", "samples", "kernel", "iterations",
    "codes", "components", "masks", "timesteps", "probes", "pairs", "stride", "directions",
    "scales", "mults", "resolutions", "level",
)  # fmt: skip


def base_range(key: str, default: Any) -> tuple[Any, ...] | None:
    """The range a hyper-parameter gets from its name when its method declares none:
    learning rates, temperatures and sizes (width, channels, layers, steps, batch, ...) are
    > 0; decay-like values (EMA, momentum, Adam betas, ``*_decay`` but not weight decay) lie
    in [0, 1); probabilities and fractions in [0, 1]; weight decay, loss weights and other
    counts are >= 0. Floats that match no rule only have to be finite."""
    item = default[0] if isinstance(default, (list, tuple)) and default else default
    words = key.split("_")
    if isinstance(item, bool) or isinstance(item, str):
        return None
    if key == "warmup_steps" or key.endswith("_after") or key.endswith("_seed"):
        return (0, None)
    if key in ("lr", "learning_rate") or key.endswith("_lr") or "temperature" in words:
        return (0, None, "(]")
    if key in _DECAY_LIKE or (words[-1] == "decay" and not key.endswith("weight_decay")):
        return (0, 1, "[)")
    if key in _PROBABILITIES:
        return (0, 1, "[)")
    if words[-1] in ("prob", "fraction", "ratio"):
        return (0, 1)
    if key.endswith("weight_decay") or words[-1] in ("weight", "scale", "clip", "norm"):
        return (0, None)
    if isinstance(item, int):
        if words[-1] in _COUNT_WORDS or words[0] == "num":
            return (1, None)
        return (0, None)
    return None


def check_hparam(
    where: str,
    value: Any,
    default: Any,
    bounds: tuple[Any, ...] | None,
    empty_ok: bool = False,
) -> Any:
    """``value`` (a ``--set`` string or a typed value from a protocol file) checked against
    the type of ``default`` and ``bounds``; returns the typed value. The type comes from the
    default: bool, int (not bool), float (an int is accepted), str, or a list/tuple of one of
    those (a ``--set`` string is split at commas). NaN and inf are never valid."""
    if default is None:
        return value
    if isinstance(default, (list, tuple)):
        if isinstance(value, str):
            text = value.strip()
            if text[:1] == "[" and text[-1:] == "]":
                text = text[1:-1]
            items: list[Any] = [v.strip() for v in text.split(",")] if text.strip() else []
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise GenbenchError(
                f"bad value {_short(value)} for {where}: expected a list "
                f"(comma-separated with --set)"
            )
        if not items and not empty_ok:
            raise GenbenchError(f"bad value {_short(value)} for {where}: must not be empty")
        item_default = default[0] if default else 0
        checked = [_check_scalar(where, v, item_default, bounds) for v in items]
        return type(default)(checked)
    return _check_scalar(where, value, default, bounds)


def _check_scalar(where: str, value: Any, default: Any, bounds: tuple[Any, ...] | None) -> Any:
    def bad(expected: str) -> GenbenchError:
        return GenbenchError(f"bad value {_short(value)} for {where}: expected {expected}")

    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise bad("true or false")
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if isinstance(default, int):
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise bad("an integer") from None
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad("an integer")
        if abs(value) > MAX_INT:
            raise GenbenchError(f"bad value {_short(value)} for {where}: too large")
    elif isinstance(default, float):
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise bad("a number") from None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise bad("a number")
        try:
            value = float(value)
        except OverflowError:
            raise GenbenchError(f"bad value {_short(value)} for {where}: too large") from None
        if not math.isfinite(value):
            raise GenbenchError(f"bad value {_short(value)} for {where}: must be finite")
    else:
        return value
    if bounds is not None and not in_range(value, bounds):
        raise GenbenchError(
            f"bad value {_short(value)} for {where}: must be {describe_range(bounds)}"
        )
    return value


def in_range(value: float, bounds: tuple[Any, ...]) -> bool:
    """Whether ``value`` lies within ``(lo, hi[, brackets])`` (see ``hparam_ranges``)."""
    lo, hi = bounds[0], bounds[1]
    brackets = bounds[2] if len(bounds) > 2 else "[]"
    if lo is not None and (value < lo or (brackets[0] == "(" and value == lo)):
        return False
    return not (hi is not None and (value > hi or (brackets[1] == ")" and value == hi)))


def describe_range(bounds: tuple[Any, ...]) -> str:
    """``(0, None, "(]")`` -> "> 0"; ``(0, 1, "[)")`` -> "in [0, 1)"."""
    lo, hi = bounds[0], bounds[1]
    brackets = bounds[2] if len(bounds) > 2 else "[]"
    if hi is None:
        return f"{'>' if brackets[0] == '(' else '>='} {lo}"
    if lo is None:
        return f"{'<' if brackets[1] == ')' else '<='} {hi}"
    return f"in {brackets[0]}{lo}, {hi}{brackets[1]}"


def _short(value: Any) -> str:
    """repr of a user's value, cut so that an error stays one readable line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
