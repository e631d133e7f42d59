from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.compare import compare, expected_from_results, read_expected
from bench.errors import GenbenchError
from bench.report import aggregate, display_table, write_leaderboard
from bench.results import RunResult, load_result, write_result

DATA = Path(__file__).parent.parent / "data" / "results"


@pytest.mark.parametrize("path", sorted(DATA.glob("v*.json")), ids=lambda p: p.name)
def test_every_schema_version_ever_written_loads(path: Path) -> None:
    result = load_result(path)
    assert result.status in ("ok", "diverged", "failed")
    assert result.method and result.dataset and "name" in result.protocol


def test_top_level_keys() -> None:
    raw = json.loads((DATA / "v1.json").read_text())
    assert {
        "schema_version",
        "method",
        "dataset",
        "protocol",
        "seed",
        "status",
        "metrics",
        "config",
        "env",
    } <= set(raw)


def make_result(
    method: str,
    seed: int,
    fid: float | None = None,
    bpd: float | None = None,
    bound: bool = False,
    acc: float | None = None,
    status: str = "ok",
) -> RunResult:
    metrics: dict = {}
    if fid is not None:
        metrics["fidelity"] = {
            "fid": fid,
            "kid": fid / 100,
            "precision": 0.5,
            "recall": 0.5,
            "settings": {"extractor": "digits-cnn"},
        }
    if bpd is not None:
        metrics["likelihood"] = {"bpd": bpd, "is_bound": bound}
    if acc is not None:
        metrics["probe"] = {"linear_acc": acc, "knn_acc": acc}
    return RunResult(
        method,
        "digits",
        {"name": "quick", "version": 1},
        seed,
        status,
        metrics,
        {},
        {},
        diverged_at_step=5 if status == "diverged" else None,
    )


def write(root: Path, result: RunResult) -> None:
    write_result(result, root / "quick" / "digits" / result.method / f"seed-{result.seed}")


def test_roundtrip_and_atomic_write(tmp_path: Path) -> None:
    result = make_result("a", 0, fid=3.0)
    path = write_result(result, tmp_path)
    assert load_result(path) == result
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temp files left


def test_replaced_results_are_kept_in_history(tmp_path: Path) -> None:
    write_result(make_result("a", 0, fid=3.0), tmp_path)
    write_result(make_result("a", 0, status="failed"), tmp_path)
    assert load_result(tmp_path / "result.json").status == "failed"
    kept = list((tmp_path / "history").iterdir())
    assert len(kept) == 1 and load_result(kept[0]).metrics["fidelity"]["fid"] == 3.0


def test_nan_metrics_are_stored_as_null(tmp_path: Path) -> None:
    path = write_result(make_result("a", 0, fid=float("nan")), tmp_path)
    assert load_result(path).metrics["fidelity"]["fid"] is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "malformed result file"),
        ('{"method": "a"}', "no schema_version"),
        ('{"schema_version": 99}', "schema_version 99"),
        ('{"schema_version": 1, "method": "a"}', "missing"),
    ],
)
def test_malformed_result_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "result.json"
    path.write_text(text)
    with pytest.raises(GenbenchError, match=message):
        load_result(path)


def test_aggregate_mean_std_and_markers(tmp_path: Path) -> None:
    for seed, fid in enumerate([10.0, 12.0, 14.0]):
        write(tmp_path, make_result("gen", seed, fid=fid, bpd=2.0 + seed / 10, bound=True))
    write(tmp_path, make_result("enc", 0, acc=0.9))
    write(tmp_path, make_result("bad", 0, status="diverged"))
    folder = write_leaderboard(tmp_path, "quick", "digits", tmp_path / "reports")
    table = pd.read_csv(folder / "leaderboard.csv").set_index("method")
    assert table.at["gen", "fid[digits-cnn]_mean"] == pytest.approx(12.0)
    assert table.at["gen", "fid[digits-cnn]_std"] == pytest.approx(2.0)
    assert table.at["gen", "fid[digits-cnn]_ci95"] == pytest.approx(
        4.303 * 2 / math.sqrt(3), rel=1e-3
    )
    markdown = (folder / "leaderboard.md").read_text()
    assert "FID[digits-cnn] ↓" in markdown and "linear acc ↑" in markdown
    assert "12.00 ± 2.00" in markdown and "≤ 2.100" in markdown
    shown = display_table(aggregate([make_result("enc", 0, acc=0.9)]))
    assert "n/a" not in shown.to_string()
    row = display_table(
        aggregate([make_result("enc", 0, acc=0.9), make_result("gen", 0, fid=1.0)])
    ).set_index("method")
    assert row.at["enc", "FID[digits-cnn] ↓"] == "n/a"
    assert "diverged at step 5" in markdown


def test_leaderboard_shows_sample_grids(smoke_study, tmp_path: Path) -> None:
    out, _, _ = smoke_study
    folder = write_leaderboard(out, "smoke", "digits", tmp_path)
    assert (folder / "samples" / "real-data.png").exists()
    assert "![real-data](samples/real-data.png)" in (folder / "leaderboard.md").read_text()
    assert not (folder / "samples" / "raw-pixels.png").exists()  # no sample capability


def test_overlapping_intervals_share_a_rank() -> None:
    """Ranks use compare-methods' paired test over common seeds: b's paired differences
    from a straddle 0, so a and b share rank 1; c is worse on every seed."""
    runs = [make_result("a", s, fid=f) for s, f in enumerate([10.0, 11.0, 12.0])]
    runs += [make_result("b", s, fid=f) for s, f in enumerate([10.5, 12.5, 11.0])]
    runs += [make_result("c", s, fid=f) for s, f in enumerate([40.0, 41.0, 42.0])]
    runs += [make_result("d", 0, acc=0.5)]
    table = aggregate(runs).set_index("method")
    assert table.at["a", "fid[digits-cnn]_rank"] == table.at["b", "fid[digits-cnn]_rank"] == 1
    assert table.at["c", "fid[digits-cnn]_rank"] == 3
    assert pd.isna(table.at["d", "fid[digits-cnn]_rank"])
    assert table.at["d", "linear_acc_rank"] == 1


def test_compare_regressions_improvements_and_update(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write(runs, make_result("gen", 0, fid=10.0, bpd=2.0))
    write(runs, make_result("enc", 0, acc=0.90))
    results = runs / "quick" / "digits"
    expected = expected_from_results(results)
    assert set(expected["metric"]) >= {"fid[digits-cnn]", "bpd", "linear_acc"}
    path = tmp_path / "expected.csv"
    expected.to_csv(path, index=False)
    assert (compare(read_expected(path), results)["verdict"] == "ok").all()

    write(runs, make_result("gen", 0, fid=20.0, bpd=1.5))  # FID worse, bpd better
    shutil.rmtree(runs / "quick" / "digits" / "enc")
    write(runs, make_result("enc", 0, status="failed"))
    verdicts = compare(read_expected(path), results).set_index("metric")
    assert verdicts.at["fid[digits-cnn]", "verdict"] == "regression"
    assert verdicts.at["bpd", "verdict"] == "improvement"
    assert verdicts.at["linear_acc", "verdict"] == "regression"


def test_malformed_expected_table(tmp_path: Path) -> None:
    path = tmp_path / "expected.csv"
    path.write_text("method,metric,value\na,fid,1\n")
    with pytest.raises(GenbenchError, match="lacks column 'tolerance'"):
        read_expected(path)
    path.write_text("method,metric,value,tolerance,direction\na,fid,1,0.1,sideways\n")
    with pytest.raises(GenbenchError, match="direction"):
        read_expected(path)
