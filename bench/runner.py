"""Expands a study (methods x seeds on one dataset under one protocol) into runs and runs
them: train with the one loop, score with every evaluator the method has the capability for,
write one result per run. Finished runs with the same configuration are skipped, so a study
can be restarted at will; a diverged or failed run is recorded and the study carries on.

Everything a user can get wrong (names, hyper-parameters, --set values, missing data) is
checked by :func:`plan_study` before the first run starts, so bad input never touches
results already written.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import random
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import distributed, plugins
from bench.curves import Curve
from bench.data import ImageData, load_dataset
from bench.errors import GenbenchError
from bench.evaluators import EvalContext, Evaluator, evaluators_for
from bench.killpoints import kill_point
from bench.locks import RunLock
from bench.method import Method, strict_scales
from bench.metrics import throughput
from bench.metrics.extractors import (
    default_extractor,
    second_extractors,
    sha256_file,
    validate_extractor,
)
from bench.metrics.throughput import MemoryMonitor
from bench.protocol import Protocol, load_protocol
from bench.registry import EXTRACTORS, METHODS
from bench.results import (
    RESULT_FILE,
    RunResult,
    environment,
    load_result,
    record_result,
    remove_orphans,
    run_dir,
    write_json_atomic,
)
from bench.seeds import section_seed
from bench.train import (
    CHECKPOINT_FILE,
    Diverged,
    Heartbeat,
    Ticker,
    check_checkpoint_owner,
    train,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunSpec:
    """One run, fully resolved."""

    method: str
    seed: int
    hparams: dict[str, Any]
    protocol: Protocol
    out_dir: Path

    @property
    def directory(self) -> Path:
        return run_dir(
            self.out_dir, self.protocol.name, self.protocol.dataset, self.method, self.seed
        )


@dataclasses.dataclass
class Study:
    protocol: Protocol
    data: ImageData
    runs: list[RunSpec]
    extractor: str
    device: torch.device
    precision: str = "fp32"
    feature_weights: str | None = None
    feature_weights_sha: str | None = None
    #: GPU fast paths (bench.optim.prepare_fast_paths), part of the training configuration
    channels_last: bool = False
    compile: bool = False
    #: the --dataset value the study was planned from (a name, folder:PATH, npz:PATH, a card)
    dataset_arg: str = ""
    #: independently trained feature networks whose FID every run also reports
    #: (bench.metrics.extractors.second_extractors)
    second_extractors: tuple[str, ...] = ()
    #: how many runs of the study ran at once, each in its own worker process
    #: (bench.executors.run_parallel); recorded in each result's env
    parallel_runs: int = 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and distributed.current().enabled:
        return torch.device(f"cuda:{distributed.current().local_rank}")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise GenbenchError(f"unknown device {name!r}. Valid devices: auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GenbenchError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def split_overrides(
    sets: list[str], methods: list[str]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``--set`` items -> (protocol overrides, per-method hyper-parameter overrides).

    ``train.key=v`` / ``eval.key=v`` set protocol values; ``method.key=v`` sets one method's
    hyper-parameter; a bare ``key=v`` sets it on every selected method that has ``key``."""
    protocol_sets: dict[str, Any] = {}
    method_sets: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for item in sets:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise GenbenchError(f"--set expects key=value, got {item!r}")
        head, dot, tail = key.partition(".")
        if dot and head in ("train", "eval"):
            protocol_sets[key] = value
        elif dot:
            if head not in methods:
                raise GenbenchError(
                    f"--set {item!r}: method {head!r} is not in this study "
                    f"({', '.join(methods)}); sections: train, eval"
                )
            method_sets[head][tail] = value
        else:
            owners = [m for m in methods if key in _defaults_for(m)]
            if not owners:
                raise GenbenchError(
                    f"--set {item!r}: no selected method has a hyper-parameter "
                    f"{key!r} (use train.{key} or eval.{key} for protocol settings)"
                )
            for m in owners:
                method_sets[m][key] = value
    return protocol_sets, method_sets


def _defaults_for(method: str) -> dict[str, Any]:
    # hyper-parameter names do not depend on the data scale, only their values do
    from bench.method import DataSpec

    return METHODS.get(method).default_hparams(DataSpec("probe", 1, 8, 8, 17, 10))


