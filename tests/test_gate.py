"""The regression gate (`genbench compare`): validation of expected tables, rows that can
fail, tolerances from seed spread, --strict and --methods, the throughput ratio gate, and
one seeded fault caught end to end (docs/GATE.md)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bench import tolerances
from bench.cli import main
from bench.compare import (
    compare,
    derive_expected,
    expected_from_results,
    read_expected,
    rows_that_cannot_fail,
    rows_that_cannot_improve,
    worst_row,
)
from bench.errors import GenbenchError
from bench.results import RunResult, run_dir, write_result

ROOT = Path(__file__).resolve().parent.parent
EXPECTED_TABLES = sorted((ROOT / "reports" / "expected").glob("*.csv"))
HEADER = "method,metric,value,tolerance,direction\n"


def _load_tool(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _result(
    out: Path,
    method: str,
    seed: int,
    metrics: dict[str, Any],
    protocol: str = "smoke",
    dataset: str = "digits",
    status: str = "ok",
) -> Path:
    result = RunResult(
        method=method,
        dataset=dataset,
        protocol={"name": protocol, "version": 2},
        seed=seed,
        status=status,
        metrics=metrics,
        config={},
        env={},
    )
    directory = run_dir(out, protocol, dataset, method, seed)
    write_result(result, directory)
    return directory


def _fidelity(fid: float, precision: float, recall: float) -> dict[str, Any]:
    return {
        "fidelity": {
            "fid": fid,
            "kid": fid / 2,
            "precision": precision,
            "recall": recall,
            "settings": {"extractor": "digits-cnn"},
        }
    }


def _probe(linear: float, knn: float) -> dict[str, Any]:
    return {"probe": {"linear_acc": linear, "knn_acc": knn}}


# --------------------------------------------------------------------------- committed tables


@pytest.mark.parametrize("path", EXPECTED_TABLES, ids=[p.name for p in EXPECTED_TABLES])
def test_every_row_of_every_committed_table_can_fail(path: Path) -> None:
    table = read_expected(path)  # valid: no duplicates, directions match, numbers finite
    loose = rows_that_cannot_fail(table)
    assert loose.empty, f"{path.name}: rows that cannot fail:\n{loose.to_string()}"


def test_committed_tables_exist() -> None:
    assert {p.name for p in EXPECTED_TABLES} >= {"smoke-digits.csv"}


def test_the_rows_the_issue_found_cannot_fail() -> None:
    """sngan recall 0.0 ± 0.03 (and recall 0.02 ± 0.03) guard nothing; FID always can fail."""
    table = pd.DataFrame(
        [
            ("sngan", "recall[digits-cnn]", 0.0, 0.03, "higher"),
            ("gan", "recall[digits-cnn]", 0.02, 0.03, "higher"),
            ("gan", "recall[digits-cnn]x", 0.05, 0.03, "higher"),
            ("gan", "fid[digits-cnn]", 1e6, 1e9, "lower"),
            ("vae", "bpd", 2.5, 0.05, "lower"),
        ],
        columns=["method", "metric", "value", "tolerance", "direction"],
    )
    assert list(rows_that_cannot_fail(table).index) == [0, 1]
    # accuracy 0.99 ± 0.03 can fail but can never be flagged as an improvement
    high = pd.DataFrame(
        [("a", "linear_acc", 0.99, 0.03, "higher"), ("b", "fid", 0.2, 0.5, "lower")],
        columns=["method", "metric", "value", "tolerance", "direction"],
    )
    assert rows_that_cannot_fail(high).empty
    assert list(rows_that_cannot_improve(high)["method"]) == ["a", "b"]


# --------------------------------------------------------------------------- tolerance rules


def test_clip_keeps_a_band_that_fails() -> None:
    clipped = tolerances.clip("recall[x]", 0.02, 0.05, "higher")
    assert clipped.usable and clipped.tolerance == pytest.approx(0.018)
    assert tolerances.can_fail("recall[x]", 0.02, clipped.tolerance, "higher")
    assert "clipped" in clipped.note
    at_floor = tolerances.clip("recall[x]", 0.0, 0.05, "higher")
    assert not at_floor.usable
    # an accuracy of 1.0 cannot improve, and may still fail
    perfect = tolerances.clip("linear_acc", 1.0, 0.02, "higher")
    assert perfect.usable and perfect.tolerance == 0.02 and "cannot improve" in perfect.note
    # near the ceiling: narrowed on the better side while that stays above the noise floor
    near = tolerances.clip("linear_acc", 0.95, 0.09, "higher")
    assert near.tolerance == pytest.approx(0.045)
    saturated = tolerances.clip("linear_acc", 0.995, 0.03, "higher")
    assert saturated.tolerance == 0.03 and "saturated" in saturated.note
    # FID: unbounded above (always fails), floor 0 on the better side
    fid = tolerances.clip("fid[digits-cnn]", 2.0, 5.0, "lower")
    assert fid.tolerance == pytest.approx(1.8)
    # KID has no floor (the unbiased estimate goes negative)
    assert tolerances.clip("kid[x]", -0.9, 0.3, "lower").tolerance == 0.3


def test_spread_tolerance_and_noise_floor() -> None:
    assert tolerances.spread_tolerance("fid", 100.0, 2.0) == (6.0, "3*std")
    tol, how = tolerances.spread_tolerance("linear_acc", 0.9, 0.0)
    assert (tol, how) == (tolerances.MIN_ABS["linear_acc"], "noise floor")
    assert tolerances.spread_tolerance("fid", 1000.0, 0.0)[0] == pytest.approx(5.0)  # 0.5%


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "rows, message",
    [
        ("a,fid[x],1.0,0.5,lower\na,fid[x],2.0,0.5,lower\n", "duplicate row for (a, fid[x])"),
        ("a,fid[x],1.0,nan,lower\n", "tolerance must be a finite number"),
        ("a,fid[x],1.0,,lower\n", "tolerance must be a finite number"),
        ("a,fid[x],1.0,abc,lower\n", "tolerance must be a finite number"),
        ("a,fid[x],1.0,-0.1,lower\n", "tolerance must be >= 0"),
        ("a,fid[x],inf,0.1,lower\n", "value must be a finite number"),
        ("a,fid[x],1.0,0.1,sideways\n", "direction must be higher or lower"),
        ("a,fid[x],1.0,0.1,higher\n", "lower-is-better, the row says 'higher'"),
        ("a,recall[x],1.5,0.1,higher\n", "outside its range"),
        ("a,fud[x],1.0,0.1,lower\n", "unknown metric 'fud'"),
        (",fid[x],1.0,0.1,lower\n", "empty method name"),
    ],
)
def test_bad_expected_tables_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rows: str, message: str
) -> None:
    expected = tmp_path / "expected.csv"
    expected.write_text(HEADER + rows)
    assert main(["compare", str(expected), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_binary_expected_table_is_an_error(tmp_path: Path) -> None:
    expected = tmp_path / "expected.csv"
    expected.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 10)
    with pytest.raises(GenbenchError):
        read_expected(expected)


def test_compare_refuses_mixed_studies_and_relabelled_results(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _result(runs, "raw-pixels", 0, _probe(0.9, 0.9))
    _result(runs, "raw-pixels", 0, _probe(0.9, 0.9), dataset="mnist5k")
    expected = tmp_path / "e.csv"
    expected.write_text(HEADER + "raw-pixels,linear_acc,0.9,0.02,higher\n")
    with pytest.raises(GenbenchError, match="mix"):
        compare(read_expected(expected), runs / "smoke")
    moved = _result(tmp_path / "r2", "raw-pixels", 0, _probe(0.9, 0.9))
    _result(tmp_path / "r2", "gan", 0, _fidelity(50.0, 0.5, 0.3))
    raw = json.loads((moved / "result.json").read_text())
    raw["method"] = "supervised"  # edited: must not count for anyone
    (moved / "result.json").write_text(json.dumps(raw))
    try:
        verdicts = compare(read_expected(expected), tmp_path / "r2" / "smoke" / "digits")
    except GenbenchError as exc:  # refused outright ...
        assert "belong" in str(exc)
    else:  # ... or skipped with a warning, so raw-pixels' row is missing: a regression
        assert list(verdicts["verdict"]) == ["regression"]


# --------------------------------------------------------------------------- verdicts


def _study(tmp_path: Path) -> tuple[Path, Path]:
    runs = tmp_path / "runs"
    _result(runs, "raw-pixels", 0, _probe(0.90, 0.80))
    _result(runs, "gan", 0, _fidelity(50.0, 0.5, 0.3))
    expected = tmp_path / "expected.csv"
    expected.write_text(
        HEADER + "raw-pixels,linear_acc,0.90,0.02,higher\n"
        "raw-pixels,knn_acc,0.80,0.02,higher\n"
        "gan,fid[digits-cnn],50.0,2.0,lower\n"
        "gan,recall[digits-cnn],0.3,0.02,higher\n"
    )
    return runs / "smoke" / "digits", expected


def test_strict_fails_on_an_improvement(tmp_path: Path, capsys) -> None:
    results, expected = _study(tmp_path)
    assert main(["compare", str(expected), str(results), "--strict"]) == 0
    _result(results.parent.parent, "gan", 0, _fidelity(40.0, 0.5, 0.3))  # FID 50 -> 40
    capsys.readouterr()
    assert main(["compare", str(expected), str(results)]) == 0
    assert "IMPROVEMENTS" in capsys.readouterr().out
    assert main(["compare", str(expected), str(results), "--strict"]) == 1


def test_methods_restricts_rows_and_missing_is_a_regression(tmp_path: Path, capsys) -> None:
    results, expected = _study(tmp_path)
    _result(results.parent.parent, "gan", 0, {"probe": {}}, status="failed")
    assert main(["compare", str(expected), str(results), "--methods", "raw-pixels"]) == 0
    assert main(["compare", str(expected), str(results), "--methods", "gan"]) == 1
    assert "seed 0 failed" in capsys.readouterr().out
    assert main(["compare", str(expected), str(results), "--methods", "nope"]) == 2
    assert main(["compare", str(expected), str(results), "--methods", ""]) == 2


def test_worst_row_is_the_furthest_beyond_tolerance() -> None:
    verdicts = pd.DataFrame(
        [
            ("a", "fid", 10.0, 13.0, 3.0, 1.0, "regression"),
            ("b", "fid", 10.0, 30.0, 20.0, 2.0, "regression"),
            ("c", "fid", 10.0, 0.0, -10.0, 0.5, "improvement"),
        ],
        columns=["method", "metric", "expected", "current", "delta", "tolerance", "verdict"],
    )
    assert worst_row(verdicts)["method"] == "b"
    assert worst_row(verdicts, ("regression", "improvement"))["method"] == "c"


# --------------------------------------------------------------------------- derivation


def _spread_study(root: Path) -> Path:
    """5 seeds: linear_acc spread 0.01, knn constant, recall 0.02 spread 0.016, fid spread 2."""
    for seed in range(5):
        _result(root, "raw-pixels", seed, _probe(0.90 + 0.01 * (seed - 2), 0.8))
        _result(root, "gan", seed, _fidelity(50.0 + 2.0 * (seed - 2), 0.5, 0.02 + 0.01 * seed))
    return root / "smoke" / "digits"


def test_derive_tolerances_from_seed_spread(tmp_path: Path) -> None:
    study = _spread_study(tmp_path / "spread")
    table, _ = derive_expected(study)
    row = table.set_index(["method", "metric"])
    std_linear = pd.Series([0.88, 0.89, 0.90, 0.91, 0.92]).std()
    assert row.loc[("raw-pixels", "linear_acc"), "value"] == pytest.approx(0.88)  # seed 0's
    assert row.loc[("raw-pixels", "linear_acc"), "tolerance"] == pytest.approx(
        3 * std_linear, abs=1e-6
    )
    assert row.loc[("raw-pixels", "linear_acc"), "derivation"] == "3*std"
    assert row.loc[("raw-pixels", "knn_acc"), "derivation"] == "noise floor"
    assert row.loc[("raw-pixels", "knn_acc"), "seeds"] == 5
    recall = row.loc[("gan", "recall[digits-cnn]")]
    assert recall["tolerance"] < recall["value"]  # clipped above the floor 0
    assert "clipped" in recall["note"]
    assert rows_that_cannot_fail(table).empty
    # --update on the multi-seed folder takes seed 0's values too, not the mean
    updated = expected_from_results(study, table).set_index(["method", "metric"])
    assert updated.loc[("raw-pixels", "linear_acc"), "value"] == pytest.approx(0.88)
    assert updated.loc[("gan", "fid[digits-cnn]"), "value"] == pytest.approx(46.0)


def test_cli_derive_then_update_keeps_tolerances(tmp_path: Path) -> None:
    study = _spread_study(tmp_path / "spread")
    expected = tmp_path / "expected.csv"
    assert main(["compare", str(expected), str(study), "--derive-tolerances"]) == 0
    derived = read_expected(expected)
    # the CI gate runs seed 0: the same run passes
    single = tmp_path / "single"
    for method in ("raw-pixels", "gan"):
        src = run_dir(study.parent.parent, "smoke", "digits", method, 0) / "result.json"
        dst = run_dir(single, "smoke", "digits", method, 0)
        dst.mkdir(parents=True)
        (dst / "result.json").write_text(src.read_text())
    results = single / "smoke" / "digits"
    assert main(["compare", str(expected), str(results), "--strict"]) == 0
    assert main(["compare", str(expected), str(results), "--update"]) == 0
    updated = read_expected(expected)
    columns = ["method", "metric", "value", "tolerance", "seeds", "spread_std", "derivation"]
    pd.testing.assert_frame_equal(updated[columns], derived[columns])


def test_derive_needs_three_seeds_and_seed_0(tmp_path: Path) -> None:
    for seed in (1, 2):
        _result(tmp_path / "few", "raw-pixels", seed, _probe(0.9, 0.8))
    with pytest.raises(GenbenchError, match="at least 3"):
        derive_expected(tmp_path / "few" / "smoke" / "digits")
    for seed in (1, 2, 3):
        _result(tmp_path / "no0", "raw-pixels", seed, _probe(0.9, 0.8))
    with pytest.raises(GenbenchError, match="no seed 0"):
        derive_expected(tmp_path / "no0" / "smoke" / "digits")


def test_update_clips_and_drops_rows_that_cannot_fail(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _result(runs, "gan", 0, _fidelity(50.0, 0.5, 0.0))  # recall exactly 0: nothing to guard
    table = expected_from_results(runs / "smoke" / "digits")
    assert ("gan", "recall[digits-cnn]") not in set(
        zip(table["method"], table["metric"], strict=True)
    )
    assert rows_that_cannot_fail(table).empty
    assert (table["derivation"] == "default (not derived from spread)").all()


def test_clip_rewrites_a_loose_table(tmp_path: Path) -> None:
    expected = tmp_path / "e.csv"
    expected.write_text(
        HEADER + "gan,recall[x],0.02,0.03,higher\ngan,recall[y],0.005,0.03,higher\n"
        "gan,fid[x],9.0,1.0,lower\n"
    )
    assert main(["compare", str(expected), "--clip"]) == 0
    table = read_expected(expected)
    assert len(table) == 2 and rows_that_cannot_fail(table).empty
    assert main(["compare", str(expected)]) == 2  # no RESULTS, no --clip


# --------------------------------------------------------------------------- throughput ratios


def _bench_json(path: Path, medians: dict[str, float]) -> Path:
    path.write_text(
        json.dumps(
            {
                "benchmarks": [
                    {"name": n, "fullname": f"tests/benchmarks/t.py::{n}", "stats": {"median": m}}
                    for n, m in medians.items()
                ]
            }
        )
    )
    return path


def test_bench_gate_uses_ratios_to_the_reference(tmp_path: Path, capsys) -> None:
    bench_gate = _load_tool("bench_gate")
    base = {"test_reference_step": 0.010, "test_knn": 0.050, "test_probe": 0.200}
    baseline = _bench_json(tmp_path / "base.json", base)
    twice = _bench_json(tmp_path / "slow.json", {k: 2 * v for k, v in base.items()})
    assert bench_gate.main([str(baseline), str(twice)]) == 0  # the machine, not the code
    knn_slower = dict(base, test_knn=0.050 * 1.3)
    regressed = _bench_json(tmp_path / "knn.json", {k: 2 * v for k, v in knn_slower.items()})
    capsys.readouterr()
    assert bench_gate.main([str(baseline), str(regressed), "--max-slowdown", "0.15"]) == 1
    out = capsys.readouterr().out
    assert "test_knn | 5 | 6.5 | +30.0% | slower" in out
    assert bench_gate.main([str(baseline), str(regressed), "--max-slowdown", "0.35"]) == 0
    lost = _bench_json(tmp_path / "lost.json", {"test_reference_step": 0.01, "test_knn": 0.05})
    assert bench_gate.main([str(baseline), str(lost)]) == 1  # test_probe missing
    no_ref = _bench_json(tmp_path / "noref.json", {"test_knn": 0.05})
    assert bench_gate.main([str(baseline), str(no_ref)]) == 2
    assert bench_gate.main([str(baseline), str(tmp_path / "absent.json")]) == 2


# --------------------------------------------------------------------------- seeded faults


def test_fault_list_is_documented_and_valid() -> None:
    faults = _load_tool("faults")
    listed = faults.load_faults()
    assert len(listed) >= 10
    for fault in listed:
        faults.check_fault(fault)  # each snippet occurs exactly once in today's code
        assert fault.why and fault.methods


def test_one_seeded_fault_is_caught_end_to_end(tmp_path: Path) -> None:
    """The probe refit on the test split (test leakage) on raw-pixels: no training, seconds.
    The unmodified copy must pass the same gate, or "caught" means nothing."""
    faults = _load_tool("faults")
    fault = next(f for f in faults.load_faults() if f.name == "probe-fit-on-test")
    methods = ("raw-pixels",)
    expected = ROOT / "reports" / "expected" / "smoke-digits.csv"
    control = faults.run_one(None, methods, tmp_path, expected, timeout=300)
    assert not control.caught, control.summary
    outcome = faults.run_one(fault, methods, tmp_path, expected, timeout=300)
    assert outcome.caught, outcome.summary
    assert "improvement raw-pixels linear_acc" in outcome.summary
    assert math.isfinite(outcome.seconds)


def test_same_platform_and_seed_must_reproduce_under_strict(tmp_path: Path, capsys) -> None:
    """A seed-0 run on the platform that wrote the table reproduces bitwise: a difference
    inside the spread band is a code change ("changed"), fatal with --strict; on another
    platform the band alone decides."""
    runs = tmp_path / "runs"
    _result(runs, "raw-pixels", 0, _probe(0.90, 0.80))
    results = runs / "smoke" / "digits"
    expected = tmp_path / "expected.csv"
    assert main(["compare", str(expected), str(results), "--update"]) == 0
    assert read_expected(expected)["platform"].str.startswith("torch").all()
    path = run_dir(runs, "smoke", "digits", "raw-pixels", 0) / "result.json"
    raw = json.loads(path.read_text())
    raw["metrics"]["probe"]["linear_acc"] = 0.905  # inside the 0.03 band
    path.write_text(json.dumps(raw))
    capsys.readouterr()
    assert main(["compare", str(expected), str(results)]) == 0
    assert "CHANGED" in capsys.readouterr().out
    assert main(["compare", str(expected), str(results), "--strict"]) == 1
    raw["env"] = {"python": "another"}  # another platform: within the band is fine
    path.write_text(json.dumps(raw))
    assert main(["compare", str(expected), str(results), "--strict"]) == 0


def test_strict_reports_an_improvement_under_other_numerics_without_failing(
    tmp_path: Path, capsys
) -> None:
    """The band was measured with the table's thread count and torch: an improvement past it
    from a run with two threads where the table had one is reported but does not fail
    --strict; with the table's numerics it does; a regression fails either way."""
    runs = tmp_path / "runs"
    _result(runs, "raw-pixels", 0, _probe(0.90, 0.80))
    results = runs / "smoke" / "digits"
    expected = tmp_path / "expected.csv"
    assert main(["compare", str(expected), str(results), "--update"]) == 0
    path = run_dir(runs, "smoke", "digits", "raw-pixels", 0) / "result.json"
    raw = json.loads(path.read_text())
    raw["metrics"]["probe"]["linear_acc"] = 0.99  # past the 0.03 band: better
    path.write_text(json.dumps(raw))
    capsys.readouterr()
    assert main(["compare", str(expected), str(results), "--strict"]) == 1  # same numerics
    raw["env"] = {**raw["env"], "device": "cpu (x86_64, 1 threads)"}  # the table: none
    path.write_text(json.dumps(raw))
    assert main(["compare", str(expected), str(results), "--strict"]) == 0
    out = capsys.readouterr().out
    assert "IMPROVEMENTS" in out and "other numerics than the table's" in out
    raw["metrics"]["probe"]["linear_acc"] = 0.80  # past the band: worse
    path.write_text(json.dumps(raw))
    assert main(["compare", str(expected), str(results), "--strict"]) == 1
