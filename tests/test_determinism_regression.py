"""The same seed gives the same numbers; the smoke numbers match the expected table."""

from __future__ import annotations

from pathlib import Path

from bench.cli import main
from bench.results import load_result

EXPECTED = Path(__file__).parent.parent / "reports" / "expected" / "smoke-digits.csv"


def _metrics_without_timings(path: Path) -> dict:
    metrics = load_result(path).metrics
    metrics.pop("throughput")  # wall-clock timings and memory are not deterministic
    return metrics


def test_same_seed_same_metrics(tmp_path: Path, smoke_cli) -> None:
    methods = "independent-pixels,supervised,real-data"
    for out in ("a", "b"):
        code = smoke_cli(
            tmp_path / out, "--methods", methods, "--no-report", "--set", "train.budget_images=640"
        )
        assert code == 0
    for method in methods.split(","):
        rel = Path("smoke/digits") / method / "seed-0/result.json"
        first = _metrics_without_timings(tmp_path / "a" / rel)
        assert first == _metrics_without_timings(tmp_path / "b" / rel)
        assert first, method


def test_smoke_study_matches_expected_table(smoke_study, capsys) -> None:
    """CI's regression gate: refresh with
    `genbench run --protocol smoke --out runs && genbench compare --update
    reports/expected/smoke-digits.csv runs/smoke/digits`."""
    out, _, _ = smoke_study
    code = main(["compare", str(EXPECTED), str(out / "smoke" / "digits")])
    assert code == 0, capsys.readouterr().out