def plan_study(
    protocol_name: str,
    dataset: str | None = None,
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
    sets: list[str] | None = None,
    out: Path = Path("runs"),
    data_root: Path | None = None,
    download: bool = True,
    device: str = "auto",
    precision: str = "fp32",
    extractor: str | None = None,
    feature_weights: str | None = None,
    channels_last: bool = False,
    compile: bool = False,
) -> Study:
    protocol = load_protocol(protocol_name)
    if dataset:
        protocol = dataclasses.replace(protocol, dataset=dataset)
    method_names = methods if methods is not None else METHODS.names()
    if not method_names:
        raise GenbenchError("no methods selected")
    for name in [*method_names, *protocol.methods]:  # also the protocol's override tables
        METHODS.get(name)
    protocol_sets, method_sets = split_overrides(sets or [], method_names)
    protocol = protocol.with_overrides(protocol_sets)
    if precision not in ("fp32", "bf16"):
        raise GenbenchError(f"unknown precision {precision!r}. Valid precisions: bf16, fp32")
    torch_device = resolve_device(device)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GenbenchError(f"--out {out} is a file, not a folder for results")
    for parent in out.parents:  # a file in the way of the results folder
        if parent.exists() and not parent.is_dir():
            raise GenbenchError(f"--out {out}: {parent} is a file, not a folder")
    data = load_dataset(protocol.dataset, data_root, download)
    dataset_arg = protocol.dataset
    if data.meta:  # a file dataset: folder:PATH, npz:PATH or a card, by absolute path
        dataset_arg = file_dataset_arg(data)
        protocol = dataclasses.replace(protocol, dataset=data.spec.name)
    extractor = (
        extractor
        or data.meta.get("extractor")
        or default_extractor(data.spec.name, file_dataset=bool(data.meta))
    )
    EXTRACTORS.get(extractor)
    validate_extractor(
        extractor,
        data.spec.name,
        feature_weights,
        data.spec if data.meta else None,
        data.spec.shape,
    )
    weights_sha = sha256_file(Path(feature_weights)) if feature_weights else None
    runs = []
    for name in method_names:
        cls = METHODS.get(name)
        overrides = {**protocol.methods.get(name, {}), **method_sets[name]}
        with strict_scales():  # a size no default table covers: one line, now
            hparams = cls.resolve_hparams(data.spec, overrides)
            cls.validate(data.spec, hparams)  # types, ranges and a trial build, before any run
        plugins.check_outputs(name, data.spec, hparams, data)  # a plug-in's outputs, now
        for seed in seeds if seeds is not None else protocol.seeds:
            spec = RunSpec(name, seed, hparams, protocol, out)
            check_run_folder(spec)
            runs.append(spec)
    return Study(
        protocol,
        data,
        runs,
        extractor,
        torch_device,
        precision,
        feature_weights,
        weights_sha,
        channels_last,
        compile,
        dataset_arg,
        () if data.meta else second_extractors(data.spec.name, extractor),
    )


def file_dataset_arg(data: ImageData) -> str:
    """The ``--dataset`` value that loads a file dataset again from anywhere."""
    meta = data.meta
    if meta.get("card"):
        return f"card:{meta['card']}"
    return f"{meta['format']}:{meta['path']}"


def run_identity(spec: RunSpec) -> dict[str, Any]:
    """The run a checkpoint or result in ``spec``'s folder must name."""
    return {
        "method": spec.method,
        "dataset": spec.protocol.dataset,
        "protocol": spec.protocol.name,
        "seed": spec.seed,
    }


def check_run_folder(spec: RunSpec) -> None:
    """Refuse, before any run starts, a run folder holding another run's checkpoint or
    result (copied or edited by hand): one line, nothing touched."""
    identity = run_identity(spec)
    check_checkpoint_owner(spec.directory / CHECKPOINT_FILE, identity)
    path = spec.directory / RESULT_FILE
    if not path.exists():
        return
    try:
        result = load_result(path)
    except GenbenchError:
        return  # unreadable: re-run, and the old file is kept under history/
    found = {
        "method": result.method,
        "dataset": result.dataset,
        "protocol": result.protocol.get("name") if isinstance(result.protocol, dict) else None,
        "seed": result.seed,
    }
    if found != identity:
        theirs = ", ".join(f"{k} {v!r}" for k, v in found.items())
        raise GenbenchError(
            f"result {path} belongs to another run ({theirs}); move it away to run "
            f"{spec.method} seed {spec.seed} here"
        )


