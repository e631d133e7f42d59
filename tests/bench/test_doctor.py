"""`genbench doctor --gpu`: the CPU dry run of the GPU check writes every section, and the
timing, MFU and budget bookkeeping count what they say they count."""

from __future__ import annotations

import json
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import torch

from bench import doctor
from bench.cli import main


def _strict_json(path: Path) -> dict[str, Any]:
    def refuse(constant: str) -> None:
        raise AssertionError(f"non-strict JSON constant {constant} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without a GPU (whatever this one has), and no git calls from the
    reproducibility block (other sessions may be committing in this checkout)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("bench.results._git_state", lambda: (None, None))


# -- the CPU dry run through the CLI -----------------------------------------------------------


def test_cpu_dry_run_writes_every_section(tmp_path: Path, no_gpu: None, capsys) -> None:
    out = tmp_path / "gpu" / "doctor.json"
    code = main(["doctor", "--gpu", "--skip-compile", "--out", str(out)])  # ddpm by default
    printed = capsys.readouterr().out.splitlines()
    assert code == 0, printed
    assert printed[0] == doctor.NO_GPU_LINE
    report = _strict_json(out)

    assert report["schema"] == doctor.SCHEMA
    assert report["device"] == "cpu" and report["dry_run"] is True
    assert report["device_name"].startswith("cpu") and report["torch"] == torch.__version__
    datetime.fromisoformat(report["timestamp"])
    assert report["command"].startswith("genbench doctor --gpu --out ")
    assert "--skip-compile" in report["command"] and "--method ddpm" in report["command"]
    assert report["env"]["packages"]["torch"]
    assert report["settings"]["data_spec"]["height"] == 8  # the digits spec of a dry run
    assert 0 < report["wall_s"] < report["budget_s"]
    assert report["failed"] == []

    train = report["train"]
    assert train["method"] == "ddpm"
    assert train["flops"]["status"] == "ok"
    assert train["flops"]["forward_flops_per_image"] > 0 and train["flops"]["parameters"] > 0
    assert set(train["variants"]) == set(doctor.TRAIN_VARIANTS)
    for name in ("fp32", "bf16", "bf16-channels-last"):
        variant = train["variants"][name]
        assert variant["status"] == "ok", variant
        assert variant["images_per_s"] > 0 and variant["peak_memory_mb"] > 0
        assert variant["measured_steps"] == 2 and variant["warmup_steps"] == 1
        assert variant["images_per_step"] == report["settings"]["batch"] == 4
        assert variant["mfu"] is None  # no MFU without a GPU's peak
        assert variant["limit_s"] <= doctor.PART_LIMITS_S[f"train:{name}"]
    assert train["variants"]["bf16"]["precision"] == "bf16"
    assert train["variants"]["bf16-channels-last"]["channels_last"] is True
    assert train["variants"]["bf16-compile"] == {"status": "skipped", "error": "--skip-compile"}

    fid = report["fid"]
    assert fid["status"] == "ok", fid
    assert fid["input_shape"][1:] == [3, 299, 299] and fid["feature_dim"] == 2048
    assert fid["images_per_s"] > 0 and fid["peak_memory_mb"] > 0
    assert fid["forward_flops_per_image"] > 5e9  # Inception-v3 at 299x299: ~11.4 GFLOPs
    assert fid["weights"].startswith(("random-init", "sha256:"))

    ddp = report["ddp"]
    assert ddp["status"] == "ok", ddp
    assert ddp["world_size"] == 2 and ddp["backend"] == "gloo"
    assert ddp["ddp_groups"] == 1  # ddpm's one optimiser, wrapped by Optimisation itself
    assert ddp["parameters_equal"] is True and ddp["max_abs_parameter_difference"] == 0.0
    assert ddp["images_per_s"] > 0 and ddp["measured_steps"] == 2

    listed = "\n".join(printed)
    assert f"wrote {out}" in listed and "train:fp32" in listed and "ddp" in listed


def test_a_failing_part_is_recorded_and_the_rest_goes_on(
    tmp_path: Path, no_gpu: None, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    real = doctor.train_variant

    def broken_bf16(settings: Any, device: Any, precision: str, *rest: Any) -> dict[str, Any]:
        if precision == "bf16" and not rest[0]:  # bf16 without channels_last
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(settings, device, precision, *rest)

    monkeypatch.setattr(doctor, "train_variant", broken_bf16)
    out = tmp_path / "doctor.json"  # gan: a second method through the same code path
    argv = ["doctor", "--gpu", "--method", "gan", "--parts", "train", "--skip-compile"]
    code = main([*argv, "--out", str(out)])
    assert code == 1  # the file is written, the exit code says a part failed
    assert "failed: train:bf16" in capsys.readouterr().err
    variants = _strict_json(out)["train"]["variants"]
    assert variants["bf16"]["status"] == "failed"
    assert variants["bf16"]["error"] == "RuntimeError: CUDA out of memory (simulated)"
    assert variants["fp32"]["status"] == variants["bf16-channels-last"]["status"] == "ok"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["doctor"], "pass --gpu"),
        (["doctor", "--gpu", "--method", "nosuch"], "unknown method 'nosuch'"),
        (["doctor", "--gpu", "--parts", "train,gpu"], "--parts 'train,gpu'"),
        (["doctor", "--gpu", "--ddp-backend", "mpi"], "--ddp-backend 'mpi'"),
        (["doctor", "--gpu", "--batch", "0"], "expected a positive integer"),
        (["doctor", "--gpu", "--budget-s", "nan"], "--budget-s nan"),
    ],
)
def test_bad_options_are_one_line_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys
) -> None:
    assert main([*argv, "--out", str(tmp_path / "d.json")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d.json").exists()


def test_out_that_is_a_folder_is_refused_before_the_check(tmp_path: Path, capsys) -> None:
    assert main(["doctor", "--gpu", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


# -- timing and MFU bookkeeping ----------------------------------------------------------------


class FakeClock(doctor.StepClock):
    """Every call takes ``seconds``, by decree."""

    def __init__(self, seconds: float) -> None:
        super().__init__(torch.device("cpu"))
        self.seconds = seconds

    def time(self, fn: Any) -> tuple[float, Any]:
        return self.seconds, fn()


def test_measure_excludes_warmup_and_counts_images() -> None:
    calls: list[int] = []

    def step(i: int) -> int:
        calls.append(i)
        return 1000 if i < 2 else 10  # warm-up steps report other counts: they must not count

    timing = doctor.measure(step, FakeClock(0.5), warmup=2, steps=3)
    assert calls == [0, 1, 2, 3, 4]  # step indices continue after the warm-up
    assert timing.step_seconds == [0.5, 0.5, 0.5] and timing.step_images == [10, 10, 10]
    assert timing.warmup_seconds == 1.0 and timing.warmup_steps == 2
    summary = timing.summary()
    assert summary["images_per_s"] == pytest.approx(30 / 1.5)
    assert summary["step_ms_median"] == pytest.approx(500.0)
    assert summary["measured_steps"] == 3 and summary["images_per_step"] == 10
    assert summary["truncated_by_time_limit"] is False


def test_timing_summary_of_uneven_steps() -> None:
    timing = doctor.Timing(step_seconds=[0.1, 0.3, 0.2], step_images=[64, 64, 64])
    summary = timing.summary()
    assert summary["images_per_s"] == pytest.approx(192 / 0.6)
    assert summary["step_ms_median"] == pytest.approx(200.0)
    assert (summary["step_ms_min"], summary["step_ms_max"]) == pytest.approx((100.0, 300.0))
    assert doctor.Timing().summary()["images_per_s"] is None


def test_measure_stops_at_the_soft_deadline_after_one_step() -> None:
    timing = doctor.measure(lambda i: 4, FakeClock(0.1), 1, 50, time.monotonic() - 1.0)
    assert len(timing.step_seconds) == 1 and timing.truncated
    assert timing.summary()["truncated_by_time_limit"] is True


def test_mfu_uses_the_device_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    cuda = torch.device("cuda")
    assert doctor.peak_flops(cuda, "bf16") == 989e12
    assert doctor.peak_flops(cuda, "fp32") == 67e12
    # training: forward + backward = 3x the forward FLOPs
    assert doctor.training_mfu(1e9, 1000.0, cuda, "bf16") == pytest.approx(3e12 / 989e12)
    assert doctor.inference_mfu(1e10, 100.0, cuda, "fp32") == pytest.approx(1e12 / 67e12)
    assert doctor.training_mfu(None, 1000.0, cuda, "bf16") is None
    cpu = torch.device("cpu")
    assert doctor.training_mfu(1e9, 1000.0, cpu, "bf16") is None
    assert doctor.inference_mfu(1e9, 1000.0, cpu, "fp32") is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert doctor.peak_flops(cuda, "bf16") is None  # not in the table: no MFU, not a guess


# -- the wall-time budget ----------------------------------------------------------------------


class Ticker:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_grants_the_part_limit_then_what_is_left_then_nothing() -> None:
    clock = Ticker()
    budget = doctor.WallBudget(100.0, reserve_s=5.0, clock=clock)
    assert budget.grant(45.0) == 45.0
    clock.now = 60.0
    assert budget.grant(45.0) == pytest.approx(35.0)  # 100 - 60 - 5
    clock.now = 91.0
    assert budget.grant(45.0) is None  # 4 s left: less than MIN_PART_S


def test_default_part_limits_fit_in_the_default_budget() -> None:
    assert sum(doctor.PART_LIMITS_S.values()) <= doctor.DEFAULT_BUDGET_S
    assert doctor.DEFAULT_BUDGET_S < 8 * 60


def test_hard_limit_interrupts_a_part_that_runs_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(doctor.PART_LIMITS_S, "stuck", doctor.MIN_PART_S)

    def stuck(soft_deadline: float) -> dict[str, Any]:
        while True:
            time.sleep(0.01)

    started = time.monotonic()
    section = doctor.run_part("stuck", stuck, doctor.WallBudget(100.0))
    assert section["status"] == "failed"
    assert "ran past its 5 s time limit" in section["error"]
    assert time.monotonic() - started < 30


def test_spent_budget_skips_a_part() -> None:
    clock = Ticker()
    budget = doctor.WallBudget(10.0, clock=clock)
    clock.now = 8.0
    section = doctor.run_part("fid", lambda soft: {"images_per_s": 1.0}, budget)
    assert section == {"status": "skipped", "error": "the wall-time budget is spent"}


def test_report_is_strict_json() -> None:
    cleaned = doctor.finite({"a": math.nan, "b": [1.0, math.inf], "c": {"d": 2.0}})
    assert cleaned == {"a": None, "b": [1.0, None], "c": {"d": 2.0}}
