"""Turn a finished run back into a model, and draw samples from it.

    method = bench.load_run("runs/quick/digits/ddpm/seed-0")      # trained, EMA'd, eval mode
    images = method.sample(16, torch.Generator().manual_seed(0))

    genbench sample --run runs/quick/digits/ddpm/seed-0 --n 1000 --out samples.npz

:func:`load_run` reads the run's ``result.json`` (method, dataset, hyper-parameters,
precision), loads the dataset it was trained on (checking its content fingerprint), builds
the method, calls ``prepare`` (rows fitted in closed form are fitted again, exactly) and
loads the checkpoint with ``torch.load(weights_only=True)``, with the EMA weights the
evaluation used. A method from a plug-in needs the plug-in loaded (``--include``); when the
result names a plug-in file that still exists with the same sha256 it is loaded here.

:func:`draw_samples` draws exactly what the run's fidelity evaluation drew for the same
seed: the same chunks of ``eval.sample_batch_size``, each from the generator of (run seed,
section, chunk), the same class-balanced labels and the same autocast, so on the CPU the
images are bitwise the evaluation's (``sample_count`` equal to the run's ``fid_samples``).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.errors import GenbenchError
from bench.method import Method, to_levels
from bench.results import RESULT_FILE, RunResult, load_result

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LoadedRun:
    """A finished run's method with what is needed to sample it as its evaluation did."""

    method: Method
    result: RunResult
    data: Any  # bench.data.ImageData
    device: torch.device

    @property
    def precision(self) -> str:
        return str(self.result.config.get("precision", "fp32"))

    @property
    def sample_batch_size(self) -> int:
        protocol = self.result.config.get("protocol", {})
        settings = protocol.get("eval", {}) if isinstance(protocol, dict) else {}
        return int(settings.get("sample_batch_size", 250))

    @property
    def fid_samples(self) -> int:
        protocol = self.result.config.get("protocol", {})
        settings = protocol.get("eval", {}) if isinstance(protocol, dict) else {}
        return int(settings.get("fid_samples", 1000))


def _read_result(run_dir: Path) -> RunResult:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GenbenchError(f"run folder {run_dir} does not exist")
    path = run_dir / RESULT_FILE
    if not path.exists():
        raise GenbenchError(f"{run_dir} holds no {RESULT_FILE}: not a finished run")
    result = load_result(path)
    if result.config.get("external"):
        raise GenbenchError(
            f"{run_dir} is an externally produced row (genbench score --as): it has no model"
        )
    if result.status != "ok":
        raise GenbenchError(f"run {run_dir} did not finish ok (status {result.status})")
    return result


def _method_class(result: RunResult) -> type[Method]:
    from bench import plugins
    from bench.registry import METHODS

    if result.method in METHODS:
        return METHODS.get(result.method)  # type: ignore[no-any-return]
    plugin = result.config.get("plugin")
    if isinstance(plugin, dict):
        where = result.env.get("plugin_source")
        source = Path(where) if isinstance(where, str) else None
        if source is not None and source.exists():
            if plugins.source_sha256(source.resolve()) == plugin.get("sha256"):
                plugins.include(source)
                return METHODS.get(result.method)  # type: ignore[no-any-return]
        raise GenbenchError(
            f"method {result.method!r} comes from plug-in {plugin.get('name')!r} (sha256 "
            f"{str(plugin.get('sha256'))[:12]}, at {where}), which is not loaded"
            + (" and has changed since" if source is not None and source.exists() else "")
            + ": pass --include with the plug-in that trained it"
        )
    return METHODS.get(result.method)  # type: ignore[no-any-return]


def _load_data(result: RunResult, data_root: Path | None) -> Any:
    from bench.data import load_dataset

    spec = result.env.get("dataset_spec") or result.dataset
    data = load_dataset(str(spec), data_root, download=False)
    recorded = result.config.get("dataset", {}).get("fingerprint")
    if recorded and recorded != data.fingerprint():
        raise GenbenchError(
            f"dataset {result.dataset!r} ({spec}) is not the data this run was trained on "
            "(content fingerprint differs)"
        )
    return data


