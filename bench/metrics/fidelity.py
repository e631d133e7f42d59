"""Sample quality: FID, KID and precision/recall computed by torch-fidelity.

Generated images are quantised to the dataset's levels (as saved image files would be) and
compared with the train split (the reference) through a registered feature extractor
(:mod:`bench.metrics.extractors`). torch-fidelity caches the reference features and
statistics under a name that hashes (dataset content, split, extractor, weights), so they
are computed once per machine.

- FID: Heusel et al. 2017, Frechet distance of Gaussians fitted to the features.
- KID: Binkowski et al. 2018, unbiased MMD^2 with a cubic polynomial kernel over subsets;
  reported because FID is biased at small sample counts.
- Precision / recall: Kynkaanniemi et al. 2019, k-NN manifolds in feature space.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch_fidelity
from torch import Tensor
from torch.utils.data import Dataset

from bench.data import ImageData
from bench.errors import GenbenchError
from bench.method import to_levels
from bench.metrics.extractors import (
    DOMAIN_EXTRACTORS,
    INCEPTION,
    cache_dir,
    inception_weights_sha,
    load_domain_classifier,
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
    """torch-fidelity's FID, KID and precision/recall of ``generated`` against ``reference``."""
    num_generated, num_reference = len(generated), len(reference)  # type: ignore[arg-type]
    if num_generated < 2 or num_reference < 2:
        raise GenbenchError(
            f"too few samples for FID: {num_generated} generated, {num_reference} reference "
            "(need at least 2 of each)"
        )
    kid_subset_size = min(settings.kid_subset_size, num_generated, num_reference)
    neighborhood = min(settings.prc_neighborhood, num_generated - 1, num_reference - 1)
    kwargs: dict[str, Any] = dict(
        input1=generated,
        input2=reference,
        cuda=device is not None and device.type == "cuda",
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
        cache=reference_cache_name is not None,
        cache_root=str(cache_dir() / "fidelity"),
        input2_cache_name=reference_cache_name,
    )
    if feature_weights:
        kwargs["feature_extractor_weights_path"] = feature_weights
    raw = torch_fidelity.calculate_metrics(**kwargs)
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
    rgb = extractor == INCEPTION.name
    weights_sha = extractor_fingerprint(extractor, feature_weights)
    reference = TensorImages(levels_to_uint8(data.levels("train"), spec.num_levels), rgb)
    cache_name = f"genbench-{spec.name}-train-{data.fingerprint()[:16]}-{weights_sha[:16]}"
    metrics: dict[str, Any] = fidelity_from_inputs(
        TensorImages(images_to_uint8(samples, spec.num_levels), rgb),
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
    if extractor not in DOMAIN_EXTRACTORS:
        raise GenbenchError(f"extractor {extractor!r} has no classifier head")
    model = load_domain_classifier(extractor)[0]
    uint8 = images_to_uint8(samples, data.spec.num_levels)
    with torch.no_grad():
        logits = model(uint8)[1]
    return float((logits.argmax(1) == labels.cpu()).float().mean())
