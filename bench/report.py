"""Leaderboards: aggregate result files with pandas into .md / .csv / .html per protocol and
dataset. Mean and standard deviation over seeds, a 95% confidence interval (Student t) in the
CSV, arrows for each metric's direction, "n/a" where a method lacks the capability, and
"<=" before bits/dim that are bounds.

Result files are input like any other: :func:`load_results` validates each (types, and that
its fields agree with where it lies) and skips a bad one with a warning naming its path, so
one corrupt file costs one row, not the report; a table never mixes datasets or protocol
versions. Every string from a result that reaches HTML is escaped, and every file name made
from one is a slug, so a method called ``<img onerror=...>`` or ``../../x`` is only text.
"""

from __future__ import annotations

import functools
import hashlib
import html
import logging
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats

from bench.errors import GenbenchError
from bench.evaluators import EVALUATORS, Column, evaluators
from bench.evaluators import column as declared_column
from bench.evaluators import columns as declared_columns
from bench.evaluators import direction as direction
from bench.evaluators import metric_base as metric_base
from bench.results import STATUSES, RunResult, find_results, load_result, write_text_atomic

log = logging.getLogger(__name__)

# Every column's title, direction, range and decimals are declared by the evaluator that
# produces it (bench.evaluators); direction() and metric_base() are re-exported from there.
ARROWS = {"higher": " ↑", "lower": " ↓", None: ""}
FIDELITY = tuple(c.name for c in EVALUATORS.get("fidelity").columns)
#: numeric fields of metrics.throughput that tables read
THROUGHPUT = (*(c.name for c in EVALUATORS.get("throughput").columns), "peak_memory_mb")
#: per-run wall seconds, training and evaluation apart, read from each result's env
WALL_COLUMNS: tuple[str, ...] = getattr(EVALUATORS.get("throughput"), "ENV_COLUMNS", ())


def variant_name(method: str, variant: dict[str, Any]) -> str:
    """'ddim' + {'steps': 10} -> 'ddim[steps=10]'."""
    return f"{method}[{','.join(f'{k}={v}' for k, v in variant.items())}]"


def flatten_rows(result: RunResult) -> list[tuple[str, dict[str, Any]]]:
    """The method's row, plus one row per extra variant of an evaluator (a sampler's FID
    against its cost, another likelihood estimator's bits/dim)."""
    rows = [(result.method, flatten(result))]
    for evaluator in evaluators():
        for scores in result.metrics.get(f"{evaluator.name}_variants", []):
            name = variant_name(result.method, scores.get("variant", {}))
            rows.append((name, evaluator.row(scores)))
    return rows


def flatten(result: RunResult) -> dict[str, Any]:
    """One run's headline numbers as {column: value}, each evaluator's scores read by the
    evaluator (:meth:`bench.evaluators.Evaluator.row`); absent capabilities are absent keys."""
    row: dict[str, Any] = {}
    for evaluator in evaluators():
        if evaluator.name in result.metrics:
            row.update(evaluator.row(result.metrics[evaluator.name]))
    for name in WALL_COLUMNS:  # the run's cost, from its env
        value = result.env.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            row[name] = float(value)
    return row


