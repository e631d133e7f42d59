"""The explorable leaderboard page (bench.report_html), the LaTeX table and ``--format``.

The browser tests open the page in headless Chromium (``--dump-dom``) with the view in the
URL hash, as a user's link would, and read the DOM the page's script built: rows sorted as
asked, families filtered, metric columns hidden, and a method named like an HTML element
shown as text. They skip when no ``chromium`` / ``chromium-browser`` is installed
(``apt-get install chromium``); the other tests need no browser.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import urllib.parse
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from bench.cli import main
from bench.report import aggregate, latex_table, latex_text, parse_formats, write_leaderboard
from bench.report_html import (
    DATA_ID,
    embed_json,
    leaderboard_html,
    owner_method,
    page_data,
    row_families,
)
from bench.results import RunResult, record_result

EVIL = "<img src=x onerror=document.title='pwned'>"
FID = "fid[digits-cnn]"
TITLE = "Leaderboard: protocol quick (version 1), dataset digits"
ENV = {
    "git_commit": "0123abc",
    "git_dirty": False,
    "packages": {"genbench": "0.1.0", "torch": "2.4.0", "torch-fidelity": "0.3.0"},
    "python": "3.11.7",
    "platform": "Linux",
    "device": "cpu (x86_64, 2 threads)",
    "precision": "fp32",
}


def png(size: int = 4) -> bytes:
    """A tiny valid grey PNG."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    raw = b"".join(b"\x00" + bytes([128] * size) for _ in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def make(
    method: str,
    seed: int,
    fid: float | None = None,
    bpd: float | None = None,
    acc: float | None = None,
    config: dict[str, Any] | None = None,
    variants: list[dict[str, Any]] | None = None,
    status: str = "ok",
    env: dict[str, Any] | None = None,
) -> RunResult:
    metrics: dict[str, Any] = {}
    if fid is not None:
        metrics["fidelity"] = {
            "fid": fid,
            "kid": fid / 100,
            "precision": 0.5,
            "recall": 0.5,
            "settings": {"extractor": "digits-cnn"},
        }
    if bpd is not None:
        metrics["likelihood"] = {"bpd": bpd, "is_bound": True}
    if acc is not None:
        metrics["probe"] = {"linear_acc": acc, "knn_acc": acc}
    if variants:
        metrics["fidelity_variants"] = variants
    return RunResult(
        method,
        "digits",
        {"name": "quick", "version": 1},
        seed,
        status,
        metrics,
        config or {},
        env if env is not None else dict(ENV),
        diverged_at_step=7 if status == "diverged" else None,
    )


def study(root: Path) -> Path:
    """A results tree of every kind of row: genbench's families, a variant row, an external
    row, a plug-in's row, a method without FID, and a method named like an HTML element."""
    runs = [
        make("real-data", 0, fid=5.0),
        make("real-data", 1, fid=6.0),
        make("gan", 0, fid=40.0),
        make("gan", 1, fid=44.0),
        make("wgan", 0, fid=30.0),
        make("wgan", 1, fid=34.0, env={**ENV, "git_dirty": True, "device": "cuda:0 (H100)"}),
        make("raw-pixels", 0, acc=0.9),
        make(EVIL, 0, fid=50.0),
        make("ext-model", 0, fid=20.0, config={"external": True}),
        make("my-plug", 0, fid=10.0, config={"plugin": {"name": "myplug", "sha256": "0"}}),
    ]
    variant = {"fid": 70.0, "settings": {"extractor": "digits-cnn"}, "variant": {"pixels": "mean"}}
    runs += [make("vae", s, fid=60.0 + 2 * s, bpd=2.5, variants=[variant]) for s in (0, 1)]
    runs.append(make("vae", 2, status="diverged"))
    for run in runs:
        folder = root / "quick" / "digits" / run.method / f"seed-{run.seed}"
        record_result(run, folder)
        if run.method in ("real-data", EVIL) and run.status == "ok":
            (folder / "samples.png").write_bytes(png())
    return root


# --- pure python: embedding, families, links -------------------------------------------------


