"""The report and the gate read results as untrusted input: each is validated, a bad one is
skipped with a warning naming its path, tables never mix datasets or protocol versions, and
strings from results are escaped in HTML and slugged in file names."""

from __future__ import annotations

import json
import logging
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from bench.compare import compare, expected_from_results
from bench.errors import GenbenchError
from bench.report import (
    copy_sample_grids,
    file_slug,
    load_results,
    validate_result,
    write_leaderboard,
)
from bench.results import RunResult, run_dir, write_result

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16  # content is never decoded, only copied


def make(
    method: str = "gen",
    seed: int = 0,
    dataset: str = "digits",
    protocol: str = "quick",
    version: int = 1,
    fid: float = 10.0,
) -> RunResult:
    metrics = {
        "fidelity": {
            "fid": fid,
            "kid": 0.01,
            "precision": 0.5,
            "recall": 0.5,
            "settings": {"extractor": "digits-cnn"},
        },
        "throughput": {"params": 10, "train_images_per_s": 100.0},
    }
    return RunResult(
        method, dataset, {"name": protocol, "version": version}, seed, "ok", metrics, {}, {}
    )


def put(root: Path, result: RunResult, samples: bool = False) -> Path:
    folder = run_dir(root, result.protocol["name"], result.dataset, result.method, result.seed)
    path = write_result(result, folder)
    if samples:
        (folder / "samples.png").write_bytes(PNG)
    return path


def edit(path: Path, change: Any) -> None:
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def set_in(keys: tuple[str, ...], value: Any) -> Any:
    def change(raw: dict[str, Any]) -> None:
        node = raw
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return change


def good_study(root: Path) -> None:
    for seed, fid in enumerate([10.0, 12.0]):
        put(root, make("gen", seed, fid=fid))
    put(root, make("other", 0, fid=30.0))


BAD_CONTENT = {
    "bad json": b'{"schema_version": 1, "method": ',
    "binary bytes": b"\x00\xff\xfe\x81binary\x00" * 8,
    "utf-16": json.dumps({"schema_version": 1}).encode("utf-16"),
    "a list": b"[1, 2, 3]",
    "unhashable schema_version": b'{"schema_version": [1]}',
}

BAD_EDITS = {
    "fid is a string": set_in(("metrics", "fidelity", "fid"), "12.5"),
    "fid is a list": set_in(("metrics", "fidelity", "fid"), [1.0]),
    "fid is a bool": set_in(("metrics", "fidelity", "fid"), True),
    "fid is NaN": set_in(("metrics", "fidelity", "fid"), float("nan")),
    "fid is inf": set_in(("metrics", "fidelity", "fid"), float("inf")),
    "recall is an object": set_in(("metrics", "fidelity", "recall"), {"x": 1}),
    "fidelity not an object": set_in(("metrics", "fidelity"), [1, 2]),
    "extractor not a string": set_in(("metrics", "fidelity", "settings", "extractor"), 3),
    "params is a string": set_in(("metrics", "throughput", "params"), "ten"),
    "throughput a number": set_in(("metrics", "throughput"), 5),
    "probe acc a string": set_in(("metrics", "probe"), {"linear_acc": "0.9"}),
    "bpd a string": set_in(("metrics", "likelihood"), {"bpd": "2", "is_bound": False}),
    "is_bound a string": set_in(("metrics", "likelihood"), {"bpd": 2.0, "is_bound": "no"}),
    "variants not a list": set_in(("metrics", "fidelity_variants"), {"a": 1}),
    "variant fid a string": set_in(
        ("metrics", "fidelity_variants"),
        [{"fid": "x", "settings": {"extractor": "digits-cnn"}, "variant": {"steps": 5}}],
    ),
    "seed a string": set_in(("seed",), "0"),
    "seed a float": set_in(("seed",), 0.5),
    "seed a bool": set_in(("seed",), False),
    "method a number": set_in(("method",), 7),
    "protocol a string": set_in(("protocol",), "quick"),
    "protocol version a string": set_in(("protocol", "version"), "1"),
    "status unknown": set_in(("status",), "great"),
    "metrics a list": set_in(("metrics",), []),
    "config a string": set_in(("config",), "x"),
    "diverged_at_step a string": set_in(("diverged_at_step",), "5"),
    "error a number": set_in(("error",), 5),
}


