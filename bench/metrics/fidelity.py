"""Sample quality: FID, KID and precision/recall computed by torch-fidelity.

Generated images are quantised to the dataset's levels (as saved image files would be) and
compared with the train split (the reference) through a registered feature extractor
(:mod:`bench.metrics.extractors`). The metrics are torch-fidelity's own functions, fed with
features we extract through its extractors, so the numbers are exactly its numbers.

Nothing is unpickled for us: torch-fidelity's cache reads its files with
``torch.load(weights_only=False)``, so it stays off; genbench keeps its own cache of the
reference *features* as ``.npz`` files read with ``np.load(allow_pickle=False)``, named by
(dataset content, split, extractor, weights sha, layers, device kind), so they are computed
once per machine. A corrupt cache file is ignored (with a warning) and rebuilt.

- FID: Heusel et al. 2017, Frechet distance of Gaussians fitted to the features.
- KID: Binkowski et al. 2018, unbiased MMD^2 with a cubic polynomial kernel over subsets;
  reported because FID is biased at small sample counts.
- Precision / recall: Kynkaanniemi et al. 2019, k-NN manifolds in feature space.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_fidelity
from torch import Tensor, nn
from torch.utils.data import Dataset
from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import kid_featuresdict_to_metric
from torch_fidelity.metric_prc import prc_featuresdict_to_metric
from torch_fidelity.utils import (
    create_feature_extractor,
    get_featuresdict_from_dataset,
    resolve_feature_layer_for_metric,
)

from bench.data import ImageData
from bench.errors import GenbenchError
from bench.method import to_levels
from bench.metrics.extractors import (
    DOMAIN_EXTRACTORS,
    FEATURE_NETWORKS,
    INCEPTION,
    cache_dir,
    feature_network,
    inception_feature_extractor,
    inception_weights_sha,
    load_domain_classifier,
    torch_fidelity_builtin,
)
from bench.protocol import EvalSettings

log = logging.getLogger(__name__)


class TensorImages(Dataset):
    """A torch-fidelity input over an in-memory tensor of images (N, C, H, W)."""

    def __init__(self, images: Tensor, rgb: bool = False) -> None:
        self.images = images
        self.rgb = rgb

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> Tensor:
        image = self.images[index]
        if self.rgb and image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        return image


def levels_to_uint8(levels: Tensor, num_levels: int) -> Tensor:
    """Integer levels -> uint8 0..255, torch-fidelity's image convention."""
    return torch.round(levels.float() * (255.0 / (num_levels - 1))).to(torch.uint8)


def images_to_uint8(images: Tensor, num_levels: int) -> Tensor:
    """Float images in [0, 1] -> quantised to the data's levels -> uint8."""
    return levels_to_uint8(to_levels(images.detach().cpu(), num_levels), num_levels)


FEATURE_CACHE = "fidelity-features"
METRICS_BY_LAYER = ("fid", "kid", "prc")


def feature_cache_path(name: str, extractor: str, layers: list[str], cuda: bool) -> Path:
    """Where the reference features of cache key ``name`` live: file names are built from a
    slug plus a hash of the full key, so no key can point outside the cache folder."""
    key = "|".join([name, extractor, *layers, "cuda" if cuda else "cpu"])
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{name}-{extractor}")[:120].lstrip(".")
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return cache_dir() / FEATURE_CACHE / f"{slug}-{digest}.npz"