def _number_problem(value: Any, where: str, allow_none: bool = True) -> str | None:
    """A metric value must be a finite int or float (null: not computable), never a bool,
    a string or a list: anything else would be averaged into a table or crash it."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{where} must be a number, got {type(value).__name__} {str(value)[:40]!r}"
    if not math.isfinite(value):
        return f"{where} must be finite, got {value!r}"
    return None


def _scores_problem(scores: Any, where: str, keys: tuple[str, ...]) -> str | None:
    if not isinstance(scores, dict):
        return f"{where} must be an object"
    for key in keys:
        problem = _number_problem(scores.get(key), f"{where}.{key}")
        if problem:
            return problem
    return None


def _fidelity_problem(scores: Any, where: str) -> str | None:
    problem = _scores_problem(scores, where, (*FIDELITY, "kid_std", "sample_images_per_s", "nfe"))
    if problem:
        return problem
    settings = scores.get("settings")
    if not isinstance(settings, dict) or not isinstance(settings.get("extractor"), str):
        return f"{where}.settings.extractor must be a string"
    variant = scores.get("variant", {})
    if not isinstance(variant, dict) or not all(
        isinstance(v, (str, int, float, bool)) or v is None for v in variant.values()
    ):
        return f"{where}.variant must be an object of plain values"
    return None


def _likelihood_problem(scores: Any, where: str) -> str | None:
    problem = _scores_problem(scores, where, ("bpd",))
    if problem:
        return problem
    if not isinstance(scores.get("is_bound", False), bool):
        return f"{where}.is_bound must be true or false"
    variant = scores.get("variant", {})
    if not isinstance(variant, dict):
        return f"{where}.variant must be an object"
    return None


def _list_problem(items: Any, where: str, check: Any) -> str | None:
    if not isinstance(items, list):
        return f"{where} must be a list"
    for index, item in enumerate(items):
        problem = check(item, f"{where}[{index}]")
        if problem:
            return problem
    return None


def validate_result(result: RunResult) -> str | None:
    """What is wrong with a loaded result's types, or None: the one place that knows which
    fields the report and the gate read, and what type each must have."""
    for name in ("method", "dataset"):
        value = getattr(result, name)
        if not isinstance(value, str) or not value:
            return f"{name} must be a non-empty string"
    protocol = result.protocol
    if not isinstance(protocol, dict) or not isinstance(protocol.get("name"), str):
        return "protocol must be an object with a string name"
    version = protocol.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        return f"protocol.version must be an integer, got {version!r}"
    if isinstance(result.seed, bool) or not isinstance(result.seed, int):
        return f"seed must be an integer, got {result.seed!r}"
    if result.status not in STATUSES:
        return f"status must be one of {', '.join(STATUSES)}"
    step = result.diverged_at_step
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        return f"diverged_at_step must be an integer, got {step!r}"
    if result.error is not None and not isinstance(result.error, str):
        return "error must be a string"
    for name in ("metrics", "config", "env"):
        if not isinstance(getattr(result, name), dict):
            return f"{name} must be an object"
    metrics = result.metrics
    checks: list[tuple[str, Any]] = [
        ("fidelity", _fidelity_problem),
        ("likelihood", _likelihood_problem),
        ("probe", lambda v, w: _scores_problem(v, w, ("linear_acc", "knn_acc"))),
        ("throughput", lambda v, w: _scores_problem(v, w, THROUGHPUT)),
        ("fidelity_variants", lambda v, w: _list_problem(v, w, _fidelity_problem)),
        ("likelihood_variants", lambda v, w: _list_problem(v, w, _likelihood_problem)),
    ]
    builtin = {key for key, _ in checks}
    for evaluator in evaluators():  # any other evaluator's columns must be numbers too
        if evaluator.name not in builtin:
            keys = tuple(c.name for c in evaluator.columns)
            scores_check = functools.partial(_scores_problem, keys=keys)
            checks.append((evaluator.name, scores_check))
            variants_check = functools.partial(_list_problem, check=scores_check)
            checks.append((f"{evaluator.name}_variants", variants_check))
    for key, check in checks:
        if key in metrics:
            problem = check(metrics[key], f"metrics.{key}")
            if problem:
                return problem
    return None


def location_problem(result: RunResult, path: Path) -> str | None:
    """Does the result lie where its own fields say, ``<protocol>/<dataset>/<method>/
    seed-<k>/result.json``? An edited method field must not join another method's seeds."""
    expected = (result.protocol["name"], result.dataset, result.method, f"seed-{result.seed}")
    names = ("protocol", "dataset", "method", "seed folder")
    found = (("",) * 4 + Path(path).absolute().parent.parts)[-4:]
    for name, want, have in zip(names, expected, found, strict=True):
        if want != have:
            return f"its {name} says {want!r} but it lies under {have!r}"
    return None


