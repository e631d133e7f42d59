"""Registered evaluators: the registry and the directions and ranges every table reads from
it, a new evaluator registered in one place showing up as a leaderboard column, and a
sharded evaluation (two gloo ranks) giving the numbers of one process."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench import evaluators, tolerances
from bench.compare import read_expected
from bench.errors import GenbenchError
from bench.evaluators import (
    EVALUATORS,
    Chunk,
    Column,
    SampleEvaluator,
    register_evaluator,
)
from bench.method import CAPABILITIES, ENCODE, LOG_LIKELIHOOD, SAMPLE
from bench.protocol import EvalSettings
from bench.report import aggregate, display_table, validate_result
from bench.results import RunResult

DIRECTIONS = {
    "fid": "lower",
    "kid": "lower",
    "precision": "higher",
    "recall": "higher",
    "sample_acc": "higher",
    "bpd": "lower",
    "linear_acc": "higher",
    "knn_acc": "higher",
    "train_images_per_s": "higher",
    "sample_images_per_s": "higher",
    "nfe": None,
    "params": None,
}


def test_registry_holds_every_evaluator_with_its_columns() -> None:
    assert EVALUATORS.names() == ["fidelity", "likelihood", "probe", "throughput"]
    needs = {name: EVALUATORS.get(name).capability for name in EVALUATORS.names()}
    assert needs == {
        "fidelity": SAMPLE,
        "likelihood": LOG_LIKELIHOOD,
        "probe": ENCODE,
        "throughput": None,
    }
    assert {name: evaluators.direction(name) for name in DIRECTIONS} == DIRECTIONS
    assert evaluators.direction("fid[digits-cnn]") == "lower"
    assert evaluators.direction("not-a-metric") is None
    assert evaluators.bounds("recall[x]") == (0.0, 1.0)
    assert evaluators.bounds("kid") == (-math.inf, math.inf)  # unbiased MMD^2: no floor
    assert evaluators.bounds("bpd") == (0.0, math.inf)
    assert evaluators.gated_metrics() == (
        "fid",
        "kid",
        "precision",
        "recall",
        "sample_acc",
        "cmmd",
        "density",
        "coverage",
        "fd_inf",
        "intra_fid",
        "memorized",
        "authenticity",
        "vendi",
        "bpd",
        "linear_acc",
        "knn_acc",
    )
    fields = {f.name for f in dataclasses.fields(EvalSettings)}
    for cls in evaluators.evaluators():
        assert cls.capability is None or cls.capability in CAPABILITIES
        assert set(cls.settings) <= fields, (cls.name, set(cls.settings) - fields)
        for column in cls.columns:
            floor, ceiling = column.range
            assert floor < ceiling


def test_an_unknown_evaluator_is_one_clear_error() -> None:
    with pytest.raises(GenbenchError, match="fidelity"):
        EVALUATORS.get("fidelty")


def test_importing_reports_and_the_gate_loads_no_torch() -> None:
    """Directions come from the registry without torch: `genbench report` stays quick."""
    code = "import sys, bench.report, bench.compare; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_report_and_gate_read_directions_and_ranges_from_the_registry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Flip recall's declared direction and range: every reader follows (no second copy)."""
    from bench import report

    cls = EVALUATORS.get("fidelity")
    flipped = tuple(
        dataclasses.replace(c, higher_is_better=False, range=(0.0, 2.0), title="RECALL")
        if c.name == "recall"
        else c
        for c in cls.columns
    )
    monkeypatch.setattr(cls, "columns", flipped)
    assert report.direction("recall[digits-cnn]") == "lower"
    assert tolerances.bounds("recall[digits-cnn]") == (0.0, 2.0)
    assert tolerances.can_fail("recall[x]", 1.5, 0.1, "lower")  # 1.5 + 0.1 < 2.0
    table = tmp_path / "expected.csv"
    table.write_text(
        "method,metric,value,tolerance,direction\ngan,recall[digits-cnn],0.5,0.1,higher\n"
    )
    with pytest.raises(GenbenchError, match="lower-is-better"):
        read_expected(table)
    table.write_text(
        "method,metric,value,tolerance,direction\ngan,recall[digits-cnn],1.5,0.1,lower\n"
    )
    assert len(read_expected(table)) == 1  # 1.5 is inside the declared range now
    results = [_result("a", {"fidelity": _fidelity(0.2)}), _result("b", _fid_metrics(0.9))]
    ranked = aggregate(results).set_index("method")
    assert ranked.at["a", "recall[digits-cnn]_rank"] == 1  # lower is better now
    assert "RECALL[digits-cnn] ↓" in display_table(aggregate(results)).columns


def _fidelity(recall: float) -> dict[str, Any]:
    return {
        "fid": 10.0,
        "kid": 0.1,
        "precision": 0.5,
        "recall": recall,
        "settings": {"extractor": "digits-cnn"},
    }


