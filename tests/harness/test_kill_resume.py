"""Kill -9 anywhere, lose nothing: a study killed with SIGKILL while training, while
evaluating and while writing a checkpoint or a result resumes to the numbers of an
uninterrupted study (bitwise on CPU). Also: a checkpoint that would run code is refused
without running it, and one of another run is refused with one line."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from pathlib import Path

import pytest

from bench.killpoints import run_command
from bench.results import load_result

# methods covering training with EMA, checkpointed optimisers, likelihood variants,
# sampling and the probe, each a few seconds under smoke
METHODS = "nade,vae"
TIMINGS = ("sample_images_per_s", "sample_warmup_excluded")
SETS = ["--set", "train.budget_images=384", "--set", "train.checkpoint_every_images=128"]


def genbench(
    out: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    command = run_command(out, METHODS, *SETS, *extra)
    full_env = {**os.environ, "CI": "1", "GENBENCH_HEARTBEAT_SECONDS": "0", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=600)


def metrics_of(out: Path) -> dict[str, dict]:
    found = {}
    for path in sorted(out.rglob("result.json")):
        if "history" in path.parts:
            continue
        result = load_result(path)
        metrics = dict(result.metrics)
        speed = dict(metrics.pop("throughput"))
        metrics["fidelity_variants"] = [
            {k: v for k, v in row.items() if k not in TIMINGS}
            for row in metrics.get("fidelity_variants", [])
        ]
        # timings and memory vary; what the run computed must not
        found[result.method] = {
            "status": result.status,
            "metrics": metrics,
            "images": speed["train_images_seen"],
            "steps": speed["train_steps"],
        }
    return found


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("uninterrupted")
    done = genbench(out)
    assert done.returncode == 0, done.stderr
    found = metrics_of(out)
    assert set(found) == set(METHODS.split(",")) and all(
        r["status"] == "ok" for r in found.values()
    )
    return found


@pytest.mark.parametrize(
    "kill_at",
    [
        "train-step:5",  # training, between two checkpoints
        "checkpoint-write:2",  # while a checkpoint is written
        "eval-section:3",  # evaluation of the second method
        "result-write:2",  # while a result (or the eval state) is written
    ],
)
def test_killed_study_resumes_to_the_same_numbers(
    tmp_path: Path, uninterrupted: dict[str, dict], kill_at: str
) -> None:
    killed = genbench(tmp_path, env={"GENBENCH_KILL_AT": kill_at})
    assert killed.returncode == -9, f"the kill point {kill_at} was never reached"
    resumed = genbench(tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert metrics_of(tmp_path) == uninterrupted
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers
    assert not list(tmp_path.rglob("run.lock"))


def test_kill_during_evaluation_does_not_retrain(tmp_path: Path) -> None:
    killed = genbench(tmp_path, env={"GENBENCH_KILL_AT": "eval-section:1"})
    assert killed.returncode == -9
    resumed = genbench(tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    # nade's likelihood was scored before the kill: kept, and training resumed at its end
    assert "nade/seed-0: resumed at 384 images" in resumed.stderr
    assert "likelihood:0 already scored, kept" in resumed.stderr


def test_evaluation_only_change_keeps_the_checkpoint(tmp_path: Path) -> None:
    first = genbench(tmp_path)
    assert first.returncode == 0, first.stderr
    again = genbench(tmp_path, "--set", "eval.knn_k=5")
    assert again.returncode == 0, again.stderr
    assert "vae/seed-0: resumed at 384 images" in again.stderr  # re-scored, not re-trained
    assert "nade seed 0: finished already, skipped" not in again.stderr


def test_a_method_of_every_family_is_rescored_from_its_finished_checkpoint(
    tmp_path: Path,
) -> None:
    """An evaluation-only change re-scores from the finished checkpoint, with no training
    step in that process: vq-vae and vqgan reported their last training batch's perplexity,
    NaN in a process that trained none, and the re-scoring failed on it (found re-scoring
    the committed quick study). One method per family, and both VQ models."""
    methods = "vq-vae,vqgan,gan,ddpm,glow,pixelcnn,simclr,flow-matching"
    sets = ["--set", "train.budget_images=128", "--set", "eval.fid_samples=64"]
    env = {**os.environ, "CI": "1", "GENBENCH_HEARTBEAT_SECONDS": "0"}
    first = subprocess.run(
        run_command(tmp_path, methods, *sets), capture_output=True, text=True, env=env
    )
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run(
        run_command(tmp_path, methods, *sets, "--set", "eval.knn_k=5"),
        capture_output=True,
        text=True,
        env=env,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    for name in methods.split(","):
        assert f"{name}/seed-0: resumed at 128 images" in again.stderr, name
    perplexity = load_result(
        tmp_path / "smoke" / "digits" / "vq-vae" / "seed-0" / "result.json"
    ).metrics["likelihood"]["settings"]["train_batch_perplexity"]
    assert perplexity is None  # no batch trained in the re-scoring process: nothing to report


class _Payload:
    """A pickle that creates a file when it is unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_and_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "runs" / "smoke" / "digits" / "nade" / "seed-0"
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(pickle.dumps({"method": _Payload(marker)}))
    done = genbench(tmp_path / "runs")
    assert done.returncode == 0, done.stderr
    assert not marker.exists()
    assert list(folder.glob("checkpoint.pt.corrupt-*")), "the refused file is kept aside"
    assert load_result(folder / "result.json").status == "ok"


def test_checkpoint_of_another_run_is_refused_with_one_line(
    tmp_path: Path, uninterrupted: dict[str, dict]
) -> None:
    out = tmp_path / "runs"
    first = genbench(out)
    assert first.returncode == 0
    base = out / "smoke" / "digits"
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (base / "vae" / "seed-0" / "checkpoint.pt").write_bytes(
        (base / "nade" / "seed-0" / "checkpoint.pt").read_bytes()
    )
    before[base / "vae" / "seed-0" / "checkpoint.pt"] = (
        base / "nade" / "seed-0" / "checkpoint.pt"
    ).read_bytes()
    refused = genbench(out, "--force")
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "belongs to another run" in lines[0], refused.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_result_moved_to_another_method_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    assert genbench(out).returncode == 0
    base = out / "smoke" / "digits"
    text = (base / "nade" / "seed-0" / "result.json").read_text()
    (base / "vae" / "seed-0" / "result.json").write_text(text)
    refused = genbench(out)
    assert refused.returncode == 2 and "belongs to another run" in refused.stderr
    assert json.loads((base / "vae" / "seed-0" / "result.json").read_text())["method"] == "nade"
