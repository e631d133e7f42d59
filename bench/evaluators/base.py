"""The evaluator interface: a registered metric in the shape of a torchmetrics ``Metric``.

An evaluator is a class registered by name (``@register_evaluator("fidelity")``) that says

- ``capability``: what a method must be able to do for it to run (``"sample"``,
  ``"log_likelihood"``, ``"encode"``: :data:`bench.method.CAPABILITIES`), or None (every
  method);
- ``columns``: the leaderboard columns it produces (:class:`Column`), each with its direction
  (``higher_is_better``) and natural range; reports, the regression gate and its tolerances
  read them from here and nowhere else;
- ``settings``: the protocol ``eval.*`` keys it reads;

and, like a torchmetrics metric, keeps *states* (:meth:`Evaluator.add_state`, each with
``dist_reduce_fx``) that :meth:`~Evaluator.update` accumulates batch by batch and
:meth:`~Evaluator.compute` turns into scores. Under torchrun every rank feeds its share of
the chunks (:func:`rank_chunks`: chunk ``c`` goes to rank ``c mod W``), :meth:`~Evaluator.sync`
reduces the states across ranks, and rank 0 computes. States have fixed shapes, indexed by
position (an image, a chunk), and are zero where another rank fills in: a sum across ranks
then gathers them exactly, in the order one process would hold them, so a sharded
evaluation gives the numbers of one process.

The feeds that run a method over its chunks live in :mod:`bench.evaluators.feeds`
(:class:`~bench.evaluators.feeds.SampleEvaluator`, ``LikelihoodEvaluator``,
``FeatureEvaluator``): an evaluator subclasses one and writes ``update`` and ``compute``.

Nothing here imports torch when the module is imported: reports and the gate read columns
from the registry without loading torch. Modules of :mod:`bench.evaluators` keep that rule
(torch inside functions); an evaluator defined anywhere else may import what it likes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from bench.errors import unknown_name
from bench.registry import Registry

if TYPE_CHECKING:
    import torch

    from bench.data import ImageData
    from bench.method import Method
    from bench.protocol import EvalSettings


@dataclasses.dataclass(frozen=True)
class Column:
    """One leaderboard column of an evaluator."""

    #: the key in the evaluator's scores (``metrics[<evaluator>][<name>]``) and the table
    name: str
    #: the column's title in leaderboards
    title: str
    #: True / False: ranked and gated in that direction; None: a count (NFE, parameters)
    higher_is_better: bool | None = None
    #: (floor, ceiling) of the values it can take; the gate's tolerances stay inside it
    range: tuple[float, float] = (-math.inf, math.inf)
    #: decimals shown in leaderboards
    decimals: int = 3
    #: tracked by the expected tables of the regression gate (timings are not: too noisy)
    gated: bool = True
    #: the gate's noise floor for it: what moves between platforms and thread counts for one
    #: fixed seed, absolute and relative to the value (bench.tolerances.noise_floor; the
    #: first columns' floors are listed there)
    noise: float = 0.0
    noise_rel: float = 0.0

    @property
    def direction(self) -> str | None:
        """'higher' | 'lower' | None, the word the expected tables use."""
        if self.higher_is_better is None:
            return None
        return "higher" if self.higher_is_better else "lower"


@dataclasses.dataclass
class EvalContext:
    """What an evaluator may read about the run it scores."""

    method: Method
    data: ImageData
    settings: EvalSettings
    device: torch.device
    #: the run's seed: every random stream of the evaluation derives from it
    seed: int
    #: the run folder (sample grids)
    directory: Path
    precision: str = "fp32"
    #: the feature extractor of the fidelity metrics and its weights file
    extractor: str = ""
    feature_weights: str | None = None
    #: further feature networks whose FID is reported beside the extractor's
    second_extractors: tuple[str, ...] = ()
    #: the training loop's outcome (images seen, timings), None when the method did not train
    outcome: Any = None
    #: the run's training set-up, recorded with throughput
    channels_last: bool = False
    compile: bool = False
    accumulate: int = 1
    #: score the fidelity metrics beside FID (bench.evaluators.fidelity_metrics); a
    #: learning curve's points keep to FID / KID / PR
    fidelity_metrics: bool = True


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Items ``start:stop`` of a sharded pass, the ``index``-th chunk of it."""

    index: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def chunks(count: int, size: int) -> list[Chunk]:
    """``count`` items in chunks of ``size`` (the last one shorter)."""
    return [
        Chunk(index, start, min(start + size, count))
        for index, start in enumerate(range(0, count, size))
    ]


