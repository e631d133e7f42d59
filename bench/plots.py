"""Compute-normalised plots of a study, written next to its leaderboard by ``genbench report``
(PNG and SVG, matplotlib's Agg backend; SVGs carry no date or random ids, so the same
results give the same files).

- ``curve-<metric>``: the learning curve of every method with one (``eval.at_images``,
  :mod:`bench.curves`) against training images, training FLOPs and training wall seconds;
  the line is the mean over seeds, the band mean ± std.
- ``pareto-<metric>``: final quality against training compute (3 x forward FLOPs per image
  x images seen, else training wall seconds), one point per method (mean over seeds), the
  Pareto front (no other method is both cheaper and better) drawn and named.
- ``fid-vs-nfe``: FID against network evaluations per sample for every method with sampler
  rows (its own sampler and each ``[sampler=...,steps=...]`` row).
- ``bars-<metric>``: bits/dim and probe accuracies as bars with 95% intervals (Student t
  over seeds).

Every plotted value comes from the result files; nothing is typed in.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

#: the curve metrics plotted: (evaluator section, score, title, lower is better)
CURVE_METRICS = (
    ("fidelity", "fid", "FID", True),
    ("likelihood", "bpd", "bits/dim", True),
    ("probe", "linear_acc", "linear probe accuracy", False),
)
AXES = (
    ("images", "training images seen"),
    ("train_flops", "training FLOPs (3 x forward)"),
    ("train_wall_s", "training wall time (s)"),
)
BAR_METRICS = (
    ("bpd", "bits/dim"),
    ("linear_acc", "linear probe accuracy"),
    ("knn_acc", "kNN accuracy"),
)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "genbench"  # stable ids in the SVG
    return plt


def _save(figure: Any, folder: Path, stem: str) -> list[Path]:
    written = []
    for suffix, extra in ((".png", {"dpi": 120}), (".svg", {"metadata": {"Date": None}})):
        path = folder / f"{stem}{suffix}"
        figure.savefig(path, bbox_inches="tight", **extra)
        written.append(path)
    return written


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "metric"


def _ok(results: list[Any]) -> list[Any]:
    return [r for r in results if r.status == "ok"]


def plot_curves(results: list[Any], folder: Path) -> list[Path]:
    plt = _pyplot()
    written: list[Path] = []
    for section, key, title, _ in CURVE_METRICS:
        series: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
        for result in _ok(results):
            points = [
                p
                for p in result.metrics.get("curve") or []
                if isinstance(p.get(section), dict) and p[section].get(key) is not None
            ]
            if points:
                series[result.method].append(points)
        if not series:
            continue
        figure, axes = plt.subplots(1, len(AXES), figsize=(5 * len(AXES), 3.8))
        for axis, (x_key, x_title) in zip(axes, AXES, strict=True):
            for method, runs in sorted(series.items()):
                by_point: dict[int, list[tuple[float, float]]] = defaultdict(list)
                for points in runs:
                    for p in points:
                        x = p.get(x_key)
                        if x is not None:
                            by_point[int(p["images"])].append((float(x), float(p[section][key])))
                if not by_point:
                    continue
                xs, means, stds = [], [], []
                for point in sorted(by_point):
                    values = by_point[point]
                    xs.append(sum(v[0] for v in values) / len(values))
                    ys = pd.Series([v[1] for v in values])
                    means.append(float(ys.mean()))
                    stds.append(float(ys.std(ddof=1)) if len(ys) > 1 else 0.0)
                (line,) = axis.plot(xs, means, marker="o", label=method)
                axis.fill_between(
                    xs,
                    [m - s for m, s in zip(means, stds, strict=True)],
                    [m + s for m, s in zip(means, stds, strict=True)],
                    color=line.get_color(),
                    alpha=0.2,
                )
            axis.set_xlabel(x_title)
            axis.set_ylabel(title)
            if x_key != "images":
                axis.set_xscale("log")
            axis.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        figure.suptitle(f"{title} along training (mean ± std over seeds)")
        written += _save(figure, folder, f"curve-{_slug(key)}")
        plt.close(figure)
    return written


def _compute(result: Any) -> tuple[float | None, float | None]:
    speed = result.metrics.get("throughput", {})
    flops, seen = speed.get("forward_flops_per_image"), speed.get("train_images_seen")
    train_flops = 3.0 * flops * seen if flops and seen else None
    return train_flops, result.env.get("train_wall_s")


def pareto_front(points: list[tuple[str, float, float]], lower_is_better: bool) -> list[str]:
    """Names of the points no other point beats on both cost (lower) and quality."""
    front = []
    for name, cost, value in points:
        beaten = any(
            (c <= cost and (v <= value if lower_is_better else v >= value))
            and (c < cost or v != value)
            for other, c, v in points
            if other != name
        )
        if not beaten:
            front.append(name)
    return front


def plot_pareto(results: list[Any], folder: Path) -> list[Path]:
    from bench.evaluators import direction, metric_base
    from bench.report import flatten

    plt = _pyplot()
    # column -> method -> [(flops, wall, value)] over seeds
    found: dict[str, dict[str, list[tuple[float | None, float | None, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for result in _ok(results):
        if not result.metrics.get("throughput", {}).get("train_images_seen"):
            continue  # rows without training (closed form, real data) have no compute
        flops, wall = _compute(result)
        for column, value in flatten(result).items():
            if metric_base(column) in ("fid", "bpd", "linear_acc") and value is not None:
                found[column][result.method].append((flops, wall, float(value)))
    written: list[Path] = []
    for column, per_method in sorted(found.items()):
        trained = {m: runs for m, runs in per_method.items() if any(r[0] or r[1] for r in runs)}
        use_flops = all(r[0] for runs in trained.values() for r in runs)
        points = []
        for method, runs in trained.items():
            costs = [r[0] if use_flops else r[1] for r in runs]
            if any(c is None or c <= 0 for c in costs):
                continue
            points.append(
                (method, sum(costs) / len(costs), sum(r[2] for r in runs) / len(runs))  # type: ignore[arg-type,misc]
            )
        if len(points) < 2:
            continue
        lower = direction(column) == "lower"
        front = set(pareto_front(points, lower))
        figure, axis = plt.subplots(figsize=(6.5, 4.5))
        for method, cost, value in points:
            axis.scatter(cost, value, color="C3" if method in front else "C0", zorder=3)
            axis.annotate(
                method, (cost, value), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        line = sorted((c, v) for m, c, v in points if m in front)
        axis.plot(
            [c for c, _ in line], [v for _, v in line], color="C3", lw=1, label="Pareto front"
        )
        axis.set_xscale("log")
        axis.set_xlabel("training FLOPs (3 x forward)" if use_flops else "training wall time (s)")
        axis.set_ylabel(f"{column} ({'lower' if lower else 'higher'} is better)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        axis.set_title(f"{column}: final quality against training compute")
        written += _save(figure, folder, f"pareto-{_slug(column)}")
        plt.close(figure)
    return written


def sampler_family(row: str) -> str:
    """'ddpm[sampler=ddim,steps=10]' -> 'ddpm ddim'; 'ddpm' -> 'ddpm (own sampler)';
    'flow-matching[steps=10]' -> 'flow-matching (own sampler)'."""
    method, _, rest = row.partition("[")
    settings = dict(part.split("=", 1) for part in rest.rstrip("]").split(",") if "=" in part)
    sampler = settings.get("sampler")
    return f"{method} {sampler}" if sampler else f"{method} (own sampler)"


def plot_fid_vs_nfe(table: pd.DataFrame, folder: Path) -> list[Path]:
    plt = _pyplot()
    fid_columns = [c for c in table.columns if str(c).startswith("fid[") and c.endswith("_mean")]
    if "nfe_mean" not in table.columns or not fid_columns:
        return []
    column = fid_columns[0]
    groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for _, row in table.iterrows():
        nfe, fid = row.get("nfe_mean"), row.get(column)
        if nfe is None or fid is None or pd.isna(nfe) or pd.isna(fid):
            continue
        name = str(row["method"])
        settings = name.partition("[")[2]
        if settings and "steps=" not in settings and "sampler=" not in settings:
            continue  # a variant that is not a sampler (decoder pixels, guidance weight)
        groups[sampler_family(name)].append((float(nfe), float(fid)))
    owners = defaultdict(list)
    for family in groups:
        owners[family.split(" ", 1)[0]].append(family)
    # methods with sampler rows: their own sampler is a point, each other sampler a line
    groups = {
        f: sorted(p) for f, p in groups.items() if len(owners[f.split(" ", 1)[0]]) > 1 or len(p) > 1
    }
    if not groups:
        return []
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for method, points in sorted(groups.items()):
        style = "o-" if len(points) > 1 else "s"
        axis.plot([p[0] for p in points], [p[1] for p in points], style, label=method)
    axis.set_xscale("log")
    axis.set_xlabel("network evaluations per sample (NFE)")
    axis.set_ylabel(column[: -len("_mean")] + " (lower is better)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title("FID against sampling cost, per sampler family")
    written = _save(figure, folder, "fid-vs-nfe")
    plt.close(figure)
    return written


def plot_bars(table: pd.DataFrame, folder: Path) -> list[Path]:
    plt = _pyplot()
    written: list[Path] = []
    for key, title in BAR_METRICS:
        column = f"{key}_mean"
        if column not in table.columns:
            continue
        rows = table[table[column].notna()]
        if rows.empty:
            continue
        names = [str(m) for m in rows["method"]]
        means = rows[column].astype(float).tolist()
        errors = [
            0.0 if pd.isna(e) else float(e) for e in rows.get(f"{key}_ci95", [0.0] * len(rows))
        ]
        figure, axis = plt.subplots(figsize=(max(5.0, 0.45 * len(names) + 2), 4))
        bounds = (
            rows["bpd_is_bound"].fillna(False).astype(bool).tolist()
            if key == "bpd" and "bpd_is_bound" in rows.columns
            else [False] * len(rows)
        )
        bars = axis.bar(range(len(names)), means, yerr=errors, capsize=3, color="C0")
        for bar, bound in zip(bars, bounds, strict=True):
            if bound:  # an upper bound on bits/dim (ELBO, VLB), not the exact value
                bar.set_hatch("//")
                bar.set_facecolor("C1")
        if any(bounds):
            axis.bar([0], [0], color="C1", hatch="//", label="bound (≤)")
            axis.legend(fontsize=8)
        axis.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        axis.set_ylabel(title)
        axis.set_title(f"{title} (bars: 95% interval over seeds; none with one seed)")
        axis.grid(axis="y", alpha=0.3)
        written += _save(figure, folder, f"bars-{_slug(key)}")
        plt.close(figure)
    return written


def write_plots(results: list[Any], table: pd.DataFrame, folder: Path) -> list[Path]:
    """Every plot the study's results allow, into ``folder``; the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for plot in (
        lambda: plot_curves(results, folder),
        lambda: plot_pareto(results, folder),
        lambda: plot_fid_vs_nfe(table, folder),
        lambda: plot_bars(table, folder),
    ):
        written += plot()
    return written