@pytest.mark.parametrize("name", sorted(BAD_CONTENT))
def test_corrupt_file_is_skipped_with_a_warning(tmp_path: Path, caplog, name: str) -> None:
    good_study(tmp_path)
    path = put(tmp_path, make("broken", 0))
    path.write_bytes(BAD_CONTENT[name])
    with caplog.at_level(logging.WARNING):
        results = load_results(tmp_path / "quick" / "digits")
    assert sorted((r.method, r.seed) for r in results) == [("gen", 0), ("gen", 1), ("other", 0)]
    assert f"skipping result {path}" in caplog.text


@pytest.mark.parametrize("name", sorted(BAD_EDITS))
def test_mistyped_result_is_skipped_with_a_warning(tmp_path: Path, caplog, name: str) -> None:
    good_study(tmp_path)
    path = put(tmp_path, make("broken", 0))
    edit(path, BAD_EDITS[name])
    with caplog.at_level(logging.WARNING):
        results = load_results(tmp_path / "quick" / "digits")
    assert "broken" not in {r.method for r in results} and len(results) == 3
    assert f"skipping result {path}" in caplog.text


def test_a_report_survives_a_corrupt_result(tmp_path: Path, caplog) -> None:
    good_study(tmp_path)
    put(tmp_path, make("broken", 0)).write_bytes(b"\x00\x01")
    folder = write_leaderboard(tmp_path, "quick", "digits", tmp_path / "out")
    text = (folder / "leaderboard.md").read_text()
    assert "gen" in text and "other" in text and "broken" not in text


def test_valid_results_have_no_problem() -> None:
    result = make()
    result.metrics["likelihood"] = {"bpd": 2.0, "is_bound": True}
    result.metrics["probe"] = {"linear_acc": 0.9, "knn_acc": None}
    result.metrics["fidelity_variants"] = [
        {"fid": 3.0, "settings": {"extractor": "x"}, "variant": {"steps": 5}, "nfe": 5}
    ]
    assert validate_result(result) is None
    result.metrics["probe"]["knn_acc"] = "high"
    assert validate_result(result) == "metrics.probe.knn_acc must be a number, got str 'high'"


@pytest.mark.parametrize(
    "field, value, says",
    [
        ("method", "other", "method says 'other'"),
        ("seed", 1, "seed folder says 'seed-1'"),
        ("dataset", "mnist5k", "dataset says 'mnist5k'"),
    ],
)
def test_result_that_disagrees_with_its_location_is_skipped(
    tmp_path: Path, caplog, field: str, value: Any, says: str
) -> None:
    """An edited method field must not join another method as an extra seed."""
    good_study(tmp_path)
    path = put(tmp_path, make("moved", 5, fid=99.0))
    edit(path, set_in((field,), value))
    with caplog.at_level(logging.WARNING):
        results = load_results(tmp_path / "quick" / "digits")
    assert sorted((r.method, r.seed) for r in results) == [("gen", 0), ("gen", 1), ("other", 0)]
    assert all(r.metrics["fidelity"]["fid"] != 99.0 for r in results)
    assert f"skipping result {path}" in caplog.text and says in caplog.text


def test_protocol_field_must_match_its_folder(tmp_path: Path, caplog) -> None:
    good_study(tmp_path)
    path = put(tmp_path, make("gen", 2))
    edit(path, set_in(("protocol", "name"), "smoke"))
    with caplog.at_level(logging.WARNING):
        assert len(load_results(tmp_path / "quick")) == 3
    assert "protocol says 'smoke'" in caplog.text


def test_two_datasets_in_one_table_is_an_error(tmp_path: Path) -> None:
    good_study(tmp_path)
    put(tmp_path, make("gen", 0, dataset="mnist5k"))
    with pytest.raises(GenbenchError, match="mix datasets 'digits' and 'mnist5k'"):
        load_results(tmp_path / "quick")


