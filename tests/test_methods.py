"""Every registered method, trained under the smoke protocol and checked capability by
capability. A new method is picked up by the parametrisation without a new test."""

from __future__ import annotations

import math

import pytest
import torch

from bench.method import ENCODE, LOG_LIKELIHOOD, SAMPLE
from bench.registry import METHODS

ALL_METHODS = METHODS.names()


@pytest.mark.parametrize("name", ALL_METHODS)
def test_method_under_smoke_protocol(name: str, smoke_study) -> None:
    out, study, results = smoke_study
    result = results[name]
    assert result.status == "ok", result.error
    cls = METHODS.get(name)
    metrics = result.metrics
    uniform = math.log2(study.data.spec.num_levels)
    assert (SAMPLE in cls.capabilities) == ("fidelity" in metrics)
    assert (LOG_LIKELIHOOD in cls.capabilities) == ("likelihood" in metrics)
    assert (ENCODE in cls.capabilities) == ("probe" in metrics)
    if "fidelity" in metrics:
        fid = metrics["fidelity"]
        assert math.isfinite(fid["fid"]) and fid["fid"] >= 0
        assert 0 <= fid["precision"] <= 1 and 0 <= fid["recall"] <= 1
        assert (out / "smoke/digits" / name / "seed-0" / "samples.png").exists()
    if "likelihood" in metrics:
        bpd = metrics["likelihood"]["bpd"]
        assert math.isfinite(bpd) and bpd > 0
        if "dequantization" in metrics["likelihood"]["settings"]:
            # a continuous density of dequantized data after a few smoke steps can be far
            # worse than uniform: an untrained VP score model contracts everything to the
            # prior (about 11.7 bits/dim on digits). The analytic ODE-likelihood tests and
            # the quick protocol check these numbers; here only their plausibility.
            assert bpd < 4 * uniform
        else:
            assert bpd < uniform
        assert metrics["likelihood"]["is_bound"] == cls.likelihood_is_bound
    if "probe" in metrics:
        assert 0.1 < metrics["probe"]["linear_acc"] <= 1.0
        assert 0.1 < metrics["probe"]["knn_acc"] <= 1.0
    speed = metrics["throughput"]
    assert speed["params"] >= 0 and speed["device"].startswith("cpu")
    if cls.trainable:
        assert speed["train_images_per_s"] > 0
        assert speed["train_images_seen"] >= study.protocol.train.budget_images


@pytest.mark.parametrize("name", ALL_METHODS)
def test_capability_outputs(name: str, smoke_study) -> None:
    """Call each capability directly on a freshly built (untrained) method."""
    _, study, _ = smoke_study
    data = study.data
    method = METHODS.get(name).build(data.spec)
    method.prepare(data.images("train"), data.labels("train"), data.images("test"))
    method.eval()
    x = data.images("test")[:16]
    with torch.no_grad():
        if SAMPLE in method.capabilities:
            samples = method.sample(8, torch.Generator().manual_seed(0))
            assert samples.shape == (8, *data.spec.shape)
            assert float(samples.min()) >= 0 and float(samples.max()) <= 1
            again = method.sample(8, torch.Generator().manual_seed(0))
            assert torch.equal(samples, again), "sampling must be a function of the generator"
        if LOG_LIKELIHOOD in method.capabilities:
            ll = method.log_likelihood(x)
            assert ll.shape == (16,) and torch.isfinite(ll).all() and (ll < 0).all()
        if ENCODE in method.capabilities:
            feats = method.encode(x)
            assert feats.dim() == 2 and feats.shape[0] == 16 and torch.isfinite(feats).all()


def test_reference_rows_order(smoke_study) -> None:
    _, _, results = smoke_study
    fid = {m: results[m].metrics["fidelity"]["fid"] for m in ("real-data", "independent-pixels")}
    assert fid["real-data"] * 5 < fid["independent-pixels"]