def _fid_metrics(recall: float) -> dict[str, Any]:
    return {"fidelity": _fidelity(recall)}


def _result(method: str, metrics: dict[str, Any], seed: int = 0) -> RunResult:
    return RunResult(method, "digits", {"name": "smoke", "version": 2}, seed, "ok", metrics, {}, {})


# --------------------------------------------------------------------------- a new evaluator


class Brightness(SampleEvaluator):
    """Mean pixel intensity of the samples: the example of docs/EVALUATORS.md."""

    columns = (Column("brightness", "brightness", higher_is_better=True, range=(0.0, 1.0)),)
    settings = ("fid_samples", "sample_batch_size")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, samples: torch.Tensor, labels: torch.Tensor | None, chunk: Chunk) -> None:
        self.total += samples.double().sum()
        self.count += samples.numel()

    def compute(self) -> dict[str, Any]:
        return {"brightness": float(self.total / self.count)}


@pytest.fixture
def registered_brightness(monkeypatch: pytest.MonkeyPatch) -> type[SampleEvaluator]:
    """Brightness registered for one test (the registry is restored afterwards)."""
    monkeypatch.setattr(EVALUATORS, "_items", dict(EVALUATORS._items))
    register_evaluator("brightness")(Brightness)
    return Brightness


def test_a_registered_evaluator_is_scored_and_becomes_a_column(
    registered_brightness: type[SampleEvaluator], tmp_path: Path
) -> None:
    from bench.compare import expected_from_results
    from bench.registry import METHODS
    from bench.results import run_dir, write_result
    from bench.runner import evaluate, plan_study

    study = plan_study("smoke", methods=["real-data"], out=tmp_path / "runs", device="cpu")
    spec, data = study.runs[0], study.data
    method = METHODS.get("real-data").build(data.spec, spec.hparams)
    method.prepare(data.images("train"), data.labels("train"), data.images("test"))
    metrics = evaluate(method, spec, study, None)
    assert metrics is not None
    # real-data's samples are the test split, each image once
    assert metrics["brightness"]["brightness"] == pytest.approx(float(data.images("test").mean()))
    assert evaluators.direction("brightness") == "higher"
    assert tolerances.bounds("brightness") == (0.0, 1.0)
    result = _result("real-data", metrics)
    assert validate_result(result) is None
    table = aggregate([result])
    assert "brightness_mean" in table.columns and "brightness_rank" in table.columns
    assert "brightness ↑" in display_table(table).columns
    bad = _result("real-data", {**metrics, "brightness": {"brightness": "bright"}})
    assert "metrics.brightness.brightness must be a number" in str(validate_result(bad))
    # the gate tracks it too
    out = tmp_path / "gate"
    write_result(result, run_dir(out, "smoke", "digits", "real-data", 0))
    expected = expected_from_results(out / "smoke" / "digits")
    assert "brightness" in set(expected["metric"])


def test_a_column_belongs_to_one_evaluator(registered_brightness: type[SampleEvaluator]) -> None:
    class Again(Brightness):
        columns = (Column("fid", "FID again", higher_is_better=False),)

    with pytest.raises(ValueError, match="fidelity"):
        register_evaluator("again")(Again)


# --------------------------------------------------------------------------- sharding

SHARDED_METHODS = ("independent-pixels", "raw-pixels")
#: small chunks, so that each rank takes several of every pass (sampling: 300 images in 5
#: chunks; likelihood: 297 test images in 5; probe: 1500 + 297 images in 29)
SHARDED_SETS = ["eval.sample_batch_size=64", "eval.eval_batch_size=64"]


def _evaluate_worker(rank: int, world_size: int, folder: str) -> None:
    """One rank: evaluate every method of SHARDED_METHODS, counting what this rank fed."""
    from bench.registry import METHODS
    from bench.runner import evaluate, plan_study

    torch.set_num_threads(1)
    if world_size > 1:
        dist.init_process_group(
            "gloo", init_method=f"file://{folder}/init", rank=rank, world_size=world_size
        )
    out = Path(folder)
    runs: list[dict[str, Any]] = []
    counts: dict[str, dict[str, int]] = {}
    _count_feature_extraction(out, counts.setdefault("features", {"extracted": 0}))
    repeats = 2 if world_size == 1 else 1  # one process twice: identical numbers
    for name in SHARDED_METHODS:
        study = plan_study(
            "smoke", methods=[name], sets=SHARDED_SETS, out=out / "runs", device="cpu"
        )
        spec, data = study.runs[0], study.data
        seen = counts.setdefault(name, {"sample": 0, "log_likelihood": 0, "encode": 0})
        for _ in range(repeats):
            method = METHODS.get(name).build(data.spec, spec.hparams)
            method.prepare(data.images("train"), data.labels("train"), data.images("test"))
            method.eval()
            for capability in seen:
                _count_calls(method, capability, seen)
            metrics = evaluate(method, spec, study, None)
            if rank == 0:
                assert metrics is not None
                runs.append({"method": name, "metrics": _scores(metrics)})
            else:
                assert metrics is None  # rank 0 writes
    (out / f"counts-{rank}.json").write_text(json.dumps(counts))
    if rank == 0:
        (out / "metrics.json").write_text(json.dumps(runs))
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()


