"""Regression verdicts: compare aggregated results with an expected table.

The expected table (``reports/expected/<protocol>-<dataset>.csv``) has one row per
(method, metric) with the expected ``value``, an absolute ``tolerance`` and the metric's
``direction`` (higher or lower is better), plus optional columns saying how the tolerance was
derived (``seeds``, ``spread_std``, ``derivation``, ``note``). A result worse than value by
more than the tolerance is a regression (exit 1); better by more than it is an improvement,
always printed and, with ``--strict``, a failure too, so the table is kept current with
``genbench compare --update EXPECTED RESULTS``, never by hand. A method or metric missing from
the results, or a run that did not finish, is a regression.

Tolerances come from measured seed-to-seed spread (:func:`derive_expected`, ``genbench compare
--derive-tolerances``) and every row must be able to fail (:func:`rows_that_cannot_fail`; the
rules are in :mod:`bench.tolerances`). docs/GATE.md has the recipes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import tolerances
from bench.errors import GenbenchError, unknown_name
from bench.evaluators import direction, gated_metrics
from bench.report import aggregate, flatten_rows, load_results, metric_columns
from bench.results import RunResult

log = logging.getLogger(__name__)

COLUMNS = ("method", "metric", "value", "tolerance", "direction")
#: how each tolerance was derived; optional on reading, always written
PROVENANCE = ("seeds", "spread_std", "derivation", "note", "platform")
#: the metrics the expected tables track are the evaluators' gated columns
#: (bench.evaluators.gated_metrics): timings are too noisy for a regression gate; they are
#: gated as ratios by tools/bench_gate.py
#: the seed the CI gate runs: expected values are this seed's, so a same-seed re-run on the
#: machine that wrote the table matches bitwise
GATE_SEED = 0
DEFAULT_DERIVATION = "default (not derived from spread)"
#: on the platform that wrote a row, seed 0 reproduces bitwise: a difference beyond the CSV's
#: 6-decimal rounding is a code change ("changed", a failure with --strict)
EXACT_TOLERANCE = 2e-6


def platform_of(result: RunResult) -> str:
    """What decides whether a seed-0 run reproduces bitwise: torch and Python versions, the
    device with its thread count, and the OS platform string."""
    env = result.env if isinstance(result.env, dict) else {}
    raw_packages = env.get("packages")
    packages: dict[str, Any] = raw_packages if isinstance(raw_packages, dict) else {}
    throughput = result.metrics.get("throughput") if isinstance(result.metrics, dict) else None
    device = throughput.get("device") if isinstance(throughput, dict) else None
    return (
        f"torch {packages.get('torch')}; python {env.get('python')}; {device or env.get('device')}"
        f"; {env.get('platform')}"
    )


def numerics(platform: str) -> tuple[str, str]:
    """The part of a :func:`platform_of` string that decides the floating-point numerics of
    a run: the torch version (its kernels and BLAS) and the device with its thread count (the
    reduction order). Another Python or OS build of the same torch on the same device computes
    the same numbers."""
    parts = str(platform).split("; ")
    return (parts[0], parts[2]) if len(parts) >= 4 else (str(platform), "")


def default_tolerance(metric: str, value: float) -> float:
    """Tolerances for rows with no measured spread: relative for unbounded metrics, absolute
    for rates. Wider than a derived tolerance; clipped like one (:func:`finish_row`)."""
    base = tolerances.metric_base(metric)
    if base == "fid":
        return max(0.5, 0.15 * abs(value))
    if base == "kid":
        return max(0.002, 0.3 * abs(value))
    if base == "bpd":
        return max(0.02, 0.02 * abs(value))
    return 0.03  # accuracies, precision, recall


def owner(row_name: str) -> str:
    """'ddim[steps=5]' -> 'ddim': the method that produces a (variant) row."""
    return row_name.split("[", 1)[0]


# --------------------------------------------------------------------------- expected tables


def read_expected(path: Path) -> pd.DataFrame:
    """Read and validate an expected table: one clear error for the first bad cell."""
    try:
        table = pd.read_csv(
            path,
            dtype={
                "method": str,
                "metric": str,
                "direction": str,
                "derivation": str,
                "note": str,
                "platform": str,
            },
            keep_default_na=False,
            na_values={"value": [""], "tolerance": [""], "spread_std": [""], "seeds": [""]},
        )
    except (OSError, ValueError, pd.errors.EmptyDataError) as exc:
        reason = " ".join(str(exc).split())  # pandas' messages can span lines: one line
        raise GenbenchError(f"cannot read expected table {path}: {reason}") from None
    return validate_expected(table, str(path))


def validate_expected(table: pd.DataFrame, where: str = "expected table") -> pd.DataFrame:
    """Check columns, names, numbers, directions and duplicates; return a clean copy."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise GenbenchError(f"{where} lacks column {missing[0]!r} (columns: {', '.join(COLUMNS)})")
    if not len(table):
        raise GenbenchError(f"{where} has no rows")
    table = table.copy()
    for column in ("method", "metric", "direction"):
        table[column] = table[column].astype(str).str.strip()
    for column in ("value", "tolerance"):
        numbers = pd.to_numeric(table[column], errors="coerce").astype("float64")
        bad = ~np.isfinite(numbers.to_numpy())
        if bad.any():
            line = _line(table, bad)
            raise GenbenchError(
                f"{where}, line {line}: {column} must be a finite number, got "
                f"{table.loc[bad, column].iloc[0]!r}"
            )
        table[column] = numbers
    for column in ("seeds", "spread_std"):
        if column in table.columns:
            table[column] = pd.to_numeric(table[column], errors="coerce")
    for column in ("derivation", "note", "platform"):
        if column in table.columns:
            table[column] = table[column].fillna("").astype(str)
    for index, row in table.iterrows():
        line = int(str(index)) + 2  # header is line 1
        _check_row(row, f"{where}, line {line}")
    duplicated = table.duplicated(["method", "metric"], keep=False)
    if duplicated.any():
        first = table[duplicated].iloc[0]
        lines = [str(int(str(i)) + 2) for i in table.index[duplicated & _same(table, first)]]
        raise GenbenchError(
            f"{where}: duplicate row for ({first['method']}, {first['metric']}) on lines "
            f"{', '.join(lines)}; keep one"
        )
    return table


