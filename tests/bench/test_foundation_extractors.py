"""DINOv2 and CLIP feature extractors with --feature-weights, tested without internet on
locally constructed weights of the right architecture (smaller), and CMMD on CLIP features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.errors import GenbenchError
from bench.evaluators.fidelity_metrics.cmmd import SIGMA, cmmd
from bench.metrics.extractors import FoundationExtractor, validate_extractor
from bench.metrics.extractors.foundation import CLIP, DINOV2, DinoV2, preprocess


def _dinov2_state(dim: int = 64, depth: int = 2, grid: int = 4) -> dict[str, torch.Tensor]:
    """A small DINOv2-architecture state dict (64-d heads, patch 14, a 4x4 position grid)."""
    torch.manual_seed(0)
    model = DinoV2(dim, depth, dim // 64, 14, grid)
    with torch.no_grad():
        for name, value in model.named_parameters():
            value.copy_(torch.randn_like(value) * 0.1 + (1.0 if "gamma" in name else 0.0))
    return model.state_dict()


def _clip_state() -> dict[str, torch.Tensor]:
    """A small CLIP ViT (torch-fidelity's CLIPVisual: width 64, 2 layers, 32 pixels, patch
    16) plus the text projection build_model reads the embedding width from."""
    from torch_fidelity.feature_extractor_clip import CLIPVisual

    torch.manual_seed(1)
    visual = CLIPVisual(32, 32, 2, 64, 16)
    state = {k: v.detach().clone() for k, v in visual.state_dict().items()}
    for key, value in state.items():
        if value.is_floating_point():
            state[key] = torch.randn_like(value) * 0.05 + (
                1.0 if key.endswith("ln_1.weight") else 0.0
            )
    state["text_projection"] = torch.randn(48, 32)
    return state


def _save(state: dict[str, torch.Tensor], path: Path) -> str:
    torch.save(state, path)
    return str(path)


def _rgb(count: int, seed: int, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, size, size), generator=generator, dtype=torch.uint8)


def test_dinov2_features_are_the_normalised_class_token_of_the_weights_given(tmp_path) -> None:
    state = _dinov2_state()
    path = _save(state, tmp_path / "dinov2.pt")
    validate_extractor(DINOV2, "cifar10", path)
    extractor = FoundationExtractor(DINOV2, ["dinov2"], path).eval()
    images = _rgb(3, 0)
    (features,) = extractor(images)
    model = DinoV2.from_state_dict(state)
    with torch.no_grad():
        direct = model(preprocess(images, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    assert features.shape == (3, 64)
    assert torch.equal(features, direct.double())
    # the 4x4 grid of training positions is interpolated to the 16x16 patches of 224 pixels
    assert model.position_embedding(16, 16).shape == (1, 257, 64)


def test_clip_features_equal_torch_fidelitys_extractor_on_the_same_weights(tmp_path) -> None:
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.feature_extractor_clip import FeatureExtractorCLIP, build_model

    state = _clip_state()
    path = _save(state, tmp_path / "clip.pt")
    validate_extractor(CLIP, "cifar10", path)
    ours = FoundationExtractor(CLIP, ["clip"], path).eval()
    reference = FeatureExtractorCLIP.__new__(FeatureExtractorCLIP)  # its loader bypassed
    FeatureExtractorBase.__init__(reference, CLIP, ["clip"])
    reference.feature_extractor_internal_dtype = torch.float32
    reference.model = build_model(dict(state), torch.float32)
    reference.resolution = reference.model.visual.input_resolution
    images = _rgb(4, 1, size=40)
    with torch.no_grad():
        (a,) = ours(images)
        (b,) = reference(images)
    assert a.shape == (4, 32)
    assert torch.equal(a.float(), b)


def test_foundation_weights_that_do_not_fit_or_carry_code_are_one_clear_error(tmp_path) -> None:
    wrong = _save({"cls_token": torch.zeros(1, 1, 64)}, tmp_path / "wrong.pt")
    with pytest.raises(GenbenchError, match="do not fit the dinov2-vit-s-14 architecture"):
        validate_extractor(DINOV2, "cifar10", wrong)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a weights file")
    with pytest.raises(GenbenchError, match="weights_only=True"):
        validate_extractor(CLIP, "cifar10", str(garbage))
    with pytest.raises(GenbenchError, match="applies to"):
        validate_extractor("digits-cnn", "digits", wrong)


def test_a_study_scores_fd_and_cmmd_on_clip_features(tmp_path) -> None:
    """FD under CLIP features (the column names the extractor) and CMMD beside it, on a
    small RGB npz dataset, through the CLI with locally made weights."""
    import json

    from bench.cli import main

    weights = _save(_clip_state(), tmp_path / "clip.pt")
    generator = np.random.default_rng(0)
    images = generator.integers(0, 256, (400, 16, 16, 3), dtype=np.uint8)
    data = tmp_path / "rgb.npz"
    np.savez(data, images=images, labels=generator.integers(0, 4, 400))
    out = tmp_path / "runs"
    code = main(
        [
            "run", "--protocol", "smoke", "--dataset", f"npz:{data}", "--methods", "real-data",
            "--extractor", CLIP, "--feature-weights", weights, "--out", str(out), "--no-report",
            "--device", "cpu",
        ]
    )  # fmt: skip
    assert code == 0
    (result,) = out.rglob("result.json")
    scores = json.loads(result.read_text())["metrics"]["fidelity"]
    assert scores["settings"]["extractor"] == CLIP
    assert scores["fid"] >= 0 and scores["cmmd"] >= 0
    assert scores["settings"]["metrics"]["cmmd"]["sigma"] == SIGMA


# ---------------------------------------------------------------- CMMD


def _cmmd_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """google-research/cmmd's distance.mmd, written out in numpy."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    gamma = 1 / (2 * SIGMA**2)

    def k(a: np.ndarray, b: np.ndarray) -> float:
        d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return float(np.exp(-gamma * d).mean())

    return 1000 * (k(x, x) + k(y, y) - 2 * k(x, y))


def test_cmmd_of_a_set_with_itself_is_zero_and_matches_the_papers_code() -> None:
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(60, 16, generator=generator, dtype=torch.float64)
    y = torch.randn(50, 16, generator=generator, dtype=torch.float64) + 0.5
    assert cmmd(x, x) == pytest.approx(0.0, abs=1e-9)
    assert cmmd(x, y) == pytest.approx(_cmmd_numpy(x.numpy(), y.numpy()), rel=1e-9)
    assert cmmd(x, y) > cmmd(x, x[:30]) >= 0
