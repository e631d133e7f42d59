"""Many runs at once: ``genbench sweep --executor pool`` or ``--executor slurm``.

The study is planned (and every input validated) in the parent; each unfinished run's
:class:`~bench.worker.StudyRequest` is written to its folder (``request.json``) and becomes
one ``python -m bench.worker request.json`` process (:mod:`bench.worker`). The pool runs
``--workers`` of them at a time and, on a GPU machine, pins each to its own device through
``CUDA_VISIBLE_DEVICES`` (default workers: one per visible GPU, else 1). Processes keep runs
isolated: a crash or an out-of-memory in one run cannot take the others down, and a sweep
can be restarted at will because finished runs are skipped.

``--executor slurm`` submits the same worker calls as one submitit job array.
Each job is checkpointable: on preemption or timeout submitit requeues it with the same
arguments and the run resumes from its own checkpoint (``train.checkpoint_every_images``).
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from bench.errors import GenbenchError
from bench.runner import RunSpec, Study, config_hash, is_finished, run_config
from bench.worker import REQUEST_FILE, StudyRequest

log = logging.getLogger(__name__)


def default_workers() -> int:
    return max(1, torch.cuda.device_count())


def pending_runs(study: Study, force: bool) -> list[RunSpec]:
    if force:
        return list(study.runs)
    return [s for s in study.runs if not is_finished(s, config_hash(run_config(s, study)))]


def _request_files(study: Study, request: StudyRequest) -> list[tuple[RunSpec, Path]]:
    """Write each pending run's request into its folder; the files the executors run."""
    files = []
    for spec in pending_runs(study, request.force):
        narrowed = request.for_run(
            spec.method, spec.seed, study.dataset_arg or study.protocol.dataset, study.extractor
        )
        files.append((spec, narrowed.write(spec.directory / REQUEST_FILE)))
    return files


def run_pool(study: Study, request: StudyRequest, workers: int) -> dict[str, int]:
    """Run every pending run of ``study`` as a worker process; returns the exit code of each
    (by "method/seed-k")."""
    files = _request_files(study, request)
    skipped = len(study.runs) - len(files)
    if skipped:
        log.info("%d finished run(s) skipped", skipped)
    gpus: queue.Queue[str | None] = queue.Queue()
    visible = torch.cuda.device_count()
    for slot in range(workers):
        gpus.put(str(slot % visible) if visible else None)

    def launch(item: tuple[RunSpec, Path]) -> tuple[str, int]:
        spec, path = item
        gpu = gpus.get()
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        cmd = [sys.executable, "-m", "bench.worker", str(path)]
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
        return dict(pool.map(launch, files))


class WorkerJob:
    """One worker call on a request file, as a requeue-able submitit job."""

    def __call__(self, path: str) -> int:
        from bench.worker import main

        return main([path])

    def checkpoint(self, path: str) -> Any:
        """On preemption/timeout: resubmit the same call; the run resumes from its checkpoint."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, path)


def run_submitit(
    study: Study,
    request: StudyRequest,
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
    files = _request_files(study, request)
    if not files:
        return {}
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    executor.update_parameters(**parameters)
    jobs = executor.map_array(WorkerJob(), [str(path) for _, path in files])
    log.info(
        "submitted %d job(s) to %s: %s",
        len(jobs),
        executor.cluster,
        ", ".join(str(j.job_id) for j in jobs[:5]) + (" ..." if len(jobs) > 5 else ""),
    )
    codes = {}
    for (spec, _), job in zip(files, jobs, strict=True):
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
