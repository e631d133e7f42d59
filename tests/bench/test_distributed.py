"""Data-parallel training: two CPU ranks (gloo) take exactly the steps one process takes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench import distributed
from bench.method import Batch, DataSpec, Method
from bench.protocol import TrainSettings
from bench.results import RunResult, find_results, load_result
from bench.train import train

SPEC = DataSpec("toy", 1, 2, 2, 3, 2)


class Linear(Method):
    """Least squares with Adam: gradient averaging over two halves of a batch must equal the
    full-batch gradient, so two ranks must reproduce one process step for step."""

    capabilities = frozenset({"encode"})

    def __init__(self, spec: DataSpec) -> None:
        super().__init__(spec)
        self.weight = torch.nn.Parameter(torch.randn(4, generator=torch.Generator().manual_seed(0)))
        self.add_optimizer("adam", torch.optim.Adam(self.parameters(), lr=0.05))

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        loss = ((batch.x.flatten(1) @ self.weight - batch.y.float()) ** 2).mean()
        self.optimizers["adam"].zero_grad()
        loss.backward()
        self.optimizers["adam"].step()
        return {"loss": loss.item()}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(64, 1, 2, 2, generator=gen), torch.randint(0, 3, (64,), generator=gen)


SETTINGS = TrainSettings(budget_images=320, batch_size=16)


def _worker(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    method = Linear(SPEC)
    distributed.broadcast_module(method)
    distributed.attach_gradient_averaging(method.optimizers)
    images, labels = _data()
    outcome = train(method, images, labels, SETTINGS, 0, torch.device("cpu"))
    if rank == 0:
        torch.save({"weight": method.weight.detach(), "images": outcome.images_seen}, out)
    dist.barrier()
    dist.destroy_process_group()


def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    single = Linear(SPEC)
    images, labels = _data()
    outcome = train(single, images, labels, SETTINGS, 0, torch.device("cpu"))
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    ddp = torch.load(out)
    assert ddp["images"] == outcome.images_seen == 320
    assert torch.allclose(ddp["weight"], single.weight.detach(), atol=1e-6)
    assert not torch.allclose(single.weight.detach(), Linear(SPEC).weight)  # it did train


def _torchrun(method: str, out: Path) -> RunResult:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "bench",
            "train",
            "--method",
            method,
            "--protocol",
            "smoke",
            "--set",
            "train.budget_images=256",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    paths = find_results(out)
    assert len(paths) == 1  # rank 0 alone writes
    return load_result(paths[0])


def test_torchrun_train_writes_one_result(tmp_path: Path, smoke_study) -> None:
    trained = _torchrun("supervised", tmp_path / "a")
    assert trained.status == "ok" and trained.env["world_size"] == 2
    assert trained.metrics["throughput"]["train_images_seen"] == 256
    # bits/dim computed on two shards of the test split and reduced by torchmetrics
    scored = _torchrun("independent-pixels", tmp_path / "b")
    single = smoke_study[2]["independent-pixels"].metrics["likelihood"]["bpd"]
    assert abs(scored.metrics["likelihood"]["bpd"] - single) < 1e-6  # float32 sums
