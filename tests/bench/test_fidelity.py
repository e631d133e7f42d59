from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from bench.data import load_dataset
from bench.errors import GenbenchError
from bench.metrics.extractors import torchmetrics_feature_module
from bench.metrics.fidelity import (
    TensorImages,
    evaluate_samples,
    fidelity_from_inputs,
    levels_to_uint8,
)
from bench.protocol import load_protocol


class IdentityFeatures(FeatureExtractorBase):
    """Test extractor: the 'image' (d, 1, 1) is its own feature vector."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)

    @staticmethod
    def get_provided_features_list():
        return ("identity",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "identity"

    @staticmethod
    def can_be_compiled():
        return False

    def forward(self, x):
        return (x.flatten(1).double(),)


if "test-identity" not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor("test-identity", IdentityFeatures)

SETTINGS = load_protocol("smoke").eval


def exact_gaussian_set(n: int, mean: np.ndarray, variances: np.ndarray, seed: int) -> torch.Tensor:
    """n points whose sample mean and (unbiased) covariance are exactly mean, diag(variances)."""
    z = np.random.default_rng(seed).standard_normal((n, len(mean)))
    z -= z.mean(0)
    chol = np.linalg.cholesky(np.cov(z, rowvar=False))
    white = z @ np.linalg.inv(chol).T  # sample covariance exactly I
    x = white * np.sqrt(variances) + mean
    return torch.from_numpy(x)[:, :, None, None]


def test_fid_equals_closed_form_for_gaussians() -> None:
    d = 6
    m1, m2 = np.zeros(d), np.linspace(-1, 1, d)
    v1, v2 = np.linspace(0.5, 2.0, d), np.linspace(3.0, 0.2, d)
    # Frechet distance, diagonal covariances: |m1-m2|^2 + sum (sqrt v1 - sqrt v2)^2
    closed_form = float(((m1 - m2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum())
    out = fidelity_from_inputs(
        TensorImages(exact_gaussian_set(400, m1, v1, 0)),
        TensorImages(exact_gaussian_set(500, m2, v2, 1)),
        "test-identity",
        SETTINGS,
        seed=0,
    )
    assert out["fid"] == pytest.approx(closed_form, rel=1e-6)
    assert closed_form > 1.0  # not a trivial case


def test_kid_of_a_set_with_itself_is_about_zero() -> None:
    data = load_dataset("digits")
    real = TensorImages(levels_to_uint8(data.levels("train"), 17))
    same = fidelity_from_inputs(real, real, "digits-cnn", SETTINGS, seed=0)
    noise = TensorImages(
        torch.randint(
            0, 256, (300, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
        )
    )
    other = fidelity_from_inputs(noise, real, "digits-cnn", SETTINGS, seed=0)
    assert abs(same["fid"]) < 1e-6
    assert abs(same["kid"]) < 1e-2 * other["kid"]  # unbiased: noise around 0
    assert same["precision"] == 1.0 and same["recall"] == 1.0


def test_torchmetrics_and_torch_fidelity_agree_on_our_extractor() -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    data = load_dataset("digits")
    real = levels_to_uint8(data.levels("train"), 17)
    fake = levels_to_uint8(data.levels("test"), 17)
    fake = torch.where(
        torch.rand(fake.shape, generator=torch.Generator().manual_seed(1)) < 0.1, 255 - fake, fake
    )  # corrupt 10% of the pixels
    ours = fidelity_from_inputs(TensorImages(fake), TensorImages(real), "digits-cnn", SETTINGS, 0)
    metric = FrechetInceptionDistance(feature=torchmetrics_feature_module("digits-cnn"))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    assert float(metric.compute()) == pytest.approx(ours["fid"], rel=1e-4)
    assert ours["fid"] > 1.0


def test_too_few_samples_is_a_clear_error() -> None:
    data = load_dataset("digits")
    with pytest.raises(GenbenchError, match="too few samples"):
        evaluate_samples(torch.rand(1, 1, 8, 8), data, "digits-cnn", SETTINGS, 0)


def test_evaluate_samples_records_its_settings(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path))
    data = load_dataset("digits")
    out = evaluate_samples(data.images("test")[:100], data, "digits-cnn", SETTINGS, 0)
    settings = out["settings"]
    assert settings["extractor"] == "digits-cnn" and len(settings["weights_sha256"]) == 64
    assert settings["num_samples"] == 100 and settings["reference_size"] == 1500
    assert settings["kid_subset_size"] == 100
    # reference features are cached under a name hashing data content and extractor weights
    cached = sorted(p.name for p in (tmp_path / "fidelity-features").iterdir())
    assert len(cached) == 1 and cached[0].endswith(".npz")
    assert data.fingerprint()[:16] in cached[0] and settings["weights_sha256"][:16] in cached[0]


def digits_pair() -> tuple[TensorImages, TensorImages]:
    data = load_dataset("digits")
    real = levels_to_uint8(data.levels("train"), 17)
    fake = levels_to_uint8(data.levels("test"), 17)
    fake = torch.where(
        torch.rand(fake.shape, generator=torch.Generator().manual_seed(2)) < 0.2, 255 - fake, fake
    )
    return TensorImages(fake), TensorImages(real)


def test_numbers_equal_torch_fidelity_calculate_metrics(tmp_path, monkeypatch) -> None:
    """Our pipeline (own feature cache, torch-fidelity's metric functions) gives exactly what
    torch_fidelity.calculate_metrics gives, on a cache miss and on a cache hit."""
    import torch_fidelity

    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path))
    fake, real = digits_pair()
    raw = torch_fidelity.calculate_metrics(
        input1=fake,
        input2=real,
        cuda=False,
        batch_size=SETTINGS.eval_batch_size,
        fid=True,
        kid=True,
        prc=True,
        feature_extractor="digits-cnn",
        kid_subsets=SETTINGS.kid_subsets,
        kid_subset_size=min(SETTINGS.kid_subset_size, len(fake)),
        prc_neighborhood=SETTINGS.prc_neighborhood,
        rng_seed=3,
        save_cpu_ram=True,
        verbose=False,
        cache=False,
    )
    expected = {
        "fid": raw[torch_fidelity.KEY_METRIC_FID],
        "kid": raw[torch_fidelity.KEY_METRIC_KID_MEAN],
        "kid_std": raw[torch_fidelity.KEY_METRIC_KID_STD],
        "precision": raw[torch_fidelity.KEY_METRIC_PRECISION],
        "recall": raw[torch_fidelity.KEY_METRIC_RECALL],
    }
    for _ in ("miss", "hit"):
        out = fidelity_from_inputs(fake, real, "digits-cnn", SETTINGS, 3, "ref")
        assert {key: out[key] for key in expected} == expected
    assert len(list((tmp_path / "fidelity-features").glob("*.npz"))) == 1


@pytest.mark.parametrize(
    "damage", [b"garbage bytes", b"PK\x03\x04truncated zip", "object-array", "wrong-rows"]
)
def test_corrupt_feature_cache_is_ignored_and_rebuilt(tmp_path, monkeypatch, caplog, damage):
    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path))
    fake, real = digits_pair()
    first = fidelity_from_inputs(fake, real, "digits-cnn", SETTINGS, 0, "ref")
    (path,) = (tmp_path / "fidelity-features").glob("*.npz")
    if damage == "object-array":
        np.savez(path, penultimate=np.array([{"a": 1}, None], dtype=object))
    elif damage == "wrong-rows":
        np.savez(path, penultimate=np.zeros((3, 128)))
    else:
        path.write_bytes(damage)
    with caplog.at_level("WARNING"):
        again = fidelity_from_inputs(fake, real, "digits-cnn", SETTINGS, 0, "ref")
    assert again == first
    assert str(path) in caplog.text and "recomputing" in caplog.text
    with np.load(path, allow_pickle=False) as archive:  # rebuilt: a good cache again
        assert archive["penultimate"].shape == (len(real), 128)
