"""Regression verdicts: compare aggregated results with an expected table.

The expected table (``reports/expected/<protocol>-<dataset>.csv``) has one row per
(method, metric) with the expected ``value``, an absolute ``tolerance`` and the metric's
``direction`` (higher or lower is better). A result worse than value by more than the
tolerance is a regression (exit 1); better by more than it is an improvement, printed so the
table can be refreshed with ``genbench compare --update EXPECTED RESULTS``, never by hand.
A method or metric missing from the results, or a run that did not finish, is a regression.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import GenbenchError
from bench.report import aggregate, direction, load_results, metric_base, metric_columns

COLUMNS = ("method", "metric", "value", "tolerance", "direction")
#: metrics the expected tables track (timings are too noisy for a regression gate)
TRACKED = ("fid", "kid", "precision", "recall", "sample_acc", "bpd", "linear_acc", "knn_acc")


def default_tolerance(metric: str, value: float) -> float:
    """Tolerances for new expected rows: relative for unbounded metrics, absolute for rates."""
    base = metric_base(metric)
    if base == "fid":
        return max(0.5, 0.15 * abs(value))
    if base == "kid":
        return max(0.002, 0.3 * abs(value))
    if base == "bpd":
        return max(0.02, 0.02 * abs(value))
    return 0.03  # accuracies, precision, recall


def read_expected(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise GenbenchError(f"cannot read expected table {path}: {exc}") from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise GenbenchError(
            f"expected table {path} lacks column {missing[0]!r} (columns: {', '.join(COLUMNS)})"
        )
    bad = table[~table["direction"].isin(["higher", "lower"])]
    if len(bad):
        raise GenbenchError(
            f"expected table {path}: direction must be higher or lower, got "
            f"{bad['direction'].iloc[0]!r}"
        )
    for column in ("value", "tolerance"):
        if not pd.api.types.is_numeric_dtype(table[column]) or table[column].isna().any():
            raise GenbenchError(f"expected table {path}: column {column!r} must be numbers")
    return table


def compare(expected: pd.DataFrame, results_dir: Path) -> pd.DataFrame:
    """One verdict row per expected (method, metric): ok | regression | improvement."""
    current = aggregate(load_results(results_dir)).set_index("method")
    verdicts = []
    for _, row in expected.iterrows():
        method, metric = row["method"], row["metric"]
        value: Any = None
        if method in current.index and f"{metric}_mean" in current.columns:
            value = current.at[method, f"{metric}_mean"]
        status = current.at[method, "status"] if method in current.index else "missing"
        if value is None or (isinstance(value, float) and math.isnan(value)):
            verdict, delta = "regression", math.nan
            note = "missing" if status == "ok" else status
        else:
            delta = float(value) - float(row["value"])
            worse = (
                delta > row["tolerance"]
                if row["direction"] == "lower"
                else -delta > row["tolerance"]
            )
            better = (
                -delta > row["tolerance"]
                if row["direction"] == "lower"
                else delta > row["tolerance"]
            )
            verdict = "regression" if worse else "improvement" if better else "ok"
            note = "" if status == "ok" else status
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
            }
        )
    return pd.DataFrame(verdicts)


def expected_from_results(results_dir: Path, previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """A new expected table from current results, keeping the tolerances already chosen."""
    table = aggregate(load_results(results_dir))
    kept = {}
    if previous is not None:
        kept = {(r["method"], r["metric"]): r["tolerance"] for _, r in previous.iterrows()}
    rows = []
    for _, row in table.iterrows():
        for metric in metric_columns(table):
            if metric_base(metric) not in TRACKED:
                continue
            value = row.get(f"{metric}_mean")
            if value is None or math.isnan(value):
                continue
            tolerance = kept.get((row["method"], metric), default_tolerance(metric, value))
            rows.append(
                {
                    "method": row["method"],
                    "metric": metric,
                    "value": round(value, 6),
                    "tolerance": round(tolerance, 6),
                    "direction": direction(metric),
                }
            )
    return pd.DataFrame(rows, columns=list(COLUMNS))