def train_config(spec: RunSpec, study: Study) -> dict[str, Any]:
    """What the trained weights depend on, and nothing else: the resume key of a checkpoint.
    An evaluation-only change (another extractor, probe or FID setting) keeps the checkpoint."""
    protocol = spec.protocol
    train_settings = dataclasses.asdict(protocol.train)
    for key in NOT_HASHED_TRAIN:
        train_settings.pop(key, None)
    config: dict[str, Any] = {
        "protocol": {"name": protocol.name, "version": protocol.version, "train": train_settings},
        "dataset": {
            "name": study.data.spec.name,
            "source": study.data.source,
            "fingerprint": study.data.fingerprint(),
        },
        "method": spec.method,
        "hparams": spec.hparams,
        "seed": spec.seed,
        "precision": study.precision,
    }
    if study.channels_last or study.compile:  # absent when off: older results keep their hash
        config["fast_paths"] = {"channels_last": study.channels_last, "compile": study.compile}
    if study.data.meta:  # a file dataset: its content hash and split (not where it lies)
        config["dataset"]["files"] = {
            k: v for k, v in study.data.meta.items() if k not in ("path", "card")
        }
    plugin = plugins.provenance(spec.method)
    if plugin is not None:  # the code that made the result; a changed plug-in re-runs
        config["plugin"] = plugin
    return config


#: train settings that change no number of a result (only when checkpoints are written)
NOT_HASHED_TRAIN = ("checkpoint_every_images",)


def run_config(spec: RunSpec, study: Study) -> dict[str, Any]:
    """Everything a result depends on: the training configuration plus the evaluation
    settings, the extractor and its weights. Descriptions, changelogs and other methods'
    overrides are not part of it, so editing one method's ``[methods.X]`` re-runs X only."""
    config = train_config(spec, study)
    protocol = dict(config["protocol"])
    protocol["train"] = dataclasses.asdict(spec.protocol.train)
    protocol["eval"] = eval_config(spec.protocol.eval)
    protocol["dataset"] = spec.protocol.dataset
    config["protocol"] = protocol
    config["extractor"] = study.extractor
    if study.second_extractors:
        config["second_extractors"] = list(study.second_extractors)
    if study.feature_weights:
        config["feature_weights_sha256"] = study.feature_weights_sha
    config["train_hash"] = config_hash(train_config(spec, study))
    return config


