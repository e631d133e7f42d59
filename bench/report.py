"""Leaderboards: aggregate result files with pandas into .md / .csv / .html per protocol and
dataset. Mean and standard deviation over seeds, a 95% confidence interval (Student t) in the
CSV, arrows for each metric's direction, "n/a" where a method lacks the capability, and
"<=" before bits/dim that are bounds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats

from bench.errors import GenbenchError
from bench.results import RunResult, find_results, load_result

#: metric -> (column title, direction: "higher" | "lower" | None, decimals)
METRICS: dict[str, tuple[str, str | None, int]] = {
    "fid": ("FID", "lower", 2),
    "kid": ("KID", "lower", 4),
    "precision": ("precision", "higher", 3),
    "recall": ("recall", "higher", 3),
    "sample_acc": ("sample class acc", "higher", 3),
    "bpd": ("bits/dim", "lower", 3),
    "linear_acc": ("linear acc", "higher", 3),
    "knn_acc": ("kNN acc", "higher", 3),
    "train_images_per_s": ("train img/s", "higher", 0),
    "sample_images_per_s": ("sample img/s", "higher", 0),
    "nfe": ("NFE", None, 0),
    "params": ("params", None, 0),
}
ARROWS = {"higher": " ↑", "lower": " ↓", None: ""}
FIDELITY = ("fid", "kid", "precision", "recall", "sample_acc")


def metric_base(column: str) -> str:
    """'fid[digits-cnn]' -> 'fid'."""
    return column.split("[", 1)[0]


def direction(column: str) -> str | None:
    return METRICS.get(metric_base(column), ("", None, 0))[1]


def variant_name(method: str, variant: dict[str, Any]) -> str:
    """'ddim' + {'steps': 10} -> 'ddim[steps=10]'."""
    return f"{method}[{','.join(f'{k}={v}' for k, v in variant.items())}]"


def flatten_rows(result: RunResult) -> list[tuple[str, dict[str, Any]]]:
    """The method's row, plus one row per extra sampler variant (FID against cost)
    and per extra likelihood estimator."""
    rows = [(result.method, flatten(result))]
    for scores in result.metrics.get("fidelity_variants", []):
        row = _fidelity_columns(scores)
        for key in ("sample_images_per_s", "nfe"):
            if scores.get(key) is not None:
                row[key] = scores[key]
        rows.append((variant_name(result.method, scores.get("variant", {})), row))
    for scores in result.metrics.get("likelihood_variants", []):
        rows.append((variant_name(result.method, scores.get("variant", {})), _bpd_columns(scores)))
    return rows


def _bpd_columns(scores: dict[str, Any]) -> dict[str, Any]:
    return {"bpd": scores.get("bpd"), "bpd_is_bound": bool(scores.get("is_bound"))}


def _fidelity_columns(scores: dict[str, Any]) -> dict[str, Any]:
    extractor = scores["settings"]["extractor"]
    return {f"{key}[{extractor}]": scores[key] for key in FIDELITY if scores.get(key) is not None}


def flatten(result: RunResult) -> dict[str, Any]:
    """One run's headline numbers as {column: value}; absent capabilities are absent keys."""
    row: dict[str, Any] = {}
    metrics = result.metrics
    if "fidelity" in metrics:
        row.update(_fidelity_columns(metrics["fidelity"]))
    if "likelihood" in metrics:
        row.update(_bpd_columns(metrics["likelihood"]))
    if "probe" in metrics:
        row["linear_acc"] = metrics["probe"].get("linear_acc")
        row["knn_acc"] = metrics["probe"].get("knn_acc")
    speed = metrics.get("throughput", {})
    for key in ("train_images_per_s", "sample_images_per_s", "nfe", "params"):
        if speed.get(key) is not None:
            row[key] = speed[key]
    return row


def load_results(root: Path) -> list[RunResult]:
    paths = find_results(root)
    if not paths:
        raise GenbenchError(f"no result files under {root}")
    return [load_result(p) for p in paths]