def read_feature_cache(path: Path, layers: list[str], count: int) -> dict[str, Tensor] | None:
    """Cached features, or None (with a warning) when the file is missing pieces, has the
    wrong shape, or is not an npz at all; ``allow_pickle=False`` means an object array (the
    only way an npz can carry a pickle) fails to load instead of being unpickled."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in layers}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("ignoring unreadable feature cache %s (%s); recomputing", path, exc)
        return None
    for name, array in arrays.items():
        if array.ndim != 2 or len(array) != count or array.dtype.kind != "f":
            log.warning(
                "ignoring feature cache %s: layer %s has shape %s, dtype %s (want %d rows of "
                "floats); recomputing",
                path,
                name,
                array.shape,
                array.dtype,
                count,
            )
            return None
    return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}


def write_feature_cache(path: Path, features: dict[str, Tensor]) -> None:
    """Atomic write (temp file, rename): a killed run never leaves half a cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        arrays: dict[str, Any] = {name: v.cpu().numpy() for name, v in features.items()}
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def make_feature_extractor(
    extractor: str, layers: list[str], cuda: bool, feature_weights: str | None
) -> nn.Module:
    """torch-fidelity's extractor object, built so that no weights pass its own loader."""
    if extractor == INCEPTION.name:
        module = inception_feature_extractor(layers, feature_weights)
        module.requires_grad_(False).eval()
        return module.cuda() if cuda else module
    if torch_fidelity_builtin(extractor):
        raise GenbenchError(
            f"feature extractor {extractor!r} is torch-fidelity's, which loads its weights "
            f"without weights_only; use {', '.join(sorted([*DOMAIN_EXTRACTORS, INCEPTION.name]))}"
        )
    return create_feature_extractor(extractor, layers, cuda=cuda, verbose=False)


def fidelity_from_inputs(
    generated: Dataset,
    reference: Dataset,
    extractor: str,
    settings: EvalSettings,
    seed: int,
    reference_cache_name: str | None = None,
    device: torch.device | None = None,
    feature_weights: str | None = None,
) -> dict[str, Any]:
    """torch-fidelity's FID, KID and precision/recall of ``generated`` against ``reference``.

    The steps of ``torch_fidelity.calculate_metrics`` for one extractor, with its cache
    replaced by ours: features of both inputs, then its FID statistics, KID and PRC
    functions with the same arguments, so the values are identical to a call without cache.
    ``reference_cache_name`` keys the reference features' cache (None: no cache)."""
    num_generated, num_reference = len(generated), len(reference)  # type: ignore[arg-type]
    if num_generated < 2 or num_reference < 2:
        raise GenbenchError(
            f"too few samples for FID: {num_generated} generated, {num_reference} reference "
            "(need at least 2 of each)"
        )
    kid_subset_size = min(settings.kid_subset_size, num_generated, num_reference)
    neighborhood = min(settings.prc_neighborhood, num_generated - 1, num_reference - 1)
    cuda = device is not None and device.type == "cuda"
    kwargs: dict[str, Any] = dict(
        cuda=cuda,
        batch_size=settings.eval_batch_size,
        fid=True,
        kid=True,
        prc=True,
        feature_extractor=extractor,
        kid_subsets=settings.kid_subsets,
        kid_subset_size=kid_subset_size,
        prc_neighborhood=neighborhood,
        rng_seed=seed,
        save_cpu_ram=True,  # no DataLoader worker processes: deterministic and light
        verbose=False,
        cache=False,  # torch-fidelity's cache unpickles (weights_only=False): ours instead
    )
    layer = {
        metric: resolve_feature_layer_for_metric(metric, **kwargs) for metric in METRICS_BY_LAYER
    }
    layers = sorted(set(layer.values()))
    feat_extractor = make_feature_extractor(extractor, layers, cuda, feature_weights)

    def features(inputs: Dataset) -> dict[str, Tensor]:
        return get_featuresdict_from_dataset(
            inputs, feat_extractor, settings.eval_batch_size, cuda, True, False
        )

    features_1 = features(generated)
    features_2 = None
    cache_path = None
    if reference_cache_name is not None:
        cache_path = feature_cache_path(reference_cache_name, extractor, layers, cuda)
        features_2 = read_feature_cache(cache_path, layers, num_reference)
    if features_2 is None:
        features_2 = features(reference)
        if cache_path is not None:
            try:
                write_feature_cache(cache_path, features_2)
            except OSError as exc:  # a read-only or full cache costs time, not the run
                log.warning("could not write feature cache %s (%s)", cache_path, exc)
    raw = fid_statistics_to_metric(
        fid_featuresdict_to_statistics(features_1, layer["fid"]),
        fid_featuresdict_to_statistics(features_2, layer["fid"]),
        False,
    )
    raw.update(kid_featuresdict_to_metric(features_1, features_2, layer["kid"], **kwargs))
    raw.update(prc_featuresdict_to_metric(features_1, features_2, layer["prc"], **kwargs))
    out = {
        "fid": float(raw[torch_fidelity.KEY_METRIC_FID]),
        "kid": float(raw[torch_fidelity.KEY_METRIC_KID_MEAN]),
        "kid_std": float(raw[torch_fidelity.KEY_METRIC_KID_STD]),
        "precision": float(raw[torch_fidelity.KEY_METRIC_PRECISION]),
        "recall": float(raw[torch_fidelity.KEY_METRIC_RECALL]),
    }
    for key, value in out.items():
        if value != value:  # NaN
            raise GenbenchError(f"{key} came out NaN (generated samples degenerate?)")
    out["kid_subset_size"] = kid_subset_size
    out["prc_neighborhood"] = neighborhood
    return out


