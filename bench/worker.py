"""One serialisable description of a study (or of one run of it) and the one worker that
runs it.

Every way of running goes through :class:`StudyRequest`: ``genbench run`` and ``genbench
train`` build one from their arguments and run it here; ``genbench sweep`` plans the study
once, then writes each unfinished run's request as ``request.json`` into the run's folder
and hands the *file* to its executor (``python -m bench.worker FILE`` in a pool process, the
same call in a submitit job), so no executor rebuilds a command line and the request that
produced a result lies beside it. A request holds plain values only (JSON), is checked
again when it is run, and carries its own format version.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from bench.errors import GenbenchError

log = logging.getLogger(__name__)
REQUEST_FILE = "request.json"
REQUEST_FORMAT = 1


@dataclasses.dataclass
class StudyRequest:
    """What to run: the arguments of :func:`bench.runner.plan_study` plus ``force``."""

    protocol: str
    dataset: str | None = None
    methods: list[str] | None = None
    seeds: list[int] | None = None
    sets: list[str] = dataclasses.field(default_factory=list)
    out: str = "runs"
    data_root: str | None = None
    download: bool = True
    device: str = "auto"
    precision: str = "fp32"
    extractor: str | None = None
    feature_weights: str | None = None
    channels_last: bool = False
    compile: bool = False
    force: bool = False
    #: plug-in files or package folders (absolute paths), loaded before planning
    includes: list[str] = dataclasses.field(default_factory=list)
    #: runs at once, each in a worker process (bench.executors.run_parallel); None: auto
    jobs: int | None = 1
    #: torch threads per run (None: torch's default, every core)
    threads: int | None = None
    #: set on the one-run requests a parallel study hands its workers: how many ran at once
    parallel_runs: int = 1

    def plan(self) -> Any:
        """The planned :class:`bench.runner.Study` (every input validated)."""
        from bench import plugins
        from bench.runner import plan_study

        for path in self.includes:
            plugins.include(path)
        return plan_study(
            self.protocol,
            self.dataset,
            self.methods,
            self.seeds,
            self.sets,
            Path(self.out),
            Path(self.data_root) if self.data_root else None,
            self.download,
            self.device,
            self.precision,
            self.extractor,
            self.feature_weights,
            self.channels_last,
            self.compile,
        )

    def for_run(self, method: str, seed: int, dataset: str, extractor: str) -> StudyRequest:
        """This request narrowed to one run (dataset and extractor as planned)."""
        return dataclasses.replace(
            self, methods=[method], seeds=[seed], dataset=dataset, extractor=extractor, jobs=1
        )

    def to_json(self) -> dict[str, Any]:
        return {"format": REQUEST_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, raw: Any, where: str = "request") -> StudyRequest:
        if not isinstance(raw, dict) or raw.get("format") != REQUEST_FORMAT:
            raise GenbenchError(f"{where}: not a genbench request (format {REQUEST_FORMAT})")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k != "format"}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise GenbenchError(f"{where}: unknown field {unknown[0]!r}")
        if "protocol" not in values:
            raise GenbenchError(f"{where}: no protocol")
        checks: dict[str, type | tuple[type, ...]] = {
            "protocol": str, "dataset": (str, type(None)), "out": str,
            "data_root": (str, type(None)), "download": bool, "device": str, "precision": str,
            "extractor": (str, type(None)), "feature_weights": (str, type(None)),
            "channels_last": bool, "compile": bool, "force": bool,
            "jobs": (int, type(None)), "threads": (int, type(None)), "parallel_runs": int,
        }  # fmt: skip
        for key, kind in checks.items():
            if key in values and not isinstance(values[key], kind):
                raise GenbenchError(f"{where}: {key} has the wrong type")
        for key, item in (("methods", str), ("seeds", int), ("sets", str), ("includes", str)):
            value = values.get(key)
            if value is not None and (
                not isinstance(value, list)
                or not all(isinstance(v, item) and not isinstance(v, bool) for v in value)
            ):
                raise GenbenchError(f"{where}: {key} must be a list of {item.__name__}")
        return cls(**values)

    def write(self, path: Path) -> Path:
        from bench.results import write_json_atomic

        write_json_atomic(path, self.to_json())
        return path

    @classmethod
    def read(cls, path: Path) -> StudyRequest:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GenbenchError(f"cannot read request {path}: {exc}") from None
        return cls.from_json(raw, str(path))


@dataclasses.dataclass
class StudyOutcome:
    study: Any
    results: list[Any]
    seconds: float


def run_request(request: StudyRequest) -> StudyOutcome:
    """Plan and run ``request``; returns the study and its results."""
    from bench.executors import auto_jobs, run_parallel, set_threads
    from bench.runner import run_study

    started = time.perf_counter()
    if request.threads is not None:  # for this study only: restored when it ends
        import torch

        before = torch.get_num_threads()
        set_threads(request.threads)
        try:
            return run_request(dataclasses.replace(request, threads=None))
        finally:
            torch.set_num_threads(before)
    study = request.plan()
    study.parallel_runs = request.parallel_runs
    jobs, threads = auto_jobs(study, request)
    (log.debug if request.parallel_runs > 1 else log.info)(  # a worker's one run: quiet
        "study: %s on %s, %d run(s), device %s%s",
        study.protocol.tag,
        study.protocol.dataset,
        len(study.runs),
        study.device,
        f", {jobs} at a time ({threads} thread{'s' * (threads > 1)} each)" if jobs > 1 else "",
    )
    if jobs > 1:
        results = run_parallel(study, request, jobs, threads)
    else:
        results = run_study(study, force=request.force)
    return StudyOutcome(study, results, time.perf_counter() - started)


def exit_code(outcome: StudyOutcome) -> int:
    """0 when every run finished ok, else 1 (naming the others on stderr)."""
    bad = [r for r in outcome.results if r.status != "ok"]
    if bad:
        listed = "; ".join(
            f"{r.method} seed {r.seed} {r.status}" + (f" ({r.error})" if r.error else "")
            for r in bad
        )
        print(f"genbench: {len(bad)} run(s) did not finish: {listed}", file=sys.stderr)
        return 1
    return 0


def run_file(path: str | Path) -> int:
    """Run the request in ``path`` (one line and exit 2 for a bad request); under torchrun
    every rank runs it and rank 0 writes the results."""
    from bench import distributed

    request = StudyRequest.read(Path(path))
    info = distributed.init_from_env()
    if not info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return exit_code(run_request(request))
    finally:
        distributed.shutdown()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m bench.worker REQUEST.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        return run_file(argv[0])
    except GenbenchError as exc:
        print(f"genbench: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