def _line(table: pd.DataFrame, mask: pd.Series) -> int:
    return int(str(table.index[mask][0])) + 2


def _same(table: pd.DataFrame, row: pd.Series) -> pd.Series:
    return (table["method"] == row["method"]) & (table["metric"] == row["metric"])


def _check_row(row: pd.Series, where: str) -> None:
    method, metric, sense = row["method"], row["metric"], row["direction"]
    if not method or method == "nan":
        raise GenbenchError(f"{where}: empty method name")
    base = tolerances.metric_base(metric)
    tracked = gated_metrics()
    if base not in tracked:
        raise unknown_name("metric", base, tracked, where)
    if sense not in ("higher", "lower"):
        raise GenbenchError(f"{where}: direction must be higher or lower, got {sense!r}")
    if sense != direction(metric):
        raise GenbenchError(
            f"{where}: {metric} is {direction(metric)}-is-better, the row says {sense!r}"
        )
    if row["tolerance"] < 0:
        raise GenbenchError(f"{where}: tolerance must be >= 0, got {row['tolerance']:g}")
    floor, ceiling = tolerances.bounds(metric)
    if not floor <= row["value"] <= ceiling:
        raise GenbenchError(
            f"{where}: {metric} value {row['value']:g} is outside its range [{floor:g}, "
            f"{ceiling:g}]"
        )


