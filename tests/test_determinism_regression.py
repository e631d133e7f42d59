"""The same seed gives the same numbers; the smoke numbers match the expected table."""

from __future__ import annotations

from pathlib import Path

from bench.cli import main
from bench.results import load_result

EXPECTED = Path(__file__).parent.parent / "reports" / "expected" / "smoke-digits.csv"


def _metrics_without_timings(path: Path) -> dict:
    metrics = load_result(path).metrics
    metrics.pop("throughput")  # wall-clock timings and memory are not deterministic
    for row in metrics.get("fidelity_variants", []):  # a sampler row's own timing
        row.pop("sample_images_per_s", None)
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
    """CI's regression gate, strict: an improvement beyond tolerance fails too, so the table
    is kept current. Refresh the values with `genbench run --protocol smoke --out runs &&
    genbench compare reports/expected/smoke-digits.csv runs/smoke/digits --update` (keeps the
    tolerances); re-derive the tolerances as docs/GATE.md says."""
    out, _, _ = smoke_study
    code = main(["compare", str(EXPECTED), str(out / "smoke" / "digits"), "--strict"])
    assert code == 0, capsys.readouterr().out


def test_gate_fails_when_the_smoke_numbers_move(smoke_study, tmp_path: Path, capsys) -> None:
    """The gate above can fail: the same results with one FID moved by 1.5 tolerances are
    a regression, and moved the other way an improvement that --strict refuses."""
    import pandas as pd

    out, _, _ = smoke_study
    table = pd.read_csv(EXPECTED)
    row = table[table["metric"].str.startswith("fid")].iloc[0]
    for sign, args in ((1.5, []), (-1.5, ["--strict"])):
        moved = table.copy()
        moved.loc[row.name, "value"] = max(0.0, row["value"] - sign * row["tolerance"])
        expected = tmp_path / "moved.csv"
        moved.to_csv(expected, index=False)
        code = main(["compare", str(expected), str(out / "smoke" / "digits"), *args])
        assert code == 1, (sign, capsys.readouterr().out)
