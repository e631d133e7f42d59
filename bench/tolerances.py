"""Tolerances of the regression gate: each metric's natural range, the smallest tolerance we
allow, tolerances derived from measured seed-to-seed spread, and the rule that every row of an
expected table must be able to fail.

Why a range per metric: a gate row "value ± tolerance" guards nothing when every attainable
value lies inside the band, e.g. a recall of 0.0 ± 0.03 (recall cannot fall below 0) or an
accuracy of 0.99 ± 0.03 that can never be flagged as an improvement. So:

- a row **can fail** when some attainable value is worse than ``value`` by more than the
  tolerance: ``value - tol > floor`` for higher-is-better metrics, ``value + tol < ceiling``
  for lower-is-better ones (FID, KID and bits/dim are unbounded above: they can always fail).
  A row that cannot fail is an error of the table (a test checks every committed table);
- a row **can improve** when some attainable value is better by more than the tolerance
  (``value + tol < ceiling``, resp. ``value - tol > floor``). A row at its best bound (an
  accuracy of 1.0) cannot improve and needs not; a row whose band reaches the best bound only
  because the noise floor (:data:`MIN_ABS`) is wider than the distance to it is *saturated*:
  any "improvement" there would be noise, so ``--strict`` cannot and should not flag it.

Derived tolerances (:func:`spread_tolerance`): ``max(K * std over seeds, noise floor)``, where
the noise floor is ``max(MIN_ABS, MIN_REL * |value|)`` so that a metric with zero measured
spread (a deterministic probe, a counted likelihood) still passes on another platform, then
clipped to :data:`CLIP_FRACTION` of the distance to each bound it would cross (the worse bound
always; the better bound unless that would go below the noise floor). A row whose value lies
within the noise floor of its worst bound (a recall of 0.0007 when recall moves by 0.01 across
platforms) is dropped: it is "at the bound" as far as we can measure, has nothing to guard,
and any band narrow enough to fail there would fail on noise.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench import evaluators

# Each metric's (floor, ceiling) is declared with its column by the evaluator that produces
# it (bench.evaluators.Column.range): :func:`bounds` reads it there.

#: tolerance = K x the seed-to-seed standard deviation: with 5 seeds the std estimate itself
#: is uncertain (a chi distribution with 4 degrees of freedom), so 3 rather than 2.
K = 3.0
#: the noise floor of each metric, in its own units: what moves between platforms and thread
#: counts for one fixed seed (float summation order), not between seeds.
MIN_ABS: dict[str, float] = {
    "fid": 0.5,
    "kid": 0.5,  # KID's unit is the extractor's feature scale: hundreds with digits-cnn
    "precision": 0.01,
    "recall": 0.01,
    "sample_acc": 0.01,
    "bpd": 0.005,
    "linear_acc": 0.01,
    "knn_acc": 0.01,
}
#: ... and relative to the value, for the unbounded metrics whose scale varies by 1000x
#: between a good and a bad model. Small on purpose: K * std already covers what another
#: seed or platform moves; a 2% FID floor hid a GAN trained without the non-saturating loss
#: (FID 575 -> 582 with a seed std of 1.6: tools/faults.py, docs/GATE.md).
MIN_REL: dict[str, float] = {"fid": 0.005, "kid": 0.02, "bpd": 0.002}
#: a clipped tolerance stops at this fraction of the distance to the bound, so the row keeps
#: a band of attainable values that fail it.
CLIP_FRACTION = 0.9


metric_base = evaluators.metric_base


def bounds(metric: str) -> tuple[float, float]:
    """(floor, ceiling) of a metric, as its evaluator declares; unknown metrics are unbounded."""
    return evaluators.bounds(metric)


def noise_floor(metric: str, value: float) -> float:
    """The smallest tolerance a row of this metric gets: max(absolute, relative minimum)."""
    base = metric_base(metric)
    declared = evaluators.column(metric)
    absolute = MIN_ABS.get(base, declared.noise if declared else 0.0)
    relative = MIN_REL.get(base, declared.noise_rel if declared else 0.0)
    return max(absolute, relative * abs(value))


def distances(metric: str, value: float, direction: str) -> tuple[float, float]:
    """(distance to the worse bound, distance to the better bound) from ``value``."""
    floor, ceiling = bounds(metric)
    if direction == "higher":
        return value - floor, ceiling - value
    return ceiling - value, value - floor


def can_fail(metric: str, value: float, tolerance: float, direction: str) -> bool:
    """Whether some attainable value is worse than ``value`` by more than ``tolerance``."""
    worse, _ = distances(metric, value, direction)
    return worse > tolerance


def can_improve(metric: str, value: float, tolerance: float, direction: str) -> bool:
    """Whether some attainable value is better than ``value`` by more than ``tolerance``."""
    _, better = distances(metric, value, direction)
    return better > tolerance


@dataclass(frozen=True)
class Clipped:
    """A tolerance after :func:`clip`, and what happened to it (for the table's notes)."""

    tolerance: float
    #: "" | "clipped below floor" | "clipped below ceiling" ... (human-readable, for the CSV)
    note: str
    #: False when no tolerance lets the row fail: its value is the worst attainable one
    usable: bool


def clip(metric: str, value: float, tolerance: float, direction: str) -> Clipped:
    """Narrow ``tolerance`` so the row can fail and, unless saturated, can improve."""
    floor, ceiling = bounds(metric)
    worse_bound, better_bound = (floor, ceiling) if direction == "higher" else (ceiling, floor)
    worse, better = distances(metric, value, direction)
    if worse <= noise_floor(metric, value):
        return Clipped(
            tolerance, f"within the noise floor of the worst bound {worse_bound:g}", usable=False
        )
    notes = []
    if tolerance >= worse:
        tolerance = CLIP_FRACTION * worse
        notes.append(f"clipped to {CLIP_FRACTION:g}x the distance to {worse_bound:g}")
    if better <= 0:
        notes.append(f"at the best bound {better_bound:g}: cannot improve")
    elif tolerance >= better:
        narrowed = CLIP_FRACTION * better
        if narrowed >= noise_floor(metric, value):
            tolerance = narrowed
            notes.append(f"clipped to {CLIP_FRACTION:g}x the distance to {better_bound:g}")
        else:
            notes.append(f"saturated: within the noise floor of {better_bound:g}")
    return Clipped(tolerance, "; ".join(notes), usable=True)


def spread_tolerance(metric: str, value: float, std: float, k: float = K) -> tuple[float, str]:
    """``max(k * std, noise floor)`` and how it was chosen ("3*std" or "noise floor")."""
    floor = noise_floor(metric, value)
    spread = k * std
    if spread >= floor:
        return spread, f"{k:g}*std"
    return floor, "noise floor"
