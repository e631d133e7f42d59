"""`genbench run --jobs N`: runs side by side in worker processes (bench.executors.run_parallel).

A run's numbers depend on its thread count, not on what ran beside it; a worker that dies
loses only its own run; the auto policy parallelises only CPU studies of real runs."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench import executors
from bench.cli import main
from bench.registry import METHODS as REGISTRY
from bench.worker import StudyRequest

METHODS = "real-data,nade,gan"


def _untimed(value: object) -> object:
    """The scores without the timings (throughput, images per second) anywhere in them."""
    if isinstance(value, dict):
        return {
            k: _untimed(v)
            for k, v in value.items()
            if k != "throughput" and not k.endswith(("_per_s", "_seconds", "_wall_s"))
        }
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _metrics(root: Path, method: str) -> tuple[object, dict]:
    raw = json.loads((root / "smoke" / "digits" / method / "seed-0" / "result.json").read_text())
    return _untimed(raw["metrics"]), raw["env"]


def test_two_jobs_give_the_numbers_of_one_single_threaded_process(tmp_path: Path) -> None:
    common = ["run", "--protocol", "smoke", "--device", "cpu", "--methods", METHODS, "--no-report"]
    assert main([*common, "--out", str(tmp_path / "a"), "--jobs", "2"]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--jobs", "1", "--threads", "1"]) == 0
    for method in METHODS.split(","):
        parallel, env = _metrics(tmp_path / "a", method)
        serial, serial_env = _metrics(tmp_path / "b", method)
        assert parallel == serial, method
        assert env["parallel_runs"] == 2 and "parallel_runs" not in serial_env
        assert "1 threads" in env["device"] and "1 threads" in serial_env["device"]
        assert env["train_wall_s"] >= 0 and env["eval_wall_s"] > 0


CRASHER = textwrap.dedent(
    """
    import os
    import torch
    from bench.method import SAMPLE, Method, Update
    from bench.registry import register_method

    @register_method("crasher")
    class Crasher(Method):
        capabilities = frozenset({SAMPLE})
        summary = "dies in native fashion at step 5 (a worker killed by the OOM killer)"

        @classmethod
        def default_hparams(cls, spec):
            return {}

        def __init__(self, spec):
            super().__init__(spec)
            self.mean = torch.nn.Parameter(torch.full(spec.shape, 0.5))
            self.add_optimizer("main", torch.optim.SGD(self.parameters(), lr=0.01))

        def train_step(self, batch, step):
            if step == 5:
                os._exit(9)
            yield Update("main", lambda: ((batch.x - self.mean) ** 2).mean())

        def sample(self, n, generator, labels=None):
            return self.mean.clamp(0, 1).expand(n, *self.spec.shape).clone()
    """
)


def test_a_dead_worker_loses_only_its_run(tmp_path: Path, capsys) -> None:
    plugin = tmp_path / "crasher.py"
    plugin.write_text(CRASHER)
    out = tmp_path / "runs"
    code = main(
        ["run", "--protocol", "smoke", "--device", "cpu", "--out", str(out), "--no-report",
         "--include", str(plugin), "--methods", "crasher,real-data,nade", "--jobs", "2"]
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "crasher seed 0 failed (its worker process died (exit code 9))" in err
    for method in ("real-data", "nade"):
        assert (out / "smoke" / "digits" / method / "seed-0" / "result.json").exists()
    assert not (out / "smoke" / "digits" / "crasher" / "seed-0" / "result.json").exists()
    REGISTRY.unregister("crasher")  # the plug-in registered it in this process too


def test_threads_are_restored_after_a_study(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    common = ["run", "--protocol", "smoke", "--device", "cpu", "--methods", "real-data"]
    assert main([*common, "--out", str(tmp_path), "--no-report", "--threads", "1"]) == 0
    assert torch.get_num_threads() == before


def _study(device: str = "cpu", budget: int = 60_000, runs: int = 5) -> SimpleNamespace:
    return SimpleNamespace(
        device=torch.device(device),
        protocol=SimpleNamespace(train=SimpleNamespace(budget_images=budget)),
        runs=list(range(runs)),
    )


@pytest.mark.parametrize(
    ("study", "jobs", "cores", "expected"),
    [
        (_study(), None, 2, (2, 1)),  # the quick protocol on 2 cores: a run per core
        (_study(), None, 8, (5, 1)),  # never more workers than pending runs
        (_study(budget=2048), None, 2, 1),  # smoke-sized runs: in-process
        (_study(runs=1), None, 2, 1),
        (_study(), None, 1, 1),
        (_study(device="meta"), None, 2, 1),  # not a CPU: in-process
        (_study(), 1, 2, 1),
        (_study(), 4, 8, (4, 2)),  # explicit: cores shared out
    ],
)
def test_auto_jobs(study, jobs, cores, expected, monkeypatch) -> None:
    monkeypatch.setattr(executors, "usable_cores", lambda: cores)
    monkeypatch.setattr(executors, "pending_runs", lambda s, force: list(s.runs))
    found = executors.auto_jobs(study, StudyRequest("quick", jobs=jobs))  # type: ignore[arg-type]
    if expected == 1:
        assert found[0] == 1
    else:
        assert found == expected


def test_bad_jobs_values_are_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    for value in ("0", "-1", "many"):
        assert main(["run", "--protocol", "smoke", "--out", str(tmp_path), "--jobs", value]) == 2
        err = capsys.readouterr().err
        assert "--jobs" in err and len(err.strip().splitlines()) == 1
