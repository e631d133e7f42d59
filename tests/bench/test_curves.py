"""Learning curves (eval.at_images): the series a run writes equals a separate evaluation of
the model at each point, costs the training nothing, and survives a kill."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.curves import evaluate_point
from bench.killpoints import run_command
from bench.protocol import load_protocol
from bench.runner import eval_config
from bench.runs import open_run


def _run(out: Path, method: str, budget: int, *extra: str) -> dict:
    code = main(
        [
            "run", "--protocol", "smoke", "--device", "cpu", "--out", str(out), "--no-report",
            "--methods", method, "--set", f"train.budget_images={budget}", *extra,
        ]
    )  # fmt: skip
    assert code == 0
    return json.loads((out / "smoke" / "digits" / method / "seed-0" / "result.json").read_text())


CURVE = ("--set", "eval.at_images=[256,512]", "--set", "eval.curve_fid_samples=200")


def test_curve_points_equal_a_separate_evaluation_and_cost_training_nothing(tmp_path) -> None:
    """ddpm (EMA weights, warm-up schedule independent of the budget): the point at 512
    images equals scoring a 512-image run of the same seed, loaded from its folder; the
    768-image run with the curve ends with the metrics of one without it."""
    with_curve = _run(tmp_path / "a", "ddpm", 768, *CURVE)
    curve = with_curve["metrics"]["curve"]
    assert [p["images"] for p in curve] == [256, 512]
    assert curve[0]["train_wall_s"] < curve[1]["train_wall_s"]
    assert curve[1]["train_flops"] == pytest.approx(2 * curve[0]["train_flops"])
    assert set(curve[0]) >= {"fidelity", "likelihood", "probe", "images_seen", "step"}
    assert with_curve["env"]["curve_eval_s"] > 0

    without = _run(tmp_path / "b", "ddpm", 768)
    for section in ("fidelity", "likelihood", "probe"):
        for key, value in without["metrics"][section].items():
            if isinstance(value, float):
                assert with_curve["metrics"][section][key] == value, (section, key)

    short = _run(tmp_path / "c", "ddpm", 512)
    run = open_run(tmp_path / "c" / "smoke" / "digits" / "ddpm" / "seed-0")
    protocol = load_protocol("smoke").with_overrides(
        {"eval.at_images": "[256,512]", "eval.curve_fid_samples": "200"}
    )
    again = evaluate_point(
        run.method, run.data, protocol.eval, 0, 512, torch.device("cpu"), "digits-cnn"
    )
    assert again == {k: curve[1][k] for k in ("fidelity", "likelihood", "probe")}
    assert short["status"] == "ok"


def test_curve_survives_a_kill(tmp_path: Path) -> None:
    """Killed after its first point (kept in the checkpoint written right after it), the
    run resumes and ends with the series of an uninterrupted run."""
    extra = ["--set", "train.budget_images=1024", "--set", "eval.at_images=[256,768]"]
    extra += ["--set", "eval.curve_fid_samples=100"]
    env = {**os.environ, "GENBENCH_KILL_AT": "train-step:8"}  # 64-image steps: after 256
    killed = subprocess.run(
        run_command(tmp_path / "k", "vae", *extra), env=env, capture_output=True, timeout=600
    )
    assert killed.returncode == -9
    checkpoint = torch.load(tmp_path / "k/smoke/digits/vae/seed-0/checkpoint.pt", weights_only=True)
    assert [p["images"] for p in checkpoint["curve"]["points"]] == [256]
    env.pop("GENBENCH_KILL_AT")
    for out in ("k", "u"):
        done = subprocess.run(
            run_command(tmp_path / out, "vae", *extra), env=env, capture_output=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-2000:]
    series = [
        json.loads((tmp_path / out / "smoke/digits/vae/seed-0/result.json").read_text())["metrics"][
            "curve"
        ]
        for out in ("k", "u")
    ]
    strip = [[{k: v for k, v in p.items() if k != "train_wall_s"} for p in s] for s in series]
    assert strip[0] == strip[1] and len(strip[0]) == 2


def test_results_without_a_curve_keep_their_configuration() -> None:
    settings = load_protocol("quick").eval
    assert "at_images" not in eval_config(settings)
    curved = load_protocol("quick").with_overrides({"eval.at_images": "1000"}).eval
    assert eval_config(curved)["at_images"] == (1000,)


@pytest.mark.parametrize("value", ["-5", "1.5", "[1000, x]"])
def test_bad_curve_points_are_one_line(value: str, tmp_path: Path, capsys) -> None:
    code = main(
        [
            "run", "--protocol", "smoke", "--out", str(tmp_path / "r"), "--methods", "vae",
            "--set", f"eval.at_images={value}",
        ]
    )  # fmt: skip
    assert code == 2
    assert "at_images" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
