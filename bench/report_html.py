"""The explorable leaderboard: one self-contained HTML file (inline CSS and JS, sample grids
embedded as ``data:`` URIs; no server, no network) built from :func:`bench.report.aggregate`'s
table and the results it came from.

The page sorts by any column (click a header: numeric by the mean, ``n/a`` last), filters by
method family, shows or hides metric columns, shows mean ± std, the 95% interval and the
number of seeds when a cell is hovered, embeds the sample grids, the protocol and a
reproducibility block (the distinct git commits, package versions, devices and precisions of
the results), and links each row to its first seed's ``result.json``. Its state lives in the
URL hash, so ``leaderboard.html#sort=fid%5Bdigits-cnn%5D&dir=asc&family=gan&metrics=...``
opens it sorted, filtered and with the chosen columns.

Every string that comes from a result is data: it travels as JSON inside
``<script type="application/json">`` with ``<``, ``>`` and ``&`` written as ``\\u003c``,
``\\u003e`` and ``\\u0026`` (so no name can close the script element), and the page's script
puts it in the DOM only with ``textContent`` and ``setAttribute``, never as markup.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import math
import os
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from bench.evaluators import Column, metric_base
from bench.evaluators import column as declared_column
from bench.results import RESULT_FILE, RunResult

log = logging.getLogger(__name__)

#: the family of rows scored from samples made outside genbench (``genbench score --as``)
EXTERNAL = "external"
#: the family of a row whose method genbench does not know (an uninstalled plug-in)
OTHER = "other"
ARROW = {"higher": "↑", "lower": "↓", None: ""}
#: the id of the JSON data element the page's script reads
DATA_ID = "leaderboard-data"


def embed_json(data: Any) -> str:
    """JSON safe inside a ``<script>`` element: ``<``, ``>`` and ``&`` as unicode escapes,
    so no string can close the element or open a comment; NaN is refused (use null)."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, sort_keys=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def owner_method(name: str, methods: set[str]) -> str:
    """The method a table row belongs to: itself, or for a variant row
    ``ddpm[sampler=ddim,steps=10]`` the part before ``[``."""
    if name in methods:
        return name
    return name.split("[", 1)[0]


def _registry_families() -> dict[str, str]:
    """method -> family of every registered method (genbench's, and loaded plug-ins'); empty
    when the registry cannot be read (the page then says "other")."""
    try:
        from bench.registry import method_families

        return {m: family for family, names in method_families().items() for m in names}
    except Exception as exc:  # a broken plug-in must not cost the report
        log.warning("method families unknown (%s): rows are shown as %r", exc, OTHER)
        return {}


def row_families(
    table: pd.DataFrame, results: list[RunResult], registry: dict[str, str] | None = None
) -> dict[str, str]:
    """Table row name -> family: "external" for rows scored with ``genbench score --as``,
    the plug-in's family for a plug-in method (recorded in the result's config, so it holds
    when the plug-in is not installed here), the ``baselines`` subpackage for genbench's
    methods, "other" when unknown. Variant rows take their method's family."""
    methods = {r.method for r in results}
    plugin_family: dict[str, str] = {}
    for result in results:
        plugin = result.config.get("plugin")
        if isinstance(plugin, dict) and isinstance(plugin.get("name"), str):
            plugin_family.setdefault(result.method, plugin["name"])
    families: dict[str, str] = {}
    for _, row in table.iterrows():
        name = str(row["method"])
        owner = owner_method(name, methods)
        if _flag(row.get("external")):
            families[name] = EXTERNAL
        elif owner in plugin_family:
            families[name] = plugin_family[owner]
        else:
            if registry is None:
                registry = _registry_families()
            families[name] = registry.get(owner, OTHER)
    return families


def _flag(value: Any) -> bool:
    """True only for a true boolean: a pandas NaN (a row without the column) is truthy."""
    try:
        return bool(value) and not (isinstance(value, float) and math.isnan(value))
    except (TypeError, ValueError):
        return False


