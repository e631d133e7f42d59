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
import hashlib
import json
import logging
import random
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import distributed
from bench.data import ImageData, load_dataset
from bench.errors import GenbenchError
from bench.method import ENCODE, LOG_LIKELIHOOD, SAMPLE, Method
from bench.metrics import fidelity, likelihood, probe, throughput
from bench.metrics.extractors import DOMAIN_EXTRACTORS, default_extractor
from bench.protocol import Protocol, load_protocol
from bench.registry import EXTRACTORS, METHODS
from bench.results import (
    RESULT_FILE,
    RunResult,
    environment,
    load_result,
    run_dir,
    write_result,
)
from bench.train import CHECKPOINT_FILE, Diverged, autocast, train

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
) -> Study:
    protocol = load_protocol(protocol_name)
    if dataset:
        protocol = dataclasses.replace(protocol, dataset=dataset)
    method_names = methods or METHODS.names()
    for name in [*method_names, *protocol.methods]:  # also the protocol's override tables
        METHODS.get(name)
    protocol_sets, method_sets = split_overrides(sets or [], method_names)
    protocol = protocol.with_overrides(protocol_sets)
    if precision not in ("fp32", "bf16"):
        raise GenbenchError(f"unknown precision {precision!r}. Valid precisions: bf16, fp32")
    torch_device = resolve_device(device)
    data = load_dataset(protocol.dataset, data_root, download)
    extractor = extractor or default_extractor(protocol.dataset)
    EXTRACTORS.get(extractor)
    if feature_weights and not Path(feature_weights).exists():
        raise GenbenchError(f"--feature-weights {feature_weights} does not exist")
    runs = []
    resolved: dict[str, dict[str, Any]] = {}
    # methods that reuse another's weights go after every method they could depend on
    for name in sorted(method_names, key=lambda m: METHODS.get(m).weights_from is not None):
        cls = METHODS.get(name)
        overrides = {**protocol.methods.get(name, {}), **method_sets[name]}
        hparams = cls.resolve_hparams(data.spec, overrides)
        for seed in seeds if seeds is not None else protocol.seeds:
            spec = RunSpec(name, seed, hparams, protocol, out)
            if cls.weights_from:  # the source's network, whatever it was set to
                source = resolved.get(cls.weights_from)
                if source is None:  # not in this study: it must have been run already
                    source = source_result(spec).config["hparams"]
                spec.hparams = {**hparams, **{k: v for k, v in source.items() if k in hparams}}
            runs.append(spec)
        resolved[name] = hparams
    return Study(protocol, data, runs, extractor, torch_device, precision, feature_weights)


def source_spec(spec: RunSpec) -> RunSpec:
    """The run whose weights a ``weights_from`` method evaluates: same study, same seed."""
    source = METHODS.get(spec.method).weights_from
    return RunSpec(source, spec.seed, {}, spec.protocol, spec.out_dir)


def source_result(spec: RunSpec) -> RunResult:
    """The finished result of ``spec``'s weight source, or a clear error."""
    source = source_spec(spec)
    path = source.directory / RESULT_FILE
    hint = (
        f"{spec.method} evaluates the trained weights of {source.method} from the same study; "
        f"run {source.method} first (add it to --methods)"
    )
    if not path.exists():
        raise GenbenchError(f"{hint}: no result at {path}")
    result = load_result(path)
    if result.status != "ok" or not (source.directory / CHECKPOINT_FILE).exists():
        raise GenbenchError(f"{hint}: its run at {source.directory} did not finish")
    return result


def load_source_weights(method: Method, spec: RunSpec, device: torch.device) -> None:
    """Load the final weights (the EMA when the source keeps one) of ``spec``'s source."""
    state = torch.load(
        source_spec(spec).directory / CHECKPOINT_FILE, map_location=device, weights_only=False
    )
    weights = dict(state["method"]["module"])
    weights.update(state.get("ema") or {})  # the loop evaluates the EMA: so do we
    method.load_state_dict(weights)


