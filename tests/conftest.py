from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Keep torch-fidelity's reference cache and any data root inside the test session.
_SESSION_CACHE = Path(os.environ.get("PYTEST_GENBENCH_CACHE", "/tmp/genbench-test-cache"))
os.environ["GENBENCH_CACHE"] = str(_SESSION_CACHE)
os.environ.setdefault("CI", "1")  # no progress bars in test output
torch.set_num_threads(min(2, torch.get_num_threads()))

SMOKE_OUT = "smoke_runs"


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory: pytest.TempPathFactory):
    """Every registered method trained and evaluated once under the smoke protocol."""
    from bench.runner import plan_study, run_study

    out = tmp_path_factory.mktemp(SMOKE_OUT)
    study = plan_study("smoke", out=out, device="cpu")
    results = run_study(study)
    return out, study, {r.method: r for r in results}


@pytest.fixture
def smoke_cli():
    """``smoke_cli(out, *args)``: `genbench run --protocol smoke --device cpu --out OUT ...`,
    returning the exit code."""
    from bench.cli import main

    def run(out: Path, *args: str) -> int:
        return main(["run", "--protocol", "smoke", "--device", "cpu", "--out", str(out), *args])

    return run
