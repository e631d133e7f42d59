"""One training step of every trainable method (every family), one sampling pass of every
sample-capable method, and every fidelity metric, on fixed digits-sized inputs: what
`tox -e bench` gates as ratios to the reference step (tools/bench_gate.py, docs/GATE.md).

The step is the loop's own (`bench.doctor.loop_step`: the batching of `bench.train` and the
`bench.optim.Optimisation` that fuses Adam), on a fixed synthetic batch, so a benchmark moves
only when a method's networks, its loss or the loop change.

`test_encoder_memory_format` is the benchmark behind the shared encoder's channels_last
default (`baselines.common.encoders.CHANNELS_LAST`): the same simclr step with the encoder
in NCHW and in NHWC.

Not part of the default test run (`norecursedirs` in pyproject.toml)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from bench.doctor import build_method, loop_step, synthetic_data
from bench.method import DataSpec
from bench.optim import Optimisation
from bench.registry import METHODS

SPEC = DataSpec("digits", 1, 8, 8, num_levels=17, num_classes=10)
CPU = torch.device("cpu")
BATCH = 64


def _trainable() -> list[str]:
    names = []
    for name in METHODS.names():
        cls = METHODS.get(name)
        if getattr(cls, "trainable", True) and cls.__module__.startswith("baselines."):
            names.append(name)
    return sorted(names)


def _sampling() -> list[str]:
    return [n for n in _trainable() if "sample" in METHODS.get(n).capabilities]


def _stepper(name: str) -> Callable[[], int]:
    torch.manual_seed(0)
    method = build_method(name, SPEC, CPU, 10_000, BATCH)
    optimisation = Optimisation(method, CPU, "fp32")
    method.train()
    images, labels = synthetic_data(SPEC, 2 * BATCH)
    step = loop_step(optimisation, images, labels, BATCH, CPU, False)
    for i in range(3):  # allocator and kernel warm-up
        step(i)
    counter = iter(range(3, 10**9))
    return lambda: step(next(counter))


@pytest.mark.benchmark(group="train-step")
@pytest.mark.parametrize("name", _trainable())
def test_train_step(benchmark, name: str) -> None:
    """Rounds of 5 consecutive steps: a method whose steps differ (a GAN's critic-only
    steps, a learning-rate warm-up) is timed over its mix, not one step at a time."""
    benchmark.pedantic(_stepper(name), rounds=12, iterations=5, warmup_rounds=1)


@pytest.mark.benchmark(group="sample")
@pytest.mark.parametrize("name", _sampling())
def test_sample_100(benchmark, name: str) -> None:
    """100 samples from an untrained network with the method's default sampler: the cost
    per network evaluation times the sampler's NFE."""
    torch.manual_seed(0)
    method = build_method(name, SPEC, CPU, 10_000, BATCH).eval()
    gen = torch.Generator().manual_seed(0)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return method.sample(100, gen)

    benchmark(run)


@pytest.mark.benchmark(group="encoder-memory-format")
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_encoder_memory_format(benchmark, layout: str, monkeypatch) -> None:
    import baselines.common.encoders as encoders

    monkeypatch.setattr(encoders, "CHANNELS_LAST", layout == "channels_last")
    benchmark(_stepper("simclr"))


def _metric_names() -> list[str]:
    from bench.evaluators.fidelity_metrics import fidelity_metrics

    return [kind.name for kind in fidelity_metrics()]


@pytest.mark.benchmark(group="fidelity-metric")
@pytest.mark.parametrize("metric", _metric_names())
def test_fidelity_metric(benchmark, metric: str) -> None:
    """Each registered metric beside FID on 1,000 digits samples' features (a metric that
    does not apply to them, CMMD without CLIP, is skipped with its reason)."""
    from test_bench_harness import _digits_sets  # this folder is on sys.path (rootdir)

    from bench.evaluators.fidelity_metrics import fidelity_metrics

    kind = next(k for k in fidelity_metrics() if k.name == metric)
    sets = _digits_sets()
    if not kind.applies(sets):
        pytest.skip(f"{metric} does not apply to digits-cnn features")
    benchmark(lambda: kind().compute(sets))