def _count_feature_extraction(folder: Path, seen: dict[str, int]) -> None:
    """Count the images this rank puts through the FID feature network, with a reference
    feature cache of this spawn's own (so the reference is extracted, sharded, once)."""
    from bench.metrics import fidelity

    original = fidelity.get_featuresdict_from_dataset

    def counted(inputs: Any, *args: Any) -> Any:
        seen["extracted"] += len(inputs)
        return original(inputs, *args)

    fidelity.get_featuresdict_from_dataset = counted  # type: ignore[assignment]
    fidelity.feature_cache_path = lambda name, *rest: folder / f"features-{name}.npz"  # type: ignore[assignment]


def _count_calls(method: Any, capability: str, seen: dict[str, int]) -> None:
    original = getattr(method, capability)

    def counted(x: Any, *args: Any, **kwargs: Any) -> Any:
        seen[capability] += x if isinstance(x, int) else len(x)
        return original(x, *args, **kwargs)

    setattr(method, capability, counted)


def _scores(metrics: dict[str, Any]) -> dict[str, Any]:
    """Everything but the timings (which are rank 0's own and vary run to run)."""
    kept = {k: v for k, v in metrics.items() if k != "throughput"}
    speed = metrics["throughput"]
    kept["throughput"] = {k: speed[k] for k in ("params", "nfe") if k in speed}
    return kept


def _spawn(world_size: int, folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    folder.mkdir()
    mp.spawn(_evaluate_worker, args=(world_size, str(folder)), nprocs=world_size, join=True)
    runs = json.loads((folder / "metrics.json").read_text())
    counts = [json.loads((folder / f"counts-{r}.json").read_text()) for r in range(world_size)]
    return runs, counts


def test_sharded_evaluation_equals_one_process(tmp_path: Path) -> None:
    single, (alone,) = _spawn(1, tmp_path / "one")
    assert single[0] == single[1] and single[2] == single[3]  # run to run: identical
    sharded, counts = _spawn(2, tmp_path / "two")
    # every rank fed its share of every pass, and the shares add up to one process's work
    for name, capabilities in (
        ("independent-pixels", ("sample", "log_likelihood")),
        ("raw-pixels", ("encode",)),
    ):
        for capability in capabilities:
            shares = [c[name][capability] for c in counts]
            assert all(share > 0 for share in shares), (name, capability, shares)
    for capability in ("sample", "log_likelihood"):
        shares = [c["independent-pixels"][capability] for c in counts]
        assert sum(shares) == alone["independent-pixels"][capability] // 2  # it ran twice
    assert alone["independent-pixels"]["sample"] == 2 * 300  # smoke's fid_samples
    # FID features: each rank extracts its share of the samples and of the (uncached)
    # reference and test splits; together what one process extracts: under digits-cnn 300
    # samples + 1500 train + 297 test images, under the second network (FID only) 300 + 1500,
    # the first time; the samples alone the second time, reading the splits from the cache
    first_time, second_time = 300 + 1500 + 297 + 300 + 1500, 300 + 300
    extracted = [c["features"]["extracted"] for c in counts]
    assert alone["features"]["extracted"] == first_time + second_time
    assert all(share > 0 for share in extracted) and sum(extracted) == first_time, extracted
    one, two = single[0]["metrics"], sharded[0]["metrics"]
    assert two["likelihood"]["bpd"] == one["likelihood"]["bpd"]  # bitwise
    for key in ("fid", "kid", "precision", "recall"):
        assert two["fidelity"][key] == pytest.approx(one["fidelity"][key], rel=1e-6, abs=1e-9)
    assert two == one  # in fact the whole evaluation, bit for bit
    probe_one, probe_two = single[2]["metrics"]["probe"], sharded[1]["metrics"]["probe"]
    assert probe_two["linear_acc"] == probe_one["linear_acc"]
    assert probe_two["knn_acc"] == probe_one["knn_acc"]
    assert probe_two == probe_one


def test_leaderboard_columns_follow_the_registry() -> None:
    """The leaderboard's column order is the registry's."""
    from bench.report import metric_columns

    frame = pd.DataFrame(
        {f"{m}_mean": [1.0] for m in ("params", "bpd", "fid[digits-cnn]", "linear_acc", "zzz")}
    )
    assert metric_columns(frame) == ["fid[digits-cnn]", "bpd", "linear_acc", "params", "zzz"]