def rank_share(items: list[Any]) -> list[Any]:
    """This rank's share of ``items``: rank r takes r, r + W, r + 2W, ... (all in one process)."""
    from bench.distributed import current

    info = current()
    return items[info.rank :: info.world_size]


def rank_chunks(count: int, size: int) -> list[Chunk]:
    """This rank's chunks of a pass over ``count`` items (round robin over ranks)."""
    return rank_share(chunks(count, size))


def is_main_rank() -> bool:
    from bench.distributed import current

    return current().is_main


#: how a state reduces across ranks: the torch.distributed.ReduceOp of each dist_reduce_fx
REDUCTIONS = ("sum", "max", "min")


class Evaluator:
    """Base class of every registered evaluator (see the module docstring)."""

    #: registry name, set by :func:`register_evaluator`; also the key of its scores in a
    #: result (``metrics[name]``, extra variants in ``metrics[name + "_variants"]``)
    name: ClassVar[str] = ""
    #: the method capability it needs (bench.method SAMPLE / LOG_LIKELIHOOD / ENCODE), or None
    capability: ClassVar[str | None] = None
    #: True when it needs the data's class labels (skipped on a dataset without labels)
    needs_labels: ClassVar[bool] = False
    #: its leaderboard columns
    columns: ClassVar[tuple[Column, ...]] = ()
    #: the protocol ``eval.*`` keys it reads
    settings: ClassVar[tuple[str, ...]] = ()
    #: when it runs among the evaluators of a run (smaller first); ties by name
    order: ClassVar[int] = 50

    def __init__(
        self, context: EvalContext, variant: dict[str, Any] | None = None, section: str = ""
    ) -> None:
        self.context = context
        #: keyword arguments of the method call this section scores (a sampler's steps)
        self.variant = dict(variant or {})
        #: the eval-state section, which names every random stream of this evaluation
        self.section = section or self.name
        self._defaults: dict[str, Any] = {}
        self._reductions: dict[str, str] = {}

    # -- torchmetrics' shape --------------------------------------------------------------
    def add_state(self, name: str, default: torch.Tensor, dist_reduce_fx: str = "sum") -> None:
        """A tensor state on the evaluation device, reduced across ranks by ``dist_reduce_fx``
        (sum, max or min). Give it its final shape: a state indexed by position, zero where
        other ranks fill in, is gathered exactly by a sum."""
        if dist_reduce_fx not in REDUCTIONS:
            raise ValueError(f"dist_reduce_fx must be one of {REDUCTIONS}, got {dist_reduce_fx!r}")
        self._defaults[name] = default.detach().clone()
        self._reductions[name] = dist_reduce_fx
        setattr(self, name, default.detach().clone().to(self.context.device))

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Accumulate one batch into the states."""
        raise NotImplementedError

    def compute(self) -> Any:
        """The scores from the (reduced) states: ``{column: value, ..., "settings": {...}}``."""
        raise NotImplementedError

    def reset(self) -> None:
        for name, default in self._defaults.items():
            setattr(self, name, default.clone().to(self.context.device))

    def sync(self) -> None:
        """Reduce every state across ranks, in place (a no-op in one process). Collective:
        every rank calls it, in the same order of states."""
        from bench.distributed import current

        if not current().enabled:
            return
        import torch.distributed as dist

        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        for name, reduction in self._reductions.items():
            dist.all_reduce(getattr(self, name), op=ops[reduction])

    # -- the harness's side ---------------------------------------------------------------
    @classmethod
    def qualifies(cls, method: Method) -> bool:
        """Whether ``method`` can be scored by this evaluator."""
        return cls.capability is None or cls.capability in method.capabilities

    @classmethod
    def variants(cls, method: Method) -> list[dict[str, Any]]:
        """The settings to score, one section each (a method's sampler variants)."""
        return [{}]

    @classmethod
    def section_name(cls, index: int) -> str | None:
        """The eval-state section of variant ``index``: saved when done, so a killed
        evaluation resumes after it. None: not saved, and computed by rank 0 alone."""
        return f"{cls.name}:{index}"

    def feed(self) -> None:
        """Run the method over this rank's chunks, calling :meth:`update` (the feeds of
        :mod:`bench.evaluators.feeds`); an evaluator that needs no pass has nothing to feed."""

    def result(self) -> Any:
        """What the eval state keeps for this section (rank 0): by default the scores."""
        return self.compute()

    def run(self) -> Any:
        """This rank's share, reduced across ranks: rank 0's result, None on the others."""
        self.feed()
        self.sync()
        return self.result() if is_main_rank() else None

    @classmethod
    def record(
        cls, metrics: dict[str, Any], index: int, variant: dict[str, Any], value: Any
    ) -> None:
        """Put a section's result into a run's metrics: the first variant is the method's
        row (``metrics[name]``), each other one a row of its own (``metrics[name_variants]``)."""
        if index == 0:
            metrics[cls.name] = value
        else:
            metrics.setdefault(f"{cls.name}_variants", []).append({**value, "variant": variant})

    @classmethod
    def row(cls, scores: dict[str, Any]) -> dict[str, Any]:
        """Leaderboard cells of one result's scores: ``{column: value}``."""
        return {c.name: scores[c.name] for c in cls.columns if scores.get(c.name) is not None}

    # -- random streams -------------------------------------------------------------------
    def chunk_generator(self, chunk: Chunk) -> torch.Generator:
        """The generator of one chunk: a function of (run seed, section, chunk), so whichever
        rank draws the chunk draws the same numbers."""
        import torch

        from bench.seeds import chunk_seed

        seed = chunk_seed(self.context.seed, self.section, chunk.index)
        return torch.Generator(device=self.context.device).manual_seed(seed)

    def seed_chunk(self, chunk: Chunk) -> None:
        """Seed torch's global generators for one chunk, for method calls that take no
        generator (a stochastic bound, dequantization noise)."""
        import torch

        from bench.seeds import chunk_seed

        torch.manual_seed(chunk_seed(self.context.seed, self.section, chunk.index))


class EvaluatorRegistry(Registry[type[Evaluator]]):
    """:class:`bench.registry.Registry` for evaluators. Evaluators register when their module
    is imported (:mod:`bench.evaluators` imports its own), so a lookup loads no plugins (no
    methods, no torch), and names keep registration order: the order of leaderboard columns.
    """

    def get(self, name: str) -> type[Evaluator]:
        if name not in self._items:
            raise unknown_name(self.kind, name, self._items)
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


EVALUATORS = EvaluatorRegistry("evaluator")


def register_evaluator(name: str) -> Callable[[type[Evaluator]], type[Evaluator]]:
    """Register an :class:`Evaluator` subclass under ``name`` (sets ``cls.name``): its scores
    land in ``metrics[name]`` and its columns in every leaderboard."""

    def decorator(cls: type[Evaluator]) -> type[Evaluator]:
        others = [other for other in evaluators() if other.name != name]
        taken = {c.name: other for other in others for c in other.columns}
        for column in cls.columns:
            if column.name in taken:
                raise ValueError(
                    f"evaluator {name!r}: column {column.name!r} is evaluator "
                    f"{taken[column.name].name!r}'s already"
                )
        cls.name = name
        return EVALUATORS.register(name)(cls)

    return decorator


def evaluators() -> list[type[Evaluator]]:
    """Every registered evaluator, in registration order (the order of table columns)."""
    return [EVALUATORS.get(name) for name in EVALUATORS.names()]


def evaluators_for(method: Method) -> list[type[Evaluator]]:
    """The evaluators ``method`` qualifies for, in the order they run."""
    chosen = [cls for cls in evaluators() if cls.qualifies(method)]
    return sorted(chosen, key=lambda cls: (cls.order, cls.name))


def metric_base(column: str) -> str:
    """'fid[digits-cnn]' -> 'fid': a column without the extractor it was measured with."""
    return column.split("[", 1)[0]


def columns() -> dict[str, Column]:
    """Every registered column by name, in table order."""
    return {c.name: c for cls in evaluators() for c in cls.columns}


def column(metric: str) -> Column | None:
    """The column of ``metric`` ('fid[digits-cnn]' -> fid's), None when none declares it."""
    return columns().get(metric_base(metric))


def direction(metric: str) -> str | None:
    """'higher' | 'lower' | None (undeclared, or a count)."""
    found = column(metric)
    return found.direction if found else None


def bounds(metric: str) -> tuple[float, float]:
    """(floor, ceiling) of the values ``metric`` can take; undeclared metrics are unbounded."""
    found = column(metric)
    return found.range if found else (-math.inf, math.inf)


def gated_metrics() -> tuple[str, ...]:
    """The columns the regression gate's expected tables track."""
    return tuple(c.name for c in columns().values() if c.gated and c.direction)