def column_info(name: str) -> dict[str, Any]:
    """A metric column's key, title (without arrow), arrow, direction and decimals."""
    base = metric_base(name)
    declared = declared_column(name) or Column(base, base)
    sense = declared.direction
    meaning = {"higher": "higher is better", "lower": "lower is better", None: "not ranked"}
    title = f"{declared.title}{name[len(base) :]}"
    return {
        "key": name,
        "title": title,
        "arrow": ARROW[sense],
        "direction": sense,
        "decimals": declared.decimals,
        "help": f"{title} ({name}): {meaning[sense]}",
    }


def cell_hover(
    mean: float, std: float | None, ci95: float | None, seeds: int, decimals: int
) -> str:
    """The hover text of a cell: mean ± std, the 95% interval, the number of seeds."""

    from bench.report import _fmt

    def fmt(value: float) -> str:
        return _fmt(value, decimals)

    lines = [f"mean {fmt(mean)} ± {fmt(std or 0.0)} (std over seeds)"]
    if ci95 is not None:
        lines.append(f"95% interval [{fmt(mean - ci95)}, {fmt(mean + ci95)}] (Student t)")
    else:
        lines.append("95% interval: n/a (one seed)")
    lines.append(f"{seeds} seed{'s' if seeds != 1 else ''}")
    return "\n".join(lines)


def _link(result: RunResult | None, folder: Path) -> str | None:
    """The first seed's result.json, relative to the leaderboard folder, as a URL path."""
    if result is None or result.source_dir is None:
        return None
    target = Path(result.source_dir) / RESULT_FILE
    try:
        relative = os.path.relpath(target.absolute(), Path(folder).absolute())
    except ValueError:  # another drive (Windows): an absolute file URL
        return target.absolute().as_uri()
    return urllib.parse.quote(Path(relative).as_posix(), safe="/")


def _env_block(results: list[RunResult]) -> list[dict[str, Any]]:
    """The distinct values of each reproducibility field over the results, with counts."""
    fields: list[tuple[str, Any]] = [
        ("git commit", lambda env: env.get("git_commit")),
        (
            "uncommitted changes (git dirty)",
            lambda env: {True: "yes", False: "no"}.get(env.get("git_dirty"), None),
        ),
        ("genbench", lambda env: _package(env, "genbench")),
        ("python", lambda env: env.get("python")),
        ("torch", lambda env: _package(env, "torch")),
        ("torch-fidelity", lambda env: _package(env, "torch-fidelity")),
        ("device", lambda env: env.get("device")),
        ("precision", lambda env: env.get("precision")),
        ("platform", lambda env: env.get("platform")),
    ]
    block = []
    for label, read in fields:
        counts: Counter[str] = Counter()
        for result in results:
            env = result.env if isinstance(result.env, dict) else {}
            value = read(env)
            counts["unknown" if value is None else str(value)] += 1
        block.append({"label": label, "values": [[v, n] for v, n in counts.most_common()]})
    return block


def _package(env: dict[str, Any], name: str) -> Any:
    packages = env.get("packages")
    return packages.get(name) if isinstance(packages, dict) else None