def run_config(spec: RunSpec, study: Study) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if METHODS.get(spec.method).weights_from:
        # a re-trained source makes this run stale: its config hash is part of ours
        source = source_spec(spec)
        path = source.directory / RESULT_FILE
        source_hash = load_result(path).config.get("hash") if path.exists() else None
        config["weights_from"] = {"method": source.method, "config_hash": source_hash}
    return {
        **config,
        "protocol": spec.protocol.to_dict(),
        "method": spec.method,
        "hparams": spec.hparams,
        "seed": spec.seed,
        "dataset": {
            "name": study.data.spec.name,
            "source": study.data.source,
            "fingerprint": study.data.fingerprint(),
        },
        "extractor": study.extractor,
        "precision": study.precision,
    }


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


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


def run_study(study: Study, force: bool = False) -> list[RunResult]:
    results = []
    for spec in study.runs:
        config = run_config(spec, study)
        digest = config_hash(config)
        if not force and is_finished(spec, digest):
            log.info("%s seed %d: finished already, skipped", spec.method, spec.seed)
            results.append(load_result(spec.directory / RESULT_FILE))
            continue
        if force:  # a forced re-run trains from scratch
            (spec.directory / CHECKPOINT_FILE).unlink(missing_ok=True)
        result = execute_run(spec, study, config, digest)
        if result is None or not distributed.current().is_main:
            continue  # a non-zero rank of a distributed run: rank 0 writes
        write_result(result, spec.directory)
        log.info("%s seed %d: %s -> %s", spec.method, spec.seed, result.status, spec.directory)
        results.append(result)
    return results


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
    config = {**config, "hash": digest}

    def result(status: str, metrics: dict[str, Any], **extra: Any) -> RunResult:
        env["wall_time_s"] = round(time.perf_counter() - started, 3)
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
    try:
        method: Method = METHODS.get(spec.method).build(data.spec, spec.hparams).to(device)
        method.prepare(data.images("train"), data.labels("train"), data.images("test"))
        if method.weights_from:
            source_result(spec)
            load_source_weights(method, spec, device)
        if dist_info.enabled:
            distributed.broadcast_module(method)
            distributed.attach_gradient_averaging(method.optimizers)
            if dist_info.rank:  # the same weights, but each rank its own noise
                torch.manual_seed(spec.seed * 7919 + dist_info.rank)
        outcome = None
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
                digest,
            )
        method.eval()
        metrics = evaluate(method, spec, study, outcome)
        if metrics is None:
            return None
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