def load_results(root: Path) -> list[RunResult]:
    """Every valid result under ``root`` (one dataset and one protocol version): a corrupt,
    mistyped or misplaced file is skipped with a warning naming its path."""
    paths = find_results(root)
    if not paths:
        raise GenbenchError(f"no result files under {root}")
    results = []
    for path in paths:
        try:
            result = load_result(path)
        except UnicodeDecodeError as exc:
            log.warning("skipping result %s: not UTF-8 text (byte %d)", path, exc.start)
            continue
        except (GenbenchError, ValueError, TypeError) as exc:  # load_result's own, or bad JSON
            log.warning("skipping result %s: %s", path, (str(exc).splitlines() or [""])[0][:200])
            continue
        problem = validate_result(result) or location_problem(result, path)
        if problem:
            log.warning("skipping result %s: %s", path, problem)
            continue
        results.append(result)
    if not results:
        raise GenbenchError(
            f"no valid result files under {root}: {len(paths)} found, all skipped (see warnings)"
        )
    _one_table(results, root)
    return results


def _one_table(results: list[RunResult], root: Path) -> None:
    """Seeds of one method are averaged: results of two datasets or protocol versions in one
    table would be averaged as if they were seeds, so that is an error naming both."""
    datasets = sorted({r.dataset for r in results})
    if len(datasets) > 1:
        raise GenbenchError(
            f"results under {root} mix datasets {datasets[0]!r} and {datasets[1]!r}; one table "
            "holds one dataset: point at <runs>/<protocol>/<dataset>"
        )
    protocols = sorted({(r.protocol["name"], r.protocol.get("version", 0)) for r in results})
    if len(protocols) > 1:
        (name_a, version_a), (name_b, version_b) = protocols[:2]
        raise GenbenchError(
            f"results under {root} mix protocol {name_a!r} version {version_a} and {name_b!r} "
            f"version {version_b}; one table holds one protocol version: re-run the older "
            "results or point at one protocol's folder"
        )


def aggregate(results: Iterable[RunResult]) -> pd.DataFrame:
    """One row per method (and per extra sampler variant): <metric>_mean / _std / _ci95
    columns, seeds, status."""
    by_method: dict[str, list[RunResult]] = {}
    rows: dict[str, list[dict[str, Any]]] = {}
    owner: dict[str, str] = {}
    #: {row: {column: {seed: value}}}: what shared_ranks pairs over (not a table column)
    per_seed: dict[str, dict[str, dict[int, float]]] = {}
    for result in results:
        by_method.setdefault(result.method, []).append(result)
        rows.setdefault(result.method, [])
        owner[result.method] = result.method
        if result.status == "ok":
            for name, row in flatten_rows(result):
                rows.setdefault(name, []).append(row)
                owner[name] = result.method
                _keep_seed(per_seed.setdefault(name, {}), result.seed, row)
    records = []
    order = {name: i for i, name in enumerate(rows)}  # variants keep the method's order
    for name, flat in sorted(rows.items(), key=lambda kv: (owner[kv[0]], order[kv[0]])):
        runs = by_method[owner[name]]
        record: dict[str, Any] = {"method": name, "seeds": len(flat), "status": _status(runs)}
        if any(r.config.get("external") for r in runs):  # genbench score --as: not trained here
            record["external"] = True
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
            table[f"{column}_rank"] = shared_ranks(table, column, per_seed)
    return table


def _keep_seed(columns: dict[str, dict[int, float]], seed: int, row: dict[str, Any]) -> None:
    """Record one run's values of one row, {column: {seed: value}}, for shared_ranks."""
    for name, value in row.items():
        if name != "bpd_is_bound" and value is not None and not isinstance(value, bool):
            columns.setdefault(name, {})[seed] = float(value)


