"""Registered evaluators: every score a run gets, and every leaderboard column.

``bench.evaluators.base`` has the interface (:class:`Evaluator`, :class:`Column`, the
registry), ``bench.evaluators.feeds`` the sharded passes over a method (sampling,
likelihood, encoding); every other module of this package is one evaluator family and is
imported here, so adding one is adding a file (docs/EVALUATORS.md). Importing this package
does not import torch.
"""

from __future__ import annotations

import importlib
import pkgutil

from bench.evaluators.base import (
    EVALUATORS,
    Chunk,
    Column,
    EvalContext,
    Evaluator,
    bounds,
    column,
    columns,
    direction,
    evaluators,
    evaluators_for,
    gated_metrics,
    metric_base,
    register_evaluator,
)
from bench.evaluators.feeds import FeatureEvaluator, LikelihoodEvaluator, SampleEvaluator

__all__ = [
    "EVALUATORS",
    "Chunk",
    "Column",
    "EvalContext",
    "Evaluator",
    "FeatureEvaluator",
    "LikelihoodEvaluator",
    "SampleEvaluator",
    "bounds",
    "column",
    "columns",
    "direction",
    "evaluators",
    "evaluators_for",
    "gated_metrics",
    "metric_base",
    "register_evaluator",
]

#: the interface's own modules; every other module registers evaluators. Name order is
#: column order in leaderboards: fidelity, likelihood, probe, throughput.
_INTERFACE = ("base", "feeds")

for _module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
    if _module not in _INTERFACE:
        importlib.import_module(f"{__name__}.{_module}")