def page_data(
    table: pd.DataFrame,
    results: list[RunResult],
    folder: Path,
    grids: list[tuple[str, str]] | None = None,
    families: dict[str, str] | None = None,
    plots: list[Path] | None = None,
    pictures: list[tuple[str, str, str]] | None = None,
) -> dict[str, Any]:
    """Everything the page shows, as plain JSON data: columns, rows (cells with their text,
    hover text, mean for sorting and rank), families, sample grids, protocol, environment.
    ``grids`` are (method, file under ``folder/samples``) pairs (:func:`copy_sample_grids`),
    ``pictures`` (method, file, kind) triples (:func:`bench.report.copy_pictures`)."""
    from bench.report import _best_mean, _finite_or_none, display_table, metric_columns

    metrics = metric_columns(table) if len(table) else []
    columns = [column_info(name) for name in metrics]
    families = families if families is not None else row_families(table, results)
    shown = display_table(table).reset_index(drop=True) if len(table) else pd.DataFrame()
    # display_table's heading of each metric: its title and arrow
    headings = {c["key"]: c["title"] + (f" {c['arrow']}" if c["arrow"] else "") for c in columns}
    first: dict[str, RunResult] = {}
    for result in sorted(results, key=lambda r: r.seed):
        first.setdefault(result.method, result)
    methods = set(first)
    best = {c["key"]: _best_mean(table, c["key"]) for c in columns}
    rows = []
    for index, (_, row) in enumerate(table.iterrows()):
        name = str(row["method"])
        seeds = int(row.get("seeds", 0) or 0)
        cells: dict[str, Any] = {}
        for info in columns:
            key = info["key"]
            mean = _finite_or_none(row.get(f"{key}_mean"))
            if mean is None:
                continue
            std, ci95 = (
                _finite_or_none(row.get(f"{key}_std")),
                _finite_or_none(row.get(f"{key}_ci95")),
            )
            rank = _finite_or_none(row.get(f"{key}_rank"))
            text = str(shown.at[index, headings[key]])  # display_table's cell, as in the .md
            cells[key] = {
                "text": text,
                "mean": mean,
                "rank": int(rank) if rank is not None else None,
                "best": best[key] is not None and mean == best[key],
                "hover": cell_hover(mean, std, ci95, seeds, info["decimals"])
                + (
                    f"\nrank {int(rank)} (methods not told apart at 95% share a rank)"
                    if rank is not None
                    else ""
                )
                + ("\n≤: a bound on bits/dim" if text.startswith("≤") else ""),
            }
        owner = owner_method(name, methods)
        rows.append(
            {
                "method": name,
                "external": _flag(row.get("external")),
                "family": families.get(name, OTHER),
                "seeds": seeds,
                "status": str(row.get("status", "")),
                "link": _link(first.get(owner), folder),
                "cells": cells,
            }
        )
    from bench.report import FEATURE_SPACE_NOTE, PICTURES
    from bench.stats import feature_space_agreement

    samples = []
    shown_files = [(m, f, "samples") for m, f in grids or []] + list(pictures or [])
    for method, file, kind in shown_files:
        path = Path(folder) / "samples" / file
        if not path.is_file():
            continue
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
        samples.append(
            {
                "method": method,
                "family": families.get(method, OTHER),
                "kind": kind,
                "caption": method if kind == "samples" else f"{method}: {kind}",
                "src": f"data:image/png;base64,{encoded}",
            }
        )
    legends = {kind: blurb for kind, (_, blurb) in PICTURES.items()}
    figures = [
        {
            "name": path.stem,
            "src": "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii"),
        }
        for path in plots or []
        if path.is_file()
    ]
    protocol = results[0].protocol if results else {}
    versions = sorted({int(r.protocol.get("version", 0)) for r in results})
    return {
        "protocol": {"name": str(protocol.get("name", "")), "versions": versions},
        "dataset": results[0].dataset if results else "",
        "runs": len(results),
        "columns": columns,
        "families": sorted({r["family"] for r in rows}),
        "rows": rows,
        "samples": samples,
        "picture_legends": legends,
        "feature_spaces": [item.sentence() for item in feature_space_agreement(table)]
        if len(table)
        else [],
        "feature_space_note": FEATURE_SPACE_NOTE,
        "plots": figures,
        "env": _env_block(results),
    }