def shared_ranks(
    table: pd.DataFrame,
    column: str,
    per_seed: dict[str, dict[str, dict[int, float]]] | None = None,
) -> list[int | None]:
    """Rank by the metric's direction; methods not distinguishable from each other share a
    rank: a method's rank is 1 + the number of methods wholly better than it.

    "Wholly better" is the test of ``genbench compare-methods`` (:func:`bench.stats.
    wholly_better`): when two rows share at least 2 seeds with a value (``per_seed``:
    {row: {column: {seed: value}}}, kept by :func:`aggregate`), the 95% Student-t interval
    of their paired difference over those seeds excludes 0 on the better side. Fallback,
    for rows sharing fewer than 2 seeds (or without ``per_seed``): the unpaired rule, one
    row's 95% interval (mean ± ``_ci95``; a single seed is its mean) lies wholly on the
    better side of the other's."""
    from bench.stats import wholly_better

    sense = direction(column)
    sign = -1.0 if sense == "higher" else 1.0
    bounds: list[tuple[float, float] | None] = []
    seeds: list[dict[int, float]] = []
    for _, row in table.iterrows():
        values = (per_seed or {}).get(str(row["method"]), {}).get(column, {})
        seeds.append(values)
        mean = row.get(f"{column}_mean")
        if mean is None or pd.isna(mean):
            bounds.append(None)
            continue
        half = row.get(f"{column}_ci95")
        half = 0.0 if half is None or pd.isna(half) else float(half)
        bounds.append((sign * float(mean) - half, sign * float(mean) + half))  # lower is better

    def better(other: int, own: int) -> bool:
        paired = wholly_better(seeds[other], seeds[own], sense)
        if paired is not None:
            return paired
        high, low = bounds[other], bounds[own]
        return high is not None and low is not None and high[1] < low[0]

    ranks: list[int | None] = []
    for index, own in enumerate(bounds):
        if own is None:
            ranks.append(None)
            continue
        wins = sum(1 for other, seen in enumerate(bounds) if seen and better(other, index))
        ranks.append(1 + wins)
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
    """The metric columns present, in the registry's order (fidelity columns per extractor);
    columns no evaluator declares go last."""
    present = sorted({str(c)[: -len("_mean")] for c in table.columns if str(c).endswith("_mean")})
    order = list(declared_columns())

    def key(c: str) -> tuple[int, int, str]:
        base = metric_base(c)
        # the study's extractor before a second network's FID (which has no KID beside it)
        second = int(base == "fid" and f"kid{c[len(base) :]}" not in present)
        return (order.index(base) if base in order else len(order), second, c)

    return sorted(present, key=key)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """Human-readable cells: 'mean ± std', 'n/a', '≤' for bounds, arrows in the titles."""
    names = table["method"].astype(str)
    if "external" in table.columns:  # rows scored from samples made elsewhere
        flags = table["external"].fillna(False).astype(bool)
        names = names.where(~flags, names + " (external)")
    out = pd.DataFrame({"method": names})
    for name in metric_columns(table):
        base = metric_base(name)
        declared = declared_column(name) or Column(base, base)
        title, sense, decimals = declared.title, declared.direction, declared.decimals
        suffix = name[len(base) :]
        cells = []
        for _, row in table.iterrows():
            mean = row.get(f"{name}_mean")
            if mean is None or (isinstance(mean, float) and math.isnan(mean)):
                cells.append("n/a")
                continue
            text = _fmt(mean, decimals)
            std = row.get(f"{name}_std")
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


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def file_slug(name: str) -> str:
    """A file name made from a result's string: only [A-Za-z0-9._-], never starting with a
    dot, plus a short hash of the original whenever it had to change (so two names that
    slug alike, or ``a/b`` and ``a_b``, never overwrite each other's file)."""
    if SAFE_NAME.fullmatch(name) and len(name) <= 100:
        return name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip(".")[:80] or "_"
    return f"{slug}-{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def _md_text(text: str) -> str:
    """Text for a markdown table cell or caption: HTML escaped (markdown passes raw HTML
    through), and pipes escaped so a name cannot split the table."""
    return html.escape(str(text), quote=True).replace("|", "\\|")


