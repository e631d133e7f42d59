"""Is method A better than method B, and do two studies rank methods alike?

    genbench compare-methods A B --study runs/quick/digits [--metrics fid,bpd] [--bootstrap 200]
    genbench correlate runs/quick/digits runs/standard/digits [--out agreement.md]

**compare-methods**: for every gated, directional column both rows have (the flattened
columns of :func:`bench.report.flatten`: ``fid[digits-cnn]``, ``bpd``, ``linear_acc``, ...),
the difference A - B:

- with at least 2 seeds both rows have: paired over those seeds, mean difference and its
  95% Student-t interval (n - 1 degrees of freedom). Seed k of two methods shares the
  data order and the evaluation's random streams, so pairing removes that shared noise.
- with fewer: for FID and KID, a bootstrap over samples. Each row's evaluation samples are
  drawn again (:func:`bench.runs.draw_samples`, bitwise what the run scored; an external
  row's samples are read back from ``config.samples.path``), their features extracted once
  through the run's extractor (the torch-fidelity feature path of
  :func:`bench.metrics.fidelity.fidelity_from_inputs`, reference features from the same
  cache), and the generated features of each row resampled with replacement N times
  (seeded, independent streams for A and B): FID_A* - FID_B* and KID_A* - KID_B* give a
  percentile 95% interval. Every other column: not testable.

The verdict: the interval contains 0 -> "not distinguishable"; else the side of 0 it lies
on, read through the column's direction (lower FID is better), names the better row:
"A better" or "B better".

:func:`wholly_better` is the same paired test, used by :func:`bench.report.shared_ranks`.

**correlate**: per column present in both studies, over the rows both have a value for,
Spearman's rho and Kendall's tau of the per-row means, and the pairs of rows whose order
differs between the studies.

Nothing here imports torch at import time (the report imports this module); the bootstrap
imports it when it runs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats as scipy_stats

from bench.errors import GenbenchError, unknown_name

if TYPE_CHECKING:
    import torch

    from bench.results import RunResult

log = logging.getLogger(__name__)

#: confidence level of every interval here
LEVEL = 0.95
#: bootstrap resamples by default
DEFAULT_BOOTSTRAP = 200
#: the fidelity columns a one-seed comparison bootstraps over samples
BOOTSTRAPPED = ("fid", "kid")
#: a correlation over fewer than 3 rows
TOO_FEW = "too few methods"
#: verdict words
A_BETTER, B_BETTER, SAME = "A better", "B better", "not distinguishable"


# -- the paired test ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Interval:
    """A mean difference and its 95% interval."""

    mean: float
    low: float
    high: float

    def contains_zero(self) -> bool:
        return self.low <= 0.0 <= self.high


def t_interval(differences: Sequence[float]) -> Interval | None:
    """Mean of ``differences`` and its 95% Student-t interval (n - 1 degrees of freedom);
    None with fewer than 2 values."""
    values = np.asarray(differences, dtype=np.float64)
    if len(values) < 2:
        return None
    mean = float(values.mean())
    std = float(values.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + LEVEL / 2, len(values) - 1)) * std / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half)


def common_seeds(a: Mapping[int, float], b: Mapping[int, float]) -> list[int]:
    """Seeds with a value in both (sorted)."""
    return sorted(set(a) & set(b))


def paired_interval(a: Mapping[int, float], b: Mapping[int, float]) -> Interval | None:
    """The paired difference a - b over the seeds both have ({seed: value} each), or None
    when they share fewer than 2 seeds."""
    seeds = common_seeds(a, b)
    return t_interval([a[s] - b[s] for s in seeds])


def verdict(interval: Interval, direction: str | None) -> str:
    """'A better' / 'B better' / 'not distinguishable' for an interval of A - B."""
    if interval.contains_zero() or direction not in ("higher", "lower"):
        return SAME
    a_higher = interval.low > 0
    return A_BETTER if a_higher == (direction == "higher") else B_BETTER


def wholly_better(
    a: Mapping[int, float], b: Mapping[int, float], direction: str | None
) -> bool | None:
    """Is ``a`` better than ``b`` by the paired test (the 95% interval of a - b excludes 0
    on the better side)? None when they share fewer than 2 seeds: not testable this way."""
    interval = paired_interval(a, b)
    if interval is None:
        return None
    return verdict(interval, direction) == A_BETTER


# -- per-seed values ----------------------------------------------------------------------
def seed_values(results: Iterable[RunResult]) -> dict[str, dict[str, dict[int, float]]]:
    """{row: {column: {seed: value}}} of every finished run (rows as in the leaderboard:
    the method's and one per sampler / estimator variant)."""
    from bench.report import flatten_rows

    out: dict[str, dict[str, dict[int, float]]] = {}
    for result in results:
        if result.status != "ok":
            continue
        for name, row in flatten_rows(result):
            columns = out.setdefault(name, {})
            for column, value in row.items():
                if column == "bpd_is_bound" or value is None or isinstance(value, bool):
                    continue
                columns.setdefault(column, {})[result.seed] = float(value)
    return out


def _compared_column(column: str) -> bool:
    """compare-methods tests gated, directional columns (not counts, not timings)."""
    from bench.evaluators import column as declared

    found = declared(column)
    return found is not None and found.gated and found.direction is not None


def _ranked_column(column: str) -> bool:
    from bench.evaluators import direction

    return direction(column) is not None


def select_metrics(available: Sequence[str], wanted: str | None, where: str) -> list[str]:
    """``--metrics fid,bpd``: each item a column (``fid[digits-cnn]``) or its base (``fid``,
    every extractor's); None: all ``available``. An item matching nothing is an error."""
    from bench.evaluators import metric_base

    if wanted is None:
        return list(available)
    items = [item.strip() for item in wanted.split(",")]
    if not all(items):
        raise GenbenchError(f"--metrics {wanted!r}: empty metric name")
    chosen: list[str] = []
    for item in items:
        matches = [c for c in available if c == item or metric_base(c) == item]
        if not matches:
            raise unknown_name("metric", item, available, where)
        chosen += [m for m in matches if m not in chosen]
    return [c for c in available if c in chosen]


def _table_order(columns: Iterable[str]) -> list[str]:
    import pandas as pd

    from bench.report import metric_columns

    frame = pd.DataFrame(columns=[f"{c}_mean" for c in columns])
    return metric_columns(frame)


# -- compare-methods ----------------------------------------------------------------------
@dataclasses.dataclass
class Comparison:
    """One column's verdict on A - B."""

    metric: str
    direction: str | None
    #: 'paired' | 'bootstrap' | 'none'
    test: str
    verdict: str
    #: common seeds (paired), or 0 / 1
    n: int
    mean_diff: float | None = None
    low: float | None = None
    high: float | None = None
    #: bootstrap resamples (test 'bootstrap')
    bootstrap: int | None = None
    #: the seeds compared (paired: the common seeds; bootstrap: A's and B's run)
    seeds: list[int] | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _rows_of(results: list[RunResult]) -> list[str]:
    from bench.report import flatten_rows

    names: list[str] = []
    for result in results:
        for name, _ in flatten_rows(result) if result.status == "ok" else [(result.method, {})]:
            if name not in names:
                names.append(name)
    return names


def check_row(name: str, rows: Sequence[str], study: Path) -> None:
    """A row the study has, or one clear error (a method it lacks, or an unknown name)."""
    if name in rows:
        return
    from bench.registry import METHODS

    if name in METHODS:
        raise GenbenchError(
            f"method {name!r} has no finished results under {study} "
            f"(rows there: {', '.join(rows) or 'none'})"
        )
    raise unknown_name("method", name, rows, f"study {study}")


def compare_methods(
    study: Path,
    a: str,
    b: str,
    metrics: str | None = None,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    device: str = "cpu",
    data_root: Path | None = None,
) -> list[Comparison]:
    """The verdict on A - B of every gated, directional column both rows have (see the
    module docstring): paired over common seeds, else a bootstrap over samples for FID and
    KID, else not testable."""
    from bench.evaluators import direction, metric_base
    from bench.report import load_results

    if a == b:
        raise GenbenchError(f"compare-methods needs two different rows, got {a!r} twice")
    if bootstrap < 1:
        raise GenbenchError(f"--bootstrap must be at least 1, got {bootstrap}")
    study = Path(study)
    if not study.is_dir():
        raise GenbenchError(f"study folder {study} does not exist")
    results = load_results(study)
    rows = _rows_of(results)
    check_row(a, rows, study)
    check_row(b, rows, study)
    values = seed_values(results)
    if a not in values or b not in values:
        missing = a if a not in values else b
        raise GenbenchError(f"{missing!r} has no finished (status ok) runs under {study}")
    shared = [c for c in values[a] if c in values[b] and _compared_column(c)]
    available = _table_order(shared)
    if not available:
        raise GenbenchError(f"{a!r} and {b!r} share no ranked metric under {study}")
    chosen = select_metrics(available, metrics, f"compare-methods {a} {b}")
    out: list[Comparison] = []
    pending: list[Comparison] = []
    for column in chosen:
        va, vb = values[a][column], values[b][column]
        seeds = common_seeds(va, vb)
        sense = direction(column)
        interval = paired_interval(va, vb)
        if interval is not None:
            out.append(
                Comparison(
                    column,
                    sense,
                    "paired",
                    verdict(interval, sense),
                    len(seeds),
                    interval.mean,
                    interval.low,
                    interval.high,
                    seeds=seeds,
                )
            )
            continue
        note = "one seed: not testable" if seeds else "no common seed: not testable"
        item = Comparison(column, sense, "none", note, len(seeds), seeds=seeds)
        if seeds:
            item.mean_diff = va[seeds[0]] - vb[seeds[0]]
        if metric_base(column) in BOOTSTRAPPED:
            pending.append(item)
        out.append(item)
    if pending:
        _bootstrap_fidelity(pending, values, results, a, b, bootstrap, seed, device, data_root)
    return out


def _bootstrap_fidelity(
    items: list[Comparison],
    values: dict[str, dict[str, dict[int, float]]],
    results: list[RunResult],
    a: str,
    b: str,
    count: int,
    seed: int,
    device: str,
    data_root: Path | None,
) -> None:
    """Fill ``items`` (FID / KID columns of rows sharing fewer than 2 seeds) with the
    bootstrap over samples, one pass per extractor."""
    from bench.evaluators import metric_base

    by_extractor: dict[str, list[Comparison]] = {}
    for item in items:
        extractor = item.metric.split("[", 1)[1][:-1] if "[" in item.metric else ""
        by_extractor.setdefault(extractor, []).append(item)
    for extractor, group in by_extractor.items():
        column = group[0].metric
        probe = _row_run(
            results, a, _bootstrap_seed(values[a][column], values[b][column], values[a][column])
        )[2]
        if extractor in (probe.get("second_extractors") or {}):
            # FID under a second network keeps no features of its own to resample: the
            # bootstrap is the study extractor's (its FID/KID rows), this one stays untested
            for item in group:
                item.verdict = "one seed: not testable (second feature network: no bootstrap)"
            continue
        sides = []
        for row in (a, b):
            run_seed = _bootstrap_seed(values[a][column], values[b][column], values[row][column])
            result, variant, scores = _row_run(results, row, run_seed)
            if scores["settings"].get("extractor") != extractor:
                raise GenbenchError(
                    f"{row!r} seed {run_seed}: scored with extractor "
                    f"{scores['settings'].get('extractor')!r}, not {extractor!r}"
                )
            sides.append((row, result, variant, scores))
        log.info(
            "bootstrap over samples: %s (seed %d) vs %s (seed %d), %d resamples, extractor %s",
            a,
            sides[0][1].seed,
            b,
            sides[1][1].seed,
            count,
            extractor,
        )
        draws = bootstrap_samples(
            [(result, variant, scores) for _, result, variant, scores in sides],
            count,
            seed,
            device,
            data_root,
        )
        for item in group:
            base = metric_base(item.metric)
            observed = draws[0].observed[base] - draws[1].observed[base]
            diffs = np.asarray(draws[0].resampled[base]) - np.asarray(draws[1].resampled[base])
            low, high = np.percentile(diffs, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
            interval = Interval(float(observed), float(low), float(high))
            item.test = "bootstrap"
            item.mean_diff, item.low, item.high = interval.mean, interval.low, interval.high
            item.bootstrap = count
            item.seeds = [sides[0][1].seed, sides[1][1].seed]
            item.verdict = verdict(interval, item.direction)
            recorded = (
                sides[0][3].get(base),
                sides[1][3].get(base),
            )
            for (row, result, _, _), draw, value in zip(sides, draws, recorded, strict=True):
                if value is not None and not math.isclose(
                    draw.observed[base], value, rel_tol=1e-4, abs_tol=1e-6
                ):
                    item.note = (
                        f"{row} seed {result.seed}: recomputed {base} {draw.observed[base]:.6g} "
                        f"differs from the recorded {value:.6g} (not the samples it scored?)"
                    )
                    log.warning("%s", item.note)


def _bootstrap_seed(
    va: Mapping[int, float], vb: Mapping[int, float], own: Mapping[int, float]
) -> int:
    """The run a bootstrap uses: the one common seed, else the row's lowest seed."""
    seeds = common_seeds(va, vb)
    return seeds[0] if seeds else min(own)


def _row_run(
    results: list[RunResult], row: str, seed: int
) -> tuple[RunResult, dict[str, Any], dict[str, Any]]:
    """The run, sampler variant and fidelity scores of leaderboard row ``row`` at ``seed``."""
    from bench.report import variant_name

    for result in results:
        if result.status != "ok" or result.seed != seed:
            continue
        if result.method == row and "fidelity" in result.metrics:
            return result, {}, result.metrics["fidelity"]
        for scores in result.metrics.get("fidelity_variants", []):
            variant = scores.get("variant", {})
            if variant_name(result.method, variant) == row:
                return result, dict(variant), scores
    raise GenbenchError(f"no fidelity scores of {row!r} at seed {seed}")


@dataclasses.dataclass
class Bootstrapped:
    """One row's FID / KID on its full sample set and on each bootstrap resample."""

    observed: dict[str, float]
    resampled: dict[str, list[float]]


def bootstrap_samples(
    sides: Sequence[tuple[RunResult, dict[str, Any], dict[str, Any]]],
    count: int,
    seed: int,
    device: str = "cpu",
    data_root: Path | None = None,
) -> list[Bootstrapped]:
    """For each (run, sampler variant, fidelity scores): the run's evaluation samples drawn
    again (an external row's read back), features extracted once through the run's
    extractor, then ``count`` resamples with replacement of those features, each side with
    its own stream of ``np.random.SeedSequence(seed)``, scored by torch-fidelity's FID
    and KID against the reference features (the run's KID subsets: same seed)."""
    streams = np.random.SeedSequence(seed).spawn(len(sides))
    out = []
    for (result, variant, scores), stream in zip(sides, streams, strict=True):
        features, reference, layer, kwargs = _features(result, variant, scores, device, data_root)
        out.append(_resample(features, reference, layer, kwargs, count, stream))
    return out


def _settings_kwargs(result: RunResult, scores: dict[str, Any], cuda: bool) -> dict[str, Any]:
    """torch-fidelity's keyword arguments as :func:`fidelity_from_inputs` built them for
    this run (its recorded settings)."""
    settings = scores["settings"]
    protocol = result.config.get("protocol", {})
    evals = protocol.get("eval", {}) if isinstance(protocol, dict) else {}
    return dict(
        cuda=cuda,
        batch_size=int(evals.get("eval_batch_size", 500)),
        fid=True,
        kid=True,
        prc=True,
        feature_extractor=settings["extractor"],
        kid_subsets=int(settings["kid_subsets"]),
        kid_subset_size=int(settings["kid_subset_size"]),
        prc_neighborhood=int(settings["prc_neighborhood"]),
        rng_seed=result.seed,
        save_cpu_ram=True,
        verbose=False,
        cache=False,
    )


def _samples_of(
    result: RunResult,
    variant: dict[str, Any],
    count: int,
    device: str,
    data_root: Path | None,
) -> tuple[torch.Tensor, Any]:
    """The uint8 samples a run's evaluation scored, and its data."""
    from bench.runs import _load_data, draw_samples, open_run

    if result.config.get("external"):
        from bench.score import read_samples

        data = _load_data(result, data_root)
        recorded = result.config.get("samples", {})
        path = recorded.get("path") if isinstance(recorded, dict) else None
        if not isinstance(path, str):
            raise GenbenchError(f"external row {result.method!r} records no samples path")
        samples = read_samples(Path(path), data.spec)
        if recorded.get("sha256") not in (None, samples.sha256):
            raise GenbenchError(
                f"external row {result.method!r}: {path} has changed since it was scored "
                "(sha256 differs)"
            )
        if len(samples.images) < count:
            raise GenbenchError(
                f"external row {result.method!r}: {path} holds {len(samples.images)} images, "
                f"it scored {count}"
            )
        return samples.images[:count], data
    if result.source_dir is None:
        raise GenbenchError(f"{result.method!r} seed {result.seed}: no run folder")
    run = open_run(result.source_dir, device, data_root)
    images, _, _ = draw_samples(run, count, variant)
    return images, run.data


def _features(
    result: RunResult,
    variant: dict[str, Any],
    scores: dict[str, Any],
    device: str,
    data_root: Path | None,
) -> tuple[torch.Tensor, torch.Tensor, str, dict[str, Any]]:
    """Generated and reference features at the FID / KID layer (the same layer for every
    built-in extractor; checked), the layer, and torch-fidelity's kwargs."""
    from torch_fidelity.utils import get_featuresdict_from_dataset, resolve_feature_layer_for_metric

    from bench.metrics import fidelity
    from bench.metrics.extractors import WEIGHTS_FROM_FILE
    from bench.runner import resolve_device

    settings = scores["settings"]
    extractor = settings["extractor"]
    torch_device = resolve_device(device)
    cuda = torch_device.type == "cuda"
    images, data = _samples_of(result, variant, int(settings["num_samples"]), device, data_root)
    weights_sha = fidelity.extractor_fingerprint(extractor)
    if settings.get("weights_sha256") not in (None, weights_sha):
        raise GenbenchError(
            f"{result.method!r} seed {result.seed} was scored with {extractor} weights "
            f"{str(settings.get('weights_sha256'))[:12]}, this machine has {weights_sha[:12]}"
        )
    kwargs = _settings_kwargs(result, scores, cuda)
    layer = {m: resolve_feature_layer_for_metric(m, **kwargs) for m in fidelity.METRICS_BY_LAYER}
    if layer["fid"] != layer["kid"]:
        raise GenbenchError(f"extractor {extractor}: FID and KID read different layers")
    layers = sorted(set(layer.values()))
    extract = fidelity.make_feature_extractor(extractor, layers, cuda, None)
    rgb = extractor in WEIGHTS_FROM_FILE
    spec = data.spec

    def features_of(images: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = fidelity.TensorImages(images, rgb)
        return get_featuresdict_from_dataset(  # type: ignore[no-any-return]
            inputs, extract, kwargs["batch_size"], cuda, True, False
        )

    generated = features_of(images.cpu())
    reference_images = fidelity.levels_to_uint8(data.levels("train"), spec.num_levels)
    cache_name = f"genbench-{spec.name}-train-{data.fingerprint()[:16]}-{weights_sha[:16]}"
    cache_path = fidelity.feature_cache_path(cache_name, extractor, layers, cuda)
    reference = fidelity.read_feature_cache(cache_path, layers, len(reference_images))
    if reference is None:
        reference = features_of(reference_images)
        try:
            fidelity.write_feature_cache(cache_path, reference)
        except OSError as exc:
            log.warning("could not write feature cache %s (%s)", cache_path, exc)
    return generated[layer["fid"]], reference[layer["fid"]], layer["fid"], kwargs


def _resample(
    features: torch.Tensor,
    reference: torch.Tensor,
    layer: str,
    kwargs: dict[str, Any],
    count: int,
    stream: np.random.SeedSequence,
) -> Bootstrapped:
    import torch_fidelity
    from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    reference_stats = fid_featuresdict_to_statistics({layer: reference}, layer)

    def scores(generated: torch.Tensor) -> tuple[float, float]:
        fid = fid_statistics_to_metric(
            fid_featuresdict_to_statistics({layer: generated}, layer), reference_stats, False
        )[torch_fidelity.KEY_METRIC_FID]
        kid = kid_features_to_metric(generated, reference, **kwargs)[
            torch_fidelity.KEY_METRIC_KID_MEAN
        ]
        return float(fid), float(kid)

    fid, kid = scores(features)
    rng = np.random.default_rng(stream)
    resampled: dict[str, list[float]] = {"fid": [], "kid": []}
    size = len(features)
    for _ in range(count):
        index = rng.integers(0, size, size)
        fid_b, kid_b = scores(features[index])
        resampled["fid"].append(fid_b)
        resampled["kid"].append(kid_b)
    return Bootstrapped({"fid": fid, "kid": kid}, resampled)


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def comparisons_markdown(a: str, b: str, items: Sequence[Comparison]) -> str:
    """The markdown table of compare-methods."""
    import pandas as pd

    from bench.report import _md_text

    pair = _md_text(f"{a} − {b}")
    records = []
    for item in items:
        interval = f"[{_number(item.low)}, {_number(item.high)}]" if item.low is not None else "-"
        if item.test == "paired":
            size = f"n={item.n} seeds"
        elif item.test == "bootstrap":
            size = f"bootstrap {item.bootstrap} (seed {item.seeds[0]} vs {item.seeds[1]})"  # type: ignore[index]
        else:
            size = f"n={item.n}"
        shown = item.verdict
        if item.verdict == A_BETTER:
            shown = f"A better ({_md_text(a)})"
        elif item.verdict == B_BETTER:
            shown = f"B better ({_md_text(b)})"
        records.append(
            {
                "methods (A − B)": pair,
                "metric": _md_text(item.metric)
                + {"higher": " ↑", "lower": " ↓"}.get(item.direction or "", ""),
                "mean diff": _number(item.mean_diff),
                "95% CI": interval,
                "n / bootstrap": size,
                "verdict": shown + (f" ({_md_text(item.note)})" if item.note else ""),
            }
        )
    return pd.DataFrame.from_records(records).to_markdown(index=False)


def comparisons_json(study: Path, a: str, b: str, items: Sequence[Comparison]) -> str:
    payload = {
        "study": str(study),
        "a": a,
        "b": b,
        "level": LEVEL,
        "comparisons": [item.to_dict() for item in items],
    }
    return json.dumps(payload, indent=2, allow_nan=False)


# -- correlate ----------------------------------------------------------------------------
@dataclasses.dataclass
class Agreement:
    """How two studies agree on one column."""

    metric: str
    methods: list[str]
    spearman: float | None = None
    kendall: float | None = None
    #: (a, b) for every pair whose order differs: a > b in A, a < b in B
    pairs: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    note: str = ""

    @property
    def swapped(self) -> list[str]:
        """'a > b in A, a < b in B' for every pair whose order differs."""
        return [f"{a} > {b} in A, {a} < {b} in B" for a, b in self.pairs]

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "n": len(self.methods),
            "methods": self.methods,
            "spearman": self.spearman,
            "kendall": self.kendall,
            "swapped": self.swapped,
            "note": self.note,
        }


def _means(table: Any) -> dict[str, dict[str, float]]:
    """{column: {row: mean}} of an aggregated table (rows with a value only)."""
    from bench.report import metric_columns

    out: dict[str, dict[str, float]] = {}
    for column in metric_columns(table):
        values = {}
        for _, row in table.iterrows():
            mean = row.get(f"{column}_mean")
            if mean is not None and not (isinstance(mean, float) and math.isnan(mean)):
                values[str(row["method"])] = float(mean)
        out[column] = values
    return out


def correlate(study_a: Path, study_b: Path, metrics: str | None = None) -> list[Agreement]:
    """Rank agreement of two studies, per ranked column present in both."""
    from bench.report import aggregate, load_results

    means = []
    for study in (study_a, study_b):
        if not Path(study).is_dir():
            raise GenbenchError(f"study folder {study} does not exist")
        means.append(_means(aggregate(load_results(Path(study)))))
    mean_a, mean_b = means
    shared = [c for c in mean_a if c in mean_b and _ranked_column(c)]
    if not shared:
        raise GenbenchError(f"{study_a} and {study_b} share no ranked metric")
    chosen = select_metrics(_table_order(shared), metrics, "correlate")
    out = []
    for column in chosen:
        rows = [r for r in mean_a[column] if r in mean_b[column]]
        item = Agreement(column, rows)
        if len(rows) < 3:
            item.note = TOO_FEW
            out.append(item)
            continue
        xs = np.array([mean_a[column][r] for r in rows])
        ys = np.array([mean_b[column][r] for r in rows])
        if np.ptp(xs) == 0 or np.ptp(ys) == 0:
            item.note = "undefined: one study's values are all equal"
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                item.spearman = _finite(scipy_stats.spearmanr(xs, ys).statistic)
                item.kendall = _finite(scipy_stats.kendalltau(xs, ys).statistic)
        item.pairs = swapped_pairs(rows, xs.tolist(), ys.tolist())
        out.append(item)
    return out


def _finite(value: Any) -> float | None:
    """A finite coefficient rounded to 12 decimals (1 - 1e-16 is 1), else None."""
    number = float(value)
    return round(number, 12) if math.isfinite(number) else None


def swapped_pairs(
    rows: Sequence[str], xs: Sequence[float], ys: Sequence[float]
) -> list[tuple[str, str]]:
    """Pairs ordered one way by ``xs`` (study A) and the other by ``ys`` (study B), as
    (higher in A, lower in A); a tie in either study is no swap."""
    out = []
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            da, db = xs[i] - xs[j], ys[i] - ys[j]
            if da * db < 0:
                out.append((rows[i], rows[j]) if da > 0 else (rows[j], rows[i]))
    return out


def agreements_markdown(study_a: Path, study_b: Path, items: Sequence[Agreement]) -> str:
    import pandas as pd

    from bench.report import _md_text

    records = []
    for item in items:
        records.append(
            {
                "metric": _md_text(item.metric),
                "methods": len(item.methods),
                "Spearman": _number(item.spearman, 3) if item.spearman is not None else item.note,
                "Kendall": _number(item.kendall, 3) if item.kendall is not None else item.note,
                "swapped pairs": "-" if item.note == TOO_FEW else len(item.pairs),
            }
        )
    text = (
        f"Rank agreement of per-method means: A = {_md_text(str(study_a))}, "
        f"B = {_md_text(str(study_b))}\n\n"
        + pd.DataFrame.from_records(records).to_markdown(index=False)
        + "\n"
    )
    for item in items:
        if item.pairs:
            text += f"\n**{_md_text(item.metric)}**: order differs for\n\n"
            text += "".join(
                f"- {_md_text(a)} > {_md_text(b)} in A, {_md_text(a)} < {_md_text(b)} in B\n"
                for a, b in item.pairs
            )
    return text


def agreements_csv(items: Sequence[Agreement]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["metric", "methods", "spearman", "kendall", "swapped_pairs", "swapped", "note"]
    )
    for item in items:
        writer.writerow(
            [
                item.metric,
                len(item.methods),
                "" if item.spearman is None else f"{item.spearman:.6g}",
                "" if item.kendall is None else f"{item.kendall:.6g}",
                len(item.swapped),
                "; ".join(item.swapped),
                item.note,
            ]
        )
    return buffer.getvalue()


def agreements_json(study_a: Path, study_b: Path, items: Sequence[Agreement]) -> str:
    payload = {
        "study_a": str(study_a),
        "study_b": str(study_b),
        "metrics": [item.to_dict() for item in items],
    }
    return json.dumps(payload, indent=2, allow_nan=False)


@dataclasses.dataclass
class FeatureSpaceAgreement:
    """Whether one study's FID ranking holds under a second, independently trained feature
    network: Spearman's rho over the rows scored under both, and the rows that move most."""

    first: str
    second: str
    methods: int
    spearman: float | None
    #: (row, rank under first, rank under second), largest move first
    moves: list[tuple[str, int, int]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "second": self.second,
            "methods": self.methods,
            "spearman": self.spearman,
            "moves": [{"method": m, "first": a, "second": b} for m, a, b in self.moves],
        }

    def sentence(self) -> str:
        """One line: rho, and the rows that move most (rank under first -> under second)."""
        rho = "undefined" if self.spearman is None else f"{self.spearman:.3f}"
        moved = ", ".join(f"{m} {a} → {b}" for m, a, b in self.moves if a != b)
        return f"{self.first} vs {self.second}: Spearman {rho} over {self.methods} rows" + (
            f"; moving most: {moved}" if moved else "; no row moves"
        )


def feature_space_agreement(table: Any, shown: int = 6) -> list[FeatureSpaceAgreement]:
    """For every pair of FID columns of an aggregated table (``fid[a]``, ``fid[b]``, the
    study's extractor and a second network): rank agreement of the rows scored under both
    (competition ranks, 1 = lowest FID) and the ``shown`` rows whose rank moves most."""
    from bench.evaluators import metric_base

    means = _means(table)  # in table order: the study's extractor's FID first
    columns = [c for c in means if metric_base(c) == "fid" and "[" in c]
    out = []
    for i, first in enumerate(columns):
        for second in columns[i + 1 :]:
            rows = sorted(r for r in means[first] if r in means[second])
            if len(rows) < 3:
                continue
            xs = np.array([means[first][r] for r in rows])
            ys = np.array([means[second][r] for r in rows])
            rho = None
            if np.ptp(xs) > 0 and np.ptp(ys) > 0:
                rho = _finite(scipy_stats.spearmanr(xs, ys).statistic)
            rank_x = scipy_stats.rankdata(xs, method="min").astype(int)
            rank_y = scipy_stats.rankdata(ys, method="min").astype(int)
            order = sorted(range(len(rows)), key=lambda k: (-abs(rank_y[k] - rank_x[k]), rows[k]))
            moves = [(rows[k], int(rank_x[k]), int(rank_y[k])) for k in order[:shown]]
            out.append(FeatureSpaceAgreement(first, second, len(rows), rho, moves))
    return out
