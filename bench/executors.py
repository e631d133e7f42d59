"""Many runs at once: ``genbench run --jobs N`` (the default on a CPU), ``genbench sweep
--executor pool`` or ``--executor slurm``.

``--jobs N`` (:func:`run_parallel`) keeps N worker processes for the whole study, each
running one run after another in-process with ``cores // N`` torch threads: on a CPU the
small networks of the quick protocol keep two threads of one process busy only part of the
time (per-op overhead, serial parts), so two single-threaded runs side by side do 1.15-1.75x
the work of one two-threaded run (measured per method on 2 cores: ddpm 1.72x, glow 1.76x,
gan 1.59x, vae 1.56x, cpc 1.25x, simclr 1.15x). The default, ``auto``
(:func:`auto_jobs`), is one worker per core on a CPU for studies of several runs that train
at least :data:`MIN_PARALLEL_IMAGES` images each, else one in-process run at a time. A run's
numbers depend on its thread count (recorded in its env), not on how many ran beside it.

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

import dataclasses
import logging
import multiprocessing
import os
import queue
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from bench.errors import GenbenchError
from bench.runner import RunResult, RunSpec, Study, config_hash, is_finished, run_config
from bench.worker import REQUEST_FILE, StudyRequest

log = logging.getLogger(__name__)


def default_workers() -> int:
    return max(1, torch.cuda.device_count())


#: a study runs in parallel by default only when each run trains at least this many images:
#: smaller runs take seconds, less than a worker process needs to start (about 4 s of imports)
MIN_PARALLEL_IMAGES = 10_000


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(threads: int) -> None:
    if threads < 1:
        raise GenbenchError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)


def auto_jobs(study: Study, request: StudyRequest) -> tuple[int, int]:
    """(runs at once, torch threads per run) for ``request.jobs`` (None: auto).

    Auto: one worker per usable core (at most one per pending run) on a CPU, when at least
    two runs are pending, each trains at least :data:`MIN_PARALLEL_IMAGES` images and the
    process is not one rank of a torchrun job; otherwise 1 (in-process, every core)."""
    from bench import distributed

    jobs = request.jobs
    if jobs is not None and jobs < 1:
        raise GenbenchError(f"--jobs must be at least 1, got {jobs}")
    if jobs == 1:
        return 1, torch.get_num_threads()
    if distributed.current().enabled:
        if jobs is not None:
            raise GenbenchError("--jobs runs several runs at once; under torchrun use --jobs 1")
        return 1, torch.get_num_threads()
    cores = usable_cores()
    pending = len(pending_runs(study, request.force))
    if jobs is None:
        small = study.protocol.train.budget_images < MIN_PARALLEL_IMAGES
        if study.device.type != "cpu" or cores < 2 or pending < 2 or small:
            return 1, torch.get_num_threads()
        jobs = cores
    jobs = max(1, min(jobs, pending))
    if jobs == 1:
        return 1, torch.get_num_threads()
    threads = request.threads if request.threads is not None else max(1, cores // jobs)
    return jobs, threads


def _worker_loop(tasks: Any, events: Any, threads: int, level: int) -> None:
    """A worker process of :func:`run_parallel`: runs the one-run requests it takes from
    ``tasks`` (until a None) one after another in-process, announcing each before it starts
    so that the parent knows which run a worker that dies was on."""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s [worker {os.getpid()}] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    set_threads(threads)
    from bench.worker import StudyRequest as Request
    from bench.worker import run_request

    while True:
        item = tasks.get()
        if item is None:
            return
        key, raw = item
        events.put(("start", os.getpid(), key, None))
        try:
            results = run_request(Request.from_json(raw, "a run of the study")).results
        except Exception as exc:  # planning errors; a method's own failure is a result
            events.put(("error", os.getpid(), key, f"{type(exc).__name__}: {exc}"))
        else:
            events.put(("done", os.getpid(), key, results))


def run_parallel(study: Study, request: StudyRequest, jobs: int, threads: int) -> list[RunResult]:
    """Every pending run of the planned ``study`` on ``jobs`` worker processes (spawned once,
    each running runs one after another with ``threads`` torch threads); the results in the
    study's order. A run's own failure is its result's status, as in one process. A worker
    that dies (killed, out of memory, a crash in native code) loses only the run it was on,
    reported as failed (its folder keeps its checkpoint: it resumes when the study is run
    again); a new worker takes its place for the runs still queued."""
    specs = pending_runs(study, request.force)
    skipped = len(study.runs) - len(specs)
    if skipped:
        log.info("%d finished run(s) skipped", skipped)
    context = multiprocessing.get_context("spawn")  # no fork of a process with torch threads
    tasks, events = context.Queue(), context.Queue()
    by_key = {f"{s.method}/seed-{s.seed}": s for s in specs}
    for key, spec in by_key.items():
        narrowed = request.for_run(
            spec.method, spec.seed, study.dataset_arg or study.protocol.dataset, study.extractor
        )
        narrowed = dataclasses.replace(narrowed, threads=threads, parallel_runs=jobs)
        tasks.put((key, narrowed.to_json()))
    level = logging.getLogger().getEffectiveLevel()
    workers: dict[int, Any] = {}
    current: dict[int, str] = {}  # worker pid -> the run it announced

    def spawn() -> None:
        process = context.Process(
            target=_worker_loop, args=(tasks, events, threads, level), daemon=True
        )
        process.start()
        workers[int(process.pid or 0)] = process

    jobs = min(jobs, len(by_key))
    for _ in range(jobs):
        tasks.put(None)  # one stop sign per worker slot (a replacement takes its dead one's)
        spawn()
    results: dict[str, list[RunResult]] = {}
    try:
        while len(results) < len(by_key):
            try:
                kind, pid, key, payload = events.get(timeout=1.0)
            except queue.Empty:
                for pid, process in list(workers.items()):
                    if process.is_alive():
                        continue
                    del workers[pid]
                    lost = current.pop(pid, "")
                    if lost and lost not in results:
                        why = f"its worker process died (exit code {process.exitcode})"
                        log.error("%s: %s", lost, why)
                        results[lost] = [_lost(by_key[lost], study, why)]
                    if process.exitcode != 0 and len(results) < len(by_key):
                        spawn()  # it died before its stop sign: a new worker takes its place
                if not workers:  # every worker stopped and some run was never reported
                    for key in by_key.keys() - results.keys():
                        results[key] = [_lost(by_key[key], study, "no worker ran it")]
                continue
            if kind == "start":
                current[pid] = key
                continue
            current.pop(pid, None)
            if kind == "done":
                results[key] = list(payload)
            else:
                log.error("%s: %s", key, payload)
                results[key] = [_lost(by_key[key], study, payload)]
            log.info("%d of %d run(s) done", len(results), len(by_key))
    finally:
        for process in workers.values():
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
    order = {(s.method, s.seed): i for i, s in enumerate(study.runs)}
    found = [r for rs in results.values() for r in rs]
    return sorted(found, key=lambda r: order.get((r.method, r.seed), len(order)))


def _lost(spec: RunSpec, study: Study, error: str) -> RunResult:
    """The result of a run whose worker died or could not run it, in this study's summary
    only (nothing is written: the run folder keeps its checkpoint and resumes next time)."""
    return RunResult(
        spec.method,
        study.data.spec.name,
        {"name": spec.protocol.name, "version": spec.protocol.version},
        spec.seed,
        "failed",
        {},
        {},
        {},
        error=error,
    )


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