class Tags(HTMLParser):
    """Every start tag with its attributes, the text, and the data script's content."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._script: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._script = dict(attrs)
            self.scripts.append((self._script, ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)
        else:
            self.text.append(data)


def test_embedded_json_cannot_close_the_script() -> None:
    value = {"name": "</script><script>alert(1)</script><!-- & \u2028", "n": 1.5}
    text = embed_json(value)
    assert "<" not in text and ">" not in text and "&" not in text
    assert "\\u003c/script\\u003e" in text and "\\u0026" in text
    assert json.loads(text) == value
    with pytest.raises(ValueError):
        embed_json({"x": float("nan")})


def test_page_carries_result_strings_only_as_escaped_json(tmp_path: Path) -> None:
    study(tmp_path)
    folder = write_leaderboard(tmp_path, "quick", "digits", tmp_path / "out", ("html",))
    assert sorted(p.name for p in folder.iterdir()) == ["leaderboard.html", "samples"]
    page = (folder / "leaderboard.html").read_text()
    assert page.startswith("<!doctype html>") and '<meta charset="utf-8">' in page
    assert EVIL not in page  # only its escaped form, inside the JSON
    assert "http:" not in page and "https:" not in page and "<link" not in page
    parsed = Tags()
    parsed.feed(page)
    tags = {tag for tag, _ in parsed.tags}
    assert "img" not in tags  # every image is made by the script, from the data
    assert all(not name.startswith("on") for _, attrs in parsed.tags for name in attrs)
    assert "Content-Security-Policy" in page and "'unsafe-inline'; script-src 'sha256-" in page
    data_scripts = [text for attrs, text in parsed.scripts if attrs.get("id") == DATA_ID]
    assert len(data_scripts) == 1
    assert [attrs.get("type") for attrs, _ in parsed.scripts] == ["application/json", None]
    data = json.loads(data_scripts[0])
    rows = {row["method"]: row for row in data["rows"]}
    assert EVIL in rows and rows[EVIL]["family"] == "other"
    assert rows["vae"]["cells"]["bpd"]["text"].startswith("≤ ")
    assert "raw-pixels" in rows and FID not in rows["raw-pixels"]["cells"]  # n/a: absent
    hover = rows["gan"]["cells"][FID]["hover"]
    assert "mean 42.00 ± 2.83" in hover and "95% interval [" in hover and "2 seeds" in hover
    assert rows["vae"]["status"] == "seed 2 diverged at step 7"
    assert [s["method"] for s in data["samples"]] == sorted([EVIL, "real-data"])
    assert all(s["src"].startswith("data:image/png;base64,") for s in data["samples"])
    assert data["protocol"] == {"name": "quick", "versions": [1]}
    env = {field["label"]: dict(map(tuple, field["values"])) for field in data["env"]}
    assert env["git commit"] == {"0123abc": 13}
    assert env["uncommitted changes (git dirty)"] == {"no": 12, "yes": 1}
    assert env["device"] == {"cpu (x86_64, 2 threads)": 12, "cuda:0 (H100)": 1}
    assert env["torch"] == {"2.4.0": 13} and env["precision"] == {"fp32": 13}
    for row in data["rows"]:  # every row links to its method's first seed
        owner = owner_method(row["method"], {r for r in rows if "[" not in r})
        target = (folder / urllib.parse.unquote(row["link"])).resolve()
        assert target == (tmp_path / "quick/digits" / owner / "seed-0/result.json").resolve()


def test_a_name_reaches_the_page_only_as_data() -> None:
    """The generator itself, from a results list: the name is in the JSON, never markup."""
    runs = [make(EVIL, 0, fid=1.0), make('"><svg onload=alert(2)>', 0, fid=2.0)]
    table = aggregate(runs)
    page = leaderboard_html(page_data(table, runs, Path("."), families={}))
    assert "<svg" not in page and "<img" not in page and "\\u003csvg onload=alert(2)" in page
    parsed = Tags()
    parsed.feed(page)
    assert {tag for tag, _ in parsed.tags} <= {
        "html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "code",
        "label", "select", "option", "fieldset", "legend", "button", "div", "table",
        "thead", "tbody", "tr", "section", "script", "ul",
    }  # fmt: skip
    data = json.loads(next(text for attrs, text in parsed.scripts if attrs.get("id") == DATA_ID))
    assert {row["method"] for row in data["rows"]} == {EVIL, '"><svg onload=alert(2)>'}


def test_families_of_rows() -> None:
    runs = [
        make("ddpm", 0, fid=1.0, variants=[{"fid": 2.0, "settings": {"extractor": "x"},
                                            "variant": {"sampler": "ddim", "steps": 10}}]),
        make("ext", 0, fid=1.0, config={"external": True}),
        make("plug", 0, fid=1.0, config={"plugin": {"name": "myplug"}}),
        make("mystery", 0, fid=1.0),
    ]  # fmt: skip
    families = row_families(aggregate(runs), runs, registry={"ddpm": "diffusion"})
    assert families == {
        "ddpm": "diffusion",
        "ddpm[sampler=ddim,steps=10]": "diffusion",
        "ext": "external",
        "plug": "myplug",
        "mystery": "other",
    }


# --- LaTeX and --format ----------------------------------------------------------------------


def test_latex_escapes_every_special_character() -> None:
    assert latex_text("a_b & 50% #1 $x$ {y} ~z ^w \\ <i>") == (
        r"a\_b \& 50\% \#1 \$x\$ \{y\} \textasciitilde{}z \textasciicircum{}w "
        r"\textbackslash{} \textless{}i\textgreater{}"
    )


def test_latex_table_bolds_the_best_and_marks_bounds() -> None:
    runs = [make("a_b&c", s, fid=10.0 + s, bpd=2.0) for s in (0, 1)]
    runs += [make("100%", 0, fid=30.0, acc=0.9), make("50#", 0, acc=0.95)]
    runs += [make("x", 0, status="failed")]
    text = latex_table(aggregate(runs), "quick", "digits")
    lines = text.splitlines()
    assert "\\begin{tabular}" in text and "\\toprule" in text and "\\bottomrule" in text
    head = next(line for line in lines if line.startswith("Method"))
    assert r"FID[digits-cnn] $\downarrow$" in head and r"linear acc $\uparrow$" in head
    assert head.endswith("Seeds & Status \\\\")  # a failed run: the status column
    row = {line.split(" & ")[0]: line.split(" & ") for line in lines if " & " in line}
    assert r"a\_b\&c" in row and r"100\%" in row and r"50\#" in row
    ab, pct, hash_ = row[r"a\_b\&c"], row[r"100\%"], row[r"50\#"]
    assert ab[1] == r"$\mathbf{10.50} \pm \mathbf{0.71}$"  # lowest FID: bold
    assert pct[1] == "$30.00$" and hash_[1] == "n/a"
    assert r"$\leq \mathbf{2.000} \pm \mathbf{0.000}$" in ab
    accuracy = head.split(" & ").index(r"linear acc $\uparrow$")
    assert hash_[accuracy] == r"$\mathbf{0.950}$" and pct[accuracy] == "$0.900$"
    assert row["x"][-1] == "seed 0 failed \\\\"


def test_format_parsing() -> None:
    assert parse_formats("md, LaTeX,md") == ("md", "latex")
    assert parse_formats(["csv"]) == ("csv",)


@pytest.mark.parametrize("value", ["pdf", "md,,docx", ","])
def test_bad_format_is_one_line_and_exit_2(tmp_path: Path, capsys, value: str) -> None:
    study(tmp_path)
    assert main(["report", "--runs", str(tmp_path), "--format", value]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--format" in err
    assert "md, csv, html, latex" in err
    assert not (tmp_path / "leaderboards").exists()


def test_format_latex_writes_only_the_tex(tmp_path: Path, capsys) -> None:
    study(tmp_path)
    out = tmp_path / "reports"
    assert main(["report", "--runs", str(tmp_path), "--out", str(out), "--format", "latex"]) == 0
    assert sorted(p.name for p in (out / "quick-digits").iterdir()) == ["leaderboard.tex"]
    assert "quick-digits/leaderboard.tex" in capsys.readouterr().out
    assert (
        r"\textless{}img src=x onerror=document.title='pwned'\textgreater{}"
        in (out / "quick-digits" / "leaderboard.tex").read_text()
    )


# --- the page in a browser -------------------------------------------------------------------

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(
    BROWSER is None,
    reason="no chromium or chromium-browser on PATH (apt-get install chromium) for the "
    "leaderboard page's browser test",
)


class Board(HTMLParser):
    """The leaderboard table, gallery images and title of a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.title = ""
        self.headers: list[str] = []  # data-key of each header
        self.rows: list[dict[str, Any]] = []
        self.images: list[dict[str, str | None]] = []
        self.text: list[str] = []
        self.summary = ""
        self._where: list[str] = []
        self._cell: list[str] | None = None
        self._in_board = False
        self._in_title = False
        self._in_summary = False

    def handle_starttag(self, tag: str, attrs_list: list[tuple[str, str | None]]) -> None:
        attrs = dict(attrs_list)
        if tag == "title":
            self._in_title = True
        if tag == "p" and attrs.get("id") == "summary":
            self._in_summary = True
        if tag == "img":
            self.images.append(attrs)
        if tag == "table" and attrs.get("id") == "board":
            self._in_board = True
        if not self._in_board:
            return
        if tag == "th":
            self.headers.append(str(attrs.get("data-key")))
        elif tag == "tr" and "data-method" in attrs:
            self.rows.append({**attrs, "cells": [], "links": []})
        elif tag == "td" and self.rows:
            self._cell = []
            self.rows[-1]["cells"].append((attrs, self._cell))
        elif tag == "a" and self.rows:
            self.rows[-1]["links"].append(attrs.get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag == "p":
            self._in_summary = False
        if tag == "table":
            self._in_board = False
        if tag == "td":
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_title:
            self.title += data
        if self._in_summary:
            self.summary += data
        if self._cell is not None:
            self._cell.append(data)

    def methods(self) -> list[str]:
        return [str(row["data-method"]) for row in self.rows]

    def cell(self, row: dict[str, Any], key: str) -> str:
        return next("".join(text) for attrs, text in row["cells"] if attrs.get("data-key") == key)


def dump(page: Path, fragment: str, profile: Path) -> tuple[str, Board]:
    """The DOM of ``page#fragment`` after its script ran, raw and parsed."""
    assert BROWSER is not None
    url = page.absolute().as_uri() + ("#" + fragment if fragment else "")
    done = subprocess.run(
        [
            BROWSER,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "<html" in done.stdout, done.stderr[-2000:]
    board = Board()
    board.feed(done.stdout)
    return done.stdout, board


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = study(tmp_path_factory.mktemp("runs"))
    folder = write_leaderboard(root, "quick", "digits", root / "reports", ("html",))
    return folder / "leaderboard.html"


ASCENDING = [
    "real-data",  # 5.5
    "my-plug",  # 10
    "ext-model",  # 20
    "wgan",  # 32
    "gan",  # 42
    EVIL,  # 50
    "vae",  # 61
    "vae[pixels=mean]",  # 70
]


@needs_browser
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_browser_sorts_by_the_hash(page: Path, tmp_path: Path, order: str) -> None:
    sort = urllib.parse.quote(FID, safe="")
    _, board = dump(page, f"sort={sort}&dir={order}", tmp_path / "profile")
    expected = ASCENDING if order == "asc" else ASCENDING[::-1]
    assert board.methods() == [*expected, "raw-pixels"]  # n/a last in both directions
    assert board.cell(board.rows[-1], FID) == "n/a"
    means = [float(board.cell(row, FID).split(" ± ")[0]) for row in board.rows[:-1]]
    assert means == sorted(means, reverse=order == "desc")
    assert board.title == TITLE
    for row in board.rows:  # each row links to a result file that exists
        (link,) = row["links"]
        assert (page.parent / urllib.parse.unquote(link)).resolve().is_file()


@needs_browser
def test_browser_filters_families_and_metrics(page: Path, tmp_path: Path) -> None:
    metrics = ",".join(urllib.parse.quote(m, safe="") for m in (FID, "bpd"))
    _, board = dump(page, f"family=gan&metrics={metrics}", tmp_path / "profile")
    assert board.methods() == ["gan", "wgan"]
    assert {row["data-family"] for row in board.rows} == {"gan"}
    assert board.headers == ["method", "family", FID, "bpd", "seeds", "status", "link"]
    assert "2 of 9 rows (family gan), 2 of 7 metric columns" in board.summary
    _, board = dump(page, "family=vae", tmp_path / "profile")
    assert board.methods() == ["vae", "vae[pixels=mean]"]
    assert "kid[digits-cnn]" in board.headers and "linear_acc" in board.headers
    _, board = dump(page, "family=external", tmp_path / "profile")
    assert board.methods() == ["ext-model"]
    assert "".join(board.rows[0]["cells"][0][1]) == "ext-model (external)"
    _, board = dump(page, "family=myplug", tmp_path / "profile")
    assert board.methods() == ["my-plug"] and board.images == []  # its gallery is filtered


@needs_browser
def test_browser_shows_a_hostile_name_as_text(page: Path, tmp_path: Path) -> None:
    """Without the page's Content-Security-Policy (which would also stop an injected
    handler), so that the escaping alone is what is tested."""
    text = page.read_text()
    start = text.index('<meta http-equiv="Content-Security-Policy"')
    bare = page.with_name("no-csp.html")
    bare.write_text(text[:start] + text[text.index(">", start) + 1 :])
    raw, board = dump(bare, "", tmp_path / "profile")
    assert board.title == TITLE  # the onerror never ran
    assert EVIL in board.methods() and EVIL in "".join(board.text)
    assert "&lt;img src=x onerror=document.title='pwned'&gt;" in raw
    assert 'src="x"' not in raw and "<img src=x" not in raw
    assert len(board.images) == 2 and all(
        str(img["src"]).startswith("data:image/png;base64,") and img["alt"] in (EVIL, "real-data")
        for img in board.images
    )
    assert not any(key.startswith("on") for img in board.images for key in img)
    row = next(row for row in board.rows if row["data-method"] == EVIL)
    assert row["data-family"] == "other" and board.cell(row, FID) == "50.00"
    (link,) = row["links"]
    assert (page.parent / urllib.parse.unquote(link)).resolve().is_file()


@needs_browser
def test_browser_clicks_sort_filter_and_keep_the_view_in_the_hash(
    page: Path, tmp_path: Path
) -> None:
    """Clicks, scripted by a probe appended to a copy of the page (without its CSP, which
    admits only the page's own script): a header click sorts best first, a second click
    reverses, the family select filters, and each step is written to the address."""
    probe = """<script>
    function th(key) { return document.querySelector('#board th[data-key="' + key + '"]'); }
    function methods() {
      return Array.prototype.map.call(document.querySelectorAll("#board tbody tr"),
        function (tr) { return tr.getAttribute("data-method"); });
    }
    var seen = [];
    th("fid[digits-cnn]").click();
    seen.push([location.hash, methods()]);
    th("fid[digits-cnn]").click();
    seen.push([location.hash, methods()]);
    var select = document.getElementById("family");
    select.value = "gan";
    select.dispatchEvent(new Event("change"));
    seen.push([location.hash, methods()]);
    var box = document.querySelector('#metrics input[value="kid[digits-cnn]"]');
    box.click();
    seen.push([location.hash, Array.prototype.map.call(document.querySelectorAll("#board th"),
      function (th) { return th.getAttribute("data-key"); })]);
    var out = document.createElement("pre");
    out.id = "probe";
    out.textContent = JSON.stringify(seen);
    document.body.appendChild(out);
    </script>"""
    text = page.read_text()
    start = text.index('<meta http-equiv="Content-Security-Policy"')
    text = text[:start] + text[text.index(">", start) + 1 :]
    probed = page.with_name("probed.html")
    probed.write_text(text.replace("</body>", probe + "\n</body>"))
    raw, _ = dump(probed, "", tmp_path / "profile")
    found = raw.split('<pre id="probe">', 1)[1].split("</pre>", 1)[0]
    seen = json.loads(found.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    sort = "#sort=" + urllib.parse.quote(FID, safe="")
    assert seen[0] == [sort + "&dir=asc", [*ASCENDING, "raw-pixels"]]  # FID: lower first
    assert seen[1] == [sort + "&dir=desc", [*ASCENDING[::-1], "raw-pixels"]]
    assert seen[2] == [sort + "&dir=desc&family=gan", ["gan", "wgan"]]
    hash_, headers = seen[3]
    parsed = Tags()
    parsed.feed(page.read_text())
    data = json.loads(next(text for attrs, text in parsed.scripts if attrs.get("id") == DATA_ID))
    kept = [c["key"] for c in data["columns"] if c["key"] != "kid[digits-cnn]"]
    metrics = ",".join(urllib.parse.quote(key, safe="") for key in kept)
    assert hash_ == sort + "&dir=desc&family=gan&metrics=" + metrics
    assert "kid[digits-cnn]" not in headers and FID in headers and "bpd" in headers