def load_run(
    run_dir: str | Path, device: str | torch.device = "cpu", data_root: str | Path | None = None
) -> Method:
    """The trained method of a finished run, in eval mode on ``device`` (EMA weights where
    the method keeps an EMA: the weights its evaluation scored)."""
    return open_run(run_dir, device, data_root).method


def open_run(
    run_dir: str | Path, device: str | torch.device = "cpu", data_root: str | Path | None = None
) -> LoadedRun:
    """:func:`load_run` with the run's result and data (for sampling as it was scored)."""
    from bench.runner import resolve_device
    from bench.train import CHECKPOINT_FILE, EMA

    run_dir = Path(run_dir)
    result = _read_result(run_dir)
    torch_device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    cls = _method_class(result)
    data = _load_data(result, Path(data_root) if data_root else None)
    hparams = result.config.get("hparams")
    if not isinstance(hparams, dict):
        raise GenbenchError(f"{run_dir / RESULT_FILE} records no hyper-parameters")
    with torch.random.fork_rng(devices=[]):  # building must not shift the caller's stream
        from bench.runner import seed_everything

        seed_everything(result.seed)  # as the run did: buffers drawn at build are the run's
        method = cls.build(data.spec, hparams).to(torch_device)
        method.prepare(data.images("train"), data.labels("train"), data.images("test"))
    checkpoint = run_dir / CHECKPOINT_FILE
    if cls.trainable and result.config.get("protocol", {}).get("train", {}).get("budget_images", 1):
        if not checkpoint.exists():
            raise GenbenchError(f"{run_dir} has no {CHECKPOINT_FILE}: the trained weights are gone")
        try:
            state = torch.load(checkpoint, map_location=torch_device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - an unreadable or code-carrying file
            line = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:160]
            raise GenbenchError(
                f"{checkpoint} is not a loadable checkpoint (weights_only=True): {line}"
            ) from None
        if not isinstance(state, dict) or not isinstance(state.get("method"), dict):
            raise GenbenchError(f"{checkpoint} is not a genbench checkpoint")
        identity = state.get("identity") or {}
        if identity.get("method") not in (None, result.method) or identity.get("seed") not in (
            None,
            result.seed,
        ):
            raise GenbenchError(f"{checkpoint} belongs to another run ({identity})")
        try:
            method.load_state_dict(state["method"]["module"])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0][:200]
            raise GenbenchError(f"{checkpoint} does not fit {result.method}: {first}") from None
        if state.get("ema"):
            ema = EMA.__new__(EMA)
            ema.shadow = state["ema"]
            ema.copy_to(method)
    method.eval()
    return LoadedRun(method, result, data, torch_device)


def parse_sampler_args(items: list[str]) -> dict[str, Any]:
    """``key=value`` sampler arguments (``steps=50``, ``sampler=ddim``) with typed values."""
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise GenbenchError(f"--sampler expects key=value, got {item!r}")
        text = value.strip()
        typed: Any = text
        for kind in (int, float):
            try:
                typed = kind(text)
                break
            except ValueError:
                continue
        if text.lower() in ("true", "false"):
            typed = text.lower() == "true"
        kwargs[key.strip()] = typed
    return kwargs


