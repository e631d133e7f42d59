"""compare-methods, correlate and the leaderboard's shared ranks (bench/stats.py)."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench import stats
from bench.cli import main
from bench.errors import GenbenchError
from bench.report import aggregate, load_results
from bench.results import RunResult, load_result, record_result, run_dir

FID = "fid[digits-cnn]"
KID = "kid[digits-cnn]"


# -- small result trees written directly ---------------------------------------------------
def make_result(
    method: str,
    seed: int,
    fid: float | None = None,
    bpd: float | None = None,
    acc: float | None = 0.9,
) -> RunResult:
    metrics: dict = {}
    if acc is not None:
        metrics["probe"] = {"linear_acc": acc, "knn_acc": acc}
    if fid is not None:
        metrics["fidelity"] = {
            "fid": fid,
            "kid": fid / 100,
            "precision": 1 - fid / 100,
            "recall": fid / 200,
            "settings": {"extractor": "digits-cnn"},
        }
    if bpd is not None:
        metrics["likelihood"] = {"bpd": bpd, "is_bound": False}
    return RunResult(method, "digits", {"name": "quick", "version": 1}, seed, "ok", metrics, {}, {})


def write_study(root: Path, results: list[RunResult]) -> Path:
    for result in results:
        record_result(result, run_dir(root, "quick", "digits", result.method, result.seed))
    return root / "quick" / "digits"


def synthetic_study(root: Path) -> Path:
    """Four methods, two seeds: FID, bpd and probe accuracy all ordered differently."""
    values = {  # method: (fid, bpd, acc) of seed 0; seed 1 adds a little
        "ddpm": (20.0, 2.5, 0.80),
        "gan": (30.0, None, 0.95),
        "vae": (60.0, 2.2, 0.85),
        "made": (90.0, 2.0, 0.70),
    }
    results = []
    for method, (fid, bpd, acc) in values.items():
        for seed in (0, 1):
            results.append(
                make_result(
                    method,
                    seed,
                    fid=fid + seed,
                    bpd=None if bpd is None else bpd + seed / 100,
                    acc=acc + seed / 100,
                )
            )
    return write_study(root, results)


def copy_with(study: Path, target: Path, change) -> Path:
    """Every result of ``study`` rewritten under ``target`` after ``change(result)``."""
    for result in load_results(study):
        change(result)
        record_result(result, run_dir(target, "quick", "digits", result.method, result.seed))
    return target / "quick" / "digits"


# -- the paired test ------------------------------------------------------------------------
def test_paired_interval_and_verdict_follow_the_direction() -> None:
    interval = stats.t_interval([1.0, 2.0, 3.0])
    assert interval is not None
    assert interval.mean == pytest.approx(2.0)
    assert interval.high - interval.mean == pytest.approx(4.302653 / 3**0.5, rel=1e-5)
    assert stats.t_interval([1.0]) is None
    assert stats.verdict(stats.Interval(-5, -6, -4), "lower") == stats.A_BETTER
    assert stats.verdict(stats.Interval(-5, -6, -4), "higher") == stats.B_BETTER
    assert stats.verdict(stats.Interval(5, 4, 6), "higher") == stats.A_BETTER
    assert stats.verdict(stats.Interval(0.5, -1, 2), "lower") == stats.SAME
    a, b = {0: 10.0, 1: 11.0, 2: 12.0}, {0: 10.5, 1: 11.5, 2: 12.5}
    assert stats.wholly_better(a, b, "lower") is True  # a constant offset, seed by seed
    assert stats.wholly_better(b, a, "lower") is False
    assert stats.wholly_better(a, {0: 10.5, 5: 0.0}, "lower") is None  # one common seed


def test_shared_ranks_pair_over_common_seeds() -> None:
    runs = [make_result("a", s, fid=f) for s, f in enumerate([10.0, 11.0, 12.0])]
    # unpaired intervals overlap, but b is worse than a by 0.5 on every seed
    runs += [make_result("b", s, fid=f) for s, f in enumerate([10.5, 11.5, 12.5])]
    # overlapping, and the paired differences straddle 0: shares a's rank
    runs += [make_result("c", s, fid=f) for s, f in enumerate([12.0, 10.0, 11.5])]
    runs += [make_result("d", s, fid=f) for s, f in enumerate([40.0, 41.0, 42.0])]
    # one seed: the unpaired rule (its mean inside a's interval: shares rank 1)
    runs += [make_result("e", 7, fid=11.0)]
    table = aggregate(runs).set_index("method")
    ranks = table[f"{FID}_rank"]
    assert ranks["a"] == ranks["c"] == ranks["e"] == 1
    assert ranks["b"] == 2  # only a is wholly better (c's pairs with b straddle 0)
    assert ranks["d"] == 5  # every other row is wholly better
    assert "linear_acc_rank" in table.columns
    assert not any("seed" in str(c) and c != "seeds" for c in table.columns)  # nothing added


# -- a real smoke study: real-data and independent-pixels train in seconds ------------------
@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stats-smoke")
    code = main(
        [
            "run",
            "--protocol",
            "smoke",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--methods",
            "real-data,independent-pixels",
            "--seeds",
            "0,1,2",
            "--no-report",
        ]
    )
    assert code == 0
    return out / "smoke" / "digits"


def by_metric(items: list[stats.Comparison]) -> dict[str, stats.Comparison]:
    return {item.metric: item for item in items}


def test_real_data_beats_independent_pixels_on_fid(smoke: Path, capsys) -> None:
    found = by_metric(stats.compare_methods(smoke, "real-data", "independent-pixels"))
    fid = found[FID]
    assert fid.test == "paired" and fid.n == 3 and fid.seeds == [0, 1, 2]
    assert fid.verdict == stats.A_BETTER
    assert fid.high is not None and fid.high < 0  # lower FID is better: A - B below 0
    assert found[KID].verdict == stats.A_BETTER
    assert "bpd" not in found  # real-data has no likelihood
    assert main(["compare-methods", "independent-pixels", "real-data", "--study", str(smoke)]) == 0
    table = capsys.readouterr().out
    line = next(row for row in table.splitlines() if FID in row)
    assert "B better (real-data)" in line and "n=3 seeds" in line


def test_a_method_against_itself_with_seeds_rotated_is_not_distinguishable(
    smoke: Path, tmp_path: Path, capsys
) -> None:
    study = tmp_path / "smoke" / "digits"
    shutil.copytree(smoke, study)
    for result in load_results(smoke):
        if result.method == "independent-pixels":
            copy = dataclasses.replace(result, method="pixels-again", seed=(result.seed + 1) % 3)
            record_result(copy, run_dir(tmp_path, "smoke", "digits", copy.method, copy.seed))
    found = by_metric(stats.compare_methods(study, "independent-pixels", "pixels-again"))
    assert {FID, KID, "bpd"} <= set(found)
    for item in found.values():
        assert item.test == "paired" and item.n == 3
        assert item.verdict == stats.SAME, item
    fid = found[FID]
    assert fid.mean_diff == pytest.approx(0.0, abs=1e-9) and fid.low < 0 < fid.high  # type: ignore[operator]
    args = ["compare-methods", "independent-pixels", "pixels-again", "--study", str(study)]
    assert main([*args, "--json", "--metrics", "fid"]) == 0
    payload = json.loads(capsys.readouterr().out)
    # every FID column: the study's extractor's and the second network's
    assert [c["metric"] for c in payload["comparisons"]] == [FID, "fid[digits-cnn-b]"]
    assert {c["verdict"] for c in payload["comparisons"]} == {"not distinguishable"}


def test_one_seed_bootstraps_fid_over_samples(smoke: Path, tmp_path: Path) -> None:
    study = tmp_path / "smoke" / "digits"
    for method in ("real-data", "independent-pixels"):
        shutil.copytree(smoke / method / "seed-0", study / method / "seed-0")
    items = stats.compare_methods(study, "real-data", "independent-pixels", bootstrap=30, seed=3)
    found = by_metric(items)
    recorded = {r.method: r.metrics["fidelity"] for r in load_results(study)}
    for metric, key in ((FID, "fid"), (KID, "kid")):
        item = found[metric]
        assert item.test == "bootstrap" and item.bootstrap == 30 and item.seeds == [0, 0]
        observed = recorded["real-data"][key] - recorded["independent-pixels"][key]
        # the redrawn samples are the scored ones: the observed difference is the recorded one
        assert item.mean_diff == pytest.approx(observed, rel=1e-6)
        assert item.note == ""
        assert item.low is not None and item.high is not None
        assert item.low < observed < item.high < 0  # real-data's FID is far lower
        assert item.high - item.low < abs(observed)  # an interval, not noise
        assert item.verdict == stats.A_BETTER
    for metric in ("precision[digits-cnn]", "recall[digits-cnn]"):
        assert found[metric].test == "none"
        assert found[metric].verdict == "one seed: not testable"


# -- correlate ------------------------------------------------------------------------------
def test_correlate_a_study_with_itself_is_one(tmp_path: Path) -> None:
    study = synthetic_study(tmp_path / "a")
    items = {item.metric: item for item in stats.correlate(study, study)}
    assert {FID, KID, "bpd", "linear_acc", "knn_acc"} <= set(items)
    for metric, item in items.items():
        if metric == "bpd":  # gan has no likelihood
            assert len(item.methods) == 3
        assert item.spearman == 1.0 and item.kendall == 1.0, metric
        assert item.swapped == []


def test_correlate_with_a_negated_metric_is_minus_one(tmp_path: Path, capsys) -> None:
    study = synthetic_study(tmp_path / "a")

    def negate_fid(result: RunResult) -> None:
        result.metrics["fidelity"]["fid"] = -result.metrics["fidelity"]["fid"]

    other = copy_with(study, tmp_path / "b", negate_fid)
    items = {item.metric: item for item in stats.correlate(study, other)}
    fid = items[FID]
    assert fid.spearman == -1.0 and fid.kendall == -1.0
    assert len(fid.methods) == 4 and len(fid.swapped) == 6  # every pair of 4
    assert "made > vae in A, made < vae in B" in fid.swapped
    assert items[KID].spearman == 1.0 and items[KID].swapped == []  # untouched
    out = tmp_path / "agreement.csv"
    code = main(["correlate", str(study), str(other), "--metrics", "fid,kid", "--out", str(out)])
    assert code == 0
    rows = {row["metric"]: row for row in csv.DictReader(out.open())}
    assert set(rows) == {FID, KID}
    assert float(rows[FID]["spearman"]) == -1.0 and rows[FID]["swapped_pairs"] == "6"
    printed = capsys.readouterr().out
    assert "made > vae in A, made < vae in B" in printed
    markdown = tmp_path / "agreement.md"
    assert main(["correlate", str(study), str(other), "--out", str(markdown), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert {m["metric"]: m["kendall"] for m in payload["metrics"]}[FID] == -1.0
    assert "| metric" in markdown.read_text()


def test_correlate_needs_three_methods(tmp_path: Path) -> None:
    study = synthetic_study(tmp_path / "a")
    other = tmp_path / "b"
    for result in load_results(study):
        if result.method in ("ddpm", "gan"):
            record_result(result, run_dir(other, "quick", "digits", result.method, result.seed))
    items = stats.correlate(study, other / "quick" / "digits")
    assert items and all(item.note == "too few methods" for item in items)
    assert all(item.spearman is None and item.kendall is None for item in items)


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["compare-methods", "ddpm", "nosuch", "--study", "STUDY"], "unknown method 'nosuch'"),
        (["compare-methods", "ddpm", "ddpn", "--study", "STUDY"], "Did you mean 'ddpm'"),
        (["compare-methods", "ddpm", "edm", "--study", "STUDY"], "'edm' has no finished results"),
        (["compare-methods", "ddpm", "gan", "--study", "EMPTY"], "no result files"),
        (["compare-methods", "ddpm", "gan", "--study", "MISSING"], "does not exist"),
        (["compare-methods", "ddpm", "ddpm", "--study", "STUDY"], "two different rows"),
        (["compare-methods", "ddpm", "gan", "--study", "STUDY", "--metrics", "fdi"], "metric"),
        (["correlate", "STUDY", "EMPTY"], "no result files"),
        (["correlate", "STUDY", "STUDY", "--out", "OUT.txt"], ".md or .csv"),
        (["correlate", "STUDY", "STUDY", "--metrics", "nope"], "unknown metric 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    study = synthetic_study(tmp_path / "runs")
    (tmp_path / "empty").mkdir()
    where = {
        "STUDY": str(study),
        "EMPTY": str(tmp_path / "empty"),
        "MISSING": str(tmp_path / "missing"),
        "OUT.txt": str(tmp_path / "out.txt"),
    }
    assert main([where.get(a, a) for a in args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("genbench: error:"), captured.err
    assert message in lines[0]
    assert captured.out == ""
    assert not (tmp_path / "out.txt").exists()


def test_direct_calls_raise_genbench_error(tmp_path: Path) -> None:
    study = synthetic_study(tmp_path / "runs")
    apart = write_study(
        tmp_path / "apart", [make_result("gan", 0, fid=10.0, acc=None), make_result("mae", 0)]
    )
    with pytest.raises(GenbenchError, match="share no ranked metric"):
        stats.compare_methods(apart, "gan", "mae")
    with pytest.raises(GenbenchError, match="--bootstrap"):
        stats.compare_methods(study, "ddpm", "gan", bootstrap=0)
    assert load_result(study / "ddpm" / "seed-0" / "result.json").method == "ddpm"
    assert pd.isna(aggregate(load_results(study)).set_index("method").at["gan", "bpd_rank"])
