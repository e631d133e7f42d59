"""The worked example (examples/) end to end in a fresh virtual environment where genbench
is installed non-editable, run from a folder outside the source tree: nothing may depend
on the checkout (the plug-in, the card and its data are the user's files)."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, **kwargs)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with genbench built from a copy of the project and installed as a wheel; its
    dependencies (torch, ...) are this interpreter's, reached through a .pth file (which
    does not bring this environment's editable install along)."""
    base = tmp_path_factory.mktemp("fresh")
    source = base / "src"
    for item in ("bench", "baselines", "pyproject.toml", "README.md"):
        target = source / item
        if (ROOT / item).is_dir():
            shutil.copytree(ROOT / item, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / item, target)
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    purelib = next(venv.glob("lib/python3*/site-packages"))
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    python = str(venv / "bin" / "python")  # its pip comes through deps.pth; scripts get its path
    # --ignore-installed: this environment's genbench (seen through deps.pth) is left alone,
    # never uninstalled to make room
    build = [python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed"]
    build.append("--quiet")
    try:
        import setuptools  # noqa: F401

        build.append("--no-build-isolation")  # no network needed to build
    except ImportError:
        build = build[:-1]  # let pip fetch setuptools for the build
    _run([*build, "--no-warn-script-location", str(source)])
    return venv


def test_example_runs_end_to_end_non_editable(installed: Path, tmp_path: Path) -> None:
    work = tmp_path / "user"
    shutil.copytree(ROOT / "examples", work / "examples")
    env = {**os.environ, "PATH": f"{installed / 'bin'}:{os.environ['PATH']}", "PROTOCOL": "smoke"}
    env.pop("PYTHONPATH", None)
    python = str(installed / "bin" / "python")
    where = _run([python, "-c", "import bench; print(bench.__file__)"], cwd=work, env=env)
    assert str(installed) in where.stdout, where.stdout  # the wheel, not the checkout
    assert str(ROOT) not in where.stdout
    assert (installed / "bin" / "genbench").exists()
    done = _run(["bash", "examples/run_example.sh", "out"], cwd=work, env=env)
    runs = work / "out" / "smoke" / "my-digits"
    mine = json.loads((runs / "pixel-mixture/seed-0/result.json").read_text())
    assert mine["status"] == "ok" and mine["config"]["plugin"]["version"] == "1.0.0"
    assert mine["config"]["dataset"]["files"]["format"] == "npz"
    assert mine["metrics"]["fidelity"]["settings"]["extractor"] == "digits-cnn"
    again = json.loads((runs / "pixel-mixture-resampled/seed-0/result.json").read_text())
    assert again["config"]["external"] is True
    assert again["metrics"]["fidelity"]["fid"] == pytest.approx(
        mine["metrics"]["fidelity"]["fid"], rel=1e-6
    )  # sampled again from the reloaded run, scored from the file: the run's own FID
    board = (work / "out" / "leaderboards" / "smoke-my-digits" / "leaderboard.md").read_text()
    for row in (
        "pixel-mixture",
        "independent-pixels",
        "real-data",
        "pixel-mixture-resampled (external)",
    ):
        assert f"| {row} " in board, row
    assert "leaderboard:" in done.stdout