def write_leaderboard(
    results_root: Path,
    protocol: str,
    dataset: str,
    out_root: Path,
    formats: Iterable[str] | None = None,
) -> Path:
    """Aggregate ``results_root/<protocol>/<dataset>`` into ``out_root/<protocol>-<dataset>/``:
    ``leaderboard.md``, ``.csv``, ``.html`` (one self-contained page: :mod:`bench.report_html`)
    and ``.tex`` (a booktabs tabular): those of ``formats`` (:data:`FORMATS`; default
    :data:`DEFAULT_FORMATS`)."""
    formats = parse_formats(DEFAULT_FORMATS if formats is None else formats)
    for kind, name in (("protocol", protocol), ("dataset", dataset)):
        if not SAFE_NAME.fullmatch(name):
            raise GenbenchError(f"{kind} name {name!r} is not a plain name ([A-Za-z0-9._-])")
    source = results_root / protocol / dataset
    results = load_results(source)
    table = aggregate(results)
    versions = sorted({int(r.protocol.get("version", 0)) for r in results})
    folder = out_root / f"{protocol}-{dataset}"
    folder.mkdir(parents=True, exist_ok=True)
    if "csv" in formats:
        write_text_atomic(
            folder / "leaderboard.csv", table.to_csv(index=False, float_format="%.6g")
        )
    shown = display_table(table)
    grids: list[tuple[str, str]] = []
    pictures: list[tuple[str, str, str]] = []
    if {"md", "html"} & set(formats):
        grids = copy_sample_grids(results, folder / "samples")
        pictures = copy_pictures(results, folder / "samples")
    plots: list[Path] = []
    if "plots" in formats:  # compute-normalised plots (bench/plots.py), PNG and SVG
        from bench.plots import write_plots

        plots = [p for p in write_plots(results, table, folder / "plots") if p.suffix == ".png"]
    if "md" in formats:
        _write_markdown(folder, protocol, dataset, versions, table, shown, grids, plots, pictures)
    if "html" in formats:
        from bench.report_html import leaderboard_html, page_data

        page = leaderboard_html(
            page_data(table, results, folder, grids, plots=plots, pictures=pictures)
        )
        write_text_atomic(folder / "leaderboard.html", page)
    if "latex" in formats:
        write_text_atomic(folder / "leaderboard.tex", latex_table(table, protocol, dataset))
    return folder


def _write_markdown(
    folder: Path,
    protocol: str,
    dataset: str,
    versions: list[int],
    table: pd.DataFrame,
    shown: pd.DataFrame,
    grids: list[tuple[str, str]],
    plots: list[Path] | None = None,
    pictures: list[tuple[str, str, str]] | None = None,
) -> None:
    header = (
        f"# Leaderboard: protocol `{protocol}` (version {', '.join(map(str, versions))}), "
        f"dataset `{dataset}`\n\n"
        "Generated by `genbench report` from the result files; do not edit by hand. "
        "↑ higher is better, ↓ lower is better; `n/a`: the method lacks the capability; "
        "`≤`: a bound on bits/dim, not the exact value; ± is the standard deviation over "
        "seeds. Throughput is images per second on the device in each result's `env`.\n\n"
    )
    if "external" in table.columns and table["external"].fillna(False).astype(bool).any():
        header += (
            "Rows marked `(external)` were scored from samples produced outside genbench "
            "(`genbench score --as`): same extractor, reference and settings, but not trained "
            "under this protocol.\n\n"
        )
    gallery = "".join(
        f"\n**{_md_text(method)}**\n\n![{_md_text(method)}](samples/{file})\n"
        for method, file in grids
    )
    if gallery:
        gallery = "\n## Samples (first seed)\n" + gallery
    for kind, (heading, blurb) in PICTURES.items():
        shown_pictures = [(m, f) for m, f, k in pictures or [] if k == kind]
        if shown_pictures:
            gallery += f"\n## {heading}\n\n{blurb}\n" + "".join(
                f"\n**{_md_text(method)}**\n\n![{_md_text(method)}](samples/{file})\n"
                for method, file in shown_pictures
            )
    markdown_table = shown.copy()
    for column in ("method", "status"):
        markdown_table[column] = markdown_table[column].map(_md_text)
    figures = "".join(f"\n![{p.stem}](plots/{p.name})\n" for p in plots or [])
    if figures:
        figures = "\n## Plots\n" + figures
    figures = feature_space_markdown(table) + figures
    write_text_atomic(
        folder / "leaderboard.md",
        header + markdown_table.to_markdown(index=False) + "\n" + figures + gallery,
    )


FEATURE_SPACE_NOTE = (
    "FID under the study's extractor and under a second feature network trained "
    "independently (another architecture and seed, same data, same script): where they "
    "disagree, a ranking is an artefact of one feature space. Ranks are 1 = lowest FID "
    "(first → second network)."
)


