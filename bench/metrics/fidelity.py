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

Under torchrun, feature extraction is sharded (:func:`extract_features`): the images are cut
into the batches one process extracts (``eval_batch_size``), rank r extracts batches r, r + W,
..., and the features are gathered by a sum over ranks of position-indexed buffers (zero where
another rank fills in), so every feature is bit for bit the one a single process computes.
Rank 0 then computes FID / KID / PR once, on the whole set. The reference features are read
from the cache on rank 0 or, when missing, extracted the same way and cached by rank 0.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_fidelity
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset
from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import kid_featuresdict_to_metric
from torch_fidelity.metric_prc import prc_featuresdict_to_metric
from torch_fidelity.utils import (
    create_feature_extractor,
    get_featuresdict_from_dataset,
    resolve_feature_layer_for_metric,
)

from bench import distributed
from bench.data import ImageData
from bench.errors import GenbenchError
from bench.method import to_levels
from bench.metrics.extractors import (
    DOMAIN_EXTRACTORS,
    FEATURE_NETWORKS,
    FOUNDATION,
    INCEPTION,
    WEIGHTS_FROM_FILE,
    FoundationExtractor,
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
    if extractor in FOUNDATION:  # our DINOv2 / CLIP, before torch-fidelity's of that name
        found = FoundationExtractor(extractor, layers, feature_weights)
        found.requires_grad_(False).eval()
        return found.cuda() if cuda else found
    if torch_fidelity_builtin(extractor):
        raise GenbenchError(
            f"feature extractor {extractor!r} is torch-fidelity's, which loads its weights "
            f"without weights_only; use {', '.join(sorted([*DOMAIN_EXTRACTORS, INCEPTION.name]))}"
        )
    return create_feature_extractor(extractor, layers, cuda=cuda, verbose=False)


def extract_features(
    inputs: Dataset, feat_extractor: nn.Module, batch_size: int, cuda: bool
) -> dict[str, Tensor]:
    """torch-fidelity's features of every item of ``inputs`` ({layer: (N, d)}), in batches of
    ``batch_size``. In one process this is ``get_featuresdict_from_dataset`` itself. Under
    torchrun (collective: every rank calls it with the same inputs) rank r extracts the
    batches r, r + W, ... of that same cut, into buffers of the full size that are zero
    elsewhere; the sum over ranks gathers them, so each feature equals the one-process value
    bit for bit (the same batch through the same network) and every rank gets all of them."""
    from bench.evaluators.base import rank_chunks

    info = distributed.current()
    if not info.enabled:
        return get_featuresdict_from_dataset(inputs, feat_extractor, batch_size, cuda, True, False)
    import torch.distributed as dist

    count = len(inputs)  # type: ignore[arg-type]

    def batch(start: int, stop: int) -> dict[str, Tensor]:
        part = Subset(inputs, range(start, stop))
        return get_featuresdict_from_dataset(part, feat_extractor, batch_size, cuda, True, False)

    mine = [(chunk, batch(chunk.start, chunk.stop)) for chunk in rank_chunks(count, batch_size)]
    # a rank without a batch (fewer batches than ranks) learns the shapes from one item
    template = mine[0][1] if mine else batch(0, 1)
    # NCCL reduces device tensors only; gloo host tensors
    device = torch.device("cuda", info.local_rank) if dist.get_backend() == "nccl" else None
    gathered = {
        name: torch.zeros((count, *value.shape[1:]), dtype=value.dtype, device=device)
        for name, value in template.items()
    }
    for chunk, found in mine:
        for name, value in found.items():
            gathered[name][chunk.start : chunk.stop] = value
    for name in sorted(gathered):  # the same order on every rank
        dist.all_reduce(gathered[name])
    return {name: value.cpu() for name, value in gathered.items()}


def fidelity_from_inputs(
    generated: Dataset,
    reference: Dataset,
    extractor: str,
    settings: EvalSettings,
    seed: int,
    reference_cache_name: str | None = None,
    device: torch.device | None = None,
    feature_weights: str | None = None,
    holdout: Dataset | None = None,
    holdout_cache_name: str | None = None,
    features_out: dict[str, Any] | None = None,
    only_fid: bool = False,
) -> dict[str, Any] | None:
    """torch-fidelity's FID, KID and precision/recall of ``generated`` against ``reference``
    (FID alone with ``only_fid``).

    The steps of ``torch_fidelity.calculate_metrics`` for one extractor, with its cache
    replaced by ours: features of both inputs, then its FID statistics, KID and PRC
    functions with the same arguments, so the values are identical to a call without cache.
    ``reference_cache_name`` keys the reference features' cache (None: no cache).
    ``features_out``, when given, receives the features (``generated``, ``reference`` and,
    with a ``holdout`` set such as the test split, cached under ``holdout_cache_name``,
    ``holdout``; ``{layer name: (N, d)}`` each) and ``layers`` (the layer of each metric),
    for the metrics computed from the same features (:mod:`bench.evaluators.fidelity_metrics`).

    Collective under torchrun: every rank calls it with the same inputs and extracts its
    share of the features (:func:`extract_features`); rank 0 returns the scores, the other
    ranks None."""
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
        return extract_features(inputs, feat_extractor, settings.eval_batch_size, cuda)

    main = distributed.current().is_main

    def cached_features(inputs: Dataset, cache_name: str | None) -> dict[str, Tensor] | None:
        """Features of a real split from the cache (rank 0 reads it) or, when rank 0 has
        none, extracted by every rank's share and cached by rank 0; None on other ranks."""
        found = None
        path = None
        if cache_name is not None:
            path = feature_cache_path(cache_name, extractor, layers, cuda)
            if main:
                found = read_feature_cache(path, layers, len(inputs))  # type: ignore[arg-type]
        if distributed.broadcast_object(found is None):
            found = features(inputs)
            if path is not None and main:
                try:
                    write_feature_cache(path, found)
                except OSError as exc:  # a read-only or full cache costs time, not the run
                    log.warning("could not write feature cache %s (%s)", path, exc)
        return found if main else None

    features_1 = features(generated)
    features_2 = cached_features(reference, reference_cache_name)
    features_3 = None if holdout is None else cached_features(holdout, holdout_cache_name)
    if not main:
        return None
    assert features_2 is not None
    if features_out is not None:
        features_out.update(
            generated=features_1, reference=features_2, holdout=features_3, layers=layer
        )
    raw = fid_statistics_to_metric(
        fid_featuresdict_to_statistics(features_1, layer["fid"]),
        fid_featuresdict_to_statistics(features_2, layer["fid"]),
        False,
    )
    out = {"fid": float(raw[torch_fidelity.KEY_METRIC_FID])}
    if not only_fid:
        raw.update(kid_featuresdict_to_metric(features_1, features_2, layer["kid"], **kwargs))
        raw.update(prc_featuresdict_to_metric(features_1, features_2, layer["prc"], **kwargs))
        out.update(
            kid=float(raw[torch_fidelity.KEY_METRIC_KID_MEAN]),
            kid_std=float(raw[torch_fidelity.KEY_METRIC_KID_STD]),
            precision=float(raw[torch_fidelity.KEY_METRIC_PRECISION]),
            recall=float(raw[torch_fidelity.KEY_METRIC_RECALL]),
        )
    for key, value in out.items():
        if value != value:  # NaN
            raise GenbenchError(f"{key} came out NaN (generated samples degenerate?)")
    if not only_fid:
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
    if extractor in FOUNDATION:
        from bench.metrics.extractors.foundation import foundation_weights

        return foundation_weights(extractor, feature_weights)[1]
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
    scores = evaluate_uint8_samples(
        images_to_uint8(samples, spec.num_levels),
        data,
        extractor,
        settings,
        seed,
        device,
        feature_weights,
    )
    if scores is None:
        raise RuntimeError("evaluate_samples runs in one process; under torchrun use the evaluator")
    return scores


def evaluate_uint8_samples(
    samples: Tensor,
    data: ImageData,
    extractor: str,
    settings: EvalSettings,
    seed: int,
    device: torch.device | None = None,
    feature_weights: str | None = None,
    features_out: dict[str, Any] | None = None,
    only_fid: bool = False,
) -> dict[str, Any] | None:
    """FID / KID / precision-recall (FID alone with ``only_fid``) of samples already quantised
    to the data's levels and stored as uint8 0..255 (:func:`images_to_uint8`), against the
    train split. Collective under torchrun (:func:`fidelity_from_inputs`): rank 0 gets the
    scores, the others None.
    With ``features_out``, the test split's features are extracted (and cached) too, and
    all of them land there (:func:`fidelity_from_inputs`)."""
    spec = data.spec
    rgb = extractor in WEIGHTS_FROM_FILE  # Inception, DINOv2, CLIP: RGB networks
    weights_sha = extractor_fingerprint(extractor, feature_weights)
    reference = TensorImages(levels_to_uint8(data.levels("train"), spec.num_levels), rgb)
    cache_name = f"genbench-{spec.name}-train-{data.fingerprint()[:16]}-{weights_sha[:16]}"
    holdout = None
    if features_out is not None:  # the test split too, for the metrics that need unseen data
        holdout = TensorImages(levels_to_uint8(data.levels("test"), spec.num_levels), rgb)
    metrics = fidelity_from_inputs(
        TensorImages(samples.cpu(), rgb),
        reference,
        extractor,
        settings,
        seed,
        reference_cache_name=cache_name,
        device=device,
        feature_weights=feature_weights,
        holdout=holdout,
        holdout_cache_name=cache_name.replace("-train-", "-test-", 1),
        features_out=features_out,
        only_fid=only_fid,
    )
    if metrics is None:  # another rank than 0 under torchrun: its share is extracted
        return None
    metrics["settings"] = {
        "extractor": extractor,
        "weights_sha256": weights_sha,
        "num_samples": len(samples),
        "reference_split": "train",
        "reference_size": len(reference),
        "quantized_to_levels": spec.num_levels,
        "library": f"torch-fidelity {torch_fidelity.__version__}",
    }
    if not only_fid:
        metrics["settings"].update(
            kid_subset_size=metrics.pop("kid_subset_size"),
            kid_subsets=settings.kid_subsets,
            prc_neighborhood=metrics.pop("prc_neighborhood"),
        )
    return metrics


def second_network_fids(
    samples: Tensor,
    data: ImageData,
    names: Sequence[str],
    settings: EvalSettings,
    seed: int,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """FID (alone) of uint8 samples under each independently trained network of ``names``
    (:func:`bench.metrics.extractors.second_extractors`), as a run and ``genbench score``
    report it: ``{name: scores}``. Collective under torchrun: rank 0 gets the scores."""
    return {
        name: evaluate_uint8_samples(samples, data, name, settings, seed, device, only_fid=True)
        for name in names
    }


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
