"""The RGB path end to end, offline: CIFAR-10 files in their original format, Inception
(torch-fidelity's inception-v3-compat) from a local --feature-weights file."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as tfi

from bench.cli import main
from bench.metrics.extractors import sha256_file
from bench.results import load_result


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised Inception state dict: the real one cannot be downloaded here."""
    original = tfi.load_state_dict_from_url
    original_load = tfi.FeatureExtractorInceptionV3.load_state_dict
    tfi.load_state_dict_from_url = lambda *args, **kwargs: None
    tfi.FeatureExtractorInceptionV3.load_state_dict = lambda self, sd, *a, **k: None
    try:
        torch.manual_seed(0)
        model = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        tfi.load_state_dict_from_url = original
        tfi.FeatureExtractorInceptionV3.load_state_dict = original_load
    path = tmp_path_factory.mktemp("inception") / "inception.pth"
    torch.save(model.state_dict(), path)
    return path


def make_cifar(root: Path, per_batch: int = 8) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as handle:
            pickle.dump(
                {
                    "data": rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8),
                    "labels": list(rng.integers(0, 10, per_batch)),
                },
                handle,
            )


def test_cifar10_with_local_inception_weights(tmp_path: Path, inception_weights: Path) -> None:
    make_cifar(tmp_path / "data")
    out = tmp_path / "runs"
    code = main(
        [
            "run",
            "--protocol",
            "smoke",
            "--dataset",
            "cifar10",
            "--no-download",
            "--data-root",
            str(tmp_path / "data"),
            "--feature-weights",
            str(inception_weights),
            "--methods",
            "real-data,independent-pixels",
            "--set",
            "eval.fid_samples=16",
            "--out",
            str(out),
            "--reports",
            str(tmp_path / "reports"),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    result = load_result(out / "smoke/cifar10/real-data/seed-0/result.json")
    assert result.status == "ok", result.error
    settings = result.metrics["fidelity"]["settings"]
    assert settings["extractor"] == "inception-v3-compat"
    assert settings["weights_sha256"] == sha256_file(inception_weights)
    assert settings["num_samples"] == 8  # the real-data row: the 8 test images, no duplicates
    board = (tmp_path / "reports/smoke-cifar10/leaderboard.md").read_text()
    assert "FID[inception-v3-compat]" in board