def eval_config(settings: Any) -> dict[str, Any]:
    """The evaluation settings a result depends on: the curve's only when it has points (so
    results without a curve keep the hash they had before curves existed)."""
    from bench.curves import CURVE_KEYS

    values = dataclasses.asdict(settings)
    if not values.get("at_images"):
        for key in CURVE_KEYS:
            values.pop(key, None)
    return values


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of a configuration, ignoring fields that are only bookkeeping."""
    hashed = {k: v for k, v in config.items() if k not in ("hash",)}
    protocol = hashed.get("protocol")
    if isinstance(protocol, dict) and isinstance(protocol.get("train"), dict):
        train_settings = {k: v for k, v in protocol["train"].items() if k not in NOT_HASHED_TRAIN}
        hashed["protocol"] = {**protocol, "train": train_settings}
    return hashlib.sha256(json.dumps(hashed, sort_keys=True, default=str).encode()).hexdigest()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def is_finished(spec: RunSpec, digest: str) -> bool:
    path = spec.directory / RESULT_FILE
    if not path.exists():
        return False
    try:
        previous = load_result(path)
    except GenbenchError:
        return False
    return previous.status == "ok" and previous.config.get("hash") == digest


class _Held:
    """Marker: the run is claimed by another live process."""


HELD = _Held()
#: seconds between two looks at runs held by other processes
WAIT_POLL_S = float(os.environ.get("GENBENCH_WAIT_POLL_SECONDS", "2"))


def run_study(study: Study, force: bool = False) -> list[RunResult]:
    """Run every run of the study once. A run claimed by another process (another study on
    the same ``runs/``) is left to it; once every other run is done, this process waits for
    the claimed ones and takes over any whose owner died (resuming from its checkpoint)."""
    results: list[RunResult] = []
    pending = list(study.runs)
    total = len(pending)
    done = 0
    announced: set[str] = set()
    while pending:
        held: list[RunSpec] = []
        for spec in pending:
            outcome = run_one(spec, study, force, position=(done + 1, total))
            if outcome is HELD:
                held.append(spec)
                where = str(spec.directory)
                if where not in announced:
                    announced.add(where)
                    log.info(
                        "%s seed %d: claimed by another process (%s), left to it",
                        spec.method,
                        spec.seed,
                        RunLock(spec.directory).describe_owner(),
                    )
                continue
            done += 1
            if isinstance(outcome, RunResult):
                results.append(outcome)
        if held and len(held) == len(pending):
            time.sleep(WAIT_POLL_S)
        pending = held
    return results


def _claim(lock: RunLock) -> bool:
    """Rank 0 claims the run; every rank of a distributed run gets its answer."""
    info = distributed.current()
    claimed = lock.acquire() if info.is_main else False
    if info.enabled:
        on = "cpu"
        if torch.distributed.get_backend() == "nccl":
            on = f"cuda:{info.local_rank}"
        flag = torch.tensor([1 if claimed else 0], dtype=torch.int64, device=on)
        torch.distributed.broadcast(flag, src=0)
        claimed = bool(flag.item())
    return claimed


def run_one(
    spec: RunSpec, study: Study, force: bool = False, position: tuple[int, int] = (1, 1)
) -> RunResult | _Held | None:
    """One run under its lock: the finished result, the new result, HELD when another
    process owns the run (or the run whose weights it needs), None on non-zero ranks."""
    config = run_config(spec, study)
    digest = config_hash(config)
    if not force and is_finished(spec, digest):
        log.info("%s seed %d: finished already, skipped", spec.method, spec.seed)
        return load_result(spec.directory / RESULT_FILE)
    lock = RunLock(spec.directory)
    if not _claim(lock):
        return HELD
    try:
        if not force and is_finished(spec, digest):  # finished while we waited for it
            log.info("%s seed %d: finished by another process", spec.method, spec.seed)
            return load_result(spec.directory / RESULT_FILE)
        if distributed.current().is_main:
            remove_orphans(spec.directory)
            if force:  # a forced re-run trains and evaluates from scratch
                (spec.directory / CHECKPOINT_FILE).unlink(missing_ok=True)
                (spec.directory / EVAL_STATE_FILE).unlink(missing_ok=True)
        log.info(
            "run %d/%d start: %s seed %d, %s images, -> %s",
            *position,
            spec.method,
            spec.seed,
            f"{spec.protocol.train.budget_images:,}"
            if METHODS.get(spec.method).trainable
            else "no training",
            spec.directory,
        )
        result = execute_run(spec, study, config, digest)
        if result is None or not distributed.current().is_main:
            return None  # a non-zero rank of a distributed run: rank 0 writes
        written = record_result(result, spec.directory)
        if result.status == "ok":
            (spec.directory / EVAL_STATE_FILE).unlink(missing_ok=True)
        log.info("run %d/%d end: %s -> %s", *position, summary_line(result), written)
        return result
    finally:
        lock.release()


def summary_line(result: RunResult) -> str:
    """method, seed, status, images, wall time and the headline metrics, on one line."""
    env, metrics = result.env, result.metrics
    parts = [f"{result.method} seed {result.seed}: {result.status}"]
    speed = metrics.get("throughput", {})
    if speed.get("train_images_seen"):
        parts.append(f"{speed['train_images_seen']:,} images")
    wall = env.get("wall_time_s")
    if wall is not None:
        split = ""
        if env.get("train_wall_s") is not None and env.get("eval_wall_s") is not None:
            split = f" (train {env['train_wall_s']:.1f} s, eval {env['eval_wall_s']:.1f} s)"
        parts.append(f"{wall:.1f} s{split}")
    headline = []
    fid = metrics.get("fidelity", {})
    if fid.get("fid") is not None:
        headline.append(f"fid={fid['fid']:.2f}")
    if metrics.get("likelihood", {}).get("bpd") is not None:
        headline.append(f"bpd={metrics['likelihood']['bpd']:.3f}")
    if metrics.get("probe", {}).get("linear_acc") is not None:
        headline.append(f"linear_acc={metrics['probe']['linear_acc']:.3f}")
    if result.error:
        headline.append(f"error: {result.error}")
    return ", ".join(parts) + (": " + " ".join(headline) if headline else "")


def execute_run(
    spec: RunSpec, study: Study, config: dict[str, Any], digest: str
) -> RunResult | None:
    """Train and evaluate one run. Never raises for a method's own failure: a NaN loss gives
    status 'diverged', an exception 'failed' (traceback in the run folder's error.log)."""
    started = time.perf_counter()
    device, data = study.device, study.data
    env = environment(throughput.device_name(device), study.precision)
    dist_info = distributed.current()
    env["world_size"] = dist_info.world_size
    if study.parallel_runs > 1:
        env["parallel_runs"] = study.parallel_runs
    if data.meta:  # where the files were: what bench.load_run loads again
        env["dataset_spec"] = study.dataset_arg
    plugin = plugins.plugin_of(spec.method)
    if plugin is not None:  # where the plug-in was (its sha256 is in the configuration)
        env["plugin_source"] = plugin.path or plugin.source
    config = {**config, "hash": digest}
    timings: dict[str, float] = {}

    def result(status: str, metrics: dict[str, Any], **extra: Any) -> RunResult:
        env["wall_time_s"] = round(time.perf_counter() - started, 3)
        for key, value in timings.items():
            env[key] = round(value, 3)
        return RunResult(
            spec.method,
            data.spec.name,
            {"name": spec.protocol.name, "version": spec.protocol.version},
            spec.seed,
            status,
            metrics,
            config,
            env,
            **extra,
        )

    seed_everything(spec.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    identity = run_identity(spec)
    try:
        with MemoryMonitor(device) as memory:
            method: Method = METHODS.get(spec.method).build(data.spec, spec.hparams).to(device)
            method.prepare(data.images("train"), data.labels("train"), data.images("test"))
            distributed.broadcast_module(method)  # the same weights on every rank
            outcome = None
            curve = None
            if method.trainable and spec.protocol.eval.at_images:
                curve = Curve(
                    method,
                    data,
                    spec.protocol.eval,
                    spec.seed,
                    device,
                    study.extractor,
                    study.feature_weights,
                    study.precision,
                    spec.protocol.train.budget_images,
                )
            if method.trainable and spec.protocol.train.budget_images > 0:
                outcome = train(
                    method,
                    data.images("train"),
                    data.labels("train"),
                    spec.protocol.train,
                    spec.seed,
                    device,
                    spec.directory,
                    study.precision,
                    f"{spec.method}/seed-{spec.seed}",
                    config["train_hash"],
                    identity,
                    study.channels_last,
                    study.compile,
                    curve,
                )
            if outcome is not None:  # which kernels the step ran (not part of the hash)
                env["kernels"] = outcome.kernels
            timings["train_wall_s"] = time.perf_counter() - started
            if curve is not None:  # the curve's scoring is not training time
                timings["curve_eval_s"] = curve.eval_seconds
                timings["train_wall_s"] -= curve.eval_seconds
            method.eval()
            metrics = evaluate(method, spec, study, outcome, digest)
            timings["eval_wall_s"] = (
                time.perf_counter()
                - started
                - timings["train_wall_s"]
                - timings.get("curve_eval_s", 0.0)
            )
        if metrics is None:
            return None
        if curve is not None:
            metrics["curve"] = curve.points
        metrics["throughput"]["peak_memory_mb"] = memory.peak_mb
        metrics["throughput"]["peak_memory_kind"] = memory.kind
    except Diverged as exc:
        log.warning("%s seed %d diverged: %s", spec.method, spec.seed, exc)
        return result("diverged", {}, diverged_at_step=exc.step, error=str(exc))
    except Exception as exc:  # a method's failure must not stop the study; it is recorded
        spec.directory.mkdir(parents=True, exist_ok=True)
        (spec.directory / "error.log").write_text(traceback.format_exc())
        line = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.error("%s seed %d failed: %s", spec.method, spec.seed, line)
        return result("failed", {}, error=line)
    return result("ok", metrics)


EVAL_STATE_FILE = "eval-state.json"


class EvalState:
    """The evaluation sections already scored for one configuration, kept in the run folder
    so that a run killed during evaluation redoes only what was not yet scored. Under
    torchrun rank 0's view is every rank's, so all ranks skip the same sections."""

    def __init__(self, directory: Path, digest: str, writer: bool) -> None:
        self.path = directory / EVAL_STATE_FILE
        self.digest = digest
        self.writer = writer
        self.sections: dict[str, Any] = {}
        if self.path.exists():
            try:
                raw = json.loads(self.path.read_text())
                if isinstance(raw, dict) and raw.get("config_hash") == digest:
                    sections = raw.get("sections")
                    self.sections = sections if isinstance(sections, dict) else {}
            except (OSError, ValueError):
                log.warning("unreadable %s ignored: evaluation starts again", self.path)
        self.sections = distributed.broadcast_object(self.sections)

    def get(self, name: str) -> Any:
        return self.sections.get(name)

    def put(self, name: str, value: Any) -> None:
        self.sections[name] = value
        if self.writer:
            write_json_atomic(self.path, {"config_hash": self.digest, "sections": self.sections})
            kill_point("eval-section")


def evaluate(
    method: Method, spec: RunSpec, study: Study, outcome: Any, digest: str = ""
) -> dict[str, Any] | None:
    """Every registered evaluator the method qualifies for (:mod:`bench.evaluators`), in
    their order: bits/dim, fidelity per sampler variant, the probe, then throughput.

    Each section (a likelihood estimator, a sampler variant's fidelity, the probe) is seeded
    by (run seed, section) and saved to the run folder's eval state when done, so a killed
    evaluation resumes where it stopped and gives the numbers of an uninterrupted one.
    Under torchrun every rank takes its share of a section's chunks, and rank 0 computes
    from the states reduced across ranks; rank 0 returns the metrics, the others None."""
    is_main = distributed.current().is_main
    state = EvalState(spec.directory, digest, writer=is_main and bool(digest))
    heartbeat = Heartbeat()
    label = f"{spec.method}/seed-{spec.seed}"
    context = EvalContext(
        method=method,
        data=study.data,
        settings=spec.protocol.eval,
        device=study.device,
        seed=spec.seed,
        directory=spec.directory,
        precision=study.precision,
        extractor=study.extractor,
        feature_weights=study.feature_weights,
        second_extractors=study.second_extractors,
        outcome=outcome,
        channels_last=study.channels_last,
        compile=study.compile,
        accumulate=spec.protocol.train.accumulate,
    )
    metrics: dict[str, Any] = {}

    def section(name: str, build: Callable[[], Evaluator]) -> Any:
        done = state.get(name)
        if done is not None:
            log.info("%s: %s already scored, kept", label, name)
            return done
        heartbeat.beat("%s: evaluating %s", label, name)
        seed_everything(section_seed(spec.seed, name))
        with Ticker(f"{label}: evaluating {name}"):
            value = build().run()
        if value is not None:
            state.put(name, value)
        return value

    for kind in evaluators_for(method):
        if kind.needs_labels and not study.data.labeled:
            log.info(
                "%s: %s skipped: %s has no class labels", label, kind.name, study.data.spec.name
            )
            continue
        for index, variant in enumerate(kind.variants(method)):
            name = kind.section_name(index)
            if name is None:  # not saved, and rank 0's alone (throughput)
                value = kind(context, variant, kind.name).run() if is_main else None
            else:
                value = section(name, functools.partial(kind, context, variant, name))
            if is_main:
                kind.record(metrics, index, variant, value)
    return metrics if is_main else None