def evaluate(method: Method, spec: RunSpec, study: Study, outcome: Any) -> dict[str, Any] | None:
    """Every evaluator the method has the capability for, plus throughput for all.

    In a distributed run the likelihood is computed on every rank's shard of the test split
    and reduced across ranks; the rest runs on rank 0 (other ranks get None)."""
    settings, data, device = spec.protocol.eval, study.data, study.device
    metrics: dict[str, Any] = {}
    if LOG_LIKELIHOOD in method.capabilities:
        # The first variant is the method's bits/dim; others (a VAE's ELBO beside its IWAE
        # bound) become rows of their own in the leaderboard, like sampler variants.
        for index, variant in enumerate(method.likelihood_variants()):
            scores = likelihood.evaluate_likelihood(
                method,
                data.images("test"),
                settings.eval_batch_size,
                data.spec.dims,
                data.spec.num_levels,
                device,
                variant,
            )
            if index == 0:
                metrics["likelihood"] = scores
            else:
                metrics.setdefault("likelihood_variants", []).append({**scores, "variant": variant})
    if not distributed.current().is_main:
        return None
    speed: dict[str, Any] = {
        "device": throughput.device_name(device),
        "precision": study.precision,
        "params": throughput.count_parameters(method),
        "train_images_per_s": outcome.train_images_per_second if outcome else None,
        "train_images_seen": outcome.images_seen if outcome else 0,
        "train_steps": outcome.steps if outcome else 0,
    }
    caps = method.capabilities
    if SAMPLE in caps:
        # The first variant is the method's default sampler (the method's own row); others
        # (step counts, guidance weights) become rows of their own in the leaderboard.
        for index, variant in enumerate(method.sample_variants()):
            samples, labels, sample_speed = draw_samples(method, spec, study, variant)
            scores = fidelity.evaluate_samples(
                samples, data, study.extractor, settings, spec.seed, device, study.feature_weights
            )
            scores["settings"]["sampler"] = {**method.sample_settings(), **variant}
            if labels is not None and study.extractor in DOMAIN_EXTRACTORS:
                scores["sample_acc"] = fidelity.sample_classifier_accuracy(
                    samples, labels, data, study.extractor
                )
            if index == 0:
                metrics["fidelity"] = scores
                speed.update(sample_speed)
                save_grid(samples[:64], spec.directory / "samples.png")
            else:
                scores.update(variant=variant, **sample_speed)
                metrics.setdefault("fidelity_variants", []).append(scores)
    if ENCODE in caps:
        metrics["probe"] = probe.evaluate_probe(
            method,
            data.images("train"),
            data.labels("train"),
            data.images("test"),
            data.labels("test"),
            data.spec.num_classes,
            settings,
            device,
        )
    probe_batch = data.images("test")[:8].to(device)
    speed["forward_flops_per_image"] = throughput.forward_flops_per_image(method, probe_batch)
    speed["mfu"] = throughput.mfu(
        speed["forward_flops_per_image"], speed["train_images_per_s"], device, study.precision
    )
    speed["peak_memory_mb"], speed["peak_memory_kind"] = throughput.peak_memory_mb(device)
    metrics["throughput"] = speed
    return metrics


@torch.no_grad()
def draw_samples(
    method: Method, spec: RunSpec, study: Study, variant: dict[str, Any] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """``fid_samples`` images (capped at the reference size) in batches from a generator
    seeded by the run's seed; the batches after the first are timed for sample throughput.
    A class-conditional method gets class-balanced labels (returned with the samples)."""
    settings = spec.protocol.eval
    count = min(settings.fid_samples, len(study.data.levels("train")))
    generator = torch.Generator(device=study.device).manual_seed(spec.seed)
    labels = None
    if method.class_conditional:
        labels = torch.arange(count, device=study.device) % study.data.spec.num_classes
    batches, timed_images, timed_seconds, first_seconds = [], 0, 0.0, 0.0
    nfe = None
    for start in range(0, count, settings.sample_batch_size):
        size = min(settings.sample_batch_size, count - start)
        throughput.synchronize(study.device)
        tick = time.perf_counter()
        batch_labels = labels[start : start + size] if labels is not None else None
        with autocast(study.device, study.precision):
            batch = method.sample(size, generator, batch_labels, **(variant or {}))
        throughput.synchronize(study.device)
        elapsed = time.perf_counter() - tick
        if start == 0:
            first_seconds = elapsed
        else:
            timed_images, timed_seconds = timed_images + size, timed_seconds + elapsed
        if tuple(batch.shape) != (size, *study.data.spec.shape):
            raise GenbenchError(f"{spec.method}.sample({size}) returned shape {tuple(batch.shape)}")
        batches.append(batch.float().cpu())
        nfe = method.last_nfe
    samples = torch.cat(batches)
    if samples.min() < 0 or samples.max() > 1:
        raise GenbenchError(f"{spec.method}.sample returned values outside [0, 1]")
    rate: float | None = None
    warm = timed_seconds > 0
    if warm:
        rate = timed_images / timed_seconds
    elif first_seconds > 0:
        rate = count / first_seconds
    speed = {"sample_images_per_s": rate, "sample_warmup_excluded": warm, "nfe": nfe}
    return samples, (labels.cpu() if labels is not None else None), speed


def save_grid(images: torch.Tensor, path: Path) -> None:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, path, nrow=8, padding=1)