def aggregate(results: Iterable[RunResult]) -> pd.DataFrame:
    """One row per method (and per extra sampler variant): <metric>_mean / _std / _ci95
    columns, seeds, status."""
    by_method: dict[str, list[RunResult]] = {}
    rows: dict[str, list[dict[str, Any]]] = {}
    owner: dict[str, str] = {}
    for result in results:
        by_method.setdefault(result.method, []).append(result)
        rows.setdefault(result.method, [])
        owner[result.method] = result.method
        if result.status == "ok":
            for name, row in flatten_rows(result):
                rows.setdefault(name, []).append(row)
                owner[name] = result.method
    records = []
    order = {name: i for i, name in enumerate(rows)}  # variants keep the method's order
    for name, flat in sorted(rows.items(), key=lambda kv: (owner[kv[0]], order[kv[0]])):
        runs = by_method[owner[name]]
        record: dict[str, Any] = {"method": name, "seeds": len(flat), "status": _status(runs)}
        columns = sorted({c for f in flat for c in f if c != "bpd_is_bound"})
        for column in columns:
            values = [f[column] for f in flat if f.get(column) is not None]
            if not values:
                continue
            series = pd.Series(values, dtype="float64")
            std = float(series.std(ddof=1)) if len(series) > 1 else 0.0
            record[f"{column}_mean"] = float(series.mean())
            record[f"{column}_std"] = std
            record[f"{column}_ci95"] = (
                float(stats.t.ppf(0.975, len(series) - 1) * std / math.sqrt(len(series)))
                if len(series) > 1
                else None
            )
        if any(f.get("bpd_is_bound") for f in flat):
            record["bpd_is_bound"] = True
        elif any("bpd" in f for f in flat):
            record["bpd_is_bound"] = False
        records.append(record)
    table = pd.DataFrame.from_records(records)
    for column in metric_columns(table) if len(table) else []:
        if direction(column):
            table[f"{column}_rank"] = shared_ranks(table, column)
    return table


def shared_ranks(table: pd.DataFrame, column: str) -> list[int | None]:
    """Rank by the metric's direction; methods whose 95% intervals overlap share a rank:
    a method's rank is 1 + the number of methods whose interval lies wholly better."""
    sign = -1.0 if direction(column) == "higher" else 1.0
    bounds: list[tuple[float, float] | None] = []
    for _, row in table.iterrows():
        mean = row.get(f"{column}_mean")
        if mean is None or pd.isna(mean):
            bounds.append(None)
            continue
        half = row.get(f"{column}_ci95")
        half = 0.0 if half is None or pd.isna(half) else float(half)
        bounds.append((sign * float(mean) - half, sign * float(mean) + half))  # lower is better
    ranks: list[int | None] = []
    for own in bounds:
        if own is None:
            ranks.append(None)
            continue
        ranks.append(1 + sum(1 for other in bounds if other is not None and other[1] < own[0]))
    return ranks


def _status(runs: list[RunResult]) -> str:
    parts = []
    for run in sorted(runs, key=lambda r: r.seed):
        if run.status == "diverged":
            parts.append(f"seed {run.seed} diverged at step {run.diverged_at_step}")
        elif run.status == "failed":
            parts.append(f"seed {run.seed} failed")
    return "; ".join(parts) or "ok"


def metric_columns(table: pd.DataFrame) -> list[str]:
    """The metric columns present, in METRICS order (fidelity columns per extractor)."""
    present = sorted({str(c)[: -len("_mean")] for c in table.columns if str(c).endswith("_mean")})
    order = list(METRICS)
    return sorted(
        present,
        key=lambda c: (order.index(metric_base(c)) if metric_base(c) in order else len(order), c),
    )


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """Human-readable cells: 'mean ± std', 'n/a', '≤' for bounds, arrows in the titles."""
    out = pd.DataFrame({"method": table["method"]})
    for column in metric_columns(table):
        base = metric_base(column)
        title, sense, decimals = METRICS.get(base, (base, None, 3))
        suffix = column[len(base) :]
        cells = []
        for _, row in table.iterrows():
            mean = row.get(f"{column}_mean")
            if mean is None or (isinstance(mean, float) and math.isnan(mean)):
                cells.append("n/a")
                continue
            text = _fmt(mean, decimals)
            std = row.get(f"{column}_std")
            if row.get("seeds", 1) > 1 and std is not None and not math.isnan(std):
                text += f" ± {_fmt(std, decimals)}"
            if base == "bpd" and row.get("bpd_is_bound") is True:
                text = "≤ " + text
            cells.append(text)
        out[f"{title}{suffix}{ARROWS[sense]}"] = cells
    out["seeds"] = table["seeds"]
    out["status"] = table["status"]
    return out


