"""Class-conditional sampling: balanced labels go in, the domain classifier scores what
comes out (does a sample drawn for label y look like a y)."""

from __future__ import annotations

import math

import pytest
import torch

from bench.method import LOG_LIKELIHOOD, SAMPLE, DataSpec, Method
from bench.runner import evaluate, plan_study


class HeldOutByLabel(Method):
    """Returns held-out images of the requested class (or ignores the labels)."""

    capabilities = frozenset({SAMPLE})
    trainable = False
    class_conditional = True

    def __init__(self, spec: DataSpec, honour_labels: bool) -> None:
        super().__init__(spec)
        self.honour_labels = honour_labels
        self.seen_labels: list[torch.Tensor] = []

    def prepare(self, train_x, train_y, held_out_x) -> None:
        self.images, self.labels = train_x, train_y

    def sample(self, n, generator, labels=None):
        assert labels is not None and len(labels) == n
        self.seen_labels.append(labels.clone())
        wanted = labels if self.honour_labels else (labels + 1) % 10
        picks = [torch.nonzero(self.labels == y)[k % 50, 0] for k, y in enumerate(wanted.tolist())]
        return self.images[torch.stack(picks)]


def test_sample_classifier_accuracy_is_reported(tmp_path) -> None:
    study = plan_study("smoke", methods=["real-data"], out=tmp_path, device="cpu")
    spec, data = study.runs[0], study.data
    scores = {}
    for honour in (True, False):
        method = HeldOutByLabel(data.spec, honour)
        method.prepare(data.images("train"), data.labels("train"), data.images("test"))
        metrics = evaluate(method, spec, study, None)
        scores[honour] = metrics["fidelity"]["sample_acc"]
        labels = torch.cat(method.seen_labels[:2])  # the two FID batches (then a FLOP count)
        assert torch.bincount(labels).tolist() == [30] * 10  # class-balanced, 300 samples
    assert scores[True] > 0.95 and scores[False] < 0.05


class Denoiser(Method):
    """A stand-in for a step-count sampler: more steps remove more of the noise."""

    capabilities = frozenset({SAMPLE})
    trainable = False

    def prepare(self, train_x, train_y, held_out_x) -> None:
        self.images = train_x

    def sample_variants(self):
        return [{"steps": 4}, {"steps": 1}, {"steps": 16}]

    def sample(self, n, generator, labels=None, steps: int = 4):
        real = self.images[torch.randperm(len(self.images), generator=generator)[:n]]
        noise = torch.rand(real.shape, generator=generator)
        self.last_nfe = steps
        return real + (noise - real) / (steps + 1)


def test_sampler_variants_are_scored_and_get_rows(tmp_path) -> None:
    from bench.report import aggregate
    from bench.results import RunResult

    study = plan_study("smoke", methods=["real-data"], out=tmp_path, device="cpu")
    method = Denoiser(study.data.spec)
    method.prepare(study.data.images("train"), None, None)
    metrics = evaluate(method, study.runs[0], study, None)
    assert metrics["fidelity"]["settings"]["sampler"] == {"steps": 4}
    assert metrics["throughput"]["nfe"] == 4
    variants = {v["variant"]["steps"]: v for v in metrics["fidelity_variants"]}
    assert sorted(variants) == [1, 16] and variants[16]["nfe"] == 16
    assert variants[16]["fid"] < metrics["fidelity"]["fid"] < variants[1]["fid"]
    result = RunResult(
        "denoiser", "digits", {"name": "smoke", "version": 1}, 0, "ok", metrics, {}, {}
    )
    table = aggregate([result]).set_index("method")
    assert list(table.index) == ["denoiser", "denoiser[steps=1]", "denoiser[steps=16]"]
    assert table.at["denoiser[steps=16]", "nfe_mean"] == 16
    assert table.at["denoiser[steps=16]", "fid[digits-cnn]_rank"] == 1


class TwoBounds(Method):
    """A stand-in for a VAE: a tight bound and a looser one (uniform over the levels + 1 nat)."""

    capabilities = frozenset({LOG_LIKELIHOOD})
    trainable = False
    likelihood_is_bound = True

    def likelihood_variants(self):
        return [{"bound": "tight"}, {"bound": "loose"}]

    def log_likelihood(self, x, bound: str = "tight"):
        uniform = -self.spec.dims * math.log(self.spec.num_levels)
        return torch.full((len(x),), uniform - (1.0 if bound == "loose" else 0.0))


def test_likelihood_variants_are_scored_and_get_rows(tmp_path) -> None:
    from bench.report import aggregate
    from bench.results import RunResult

    study = plan_study("smoke", methods=["real-data"], out=tmp_path, device="cpu")
    spec = study.data.spec
    metrics = evaluate(TwoBounds(spec), study.runs[0], study, None)
    uniform_bpd = math.log2(spec.num_levels)
    assert metrics["likelihood"]["bpd"] == pytest.approx(uniform_bpd)
    assert metrics["likelihood"]["settings"]["bound"] == "tight"
    (loose,) = metrics["likelihood_variants"]
    assert loose["variant"] == {"bound": "loose"} and loose["is_bound"]
    assert loose["bpd"] == pytest.approx(uniform_bpd + 1.0 / (spec.dims * math.log(2)))
    result = RunResult("vae", "digits", {"name": "smoke", "version": 1}, 0, "ok", metrics, {}, {})
    table = aggregate([result]).set_index("method")
    assert list(table.index) == ["vae", "vae[bound=loose]"]
    assert table.at["vae[bound=loose]", "bpd_mean"] == pytest.approx(loose["bpd"])
    assert table.at["vae[bound=loose]", "bpd_rank"] == 2
