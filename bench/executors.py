"""Many runs at once: ``genbench sweep --executor pool`` or ``--executor slurm``.

The study is planned (and every input validated) in the parent; each unfinished run then
becomes one ``genbench train`` process. The pool runs ``--workers`` of them at a time and,
on a GPU machine, pins each to its own device through ``CUDA_VISIBLE_DEVICES`` (default
workers: one per visible GPU, else 1). Processes keep runs isolated: a crash or an
out-of-memory in one run cannot take the others down, and a sweep can be restarted at will
because finished runs are skipped.

``--executor slurm`` submits the same ``genbench train`` calls as one submitit job array.
Each job is checkpointable: on preemption or timeout submitit requeues it with the same
arguments and the run resumes from its own checkpoint (``train.checkpoint_every_images``).
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
from typing import Any

import torch

from bench.errors import GenbenchError
from bench.registry import METHODS
from bench.runner import RunSpec, Study, config_hash, is_finished, run_config

log = logging.getLogger(__name__)


def default_workers() -> int:
    return max(1, torch.cuda.device_count())


def pending_runs(study: Study, force: bool) -> list[RunSpec]:
    if force:
        return list(study.runs)
    return [s for s in study.runs if not is_finished(s, config_hash(run_config(s, study)))]


def dependency_waves(runs: list[RunSpec]) -> list[list[RunSpec]]:
    """Runs that evaluate another method's weights (``Method.weights_from``) wait for a
    first wave of everything else."""
    first = [s for s in runs if not METHODS.get(s.method).weights_from]
    second = [s for s in runs if METHODS.get(s.method).weights_from]
    return [wave for wave in (first, second) if wave]


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

    codes: dict[str, int] = {}
    for wave in dependency_waves(runs):
        with ThreadPoolExecutor(max_workers=workers) as pool:
            codes.update(pool.map(launch, wave))
    return codes


def _train_argv(spec: RunSpec, train_args: Sequence[str]) -> list[str]:
    return ["train", "--method", spec.method, "--seed", str(spec.seed), *train_args]


class TrainJob:
    """One ``genbench train`` call as a requeue-able submitit job."""

    def __call__(self, argv: list[str]) -> int:
        from bench.cli import main

        return main(argv)

    def checkpoint(self, argv: list[str]) -> Any:
        """On preemption/timeout: resubmit the same call; the run resumes from its checkpoint."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, argv)


def run_submitit(
    study: Study,
    train_args: Sequence[str],
    force: bool,
    folder: Path,
    cluster: str | None,
    parameters: dict[str, Any],
) -> dict[str, int]:
    """Submit every pending run as one job array; wait and return the exit codes."""
    try:
        import submitit
    except ImportError:
        raise GenbenchError(
            "--executor slurm needs submitit: pip install 'genbench[slurm]'"
        ) from None
    runs = pending_runs(study, force)
    if not runs:
        return {}
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    executor.update_parameters(**parameters)
    codes = {}
    for wave in dependency_waves(runs):  # one job array per wave
        jobs = executor.map_array(TrainJob(), [_train_argv(s, train_args) for s in wave])
        log.info(
            "submitted %d job(s) to %s: %s",
            len(jobs),
            executor.cluster,
            ", ".join(str(j.job_id) for j in jobs[:5]) + (" ..." if len(jobs) > 5 else ""),
        )
        for spec, job in zip(wave, jobs, strict=True):
            name = f"{spec.method}/seed-{spec.seed}"
            try:
                codes[name] = int(job.result())
            except (
                submitit.core.utils.FailedJobError,
                submitit.core.utils.UncompletedJobError,
            ) as exc:
                log.error("job %s (%s) failed: %s", job.job_id, name, str(exc).splitlines()[0])
                codes[name] = 1
    return codes