def extractor_fingerprint(extractor: str, feature_weights: str | None = None) -> str:
    if extractor in FEATURE_NETWORKS:
        return feature_network(extractor)[1]
    if extractor in DOMAIN_EXTRACTORS:
        return load_domain_classifier(extractor)[1]
    if extractor == INCEPTION.name:
        return inception_weights_sha(feature_weights)
    return "unregistered"


def evaluate_samples(
    samples: Tensor,
    data: ImageData,
    extractor: str,
    settings: EvalSettings,
    seed: int,
    device: torch.device | None = None,
    feature_weights: str | None = None,
) -> dict[str, Any]:
    """FID / KID / precision-recall of float samples in [0, 1] against the train split."""
    spec = data.spec
    if tuple(samples.shape[1:]) != spec.shape:
        raise GenbenchError(f"samples have shape {tuple(samples.shape[1:])}, data {spec.shape}")
    if not torch.isfinite(samples).all():
        raise GenbenchError("samples contain NaN or inf")
    return evaluate_uint8_samples(
        images_to_uint8(samples, spec.num_levels),
        data,
        extractor,
        settings,
        seed,
        device,
        feature_weights,
    )


def evaluate_uint8_samples(
    samples: Tensor,
    data: ImageData,
    extractor: str,
    settings: EvalSettings,
    seed: int,
    device: torch.device | None = None,
    feature_weights: str | None = None,
) -> dict[str, Any]:
    """FID / KID / precision-recall of samples already quantised to the data's levels and
    stored as uint8 0..255 (:func:`images_to_uint8`), against the train split."""
    spec = data.spec
    rgb = extractor == INCEPTION.name
    weights_sha = extractor_fingerprint(extractor, feature_weights)
    reference = TensorImages(levels_to_uint8(data.levels("train"), spec.num_levels), rgb)
    cache_name = f"genbench-{spec.name}-train-{data.fingerprint()[:16]}-{weights_sha[:16]}"
    metrics: dict[str, Any] = fidelity_from_inputs(
        TensorImages(samples.cpu(), rgb),
        reference,
        extractor,
        settings,
        seed,
        reference_cache_name=cache_name,
        device=device,
        feature_weights=feature_weights,
    )
    metrics["settings"] = {
        "extractor": extractor,
        "weights_sha256": weights_sha,
        "num_samples": len(samples),
        "reference_split": "train",
        "reference_size": len(reference),
        "kid_subset_size": metrics.pop("kid_subset_size"),
        "kid_subsets": settings.kid_subsets,
        "prc_neighborhood": metrics.pop("prc_neighborhood"),
        "quantized_to_levels": spec.num_levels,
        "library": f"torch-fidelity {torch_fidelity.__version__}",
    }
    return metrics


def sample_classifier_accuracy(
    samples: Tensor, labels: Tensor, data: ImageData, extractor: str
) -> float:
    """Does a sample drawn for label y look like a y, to the shipped domain classifier?"""
    return uint8_classifier_accuracy(
        images_to_uint8(samples, data.spec.num_levels), labels, extractor
    )


def uint8_classifier_accuracy(samples: Tensor, labels: Tensor, extractor: str) -> float:
    """:func:`sample_classifier_accuracy` of samples quantised to uint8 (images_to_uint8)."""
    if extractor not in DOMAIN_EXTRACTORS:
        raise GenbenchError(f"extractor {extractor!r} has no classifier head")
    model = load_domain_classifier(extractor)[0]
    with torch.no_grad():
        logits = model(samples.cpu())[1]
    return float((logits.argmax(1) == labels.cpu()).float().mean())