def _fmt(value: float, decimals: int) -> str:
    if decimals == 0:
        return f"{value:,.0f}"
    return f"{value:.{decimals}f}"


def write_leaderboard(results_root: Path, protocol: str, dataset: str, out_root: Path) -> Path:
    """Aggregate ``results_root/<protocol>/<dataset>`` into ``out_root/<protocol>-<dataset>/``."""
    source = results_root / protocol / dataset
    results = load_results(source)
    table = aggregate(results)
    versions = sorted({int(r.protocol.get("version", 0)) for r in results})
    folder = out_root / f"{protocol}-{dataset}"
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "leaderboard.csv", index=False, float_format="%.6g")
    shown = display_table(table)
    header = (
        f"# Leaderboard: protocol `{protocol}` (version {', '.join(map(str, versions))}), "
        f"dataset `{dataset}`\n\n"
        "Generated by `genbench report` from the result files; do not edit by hand. "
        "↑ higher is better, ↓ lower is better; `n/a`: the method lacks the capability; "
        "`≤`: a bound on bits/dim, not the exact value; ± is the standard deviation over "
        "seeds. Throughput is images per second on the device in each result's `env`.\n\n"
    )
    grids = copy_sample_grids(results, folder / "samples")
    gallery = "".join(f"\n**{method}**\n\n![{method}](samples/{method}.png)\n" for method in grids)
    if gallery:
        gallery = "\n## Samples (first seed)\n" + gallery
    (folder / "leaderboard.md").write_text(header + shown.to_markdown(index=False) + "\n" + gallery)
    html_gallery = "".join(
        f'<figure><img src="samples/{m}.png" width="160"><figcaption>{m}</figcaption></figure>'
        for m in grids
    )
    (folder / "leaderboard.html").write_text(shown.to_html(index=False, border=0) + html_gallery)
    return folder


def copy_sample_grids(results: list[RunResult], target: Path) -> list[str]:
    """Copy the sample grid of each method's lowest finished seed next to the leaderboard."""
    import shutil

    first: dict[str, RunResult] = {}
    for result in sorted(results, key=lambda r: r.seed):
        if result.status == "ok" and "fidelity" in result.metrics:
            first.setdefault(result.method, result)
    copied = []
    for method, result in sorted(first.items()):
        source = result.source_dir / "samples.png" if result.source_dir else None
        if source is not None and source.exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target / f"{method}.png")
            copied.append(method)
    return copied


EXCERPT_START, EXCERPT_END = (
    "<!-- leaderboard-excerpt:start -->",
    "<!-- leaderboard-excerpt:end -->",
)


def paste_excerpt(leaderboard: Path, readme: Path) -> None:
    """Replace the table between the README's excerpt markers with the leaderboard's."""
    from bench.results import write_text_atomic

    text = readme.read_text()
    if EXCERPT_START not in text or EXCERPT_END not in text:
        raise GenbenchError(f"{readme} has no {EXCERPT_START} ... {EXCERPT_END} markers")
    head, rest = text.split(EXCERPT_START, 1)
    tail = rest.split(EXCERPT_END, 1)[1]
    rows = [line for line in leaderboard.read_text().splitlines() if line.startswith("|")]
    write_text_atomic(
        readme, head + EXCERPT_START + "\n" + "\n".join(rows) + "\n" + EXCERPT_END + tail
    )
