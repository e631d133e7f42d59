"""The command line: bad input gives one line on stderr, exit 2, and leaves runs/ alone."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def existing_runs(tmp_path: Path, smoke_cli) -> Path:
    out = tmp_path / "runs"
    assert smoke_cli(out, "--methods", "raw-pixels", "--reports", str(tmp_path / "reports")) == 0
    return out


BAD = [
    (["run", "--methods", "vea"], "unknown method 'vea'"),
    (["run", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["run", "--protocol", "quik"], "unknown protocol 'quik'"),
    (["run", "--protocol", "{bad_toml}"], "malformed protocol file"),
    (
        ["run", "--dataset", "cifar10", "--no-download", "--data-root", "{empty}"],
        "dataset 'cifar10' not found",
    ),
    (["run", "--set", "train.budget_imags=5"], "Did you mean 'budget_images'"),
    (["run", "--set", "nonsense=5", "--methods", "raw-pixels"], "no selected method"),
    (["run", "--set", "alpha=abc", "--methods", "independent-pixels"], "bad value 'abc'"),
    (["run", "--seeds", "a,b"], "--seeds expects"),
    (["run", "--protocol", "{bad_method_toml}"], "unknown method 'nosuch'"),
    (["run", "--set", "eval.fid_samples=1"], "fid_samples must be at least 2"),
    (["run", "--device", "tpu"], "unknown device"),
    (["report", "--runs", "{empty}"], "no results found"),
    (["compare", "{empty}/nope.csv", "{empty}"], "does not exist"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_keeps_results(
    argv: list[str], message: str, existing_runs: Path, tmp_path: Path, capsys
) -> None:
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("name = [\n")
    bad_method_toml = tmp_path / "bad_method.toml"
    smoke = (Path(__file__).parent.parent / "bench/protocols/smoke.toml").read_text()
    bad_method_toml.write_text(smoke + "\n[methods.nosuch]\nlr = 1.0\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [a.format(bad_toml=bad_toml, empty=empty, bad_method_toml=bad_method_toml) for a in argv]
    if argv[0] in ("run",):
        argv += ["--out", str(existing_runs), "--reports", str(tmp_path / "reports")]
    before = snapshot(existing_runs)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("genbench: error:")
    assert "Traceback" not in err
    assert snapshot(existing_runs) == before


def test_console_entry_point_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--methods", "nope", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "unknown method 'nope'" in proc.stderr


def test_list_shows_capabilities(capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "independent-pixels" in out and "[log_likelihood, sample]" in out
    assert "smoke@v3" in out and "digits-cnn" in out


def test_rerun_skips_finished_runs(existing_runs: Path, tmp_path: Path, caplog, smoke_cli) -> None:
    before = snapshot(existing_runs)
    caplog.set_level("INFO")
    reports = str(tmp_path / "r")
    assert smoke_cli(existing_runs, "--methods", "raw-pixels", "--reports", reports) == 0
    assert "finished already, skipped" in caplog.text
    assert snapshot(existing_runs) == before


def test_divergent_run_is_recorded_and_study_continues(tmp_path: Path, smoke_cli) -> None:
    from bench.results import load_result

    out = tmp_path / "runs"
    code = smoke_cli(
        out,
        "--methods",
        "supervised,raw-pixels",
        "--set",
        "supervised.lr=1e12",
        "--set",
        "train.budget_images=640",
        "--reports",
        str(tmp_path / "r"),
    )
    assert code == 1  # the study carries on, and its exit code says a run did not finish
    diverged = load_result(out / "smoke/digits/supervised/seed-0/result.json")
    assert diverged.status == "diverged" and diverged.diverged_at_step is not None
    assert load_result(out / "smoke/digits/raw-pixels/seed-0/result.json").status == "ok"
    board = (tmp_path / "r/smoke-digits/leaderboard.md").read_text()
    assert "diverged at step" in board


def test_compare_cli_exit_codes(existing_runs: Path, tmp_path: Path, capsys) -> None:
    expected = tmp_path / "expected.csv"
    results = existing_runs / "smoke" / "digits"
    assert main(["compare", "--update", str(expected), str(results)]) == 0
    assert main(["compare", str(expected), str(results)]) == 0
    table = pd.read_csv(expected)
    rows = table["metric"] == "linear_acc"
    table.loc[rows, "value"] = 0.9999  # better than the run: a regression
    table.loc[rows, "tolerance"] = 0.0001
    table.to_csv(expected, index=False)
    capsys.readouterr()
    assert main(["compare", str(expected), str(results)]) == 1
    assert "REGRESSIONS" in capsys.readouterr().out


def test_sweep_pool_matches_run(tmp_path: Path) -> None:
    """Two worker processes produce the results one in-process study produces."""
    from bench.results import load_result

    common = [
        "--protocol",
        "smoke",
        "--methods",
        "independent-pixels,supervised",
        "--device",
        "cpu",
        "--set",
        "train.budget_images=320",
    ]
    assert main(["run", *common, "--out", str(tmp_path / "a"), "--no-report"]) == 0
    assert (
        main(
            [
                "sweep",
                *common,
                "--executor",
                "pool",
                "--workers",
                "2",
                "--out",
                str(tmp_path / "b"),
                "--reports",
                str(tmp_path / "reports"),
            ]
        )
        == 0
    )
    for method in ("independent-pixels", "supervised"):
        rel = Path("smoke/digits") / method / "seed-0/result.json"
        a, b = load_result(tmp_path / "a" / rel), load_result(tmp_path / "b" / rel)
        a.metrics.pop("throughput"), b.metrics.pop("throughput")
        assert a.metrics == b.metrics and a.status == b.status == "ok"
    assert (tmp_path / "reports/smoke-digits/leaderboard.md").exists()


def test_sweep_slurm_executor_runs_a_submitit_job_array(tmp_path: Path) -> None:
    """The slurm path end to end through submitit's in-process 'debug' backend."""
    from bench.results import load_result

    out = tmp_path / "runs"
    code = main(
        [
            "sweep",
            "--executor",
            "slurm",
            "--submitit-cluster",
            "debug",
            "--protocol",
            "smoke",
            "--methods",
            "raw-pixels,independent-pixels",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--reports",
            str(tmp_path / "reports"),
        ]
    )
    assert code == 0
    for method in ("raw-pixels", "independent-pixels"):
        assert load_result(out / "smoke/digits" / method / "seed-0/result.json").status == "ok"
    assert (tmp_path / "reports/smoke-digits/leaderboard.md").exists()
