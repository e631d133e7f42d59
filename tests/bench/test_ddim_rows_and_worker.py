"""DDIM is sampler rows of ddpm (no second training run, no cross-run weight loading), and
every way of running a study goes through one serialisable request and one worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.errors import GenbenchError
from bench.registry import METHODS
from bench.results import load_result
from bench.runner import plan_study, run_study
from bench.worker import REQUEST_FILE, StudyRequest, run_request

FAST = [
    "train.budget_images=128",
    "eval.fid_samples=100",
    "ddpm.sample_steps=2",
    "ddpm.vlb_timesteps=2",
    "ddpm.width=8",
    "ddpm.ddim_steps=10,5",
]


def test_ddim_is_no_longer_a_method_of_its_own() -> None:
    assert "ddim" not in METHODS.names()
    assert not any(hasattr(METHODS.get(n), "weights_from") for n in METHODS.names())


def test_ddim_rows_are_scored_on_ddpms_own_weights(tmp_path: Path) -> None:
    study = plan_study("smoke", methods=["ddpm"], sets=FAST, out=tmp_path, device="cpu")
    (result,) = run_study(study)
    assert result.status == "ok", result.error
    variants = result.metrics["fidelity_variants"]
    assert [v["variant"] for v in variants] == [
        {"sampler": "ddim", "steps": 10},
        {"sampler": "ddim", "steps": 5},
    ]
    assert [v["nfe"] for v in variants] == [10, 5]  # one network call per DDIM step
    assert result.metrics["fidelity"]["settings"]["sampler"]["sampler"] == "ancestral"
    assert variants[0]["settings"]["sampler"]["sampler"] == "ddim"
    # deterministic DDIM (eta = 0) differs from the ancestral chain on the same weights
    assert variants[0]["fid"] != result.metrics["fidelity"]["fid"]


def test_ddim_step_counts_are_checked_before_any_run(tmp_path: Path) -> None:
    with pytest.raises(GenbenchError, match="ddim_eta"):
        plan_study("smoke", methods=["ddpm"], sets=["ddpm.ddim_eta=2"], out=tmp_path)


def test_a_request_round_trips_through_json_and_is_validated() -> None:
    request = StudyRequest("smoke", "digits", ["gan"], [0, 1], ["gan.lr=1e-3"], "runs")
    assert StudyRequest.from_json(json.loads(json.dumps(request.to_json()))) == request
    for bad, message in [
        ({"format": 99, "protocol": "smoke"}, "not a genbench request"),
        ({"format": 1}, "no protocol"),
        ({"format": 1, "protocol": "smoke", "seeds": ["0"]}, "seeds must be a list of int"),
        ({"format": 1, "protocol": "smoke", "force": "yes"}, "force has the wrong type"),
        ({"format": 1, "protocol": "smoke", "rm": "-rf"}, "unknown field 'rm'"),
        ([1, 2], "not a genbench request"),
    ]:
        with pytest.raises(GenbenchError, match=message):
            StudyRequest.from_json(bad)


def test_the_worker_runs_a_request_file_like_the_cli_runs_the_study(tmp_path: Path) -> None:
    request = StudyRequest(
        "smoke", methods=["independent-pixels"], sets=["eval.fid_samples=100"], device="cpu"
    )
    direct = run_request(StudyRequest(**{**request.__dict__, "out": str(tmp_path / "a")}))
    assert [r.status for r in direct.results] == ["ok"]
    narrowed = request.for_run("independent-pixels", 0, "digits", "digits-cnn")
    narrowed.out = str(tmp_path / "b")
    path = narrowed.write(tmp_path / REQUEST_FILE)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.worker", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rel = Path("smoke/digits/independent-pixels/seed-0/result.json")
    a, b = load_result(tmp_path / "a" / rel), load_result(tmp_path / "b" / rel)
    a.metrics.pop("throughput"), b.metrics.pop("throughput")
    assert a.metrics == b.metrics
    path.write_text("{not json")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.worker", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "cannot read request" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_sweep_writes_each_runs_request_beside_its_result(tmp_path: Path) -> None:
    from bench.cli import main

    out = tmp_path / "runs"
    code = main(
        ["sweep", "--executor", "pool", "--workers", "1", "--protocol", "smoke",
         "--methods", "raw-pixels", "--device", "cpu", "--out", str(out), "--no-report"]
    )  # fmt: skip
    assert code == 0
    folder = out / "smoke/digits/raw-pixels/seed-0"
    request = StudyRequest.read(folder / REQUEST_FILE)
    assert request.methods == ["raw-pixels"] and request.seeds == [0]
    assert load_result(folder / "result.json").status == "ok"
    assert "bench.cli" not in Path("bench/executors.py").read_text()  # no argv round trip
