"""Sampler rows that evaluate another method's trained weights (``Method.weights_from``):
ddim runs after ddpm of the same study, on ddpm's network and final weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.errors import GenbenchError
from bench.executors import dependency_waves
from bench.registry import METHODS
from bench.runner import load_source_weights, plan_study, run_study

FAST = [
    "train.budget_images=128",
    "eval.fid_samples=100",
    "ddpm.sample_steps=2",
    "ddpm.vlb_timesteps=2",
    "ddpm.width=8",
    "ddim.steps=10,5",
]


def test_a_weights_from_row_without_its_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GenbenchError, match="run ddpm first"):
        plan_study("smoke", methods=["ddim"], out=tmp_path, device="cpu")


def test_ddim_runs_after_ddpm_on_its_network_and_weights(tmp_path: Path) -> None:
    study = plan_study("smoke", methods=["ddim", "ddpm"], sets=FAST, out=tmp_path, device="cpu")
    assert [s.method for s in study.runs] == ["ddpm", "ddim"]  # the source first
    ddim_spec = study.runs[1]
    assert ddim_spec.hparams["width"] == 8  # ddpm's network, not ddim's defaults
    results = {r.method: r for r in run_study(study)}
    assert results["ddpm"].status == "ok" and results["ddim"].status == "ok", results["ddim"].error
    source = results["ddim"].config["weights_from"]
    assert source == {"method": "ddpm", "config_hash": results["ddpm"].config["hash"]}
    assert results["ddim"].metrics["throughput"]["train_images_seen"] == 0  # no training
    rows = [v["variant"]["steps"] for v in results["ddim"].metrics["fidelity_variants"]]
    assert rows == [5]  # the first step count is the ddim row itself

    # the weights ddim evaluated are ddpm's final (EMA) weights
    method = METHODS.get("ddim").build(study.data.spec, ddim_spec.hparams)
    load_source_weights(method, ddim_spec, torch.device("cpu"))
    ddpm = METHODS.get("ddpm").build(study.data.spec, study.runs[0].hparams)
    assert not torch.equal(method.net.out[-1].weight, ddpm.net.out[-1].weight)  # trained

    # a later study of ddim alone finds ddpm's run and reuses it; a retrained ddpm makes
    # the finished ddim stale
    again = plan_study(
        "smoke", methods=["ddim"], sets=FAST[:2] + FAST[5:], out=tmp_path, device="cpu"
    )
    assert again.runs[0].hparams["width"] == 8
    retrained = plan_study(
        "smoke", methods=["ddpm", "ddim"], sets=[*FAST, "ddpm.lr=1e-3"], out=tmp_path, device="cpu"
    )
    results = {r.method: r for r in run_study(retrained)}
    assert results["ddim"].config["weights_from"]["config_hash"] == results["ddpm"].config["hash"]
    assert results["ddim"].config["weights_from"]["config_hash"] != source["config_hash"]


def test_executors_run_weights_from_rows_in_a_second_wave(tmp_path: Path) -> None:
    study = plan_study("smoke", methods=["ddpm", "edm"], out=tmp_path, device="cpu")
    ddim = plan_study("smoke", methods=["ddpm", "ddim"], out=tmp_path, device="cpu").runs[1]
    waves = dependency_waves([ddim, *study.runs])
    assert [[s.method for s in wave] for wave in waves] == [["ddpm", "edm"], ["ddim"]]
