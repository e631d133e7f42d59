"""pytest-benchmark timings of the harness itself (`tox -e bench`, or
`pytest tests/benchmarks --benchmark-autosave` then `--benchmark-compare`).

Not part of the default test run (`norecursedirs` in pyproject.toml)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from bench.data import load_dataset
from bench.method import Batch, DataSpec, Method, Update
from bench.metrics.fidelity import TensorImages, fidelity_from_inputs, levels_to_uint8
from bench.metrics.likelihood import BitsPerDim
from bench.metrics.probe import knn_accuracy, linear_probe
from bench.metrics.throughput import forward_flops_per_image
from bench.protocol import TrainSettings, load_protocol
from bench.registry import METHODS
from bench.train import train

SETTINGS = load_protocol("quick").eval
CPU = torch.device("cpu")


class NoOp(Method):
    """A method whose step does (almost) nothing: what remains is the loop's own cost."""

    capabilities = frozenset({"encode"})

    def __init__(self, spec: DataSpec) -> None:
        super().__init__(spec)
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.add_optimizer("sgd", torch.optim.SGD(self.parameters(), lr=0.0))

    def train_step(self, batch: Batch, step: int) -> Iterator[Update]:
        yield Update("sgd", lambda: self.scale * batch.x[0, 0, 0, 0])


def test_training_loop_overhead_per_100_steps(benchmark) -> None:
    data = load_dataset("digits")
    images, labels = data.images("train"), data.labels("train")
    settings = TrainSettings(budget_images=6400, batch_size=64)
    benchmark(lambda: train(NoOp(data.spec), images, labels, settings, 0, CPU))


def test_bits_per_dim_metric(benchmark) -> None:
    ll = -torch.rand(10_000, dtype=torch.float64) * 100

    def run() -> float:
        metric = BitsPerDim(64)
        for chunk in ll.split(500):
            metric.update(chunk)
        return float(metric.compute())

    benchmark(run)


def _features(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    return torch.randn(n, 128, generator=gen, dtype=torch.float64) + labels[:, None], labels


def test_linear_probe(benchmark) -> None:
    (train_x, train_y), (test_x, test_y) = _features(1500, 0), _features(300, 1)
    benchmark(linear_probe, train_x, train_y, test_x, test_y, 10, SETTINGS)


def test_knn(benchmark) -> None:
    (train_x, train_y), (test_x, test_y) = _features(4000, 0), _features(1000, 1)
    benchmark(knn_accuracy, train_x, train_y, test_x, test_y, 10, 20, 0.07)


def test_fidelity_digits_1000_samples(benchmark) -> None:
    data = load_dataset("digits")
    real = TensorImages(levels_to_uint8(data.levels("train"), 17))
    fake = TensorImages(levels_to_uint8(data.levels("train")[:1000].flip(-1), 17))
    benchmark(fidelity_from_inputs, fake, real, "digits-cnn", SETTINGS, 0, "bench-reference")


def test_flop_count(benchmark) -> None:
    data = load_dataset("digits")
    method = METHODS.get("random-encoder").build(data.spec)
    benchmark(forward_flops_per_image, method, data.images("test")[:8])


def _digits_sets(metrics: bool = True):  # type: ignore[no-untyped-def]
    """The SampleSets of 1,000 digits 'samples' (flipped training images) through the
    digits-cnn features, as the fidelity evaluator builds them."""
    from bench.evaluators.fidelity_metrics import build_sets
    from bench.metrics.fidelity import evaluate_uint8_samples

    data = load_dataset("digits")
    fake = levels_to_uint8(data.levels("train")[:1000].flip(-1), 17)
    found: dict = {}
    evaluate_uint8_samples(fake, data, "digits-cnn", SETTINGS, 0, features_out=found)
    return build_sets(found, fake, data, "digits-cnn", SETTINGS, 0, torch.arange(1000) % 10)


def test_fidelity_metrics_digits_1000_samples(benchmark) -> None:
    """Density/coverage, memorization (features and pixels), Vendi, FD-infinity and
    intra-class FID of 1,000 digits samples, from features already extracted: what the
    metrics beside FID add to a run's evaluation."""
    from bench.evaluators.fidelity_metrics import score_sets

    sets = _digits_sets()
    benchmark(score_sets, sets)
