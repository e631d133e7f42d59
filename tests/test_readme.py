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


def test_readme_excerpt_matches_the_generated_leaderboard() -> None:
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- leaderboard-excerpt:start -->", "<!-- leaderboard-excerpt:end -->"
    excerpt = readme.split(start, 1)[1].split(end, 1)[0]
    rows = [line for line in excerpt.splitlines() if line.startswith("|")]
    board = (ROOT / "reports" / "quick-digits" / "leaderboard.md").read_text().splitlines()
    assert len(rows) >= 3
    for row in rows:
        assert row in board, (
            "README's excerpt is stale: refresh it with `genbench report --protocol quick "
            "--dataset digits --readme README.md`"
        )