def feature_space_markdown(table: pd.DataFrame) -> str:
    """The section on whether the FID ranking holds under the second feature network."""
    from bench.stats import feature_space_agreement

    items = feature_space_agreement(table) if len(table) else []
    if not items:
        return ""
    lines = "".join(f"\n- {_md_text(item.sentence())}" for item in items)
    return f"\n## Rankings under two feature networks\n\n{FEATURE_SPACE_NOTE}\n{lines}\n"


def copy_sample_grids(results: list[RunResult], target: Path) -> list[tuple[str, str]]:
    """Copy the sample grid of each method's lowest finished seed next to the leaderboard;
    returns (method, file name) pairs, the file name a :func:`file_slug` of the method."""
    import shutil

    first: dict[str, RunResult] = {}
    for result in sorted(results, key=lambda r: r.seed):
        if result.status == "ok" and "fidelity" in result.metrics:
            first.setdefault(result.method, result)
    copied = []
    for method, result in sorted(first.items()):
        source = result.source_dir / "samples.png" if result.source_dir else None
        if source is not None and source.is_file():
            target.mkdir(parents=True, exist_ok=True)
            file = f"{file_slug(method)}.png"
            shutil.copyfile(source, target / file)
            copied.append((method, file))
    return copied


#: the pictures of bench.pictures a run folder may hold: kind -> (heading, what it shows)
PICTURES = {
    "nearest": (
        "Nearest training images (first seed)",
        "Each sample beside its nearest training image in pixel space: a copied training "
        "image shows up as a pair of twins (the memorized columns count them).",
    ),
    "retrieval": (
        "Retrieval (first seed)",
        "Random test images (first column), their nearest training images in the encoder's "
        "feature space (cosine), then after a blank their nearest in raw pixels.",
    ),
}


def copy_pictures(results: list[RunResult], target: Path) -> list[tuple[str, str, str]]:
    """Copy each method's pictures (:mod:`bench.pictures`: nearest.png, retrieval.png) of
    its lowest finished seed next to the leaderboard; returns (method, file name, kind)
    triples, the file name a :func:`file_slug` of the method and the kind."""
    import shutil

    from bench.pictures import NEAREST_FILE, RETRIEVAL_FILE

    files = {"nearest": NEAREST_FILE, "retrieval": RETRIEVAL_FILE}
    first: dict[str, RunResult] = {}
    for result in sorted(results, key=lambda r: r.seed):
        if result.status == "ok" and result.source_dir is not None:
            first.setdefault(result.method, result)
    copied = []
    for method, result in sorted(first.items()):
        for kind, name in files.items():
            assert result.source_dir is not None
            source = result.source_dir / name
            if source.is_file():
                target.mkdir(parents=True, exist_ok=True)
                file = f"{file_slug(method)}.{kind}.png"
                shutil.copyfile(source, target / file)
                copied.append((method, file, kind))
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


# --- output formats and LaTeX ------------------------------------------------------------------

#: ``genbench report --format``: format -> the file it writes in the leaderboard folder
FORMATS = {
    "md": "leaderboard.md",
    "csv": "leaderboard.csv",
    "html": "leaderboard.html",
    "latex": "leaderboard.tex",
    "plots": "plots/",
}
DEFAULT_FORMATS = ("md", "csv", "html", "plots")


def parse_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """``"md,latex"`` (or a list of names) -> ("md", "latex"): known names, each once, in
    the order given; an unknown or empty list is a :class:`GenbenchError` naming the known."""
    parts = formats.split(",") if isinstance(formats, str) else list(formats)
    chosen: list[str] = []
    for part in (str(p).strip().lower() for p in parts):
        if not part:
            continue
        if part not in FORMATS:
            raise GenbenchError(
                f"unknown report format {part!r}: choose from {', '.join(FORMATS)} "
                "(comma-separated, e.g. md,latex)"
            )
        if part not in chosen:
            chosen.append(part)
    if not chosen:
        raise GenbenchError(f"no report format given: choose from {', '.join(FORMATS)}")
    return tuple(chosen)


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "\n": " ",
    "\r": " ",
}
_LATEX_PATTERN = re.compile("|".join(re.escape(c) for c in _LATEX_SPECIAL))


