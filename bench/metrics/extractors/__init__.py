"""Feature networks for FID / KID / precision-recall, registered in genbench and torch-fidelity.

- ``digits-cnn``: a small classifier trained on digits' train split (8x8, 17 levels).
- ``mnist-cnn``: the same architecture at 28x28, trained on mnist5k's train split; used for
  mnist5k and mnist.
- ``inception-v3-compat``: torch-fidelity's port of the TF Inception used by the FID paper, for
  RGB data; weights downloaded by torch-fidelity or given with ``--feature-weights PATH``.

The domain classifiers' weights ship in ``weights/`` and are made by
``python -m bench.metrics.extractors.train DATASET`` (deterministic on CPU). Every result
records the sha256 of the weights file its features came from.

All extractors take uint8 images (N, C, H, W) in 0..255, torch-fidelity's convention.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from bench.errors import GenbenchError
from bench.registry import EXTRACTORS, register_extractor

WEIGHTS_DIR = Path(__file__).parent / "weights"
FEATURES = "penultimate"
LOGITS = "logits"


class DomainClassifier(nn.Module):
    """A small CNN classifier; its penultimate layer (128-d, post-ReLU) gives FID features."""

    def __init__(self, channels: int, size: int, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.config = {
            "channels": channels,
            "size": size,
            "num_classes": num_classes,
            "width": width,
        }
        w = width
        layers: list[nn.Module] = [
            nn.Conv2d(channels, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]  # (B, C, S, S) -> (B, 2w, S/2, S/2)
        if size >= 16:
            layers += [nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        layers += [nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2)]
        self.body = nn.Sequential(*layers, nn.Flatten())  # -> (B, 16w)
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(16 * w, 128), nn.ReLU())
        self.classifier = nn.Linear(128, num_classes)

    def features(self, images_uint8: Tensor) -> Tensor:
        x = images_uint8.float() / 255.0
        return self.head(self.body(x))  # (B, 128)

    def forward(self, images_uint8: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.features(images_uint8)
        return feats, self.classifier(feats)


@dataclasses.dataclass(frozen=True)
class ExtractorInfo:
    """What the evaluators need to know of an extractor; registered under its name."""

    name: str
    datasets: tuple[str, ...]
    #: trained on this dataset (for the shipped domain classifiers)
    trained_on: str | None
    rgb: bool  # expects 3-channel input (grayscale data is repeated over channels)

    @property
    def weights_path(self) -> Path:
        return WEIGHTS_DIR / f"{self.name}.pt"


DOMAIN_EXTRACTORS = {
    "digits-cnn": ExtractorInfo("digits-cnn", ("digits",), "digits", rgb=False),
    "mnist-cnn": ExtractorInfo("mnist-cnn", ("mnist5k", "mnist"), "mnist5k", rgb=False),
}
INCEPTION = ExtractorInfo("inception-v3-compat", ("cifar10",), None, rgb=True)

for _info in (*DOMAIN_EXTRACTORS.values(), INCEPTION):
    register_extractor(_info.name)(_info)


def default_extractor(dataset: str) -> str:
    for name in EXTRACTORS.names():
        if dataset in EXTRACTORS.get(name).datasets:
            return name
    raise GenbenchError(
        f"no feature extractor is registered for dataset {dataset!r}; train one with "
        f"`python -m bench.metrics.extractors.train {dataset}` or pass --extractor "
        f"(choices: {', '.join(EXTRACTORS.names())})"
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@cache
def load_domain_classifier(name: str) -> tuple[DomainClassifier, str, dict[str, Any]]:
    """The shipped classifier in eval mode, its weights' sha256 and its training metadata."""
    info = DOMAIN_EXTRACTORS[name]
    path = info.weights_path
    if not path.exists():
        raise GenbenchError(
            f"weights of feature extractor {name!r} are missing ({path}); make them with "
            f"`python -m bench.metrics.extractors.train {info.trained_on}`"
        )
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = DomainClassifier(**payload["config"])
    model.load_state_dict(payload["state_dict"])
    model.eval().requires_grad_(False)
    return model, sha256_file(path), dict(payload["meta"])


def inception_weights_sha(weights_path: str | None) -> str:
    """sha256 of the Inception weights file: the given one, or torch-fidelity's download."""
    if weights_path:
        return sha256_file(Path(weights_path))
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(hub.glob("weights-inception-2015-12-05-*.pth")) if hub.exists() else []
    return sha256_file(found[0]) if found else "torch-fidelity-default"


class _DomainFidelityExtractor(FeatureExtractorBase):
    """torch-fidelity adapter around a shipped domain classifier."""

    extractor_name = ""

    def __init__(self, name: str, features_list: list[str], **kwargs: Any) -> None:
        super().__init__(name, features_list)
        self.model = load_domain_classifier(self.extractor_name)[0]

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return (FEATURES, LOGITS)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return FEATURES

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> Tensor:
        raise NotImplementedError

    def forward(self, input: Tensor) -> tuple[Tensor, ...]:
        if input.dtype != torch.uint8:
            raise GenbenchError(f"{self.name} expects uint8 images, got {input.dtype}")
        feats, logits = self.model(input)
        out = {FEATURES: feats, LOGITS: logits}
        return tuple(out[name].double() for name in self.features_list)


def _register_in_torch_fidelity() -> None:
    for name in DOMAIN_EXTRACTORS:
        if name in FEATURE_EXTRACTORS_REGISTRY:
            continue
        cls = type(
            f"FidelityExtractor_{name.replace('-', '_')}",
            (_DomainFidelityExtractor,),
            {"extractor_name": name},
        )
        register_feature_extractor(name, cls)


_register_in_torch_fidelity()


def torchmetrics_feature_module(name: str) -> nn.Module:
    """The same features as a plain module for torchmetrics' FrechetInceptionDistance."""

    class Features(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = load_domain_classifier(name)[0]
            self.num_features = 128

        def forward(self, images_uint8: Tensor) -> Tensor:
            return self.model.features(images_uint8)

    return Features()


def cache_dir() -> Path:
    env = os.environ.get("GENBENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "genbench"
