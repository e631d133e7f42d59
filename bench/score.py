"""Score images produced anywhere: ``genbench score --samples DIR|FILE.npz --dataset NAME``.

The samples go through exactly the path a method's samples take in a run: quantised to the
dataset's levels (a uint8 value v becomes level round(v (L-1) / 255)), stored as uint8, and
scored by :func:`bench.metrics.fidelity.evaluate_uint8_samples` against the train split of
the dataset through the study's feature extractor, with the protocol's evaluation settings
and the reference-feature cache the leaderboard uses. So the same images give the same FID
whether a run drew them or another framework did.

Inputs:

- ``FILE.npz`` with ``images``: (N, H, W), (N, H, W, C) or (N, C, H, W); uint8 0..255, or
  floats in [0, 1]; optional ``labels`` (N,) for class-conditional samples (scored by the
  domain classifier's accuracy when the extractor has one). Read with
  ``allow_pickle=False``.
- a folder of PNG / JPEG files (sorted by name), all of the data's size; grayscale data
  takes mode L (or RGB files whose three channels are equal), colour data mode RGB.

The protocol's ``fid_samples`` (capped at the train split, as for a run) is the number
scored: more samples are cut to the first ``fid_samples``; fewer are scored with a warning
(FID is biased by the sample count), and refused for a leaderboard row (``--as``).

``--as NAME`` writes the scores as a result at ``OUT/<protocol>/<dataset>/NAME/seed-<k>/``
marked ``config.external``, with the samples' sha256: ``genbench report`` shows it beside
the trained methods, marked as externally produced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.errors import GenbenchError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MIN_SAMPLES = 2


@dataclasses.dataclass
class Samples:
    """Images as uint8 0..255 (N, C, H, W), quantised to the data's levels."""

    images: Tensor
    labels: Tensor | None
    sha256: str
    source: str


def _sha_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _to_nchw(array: np.ndarray, shape: tuple[int, int, int], where: str) -> np.ndarray:
    channels, height, width = shape
    if array.ndim == 3 and channels == 1 and array.shape[1:] == (height, width):
        return array[:, None]
    if array.ndim == 4 and array.shape[1:] == (height, width, channels):
        return np.ascontiguousarray(array.transpose(0, 3, 1, 2))
    if array.ndim == 4 and array.shape[1:] == (channels, height, width):
        return array
    expected = f"(N, {height}, {width}, {channels})" + (
        f" or (N, {height}, {width})" if channels == 1 else ""
    )
    raise GenbenchError(
        f"{where}: images have shape {tuple(array.shape)}; this dataset's samples are {expected}"
    )