def latex_text(text: str) -> str:
    """Text for a LaTeX table cell: every special character escaped, so a method called
    ``a_b & 50%`` is printed as such and cannot break the table or run a macro."""
    return _LATEX_PATTERN.sub(lambda m: _LATEX_SPECIAL[m.group(0)], str(text))


_LATEX_ARROWS = {"higher": r" $\uparrow$", "lower": r" $\downarrow$", None: ""}


def latex_table(table: pd.DataFrame, protocol: str = "", dataset: str = "") -> str:
    """A booktabs ``tabular`` of the leaderboard (needs ``\\usepackage{booktabs}``): one row
    per method, ``$m \\pm s$`` cells (std over seeds), ``n/a``, ``$\\leq$`` before bits/dim
    that are bounds, arrows in the headers, the best mean of each ranked column in bold. The
    status column is there only when some run diverged or failed."""
    metrics = metric_columns(table) if len(table) else []
    with_status = "status" in table.columns and bool((table["status"] != "ok").any())
    headings = ["Method"]
    for name in metrics:
        base = metric_base(name)
        declared = declared_column(name) or Column(base, base)
        title = f"{declared.title}{name[len(base) :]}"
        headings.append(latex_text(title) + _LATEX_ARROWS[declared.direction])
    headings.append("Seeds")
    if with_status:
        headings.append("Status")
    best = {name: _best_mean(table, name) for name in metrics}
    lines = [
        f"% Leaderboard: protocol {latex_text(protocol)}, dataset {latex_text(dataset)}; "
        "written by genbench report, do not edit by hand.",
        "% Needs \\usepackage{booktabs}. Mean $\\pm$ standard deviation over seeds; "
        "bold: the best mean of the column.",
        "\\begin{tabular}{l" + "r" * (len(metrics) + 1) + ("l" if with_status else "") + "}",
        "\\toprule",
        " & ".join(headings) + " \\\\",
        "\\midrule",
    ]
    for _, row in table.iterrows():
        name = str(row["method"])
        if _true(row.get("external")):
            name += " (external)"
        cell = latex_text(name)
        # a row starting with [ would be read as the optional argument of the \\ before it
        cells = ["{}" + cell if cell.startswith("[") else cell]
        seeds = int(row.get("seeds", 0) or 0)
        for metric in metrics:
            declared = declared_column(metric) or Column(metric_base(metric), metric)
            mean = _finite_or_none(row.get(f"{metric}_mean"))
            if mean is None:
                cells.append("n/a")
                continue
            std = _finite_or_none(row.get(f"{metric}_std"))
            bold = best[metric] is not None and mean == best[metric]
            cells.append(_latex_number(mean, std, seeds, declared.decimals, bold, row, metric))
        cells.append(str(seeds))
        if with_status:
            cells.append(latex_text(str(row.get("status", ""))))
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)


def _latex_number(
    mean: float,
    std: float | None,
    seeds: int,
    decimals: int,
    bold: bool,
    row: pd.Series,
    metric: str,
) -> str:
    def number(value: float) -> str:
        text = _fmt(value, decimals).replace(",", "{,}")  # thousands: no math-mode space
        return f"\\mathbf{{{text}}}" if bold else text

    body = number(mean)
    if seeds > 1 and std is not None:
        body += f" \\pm {number(std)}"
    if metric_base(metric) == "bpd" and _true(row.get("bpd_is_bound")):
        body = "\\leq " + body
    return f"${body}$"


def _best_mean(table: pd.DataFrame, metric: str) -> float | None:
    """The best mean of a ranked column (by its direction); None for counts."""
    sense = direction(metric)
    column = f"{metric}_mean"
    if sense is None or column not in table.columns:
        return None
    values = [v for v in (_finite_or_none(x) for x in table[column]) if v is not None]
    if not values:
        return None
    return max(values) if sense == "higher" else min(values)


def _finite_or_none(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _true(value: Any) -> bool:
    """A true flag; a pandas NaN (a row without the column) is not one."""
    try:
        return bool(value) and not (isinstance(value, float) and math.isnan(value))
    except (TypeError, ValueError):  # pd.NA
        return False