def rows_that_cannot_fail(table: pd.DataFrame) -> pd.DataFrame:
    """Rows with no attainable value worse than ``value`` by more than ``tolerance``: they
    guard nothing (e.g. recall 0.0 ± 0.03). Every committed table must have none."""
    mask = [
        not tolerances.can_fail(r["metric"], r["value"], r["tolerance"], r["direction"])
        for _, r in table.iterrows()
    ]
    return table[pd.Series(mask, index=table.index, dtype=bool)]


def rows_that_cannot_improve(table: pd.DataFrame) -> pd.DataFrame:
    """Rows where no attainable value is better by more than the tolerance: at their best
    bound, or saturated (see :mod:`bench.tolerances`); ``--strict`` cannot flag them."""
    mask = [
        not tolerances.can_improve(r["metric"], r["value"], r["tolerance"], r["direction"])
        for _, r in table.iterrows()
    ]
    return table[pd.Series(mask, index=table.index, dtype=bool)]


def finish_row(row: dict[str, Any]) -> dict[str, Any] | None:
    """Clip a row's tolerance so it can fail (see :func:`bench.tolerances.clip`) and record
    why in its note; ``None`` when the value is within the noise floor of the worst
    attainable one (nothing to guard)."""
    clipped = tolerances.clip(row["metric"], row["value"], row["tolerance"], row["direction"])
    if not clipped.usable:
        return None
    # a tolerance clipped when it was derived keeps saying so when a later --update
    # finds it already within bounds
    note = clipped.note or (row.get("note") or "")
    return {**row, "tolerance": round(clipped.tolerance, 6), "note": note}