def test_compare_refuses_mixed_datasets(tmp_path: Path) -> None:
    """`compare expected.csv runs/smoke` with digits and mnist5k present must fail, not
    average the two datasets as seeds."""
    good_study(tmp_path)
    expected = expected_from_results(tmp_path / "quick" / "digits")
    put(tmp_path, make("gen", 0, dataset="mnist5k", fid=500.0))
    with pytest.raises(GenbenchError, match="mix datasets"):
        compare(expected, tmp_path / "quick")


def test_two_protocol_versions_in_one_table_is_an_error(tmp_path: Path) -> None:
    good_study(tmp_path)
    put(tmp_path, make("new", 0, version=2))
    with pytest.raises(GenbenchError, match="mix protocol 'quick' version 1 and 'quick' version 2"):
        load_results(tmp_path / "quick" / "digits")


def test_no_valid_result_is_an_error(tmp_path: Path) -> None:
    put(tmp_path, make("a", 0)).write_text("{nope")
    with pytest.raises(GenbenchError, match="no valid result files .* 1 found, all skipped"):
        load_results(tmp_path)
    with pytest.raises(GenbenchError, match="no result files under"):
        load_results(tmp_path / "empty")


# --- HTML and file names -----------------------------------------------------------------------


class Page(HTMLParser):
    """Collects tags with their attributes and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


XSS = "<img src=x onerror=alert(1)>"


def test_method_names_in_html_are_text(tmp_path: Path) -> None:
    put(tmp_path, make(XSS, 0), samples=True)
    put(tmp_path, make('"><svg onload=alert(2)>', 0), samples=True)
    result = make("ok-method", 0)
    result.metrics["fidelity"]["settings"]["extractor"] = "<b onmouseover=x>"
    put(tmp_path, result, samples=True)
    folder = write_leaderboard(tmp_path, "quick", "digits", tmp_path / "out")
    page_text = (folder / "leaderboard.html").read_text()
    assert page_text.startswith("<!doctype html>") and '<meta charset="utf-8">' in page_text
    page = Page()
    page.feed(page_text)
    tags = [tag for tag, _ in page.tags]
    # result strings live only in the escaped JSON block: no tag of theirs in the page
    assert "svg" not in tags and "b" not in tags and "img" not in tags and "title" in tags
    assert XSS not in page_text and "<svg onload" not in page_text
    block = page_text.split('<script type="application/json" id="leaderboard-data">', 1)[1]
    data = json.loads(block.split("</script>", 1)[0])
    names = {row["method"] for row in data["rows"]}
    assert {XSS, '"><svg onload=alert(2)>', "ok-method"} <= names
    assert "<b onmouseover=x>" in json.dumps(data, ensure_ascii=False)
    # the three sample grids, embedded as data: URIs (no file the page depends on)
    assert len(data["samples"]) == 3
    assert all(s["src"].startswith("data:image/png;base64,") for s in data["samples"])
    markdown = (folder / "leaderboard.md").read_text()
    assert "<img" not in markdown and "<svg" not in markdown


@pytest.mark.parametrize("name", ["../../../x", "a/b", "x\x00y", "..", ".hidden", "/abs/path"])
def test_sample_grid_names_stay_in_the_report_folder(tmp_path: Path, name: str) -> None:
    source = tmp_path / "run"
    source.mkdir()
    (source / "samples.png").write_bytes(PNG)
    result = make(name, 0)
    result.source_dir = source
    target = tmp_path / "deep" / "report" / "samples"
    copied = copy_sample_grids([result], target)
    assert len(copied) == 1 and copied[0][0] == name
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent != source]
    assert written == [target / copied[0][1]]
    assert file_slug(name) != name and "/" not in copied[0][1]


def test_slugs_keep_plain_names_and_separate_different_ones() -> None:
    assert file_slug("ddim[steps=10]") != file_slug("ddim_steps_10_")
    assert file_slug("real-data") == "real-data" and file_slug("vq-vae_2.0") == "vq-vae_2.0"
    assert file_slug("a/b") != file_slug("a_b") and file_slug("a/b") != file_slug("a?b")


def test_report_refuses_path_like_protocol_or_dataset(tmp_path: Path) -> None:
    good_study(tmp_path)
    with pytest.raises(GenbenchError, match="not a plain name"):
        write_leaderboard(tmp_path, "../quick", "digits", tmp_path / "out")