def leaderboard_html(data: dict[str, Any]) -> str:
    """The page: static markup with no result strings in it (the title is built from the
    protocol and dataset names, escaped), the data as embedded JSON, the script that renders."""
    versions = ", ".join(map(str, data["protocol"]["versions"]))
    title = html.escape(
        f"Leaderboard: protocol {data['protocol']['name']} (version {versions}), "
        f"dataset {data['dataset']}",
        quote=True,
    )
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        # nothing is loaded from anywhere: only inline style, inline script and data: images
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{title}</h1>\n{_BODY}\n"
        f'<script type="application/json" id="{DATA_ID}">{embed_json(data)}</script>\n'
        f"<script>{_JS}</script>\n</body>\n</html>\n"
    )


_BODY = """<p class="legend">Generated by <code>genbench report</code> from the result files;
do not edit by hand. ↑ higher is better, ↓ lower is better; <code>n/a</code>: the method lacks
the capability; <code>≤</code>: a bound on bits/dim, not the exact value; ± is the standard
deviation over seeds. Bold: the best mean of the column. Hover a cell for its 95%
interval, seeds and rank (methods not told apart at 95% share a rank); click a header to
sort. The address keeps the
view (sort, family, columns): copy it to share it.</p>
<p id="summary"></p>
<div id="controls">
<label>Family <select id="family"><option value="">all families</option></select></label>
<fieldset id="metrics"><legend>Metrics
<button type="button" id="metrics-all">all</button>
<button type="button" id="metrics-none">none</button></legend></fieldset>
</div>
<div class="scroll"><table id="board"><thead><tr></tr></thead><tbody></tbody></table></div>
<section id="spaces-section"><h2>Rankings under two feature networks</h2>
<p class="legend" id="spaces-note"></p><ul id="spaces"></ul></section>
<section id="plots-section"><h2>Plots</h2><div id="plots"></div></section>
<section id="samples-section"><h2>Samples (first seed)</h2>
<p class="legend">Each method's samples; "nearest": each sample beside its nearest training
image in pixel space (twins are copies); "retrieval": random test images, their nearest
training images in the encoder's features, then after a blank in raw pixels. Hover for
more.</p><div id="gallery"></div></section>
<section><h2>Reproducibility</h2>
<p class="legend">The distinct values over the runs in this table (runs per value).</p>
<table id="env"><tbody></tbody></table></section>"""

_CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em;
  color: #1d1d1f; background: #fff; }
h1 { font-size: 1.35em; margin: 0 0 .4em; }
h2 { font-size: 1.1em; margin: 1.4em 0 .5em; }
.legend, #summary { color: #555; max-width: 70em; margin: .3em 0; }
#controls { margin: .8em 0; display: flex; flex-wrap: wrap; gap: .6em 1.2em;
  align-items: flex-start; }
#controls fieldset { border: 1px solid #ddd; border-radius: 4px; padding: .2em .6em .4em;
  margin: 0; }
#controls legend button { font-size: .85em; }
#metrics label { display: inline-block; margin-right: .8em; white-space: nowrap; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; }
#board th, #board td { padding: .3em .6em; border-bottom: 1px solid #e5e5e5;
  white-space: nowrap; }
#board th { background: #f5f5f7; position: sticky; top: 0; cursor: pointer;
  user-select: none; text-align: left; vertical-align: bottom; }
#board th:hover { background: #e8e8ed; }
#board th.nosort { cursor: default; }
#board td.method { position: sticky; left: 0; background: #fff; z-index: 1; }
#board th[data-key="method"] { left: 0; z-index: 2; }
#board th.sorted { background: #dde6f5; }
#board td.num { text-align: right; font-variant-numeric: tabular-nums; }
#board td.na { color: #999; }
#board td.best { font-weight: 700; }
#board tbody tr:hover { background: #fafafa; }
#board td.status-bad { color: #b00020; white-space: normal; min-width: 12em; }
.family { color: #666; font-size: .9em; }
#gallery { display: flex; flex-wrap: wrap; gap: 1em; }
#gallery figure { margin: 0; text-align: center; }
#gallery img { width: 160px; height: auto; image-rendering: pixelated;
  border: 1px solid #ddd; background: #000; }
#gallery figcaption { font-size: .9em; max-width: 320px; overflow-wrap: anywhere; }
#gallery figure[data-kind="nearest"] img, #gallery figure[data-kind="retrieval"] img {
  width: 320px; }