def clip_table(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Every row clipped so it can fail; rows at their worst bound dropped (named in the
    returned messages). Used by ``--update``, ``--derive-tolerances`` and ``--clip``."""
    rows, dropped = [], []
    for record in table.to_dict("records"):
        finished = finish_row(record)
        if finished is None:
            dropped.append(
                f"dropped {record['method']} {record['metric']} = {record['value']:g}: within "
                "the noise floor of the worst attainable value, nothing to guard"
            )
        else:
            rows.append(finished)
    return _with_columns(pd.DataFrame(rows)), dropped


def _with_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Required columns first, then the provenance columns (filled when absent)."""
    for column in PROVENANCE:
        if column not in table.columns:
            table[column] = "" if column in ("derivation", "note", "platform") else math.nan
    table["derivation"] = table["derivation"].fillna("").replace("", DEFAULT_DERIVATION)
    table["note"] = table["note"].fillna("")
    table["platform"] = table["platform"].fillna("")
    return table[list(COLUMNS) + list(PROVENANCE)]


def write_expected(table: pd.DataFrame, path: Path) -> None:
    """Write atomically, in a stable order (method, then the metric order of the report)."""
    from bench.results import write_text_atomic

    table = table.copy()
    table["seeds"] = table["seeds"].astype("Int64")
    write_text_atomic(path, table.to_csv(index=False))


# --------------------------------------------------------------------------- results


def load_checked_results(results_dir: Path) -> list[RunResult]:
    """Results of one protocol and one dataset, each in its own method's seed folder: mixing
    studies or an edited method field would silently average the wrong runs."""
    results = load_results(results_dir)
    studies: dict[tuple[str, str], str] = {}
    seen: dict[tuple[str, int], Path | None] = {}
    for result in results:
        where = result.source_dir or results_dir
        if not isinstance(result.method, str) or not isinstance(result.dataset, str):
            raise GenbenchError(f"result in {where}: method and dataset must be strings")
        if not isinstance(result.protocol, dict) or not isinstance(
            result.protocol.get("name"), str
        ):
            raise GenbenchError(f"result in {where}: protocol must have a name")
        if not isinstance(result.seed, int) or isinstance(result.seed, bool):
            raise GenbenchError(f"result in {where}: seed must be an integer")
        studies.setdefault((result.protocol["name"], result.dataset), str(where))
        folder = result.source_dir
        if folder is not None and folder.name.startswith("seed-"):
            if folder.parent.name != result.method or folder.name != f"seed-{result.seed}":
                raise GenbenchError(
                    f"result in {folder} says method {result.method!r} seed {result.seed}: "
                    f"it does not belong in {folder.parent.name}/{folder.name}"
                )
        key = (result.method, result.seed)
        if key in seen:
            raise GenbenchError(
                f"two results for {result.method} seed {result.seed}: {seen[key]} and {where}"
            )
        seen[key] = result.source_dir
    if len(studies) > 1:
        found = "; ".join(f"{p}/{d} (e.g. {w})" for (p, d), w in sorted(studies.items()))
        raise GenbenchError(
            f"{results_dir} mixes studies: {found}; point compare at one <protocol>/<dataset> "
            "folder"
        )
    return results


# --------------------------------------------------------------------------- verdicts


def select_methods(expected: pd.DataFrame, methods: Sequence[str] | None) -> pd.DataFrame:
    """The rows of ``methods`` (and their sampler variants); unknown names are an error."""
    if not methods:
        return expected
    known = sorted({owner(m) for m in expected["method"]})
    for name in methods:
        if name not in known:
            raise unknown_name("method", name, known, "compare --methods")
    return expected[expected["method"].map(owner).isin(set(methods))]


def compare(
    expected: pd.DataFrame, results_dir: Path, methods: Sequence[str] | None = None
) -> pd.DataFrame:
    """One verdict row per expected (method, metric): ok | regression | improvement, or
    changed: a single seed-0 run on the very platform that wrote the row (``platform``
    column) that differs from it by more than rounding, yet within the tolerance. Such a run
    reproduces bitwise, so the difference is a code change, too small for the spread band to
    see (docs/GATE.md); ``--strict`` fails on it.

    An improvement is ``elsewhere`` when every result of the method ran with other numerics
    than the row's (:func:`numerics`: another thread count or torch): training trajectories
    then differ by more than seed noise in places (one thread against two moved three
    vq-vae rows past their 3-std bands), so ``--strict`` reports it without failing;
    regressions fail everywhere."""
    expected = select_methods(expected, methods)
    results = load_checked_results(results_dir)
    current = aggregate(results).set_index("method")
    platforms: dict[str, set[str]] = {}
    ran_with: dict[str, set[tuple[str, str]]] = {}
    for result in results:
        tag = platform_of(result) if result.seed == GATE_SEED else "other seed"
        platforms.setdefault(result.method, set()).add(tag)
        ran_with.setdefault(result.method, set()).add(numerics(platform_of(result)))
    verdicts = []
    for _, row in expected.iterrows():
        method, metric = row["method"], row["metric"]
        value: Any = None
        elsewhere = False
        if method in current.index and f"{metric}_mean" in current.columns:
            value = current.at[method, f"{metric}_mean"]
        if method in current.index:
            status = current.at[method, "status"]
        elif owner(method) in current.index:
            status = current.at[owner(method), "status"]
        else:
            status = "missing"
        if value is None or (isinstance(value, float) and math.isnan(value)):
            verdict, delta = "regression", math.nan
            note = "missing" if status == "ok" else status
        else:
            delta = float(value) - float(row["value"])
            worse = -delta if row["direction"] == "higher" else delta
            same_platform = bool(row.get("platform")) and platforms.get(owner(method)) == {
                row.get("platform")
            }
            verdict = (
                "regression"
                if worse > row["tolerance"]
                else "improvement"
                if -worse > row["tolerance"]
                else "changed"
                if same_platform and abs(delta) > EXACT_TOLERANCE
                else "ok"
            )
            note = "" if status == "ok" else status
            if verdict == "changed":
                note = "same platform and seed as the table: reproduces bitwise unless changed"
            row_numerics = numerics(row.get("platform")) if row.get("platform") else None
            if (
                verdict == "improvement"
                and row_numerics is not None
                and row_numerics not in ran_with.get(owner(method), set())
            ):
                elsewhere = True
                note = f"other numerics than the table's ({row_numerics[1]}; {row_numerics[0]})"
        verdicts.append(
            {
                "method": method,
                "metric": metric,
                "expected": row["value"],
                "current": value,
                "delta": delta,
                "tolerance": row["tolerance"],
                "direction": row["direction"],
                "verdict": verdict,
                "note": note,
                "elsewhere": elsewhere,
            }
        )
    return pd.DataFrame(
        verdicts,
        columns=[
            "method",
            "metric",
            "expected",
            "current",
            "delta",
            "tolerance",
            "direction",
            "verdict",
            "note",
            "elsewhere",
        ],
    )


def worst_row(verdicts: pd.DataFrame, kinds: Sequence[str] = ("regression",)) -> pd.Series | None:
    """The flagged row furthest beyond its tolerance, in tolerances (a missing metric counts
    as infinitely far), for one-line summaries such as the fault table."""
    bad = verdicts[verdicts["verdict"].isin(list(kinds))]
    if not len(bad):
        return None
    excess = [
        math.inf
        if r["delta"] is None or not math.isfinite(float(r["delta"]))
        else (abs(float(r["delta"])) - r["tolerance"]) / max(float(r["tolerance"]), 1e-12)
        for _, r in bad.iterrows()
    ]
    return bad.iloc[max(range(len(excess)), key=excess.__getitem__)]


# --------------------------------------------------------------------------- writing tables


def _tracked(metrics: Iterable[str]) -> list[str]:
    tracked = gated_metrics()
    return [m for m in metrics if tolerances.metric_base(m) in tracked]


def expected_from_results(results_dir: Path, previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """A new expected table from current results (``--update``; seed 0's when there are
    several, the seed the gate runs), keeping each row's tolerance and how it was derived;
    new rows get :func:`default_tolerance`, marked as such. Every row is clipped so it can
    fail (:func:`clip_table`; dropped rows are logged)."""
    results = load_checked_results(results_dir)
    if len({r.seed for r in results}) > 1 and any(r.seed == GATE_SEED for r in results):
        log.warning("%s holds several seeds: values of seed %d only", results_dir, GATE_SEED)
        results = [r for r in results if r.seed == GATE_SEED]
    table = aggregate(results)
    single = {r.method: platform_of(r) for r in results if r.seed == GATE_SEED}
    kept: dict[tuple[str, str], dict[str, Any]] = {}
    if previous is not None:
        kept = {(r["method"], r["metric"]): r for r in previous.to_dict("records")}
    rows = []
    for _, row in table.iterrows():
        for metric in _tracked(metric_columns(table)):
            value = row.get(f"{metric}_mean")
            if value is None or math.isnan(value):
                continue
            old = kept.get((row["method"], metric))
            if old is not None:
                provenance = {
                    "tolerance": old["tolerance"],
                    "seeds": old.get("seeds", math.nan),
                    "spread_std": old.get("spread_std", math.nan),
                    "derivation": old.get("derivation") or DEFAULT_DERIVATION,
                    "note": old.get("note") if isinstance(old.get("note"), str) else "",
                }
            else:
                provenance = {
                    "tolerance": default_tolerance(metric, value),
                    "seeds": math.nan,
                    "spread_std": math.nan,
                    "derivation": DEFAULT_DERIVATION,
                }
            rows.append(
                {
                    "method": row["method"],
                    "metric": metric,
                    "value": round(float(value), 6),
                    "direction": direction(metric),
                    **provenance,
                    "platform": single.get(owner(row["method"]), ""),
                }
            )
    if not rows:
        raise GenbenchError(f"no tracked metric ({', '.join(gated_metrics())}) in {results_dir}")
    clipped, dropped = clip_table(_with_columns(pd.DataFrame(rows)))
    for message in dropped:
        log.warning(message)
    return _ordered(clipped)


def derive_expected(
    study_dir: Path,
    previous: pd.DataFrame | None = None,
    k: float = tolerances.K,
    value_seed: int = GATE_SEED,
) -> tuple[pd.DataFrame, list[str]]:
    """An expected table from a multi-seed study of the gate's protocol and dataset:
    value = seed ``value_seed``'s (the seed the gate runs), tolerance = max(k * std over the
    seeds, the metric's noise floor), clipped so the row can fail. Rows of ``previous``
    whose method the study lacks are kept as they were, so one family can be re-derived.
    Returns the table and messages (dropped rows, kept rows)."""
    if not math.isfinite(k) or k <= 0:
        raise GenbenchError(f"--k must be a positive number, got {k:g}")
    results = [r for r in load_checked_results(study_dir) if r.status == "ok"]
    per_seed: dict[str, dict[int, dict[str, float]]] = {}
    platform = {r.method: platform_of(r) for r in results if r.seed == value_seed}
    tracked = gated_metrics()
    for result in results:
        for name, flat in flatten_rows(result):
            scores = per_seed.setdefault(name, {}).setdefault(result.seed, {})
            for metric, value in flat.items():
                if tolerances.metric_base(metric) in tracked and value is not None:
                    scores[metric] = float(value)
    if not per_seed:
        raise GenbenchError(f"no finished (ok) results under {study_dir}")
    seeds = sorted({s for by_seed in per_seed.values() for s in by_seed})
    if len(seeds) < 3:
        raise GenbenchError(
            f"{study_dir} has seeds {seeds}: measuring spread needs at least 3 "
            "(e.g. genbench run --seeds 0,1,2,3,4)"
        )
    if value_seed not in seeds:
        raise GenbenchError(f"{study_dir} has no seed {value_seed} (the seed the gate runs)")
    rows: list[dict[str, Any]] = []
    messages: list[str] = []
    for name, by_seed in per_seed.items():
        if value_seed not in by_seed:
            messages.append(f"{name}: seed {value_seed} did not finish; no rows")
            continue
        for metric, value in by_seed[value_seed].items():
            samples = [s[metric] for s in by_seed.values() if metric in s]
            std = float(pd.Series(samples).std(ddof=1)) if len(samples) > 1 else math.nan
            if len(samples) < 3:
                tolerance = default_tolerance(metric, value)
                how = f"{DEFAULT_DERIVATION}: only {len(samples)} seed(s) finished"
            else:
                tolerance, how = tolerances.spread_tolerance(metric, value, std, k)
            rows.append(
                {
                    "method": name,
                    "metric": metric,
                    "value": round(value, 6),
                    "tolerance": tolerance,
                    "direction": direction(metric),
                    "seeds": len(samples),
                    "spread_std": round(std, 6) if math.isfinite(std) else math.nan,
                    "derivation": how,
                    "platform": platform.get(owner(name), ""),
                }
            )
    if previous is not None:
        derived = {owner(str(r["method"])) for r in rows}
        for record in previous.to_dict("records"):
            if owner(record["method"]) not in derived:
                rows.append(record)
                messages.append(f"{record['method']} {record['metric']}: kept (not in the study)")
    table, dropped = clip_table(_with_columns(pd.DataFrame(rows)))
    return _ordered(table), messages + dropped


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    """Rows grouped by method (variants after their method), metrics in report order."""
    order = {m: i for i, m in enumerate(_metric_order(table["metric"]))}
    keyed = table.assign(
        _owner=table["method"].map(owner),
        _variant=table["method"].map(lambda m: m != owner(m)),
        _metric=table["metric"].map(order.__getitem__),
    )
    keyed = keyed.sort_values(["_owner", "_variant", "method", "_metric"], kind="stable")
    return keyed.drop(columns=["_owner", "_variant", "_metric"]).reset_index(drop=True)


def _metric_order(metrics: Iterable[str]) -> list[str]:
    frame = pd.DataFrame({f"{m}_mean": [0.0] for m in set(metrics)})
    return metric_columns(frame)