def sample_section(method: Method, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The fidelity section whose seeds a draw with ``kwargs`` uses: the sampler variant of
    the method with exactly these settings (so its evaluation is reproduced), else the
    method's default section with these settings on top."""
    variants = method.sample_variants()
    for index, variant in enumerate(variants):
        if variant == kwargs:
            return f"fidelity:{index}", dict(variant)
    merged = {**variants[0], **kwargs}
    for index, variant in enumerate(variants):
        if variant == merged:
            return f"fidelity:{index}", dict(variant)
    return "fidelity:0", merged


def check_sampler_kwargs(method: Method, kwargs: dict[str, Any]) -> None:
    parameters = inspect.signature(method.sample).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    accepted = [n for n in parameters if n not in ("n", "generator", "labels")]
    for key in kwargs:
        if not takes_any and key not in parameters:
            raise GenbenchError(
                f"{method.name}.sample has no setting {key!r}. Valid: "
                f"{', '.join(accepted) or '(none)'}"
            )


def draw_samples(
    run: LoadedRun,
    count: int,
    kwargs: dict[str, Any] | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
) -> tuple[Tensor, Tensor | None, dict[str, Any]]:
    """``count`` images as uint8 levels scaled to 0..255 (N, C, H, W), their labels (None
    when unconditional) and what was drawn (section, seed, sampler settings)."""
    from bench.evaluators.base import chunks
    from bench.metrics.fidelity import levels_to_uint8
    from bench.optim import autocast
    from bench.runner import seed_everything
    from bench.seeds import chunk_seed, section_seed

    method, device = run.method, run.device
    if count < 1:
        raise GenbenchError(f"--n must be at least 1, got {count}")
    if "sample" not in method.capabilities:
        raise GenbenchError(f"method {run.result.method!r} cannot sample")
    kwargs = dict(kwargs or {})
    check_sampler_kwargs(method, kwargs)
    section, variant = sample_section(method, kwargs)
    seed = run.result.seed if seed is None else seed
    size = batch_size or run.sample_batch_size
    cap = getattr(method, "max_samples", None)
    if cap is not None:  # a finite pool (the real-data row) is one permutation: one chunk
        if count > int(cap):
            log.warning("%s holds %d images; drawing %d repeats some", method.name, cap, count)
        size = count
    spec = run.data.spec
    labels = None
    if method.class_conditional:
        labels = torch.arange(count) % spec.num_classes
    out = torch.zeros(count, *spec.shape, dtype=torch.uint8)
    seed_everything(section_seed(seed, section))
    with torch.no_grad():
        for chunk in chunks(count, size):
            generator = torch.Generator(device=device).manual_seed(
                chunk_seed(seed, section, chunk.index)
            )
            chunk_labels = None if labels is None else labels[chunk.start : chunk.stop].to(device)
            with autocast(device, run.precision):
                batch = method.sample(chunk.size, generator, chunk_labels, **variant)
            batch = batch.float()
            if tuple(batch.shape) != (chunk.size, *spec.shape):
                raise GenbenchError(f"{method.name}.sample returned shape {tuple(batch.shape)}")
            if not bool(torch.isfinite(batch).all()):
                raise GenbenchError(f"{method.name}.sample returned NaN or inf")
            levels = to_levels(batch.detach().cpu(), spec.num_levels)
            out[chunk.start : chunk.stop] = levels_to_uint8(levels, spec.num_levels)
    info = {
        "run": str(run.result.source_dir) if run.result.source_dir else None,
        "method": run.result.method,
        "dataset": run.result.dataset,
        "seed": seed,
        "section": section,
        "sampler": {**method.sample_settings(), **variant},
        "num_levels": spec.num_levels,
        "chunk_size": size,
    }
    return out, labels, info


def write_samples(images: Tensor, labels: Tensor | None, info: dict[str, Any], out: Path) -> Path:
    """``out.npz``: ``images`` (N, H, W) or (N, H, W, C) uint8, ``labels`` when conditional,
    ``info`` (a JSON string); any other path: a folder of PNG files (0000000.png, ...)."""
    from bench.results import write_bytes_atomic

    array = images.permute(0, 2, 3, 1).numpy()
    if array.shape[-1] == 1:
        array = array[..., 0]
    if out.suffix == ".npz":
        import io

        buffer = io.BytesIO()
        arrays: dict[str, Any] = {"images": array, "info": np.array(json.dumps(info))}
        if labels is not None:
            arrays["labels"] = labels.numpy().astype(np.int64)
        np.savez(buffer, **arrays)
        write_bytes_atomic(out, buffer.getvalue())
        return out
    from PIL import Image

    if out.exists() and not out.is_dir():
        raise GenbenchError(f"--out {out} is a file: give a .npz path or a folder")
    out.mkdir(parents=True, exist_ok=True)
    width = max(7, len(str(len(array))))
    for index, image in enumerate(array):
        Image.fromarray(image).save(out / f"{index:0{width}d}.png")
    if labels is not None:
        (out / "labels.json").write_text(json.dumps(labels.tolist()))
    return out