def _read_npz(path: Path, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    import zipfile

    if not zipfile.is_zipfile(path):  # np.load would try to unpickle anything else
        raise GenbenchError(f"{path} is not a readable .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "images" not in archive.files:
                raise GenbenchError(
                    f"{path}: no 'images' array (found: {', '.join(archive.files) or 'none'})"
                )
            images = archive["images"]
            labels = archive["labels"] if "labels" in archive.files else None
    except GenbenchError:
        raise
    except ValueError as exc:  # an object array: refused rather than unpickled
        raise GenbenchError(f"{path}: not a plain numeric npz ({exc})") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise GenbenchError(f"{path} is not a readable .npz file ({exc})") from None
    return _to_nchw(images, shape, str(path)), labels


def _read_folder(folder: Path, shape: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise GenbenchError(f"{folder} holds no PNG or JPEG files")
    channels, height, width = shape
    out = np.zeros((len(files), channels, height, width), dtype=np.uint8)
    for index, file in enumerate(files):
        try:
            with Image.open(file) as image:
                image.load()
                mode, size = image.mode, image.size
                array = np.asarray(image)
        except (UnidentifiedImageError, OSError) as exc:
            raise GenbenchError(f"{file} is not a readable image ({exc})") from None
        if size != (width, height):
            raise GenbenchError(
                f"{file} is {size[0]}x{size[1]}; this dataset's images are {width}x{height} "
                "(no resizing is done: FID depends on it)"
            )
        if channels == 1 and mode == "RGB":
            if not (
                np.array_equal(array[..., 0], array[..., 1])
                and np.array_equal(array[..., 0], array[..., 2])
            ):
                raise GenbenchError(f"{file} is colour (RGB); this dataset is grayscale")
            array = array[..., 0]
        elif (channels, mode) not in ((1, "L"), (3, "RGB")):
            want = "L (grayscale)" if channels == 1 else "RGB"
            raise GenbenchError(f"{file} has mode {mode}; this dataset's samples are {want}")
        if array.dtype != np.uint8:
            raise GenbenchError(f"{file} is not 8-bit ({array.dtype})")
        out[index] = array.reshape(height, width, channels).transpose(2, 0, 1)
    return out


def _folder_sha(folder: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        digest.update(file.name.encode())
        digest.update(_sha_file(file).encode())
    return digest.hexdigest()


def read_samples(path: Path, spec: Any) -> Samples:
    """Samples from ``path`` (an .npz or a folder of images), validated against the data's
    shape and quantised to its levels: one clear error for anything wrong."""
    from bench.metrics.fidelity import levels_to_uint8

    path = Path(path)
    if not path.exists():
        raise GenbenchError(f"samples {path} do not exist")
    labels = None
    if path.is_dir():
        array = _read_folder(path, spec.shape)
        sha = _folder_sha(path)
    elif path.suffix == ".npz":
        array, labels = _read_npz(path, spec.shape)
        sha = _sha_file(path)
    else:
        raise GenbenchError(f"samples {path}: give an .npz file or a folder of PNG/JPEG files")
    count = len(array)
    if count < MIN_SAMPLES:
        raise GenbenchError(f"{path}: {count} image(s); at least {MIN_SAMPLES} are needed for FID")
    levels_count = spec.num_levels
    if array.dtype == np.uint8:
        levels = torch.round(torch.from_numpy(array).double() * (levels_count - 1) / 255.0).long()
    elif array.dtype.kind == "f":
        values = torch.from_numpy(array.astype(np.float64))
        if not bool(torch.isfinite(values).all()):
            raise GenbenchError(f"{path}: images contain NaN or inf")
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 1:
            raise GenbenchError(
                f"{path}: float images must lie in [0, 1]; found values in [{low:.4g}, {high:.4g}]"
            )
        levels = torch.round(values * (levels_count - 1)).long()
    else:
        raise GenbenchError(
            f"{path}: images have dtype {array.dtype}; give uint8 (0..255) or floats in [0, 1]"
        )
    images = levels_to_uint8(levels, levels_count)
    label_tensor = None
    if labels is not None:
        if labels.shape != (count,) or labels.dtype.kind not in "iu":
            raise GenbenchError(
                f"{path}: labels must be {count} integers, got shape {labels.shape} {labels.dtype}"
            )
        if count and (labels.min() < 0 or labels.max() >= spec.num_classes):
            raise GenbenchError(f"{path}: labels must lie in 0..{spec.num_classes - 1}")
        label_tensor = torch.from_numpy(labels.astype(np.int64))
    return Samples(images, label_tensor, sha, str(path.resolve()))


@dataclasses.dataclass
class ScoreRequest:
    samples: Path
    dataset: str
    protocol: str = "quick"
    extractor: str | None = None
    feature_weights: str | None = None
    seed: int = 0
    device: str = "auto"
    data_root: Path | None = None
    download: bool = True
    as_name: str | None = None
    out: Path = Path("runs")


def _check_row_name(request: ScoreRequest, directory: Path) -> None:
    from bench.registry import METHODS, SAFE_NAME
    from bench.results import RESULT_FILE, load_result

    name = request.as_name or ""
    if not SAFE_NAME.fullmatch(name):
        raise GenbenchError(
            f"--as {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    if name in METHODS:
        raise GenbenchError(
            f"--as {name!r} is a genbench method: an external row needs a name of its own"
        )
    path = directory / RESULT_FILE
    if path.exists():
        try:
            previous = load_result(path)
        except GenbenchError:
            return  # unreadable: replaced, and kept under history/
        if not previous.config.get("external"):
            raise GenbenchError(f"{path} holds a trained run's result; choose another --as name")


def score(request: ScoreRequest) -> tuple[dict[str, Any], Path | None]:
    """Scores of the samples (and the result file written with ``--as``, else None). Every
    input is checked before anything is computed or written."""
    from bench.data import load_dataset
    from bench.evaluators.fidelity import add_fidelity_metrics
    from bench.evaluators.fidelity_metrics import build_sets
    from bench.metrics import fidelity
    from bench.metrics.extractors import (
        DOMAIN_EXTRACTORS,
        default_extractor,
        second_extractors,
        sha256_file,
        validate_extractor,
    )
    from bench.protocol import load_protocol
    from bench.registry import EXTRACTORS
    from bench.results import RunResult, environment, record_result, run_dir
    from bench.runner import config_hash, file_dataset_arg, resolve_device

    started = time.perf_counter()
    protocol = load_protocol(request.protocol)
    data = load_dataset(request.dataset, request.data_root, request.download)
    extractor = (
        request.extractor
        or data.meta.get("extractor")
        or default_extractor(data.spec.name, file_dataset=bool(data.meta))
    )
    EXTRACTORS.get(extractor)
    validate_extractor(
        extractor,
        data.spec.name,
        request.feature_weights,
        data.spec if data.meta else None,
        data.spec.shape,
    )
    device = resolve_device(request.device)
    directory = None
    if request.as_name is not None:
        directory = run_dir(
            request.out, protocol.name, data.spec.name, request.as_name, request.seed
        )
        _check_row_name(request, directory)
    samples = read_samples(request.samples, data.spec)
    count = min(protocol.eval.fid_samples, len(data.levels("train")))
    images, labels = samples.images, samples.labels
    if len(images) > count:
        log.info(
            "scoring the first %d of %d images (the protocol's fid_samples)", count, len(images)
        )
        images = images[:count]
        labels = None if labels is None else labels[:count]
    elif len(images) < count:
        message = (
            f"{len(images)} images, fewer than protocol {protocol.name}'s {count}: FID is biased "
            "by the sample count, so this score is not comparable with the leaderboard's"
        )
        if request.as_name is not None:
            raise GenbenchError(f"{request.samples}: {message}; give at least {count} for --as")
        log.warning("%s", message)
    features: dict[str, Any] = {}
    scores = fidelity.evaluate_uint8_samples(
        images,
        data,
        extractor,
        protocol.eval,
        request.seed,
        device,
        request.feature_weights,
        features_out=features,
    )
    assert scores is not None  # one process: rank 0's scores
    if labels is not None and extractor in DOMAIN_EXTRACTORS:
        scores["sample_acc"] = fidelity.uint8_classifier_accuracy(images, labels, extractor)
    # density / coverage, memorization, Vendi, FD-infinity (and intra-class FID with
    # labels): the same metrics, from the same features, as a run's fidelity evaluator
    sets = build_sets(features, images, data, extractor, protocol.eval, request.seed, labels)
    add_fidelity_metrics(scores, sets)
    second = () if data.meta else second_extractors(data.spec.name, extractor)
    if second:  # FID under the independently trained networks, as a run reports it
        scores["second_extractors"] = fidelity.second_network_fids(
            images, data, second, protocol.eval, request.seed, device
        )
    scores["settings"]["sampler"] = {"external": True}
    if directory is None:
        return scores, None
    config: dict[str, Any] = {
        "external": True,
        "samples": {"path": samples.source, "sha256": samples.sha256, "count": len(images)},
        "protocol": {
            "name": protocol.name,
            "version": protocol.version,
            "eval": dataclasses.asdict(protocol.eval),
            "dataset": data.spec.name,
        },
        "dataset": {
            "name": data.spec.name,
            "source": data.source,
            "fingerprint": data.fingerprint(),
        },
        "extractor": extractor,
        "seed": request.seed,
    }
    if request.feature_weights:
        config["feature_weights_sha256"] = sha256_file(Path(request.feature_weights))
    config["hash"] = config_hash(config)
    env = environment(str(device), "fp32")
    if data.meta:
        env["dataset_spec"] = file_dataset_arg(data)
    env["wall_time_s"] = round(time.perf_counter() - started, 3)
    result = RunResult(
        request.as_name or "",
        data.spec.name,
        {"name": protocol.name, "version": protocol.version},
        request.seed,
        "ok",
        {"fidelity": scores},
        config,
        env,
    )
    written = record_result(result, directory)
    from bench.evaluators.fidelity import GRID_FILE, GRID_IMAGES, save_grid

    save_grid(images[:GRID_IMAGES].float() / 255.0, directory / GRID_FILE)
    return scores, written
