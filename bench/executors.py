"""Many runs at once: ``genbench sweep --executor pool``.

The study is planned (and every input validated) in the parent; each unfinished run then
becomes one ``genbench train`` process. The pool runs ``--workers`` of them at a time and,
on a GPU machine, pins each to its own device through ``CUDA_VISIBLE_DEVICES`` (default
workers: one per visible GPU, else 1). Processes keep runs isolated: a crash or an
out-of-memory in one run cannot take the others down, and a sweep can be restarted at will
because finished runs are skipped.
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from bench.runner import RunSpec, Study, config_hash, is_finished, run_config

log = logging.getLogger(__name__)


def default_workers() -> int:
    return max(1, torch.cuda.device_count())


def pending_runs(study: Study, force: bool) -> list[RunSpec]:
    if force:
        return list(study.runs)
    return [s for s in study.runs if not is_finished(s, config_hash(run_config(s, study)))]


def run_pool(study: Study, train_args: Sequence[str], workers: int, force: bool) -> dict[str, int]:
    """Run every pending run of ``study`` as ``genbench train`` processes; returns the exit
    code of each (by "method/seed-k")."""
    runs = pending_runs(study, force)
    skipped = len(study.runs) - len(runs)
    if skipped:
        log.info("%d finished run(s) skipped", skipped)
    gpus: queue.Queue[str | None] = queue.Queue()
    visible = torch.cuda.device_count()
    for slot in range(workers):
        gpus.put(str(slot % visible) if visible else None)

    def launch(spec: RunSpec) -> tuple[str, int]:
        gpu = gpus.get()
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        cmd = [
            sys.executable,
            "-m",
            "bench",
            "train",
            "--method",
            spec.method,
            "--seed",
            str(spec.seed),
            *train_args,
        ]
        name = f"{spec.method}/seed-{spec.seed}"
        log.info("start %s%s", name, f" on GPU {gpu}" if gpu is not None else "")
        try:
            log_path = spec.directory / "train.log"
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "w") as handle:
                code = subprocess.run(
                    cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False
                ).returncode
        finally:
            gpus.put(gpu)
        (log.info if code == 0 else log.error)("end %s: exit %d (log: %s)", name, code, log_path)
        return name, code

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(launch, runs))
