"""README's promises: CI runs its test command verbatim; its excerpt is the real leaderboard."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parent.parent


def _readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    return [line for line in lines if line.startswith("python3 -m venv .venv && ")]


def test_ci_runs_readme_test_command() -> None:
    commands = _readme_commands()
    assert len(commands) == 2 and commands[1].endswith("pytest")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci


def _table(lines: list[str]) -> dict[str, dict[str, str]]:
    """Markdown table -> {method: {column: cell}}, without timing columns (they vary by run,
    so re-running the main job must not make the excerpt stale)."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in lines
        if line.startswith("|") and not line.startswith("|:")
    ]
    header, body = rows[0], rows[1:]
    return {
        row[0]: {h: c for h, c in zip(header, row, strict=True) if "img/s" not in h} for row in body
    }


def test_readme_excerpt_matches_the_generated_leaderboard() -> None:
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- leaderboard-excerpt:start -->", "<!-- leaderboard-excerpt:end -->"
    excerpt = _table(readme.split(start, 1)[1].split(end, 1)[0].splitlines())
    board = (ROOT / "reports" / "quick-digits" / "leaderboard.md").read_text().splitlines()
    assert len(excerpt) >= 3
    assert excerpt == _table(board), (
        "README's excerpt is stale: refresh it with `genbench report --protocol quick "
        "--dataset digits --out reports --readme README.md`"
    )