#env th { text-align: left; padding: .2em 1em .2em 0; vertical-align: top; font-weight: 600; }
#env td { padding: .2em 0; font-family: ui-monospace, monospace; font-size: .92em; }
"""

_JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("leaderboard-data").textContent);
  var FIXED = [
    {key: "method", title: "method", kind: "text"},
    {key: "family", title: "family", kind: "text"}
  ];
  var TAIL = [
    {key: "seeds", title: "seeds", kind: "number"},
    {key: "status", title: "status", kind: "text"},
    {key: "link", title: "result", kind: "none"}
  ];
  var metricKeys = data.columns.map(function (c) { return c.key; });
  var state = {sort: "", dir: "asc", family: "", metrics: null};

  function el(tag, text, attrs) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    if (attrs) {
      Object.keys(attrs).forEach(function (k) { node.setAttribute(k, String(attrs[k])); });
    }
    return node;
  }
  function clear(node) { while (node.firstChild) { node.removeChild(node.firstChild); } }

  function readHash() {
    var fresh = {sort: "", dir: "asc", family: "", metrics: null};
    var text = window.location.hash.replace(/^#/, "");
    text.split("&").forEach(function (part) {
      if (!part) { return; }
      var at = part.indexOf("=");
      var key = at < 0 ? part : part.slice(0, at);
      var raw = at < 0 ? "" : part.slice(at + 1);
      var value;
      try { value = decodeURIComponent(raw.replace(/\+/g, " ")); } catch (e) { return; }
      if (key === "sort") { fresh.sort = value; }
      else if (key === "dir") { fresh.dir = value === "desc" ? "desc" : "asc"; }
      else if (key === "family") { fresh.family = value; }
      else if (key === "metrics") {
        fresh.metrics = raw === "" ? [] : raw.split(",").map(function (item) {
          try { return decodeURIComponent(item); } catch (e) { return item; }
        }).filter(function (item) { return metricKeys.indexOf(item) >= 0; });
      }
    });
    state = fresh;
  }

  function writeHash() {
    var parts = [];
    if (state.sort) {
      parts.push("sort=" + encodeURIComponent(state.sort));
      parts.push("dir=" + state.dir);
    }
    if (state.family) { parts.push("family=" + encodeURIComponent(state.family)); }
    if (state.metrics !== null) {
      parts.push("metrics=" + state.metrics.map(encodeURIComponent).join(","));
    }
    var hash = parts.length ? "#" + parts.join("&") : "";
    try {
      window.history.replaceState(null, "", window.location.href.split("#")[0] + hash);
    } catch (e) {
      if (hash) { window.location.hash = hash; }
    }
  }

  function shownMetrics() {
    return data.columns.filter(function (c) {
      return state.metrics === null || state.metrics.indexOf(c.key) >= 0;
    });
  }

  function sortValue(row, key) {
    if (key === "method" || key === "family" || key === "status") { return row[key]; }
    if (key === "seeds") { return row.seeds; }
    var cell = row.cells[key];
    return cell ? cell.mean : null;
  }

  function sortedRows(rows) {
    var indexed = rows.map(function (row, i) { return {row: row, i: i}; });
    if (!state.sort) { return rows.slice(); }
    var sign = state.dir === "desc" ? -1 : 1;
    indexed.sort(function (a, b) {
      var x = sortValue(a.row, state.sort), y = sortValue(b.row, state.sort);
      var xMissing = x === null || x === undefined, yMissing = y === null || y === undefined;
      if (xMissing || yMissing) {  // n/a last, whatever the direction
        return xMissing && yMissing ? a.i - b.i : (xMissing ? 1 : -1);
      }
      var order;
      if (typeof x === "number" && typeof y === "number") { order = x - y; }
      else { order = String(x).localeCompare(String(y)); }
      return order !== 0 ? sign * order : a.i - b.i;
    });
    return indexed.map(function (item) { return item.row; });
  }

  function clickSort(key, direction) {
    if (state.sort === key) {
      state.dir = state.dir === "asc" ? "desc" : "asc";
    } else {
      state.sort = key;
      state.dir = direction === "higher" ? "desc" : "asc";  // best first
    }
    writeHash();
    render();
  }

  function header(column, metric) {
    var th = el("th", null, {"data-key": column.key, scope: "col"});
    th.appendChild(document.createTextNode(column.title));
    if (metric && column.arrow) { th.appendChild(document.createTextNode(" " + column.arrow)); }
    if (state.sort === column.key) {
      th.className = "sorted";
      th.setAttribute("aria-sort", state.dir === "asc" ? "ascending" : "descending");
      th.appendChild(document.createTextNode(state.dir === "asc" ? " \u25B2" : " \u25BC"));
    }
    if (column.kind === "none") {
      th.className = "nosort";
    } else {
      th.setAttribute("title", metric ? column.help + "; click to sort" : "click to sort");
      th.addEventListener("click", function () { clickSort(column.key, column.direction); });
    }
    return th;
  }

  function renderTable() {
    var table = document.getElementById("board");
    var headRow = table.tHead.rows[0];
    var body = table.tBodies[0];
    clear(headRow);
    clear(body);
    var metrics = shownMetrics();
    FIXED.forEach(function (c) { headRow.appendChild(header(c, false)); });
    metrics.forEach(function (c) { headRow.appendChild(header(c, true)); });
    TAIL.forEach(function (c) { headRow.appendChild(header(c, false)); });
    var rows = data.rows.filter(function (row) {
      return !state.family || row.family === state.family;
    });
    sortedRows(rows).forEach(function (row) {
      var tr = el("tr", null, {"data-method": row.method, "data-family": row.family});
      tr.appendChild(el("td", row.external ? row.method + " (external)" : row.method,
                        {"class": "method"}));
      tr.appendChild(el("td", row.family, {"class": "family"}));
      metrics.forEach(function (c) {
        var cell = row.cells[c.key];
        if (!cell) {
          tr.appendChild(el("td", "n/a", {"class": "num na", "data-key": c.key,
                                         title: "not measured: the method lacks the capability"}));
          return;
        }
        var cls = "num" + (cell.best ? " best" : "");
        tr.appendChild(el("td", cell.text, {"class": cls, "data-key": c.key,
                                            "data-mean": cell.mean, title: cell.hover}));
      });
      tr.appendChild(el("td", row.seeds, {"class": "num"}));
      tr.appendChild(el("td", row.status,
                        {"class": row.status === "ok" ? "status" : "status status-bad"}));
      var linkCell = el("td");
      if (row.link) {
        linkCell.appendChild(el("a", "result.json", {href: row.link, title: row.link}));
      }
      tr.appendChild(linkCell);
      body.appendChild(tr);
    });
    var summary = document.getElementById("summary");
    summary.textContent = rows.length + " of " + data.rows.length + " rows" +
      (state.family ? " (family " + state.family + ")" : "") + ", " + metrics.length +
      " of " + data.columns.length + " metric columns; " + data.runs + " runs.";
  }

  function renderSpaces() {
    var list = document.getElementById("spaces");
    clear(list);
    document.getElementById("spaces-note").textContent = data.feature_space_note;
    data.feature_spaces.forEach(function (line) { list.appendChild(el("li", line)); });
    document.getElementById("spaces-section").hidden = data.feature_spaces.length === 0;
  }

  function renderGallery() {
    var gallery = document.getElementById("gallery");
    clear(gallery);
    var shown = data.samples.filter(function (s) {
      return !state.family || s.family === state.family;
    });
    shown.forEach(function (s) {
      var figure = el("figure", null, {"data-method": s.method, "data-kind": s.kind});
      var wide = s.kind !== "samples";
      figure.appendChild(el("img", null, {src: s.src, alt: s.caption, width: wide ? 320 : 160,
        title: data.picture_legends[s.kind] || ""}));
      figure.appendChild(el("figcaption", s.caption));
      gallery.appendChild(figure);
    });
    document.getElementById("samples-section").hidden = shown.length === 0;
  }

  function renderControls() {
    var select = document.getElementById("family");
    select.value = state.family;
    var boxes = document.querySelectorAll("#metrics input");
    Array.prototype.forEach.call(boxes, function (box) {
      box.checked = state.metrics === null || state.metrics.indexOf(box.value) >= 0;
    });
  }

  function renderPlots() {
    var box = document.getElementById("plots");
    clear(box);
    (data.plots || []).forEach(function (p) {
      var figure = el("figure", null, {"data-plot": p.name});
      figure.appendChild(el("img", null, {src: p.src, alt: p.name, width: 520}));
      figure.appendChild(el("figcaption", p.name));
      box.appendChild(figure);
    });
    document.getElementById("plots-section").hidden = !(data.plots || []).length;
  }

  function render() {
    renderControls(); renderTable(); renderGallery(); renderPlots(); renderSpaces();
  }

  function buildControls() {
    var select = document.getElementById("family");
    data.families.forEach(function (family) {
      select.appendChild(el("option", family, {value: family}));
    });
    select.addEventListener("change", function () {
      state.family = select.value;
      writeHash();
      render();
    });
    var fieldset = document.getElementById("metrics");
    data.columns.forEach(function (c) {
      var label = el("label", null, {title: c.help});
      var box = el("input", null, {type: "checkbox", value: c.key});
      box.addEventListener("change", function () {
        var chosen = Array.prototype.filter.call(
          document.querySelectorAll("#metrics input"), function (b) { return b.checked; }
        ).map(function (b) { return b.value; });
        state.metrics = chosen.length === metricKeys.length ? null : chosen;
        writeHash();
        render();
      });
      label.appendChild(box);
      label.appendChild(document.createTextNode(" " + c.title + (c.arrow ? " " + c.arrow : "")));
      fieldset.appendChild(label);
    });
    document.getElementById("metrics-all").addEventListener("click", function () {
      state.metrics = null; writeHash(); render();
    });
    document.getElementById("metrics-none").addEventListener("click", function () {
      state.metrics = []; writeHash(); render();
    });
  }

  function renderEnv() {
    var body = document.getElementById("env").tBodies[0];
    clear(body);
    var protocol = el("tr");
    protocol.appendChild(el("th", "protocol"));
    protocol.appendChild(el("td", data.protocol.name + " (version " +
                            data.protocol.versions.join(", ") + "), dataset " + data.dataset));
    body.appendChild(protocol);
    data.env.forEach(function (field) {
      var tr = el("tr");
      tr.appendChild(el("th", field.label));
      var td = el("td");
      field.values.forEach(function (pair, i) {
        if (i) { td.appendChild(el("br")); }
        td.appendChild(document.createTextNode(pair[0] + " (" + pair[1] + " run" +
                                               (pair[1] === 1 ? "" : "s") + ")"));
      });
      tr.appendChild(td);
      body.appendChild(tr);
    });
  }

  buildControls();
  renderEnv();
  readHash();
  render();
  window.addEventListener("hashchange", function () { readHash(); render(); });
}());
"""

#: nothing is loaded from anywhere, and only this page's own script runs: an element that
#: got in despite the escaping could not run an event handler either
_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{base64.b64encode(hashlib.sha256(_JS.encode()).digest()).decode()}'"
)
