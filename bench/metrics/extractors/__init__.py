"""Feature networks for FID / KID / precision-recall, registered in genbench and torch-fidelity.

- ``digits-cnn``: a small classifier trained on digits' train split (8x8, 17 levels).
- ``mnist-cnn``: the same architecture at 28x28, trained on mnist5k's train split; used for
  mnist5k and mnist.
- ``inception-v3-compat``: torch-fidelity's port of the TF Inception used by the FID paper, for
  RGB data; weights downloaded (once, into torch.hub's folder) or given with
  ``--feature-weights PATH``. Either file is read here with ``torch.load(weights_only=True)``;
  torch-fidelity, whose own loader unpickles without that restriction, never opens it.

The domain classifiers' weights ship in ``weights/`` and are made by
``python -m bench.metrics.extractors.train DATASET`` (deterministic on CPU). Every result
records the sha256 of the weights file its features came from.

All extractors take uint8 images (N, C, H, W) in 0..255, torch-fidelity's convention.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.feature_extractor_inceptionv3 import (
    URL_INCEPTION_V3,
    FeatureExtractorInceptionV3,
)
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from bench.errors import GenbenchError
from bench.registry import EXTRACTORS, register_extractor

WEIGHTS_DIR = Path(__file__).parent / "weights"
FEATURES = "penultimate"
LOGITS = "logits"


class DomainClassifier(nn.Module):
    """A small CNN classifier; its penultimate layer (128-d, post-ReLU) gives FID features.

    Two architectures, so that a ranking can be checked under a second, independently
    trained feature network (the ``-b`` extractors):

    - ``cnn``: 3x3 convolutions with max-pooling, a 2x2 average-pooled map (16w features);
    - ``cnn-b``: a 5x5 stem, strided 3x3 convolutions instead of pooling, and a global
      average pool (4w features), trained from another seed.
    """

    ARCHS = ("cnn", "cnn-b")

    def __init__(
        self,
        channels: int,
        size: int,
        num_classes: int = 10,
        width: int = 32,
        arch: str = "cnn",
    ) -> None:
        super().__init__()
        if arch not in self.ARCHS:
            raise ValueError(f"arch must be one of {self.ARCHS}, not {arch!r}")
        self.config: dict[str, Any] = {
            "channels": channels,
            "size": size,
            "num_classes": num_classes,
            "width": width,
        }
        if arch != "cnn":  # the first extractors' files have no arch: keep their config
            self.config["arch"] = arch
        w = width
        layers: list[nn.Module]
        if arch == "cnn":
            layers = [
                nn.Conv2d(channels, w, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(w, 2 * w, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]  # (B, C, S, S) -> (B, 2w, S/2, S/2)
            if size >= 16:
                layers += [nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            layers += [nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2)]
            flat = 16 * w
        else:
            layers = [
                nn.Conv2d(channels, w, 5, padding=2),
                nn.ReLU(),
                nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
                nn.ReLU(),
            ]  # (B, C, S, S) -> (B, 2w, S/2, S/2)
            if size >= 16:
                layers += [nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.ReLU()]
            layers += [nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)]
            flat = 4 * w
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(flat, 128), nn.ReLU())
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
    # the second, independently trained networks (another architecture, another seed): FID
    # under them sits beside FID under the first in every leaderboard (second_extractors)
    "digits-cnn-b": ExtractorInfo("digits-cnn-b", ("digits",), "digits", rgb=False),
    "mnist-cnn-b": ExtractorInfo("mnist-cnn-b", ("mnist5k", "mnist"), "mnist5k", rgb=False),
}
#: the architecture and training seed of each shipped domain network
DOMAIN_ARCHS = {
    "digits-cnn": ("cnn", 0),
    "mnist-cnn": ("cnn", 0),
    "digits-cnn-b": ("cnn-b", 1),
    "mnist-cnn-b": ("cnn-b", 1),
}


def second_extractors(dataset: str, primary: str) -> tuple[str, ...]:
    """The shipped domain networks for ``dataset`` other than ``primary``, whose FID every
    run also reports, so a ranking that holds only in one feature space shows."""
    if primary not in DOMAIN_EXTRACTORS:
        return ()
    return tuple(
        name
        for name, info in DOMAIN_EXTRACTORS.items()
        if name != primary and dataset in info.datasets and info.weights_path.exists()
    )


INCEPTION = ExtractorInfo("inception-v3-compat", ("cifar10",), None, rgb=True)
#: DINOv2 and CLIP (bench.metrics.extractors.foundation): FD on their features, CMMD on CLIP's;
#: general networks chosen with --extractor, default for no dataset (Inception stays FID's)
FOUNDATION = {
    "dinov2-vit-s-14": ExtractorInfo("dinov2-vit-s-14", (), None, rgb=True),
    "clip-vit-b-32": ExtractorInfo("clip-vit-b-32", (), None, rgb=True),
}
#: the extractors that take --feature-weights (a state dict read with weights_only=True)
WEIGHTS_FROM_FILE = (INCEPTION.name, *FOUNDATION)

for _info in (*DOMAIN_EXTRACTORS.values(), INCEPTION, *FOUNDATION.values()):
    register_extractor(_info.name)(_info)


@dataclasses.dataclass(frozen=True)
class FeatureNetwork(ExtractorInfo):
    """A feature network registered by a plug-in (:func:`register_feature_network`)."""

    build: Any = None  # () -> nn.Module: uint8 (N, C, H, W) -> (N, d) features
    #: (C, H, W) the network takes, or None for any shape
    input_shape: tuple[int, int, int] | None = None


#: name -> the plug-in feature networks
FEATURE_NETWORKS: dict[str, FeatureNetwork] = {}
PLUGIN_FEATURES = "features"


def register_feature_network(
    name: str,
    build: Any,
    *,
    datasets: tuple[str, ...] = (),
    input_shape: tuple[int, int, int] | None = None,
) -> FeatureNetwork:
    """Register a feature network for FID / KID / precision-recall (a plug-in's own backbone,
    as torch-fidelity's ``register_feature_extractor``): ``build()`` returns a module that
    maps uint8 images (N, C, H, W) in 0..255 to (N, d) features. It is built once, frozen, in
    eval mode; results record the sha256 of its weights. ``datasets``: the datasets it is
    the default extractor of; ``input_shape``: the image shape it takes (checked before a
    study), None for any."""
    if not callable(build):
        raise GenbenchError(f"feature network {name!r}: build must be a callable")
    info = FeatureNetwork(name, tuple(datasets), None, False, build, input_shape)
    register_extractor(name)(info)
    FEATURE_NETWORKS[name] = info
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        cls = type(
            f"FidelityNetwork_{len(FEATURE_EXTRACTORS_REGISTRY)}",
            (_PluginFidelityExtractor,),
            {"network_name": name},
        )
        register_feature_extractor(name, cls)
    return info


@cache
def feature_network(name: str) -> tuple[nn.Module, str]:
    """A plug-in feature network, built and frozen, and the sha256 of its weights."""
    info = FEATURE_NETWORKS[name]
    try:
        module = info.build()
    except Exception as exc:
        line = (str(exc).strip().splitlines() or [""])[0][:160]
        raise GenbenchError(
            f"feature network {name!r} failed to build: {exc.__class__.__name__}: {line}"
        ) from None
    if not isinstance(module, nn.Module):
        raise GenbenchError(f"feature network {name!r}: build() returned no nn.Module")
    module.eval().requires_grad_(False)
    digest = hashlib.sha256(name.encode())
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return module, digest.hexdigest()


def check_feature_network(name: str, shape: tuple[int, int, int]) -> None:
    """Build a plug-in network and run it on two images of ``shape``: (2, d) finite floats."""
    info = FEATURE_NETWORKS[name]
    if info.input_shape is not None and tuple(info.input_shape) != tuple(shape):
        raise GenbenchError(
            f"feature network {name!r} takes {'x'.join(map(str, info.input_shape))} images; "
            f"this data has {'x'.join(map(str, shape))}"
        )
    module = feature_network(name)[0]
    try:
        with torch.no_grad():
            out = module(torch.zeros(2, *shape, dtype=torch.uint8))
    except Exception as exc:
        line = (str(exc).strip().splitlines() or [""])[0][:160]
        raise GenbenchError(
            f"feature network {name!r} fails on {'x'.join(map(str, shape))} images: "
            f"{exc.__class__.__name__}: {line}"
        ) from None
    if not isinstance(out, Tensor) or out.ndim != 2 or len(out) != 2:
        raise GenbenchError(
            f"feature network {name!r} returned {getattr(out, 'shape', type(out))}, not (N, d)"
        )
    if not out.dtype.is_floating_point or not bool(torch.isfinite(out).all()):
        raise GenbenchError(f"feature network {name!r} returned non-finite or non-float features")


def default_extractor(dataset: str, file_dataset: bool = False) -> str:
    for name in EXTRACTORS.names():
        if dataset in EXTRACTORS.get(name).datasets:
            return name
    if file_dataset:
        raise GenbenchError(
            f"dataset {dataset!r} comes from files: name the feature extractor for FID with "
            f"--extractor (or `extractor = ...` in its card): {INCEPTION.name} for any images, "
            "digits-cnn for 8x8 and mnist-cnn for 28x28 grayscale digits"
        )
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


#: what torch.load raises on a file that is not a weights file, or on a pickle that asks for
#: a global outside weights_only's allow-list (the refusal that keeps code from running)
_LOAD_ERRORS = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    KeyError,
    IndexError,
    UnicodeDecodeError,
    ImportError,
)


def load_weights_file(path: Path, what: str) -> tuple[dict[str, Tensor], str]:
    """A state dict (name -> tensor) and the sha256 of the file's bytes, read once.

    ``torch.load(weights_only=True)`` rebuilds tensors and plain containers only: a pickle
    that would call anything else is refused before it runs. Reading the bytes once and
    hashing those same bytes means the sha recorded is the sha of what was loaded."""
    if not path.exists():
        raise GenbenchError(f"{what} {path} does not exist")
    if not path.is_file():
        raise GenbenchError(f"{what} {path} is not a file")
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise GenbenchError(f"{what} {path} cannot be read: {exc.strerror}") from None
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except _LOAD_ERRORS as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:160]
        raise GenbenchError(
            f"{what} {path} is not a loadable weights file (read with weights_only=True): {first}"
        ) from None
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise GenbenchError(f"{what} {path} is not a state dict of named tensors")
    return dict(state), hashlib.sha256(payload).hexdigest()


def download_weights(url: str, what: str, hint: str) -> Path:
    """A weights file in torch.hub's folder, downloaded once and never loaded here (the
    caller reads it with weights_only=True); ``hint`` says what --feature-weights takes."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(path), progress=False)
        except OSError as exc:
            raise GenbenchError(
                f"could not download the {what} weights ({exc.__class__.__name__}); "
                f"pass --feature-weights PATH to {hint}"
            ) from None
    return path


def default_inception_weights() -> Path:
    """torch-fidelity's Inception weights in torch.hub's folder, downloaded without loading
    (torch-fidelity's own download would unpickle them with weights_only=False)."""
    return download_weights(URL_INCEPTION_V3, "Inception", "torch-fidelity's weights file")


@cache
def inception_weights(weights_path: str | None) -> tuple[dict[str, Tensor], str]:
    """Inception's state dict and its file's sha256: the given file or the default one."""
    path = Path(weights_path) if weights_path else default_inception_weights()
    return load_weights_file(path, "--feature-weights" if weights_path else "Inception weights")


def inception_weights_sha(weights_path: str | None) -> str:
    """sha256 of the Inception weights file: the given one, or torch-fidelity's download."""
    return inception_weights(weights_path)[1]


def inception_feature_extractor(
    features_list: list[str], weights_path: str | None, **kwargs: Any
) -> FeatureExtractorInceptionV3:
    """torch-fidelity's Inception with weights we loaded ourselves (weights_only=True).

    Its constructor only accepts weights through ``torch.load(..., weights_only=False)`` of
    a path or file object; we give it an in-memory copy that we serialised from the
    validated tensors, so what it unpickles is tensors we made, never the user's bytes."""
    state = inception_weights(weights_path)[0]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    try:
        return FeatureExtractorInceptionV3(
            INCEPTION.name, features_list, feature_extractor_weights_path=buffer, **kwargs
        )
    except RuntimeError as exc:  # load_state_dict: missing / unexpected keys, wrong shapes
        first = str(exc).strip().splitlines()[0][:160]
        what = f"--feature-weights {weights_path}" if weights_path else "the Inception weights"
        raise GenbenchError(f"{what} do not fit torch-fidelity's Inception: {first}") from None


def torch_fidelity_builtin(name: str) -> bool:
    """An extractor shipped by torch-fidelity (vgg16, clip, dinov2, ...): those load their
    weights with torch-fidelity's unrestricted loader, so genbench does not run them."""
    cls = FEATURE_EXTRACTORS_REGISTRY.get(name)
    return cls is not None and cls.__module__.startswith("torch_fidelity.")


def validate_extractor(
    extractor: str,
    dataset: str,
    feature_weights: str | None,
    file_spec: Any = None,
    shape: tuple[int, int, int] | None = None,
) -> None:
    """Check an extractor choice before the first run, so that a bad one costs nothing.

    A domain classifier scores only the data it was made for (mnist-cnn on 8x8 digits gives
    a FID of 655: meaningless); Inception is general and takes any dataset. Weights given
    with --feature-weights are loaded now (weights_only=True) and fitted into the network,
    so a missing, garbage or code-carrying file fails here in one line."""
    info: ExtractorInfo = EXTRACTORS.get(extractor)
    if extractor in FEATURE_NETWORKS:
        if feature_weights is not None:
            raise GenbenchError(f"--feature-weights applies to {INCEPTION.name} only")
        if shape is not None:
            check_feature_network(extractor, shape)
        return
    if extractor in DOMAIN_EXTRACTORS and file_spec is not None:
        # a user's own data (``file_spec``: its DataSpec): a domain classifier the user named
        # scores it when the images have the classifier's input shape
        config = load_domain_classifier(extractor)[0].config
        want = (config["channels"], config["size"], config["size"])
        if tuple(file_spec.shape) != want:
            raise GenbenchError(
                f"feature extractor {extractor!r} takes {want[0]}x{want[1]}x{want[2]} images; "
                f"{dataset!r} has {'x'.join(map(str, file_spec.shape))}. Use "
                f"{INCEPTION.name} (any images)"
            )
    elif extractor in DOMAIN_EXTRACTORS and dataset not in info.datasets:
        valid = [n for n in EXTRACTORS.names() if dataset in EXTRACTORS.get(n).datasets]
        valid += [] if INCEPTION.name in valid else [INCEPTION.name]
        raise GenbenchError(
            f"feature extractor {extractor!r} is made for {', '.join(info.datasets)}, not "
            f"{dataset!r}. Valid extractors for {dataset}: {', '.join(sorted(valid))}"
        )
    if feature_weights is None:
        return
    if not feature_weights.strip():
        raise GenbenchError("--feature-weights is empty: give the path of a weights file")
    if extractor not in WEIGHTS_FROM_FILE:
        raise GenbenchError(
            f"--feature-weights applies to {', '.join(WEIGHTS_FROM_FILE)} only; {extractor!r} "
            "uses its shipped weights"
        )
    if extractor in FOUNDATION:
        from bench.metrics.extractors.foundation import build_network

        build_network(extractor, feature_weights)
        return
    inception_feature_extractor(["2048"], feature_weights)


class _OneModelExtractor(FeatureExtractorBase):
    """torch-fidelity adapter around one frozen module of ours: its layers are
    :attr:`layers` (the first one is every metric's), its forward returns them in float64."""

    layers: tuple[str, ...] = ()

    @classmethod
    def get_provided_features_list(cls) -> tuple[str, ...]:
        return cls.layers

    @classmethod
    def get_default_feature_layer_for_metric(cls, metric: str) -> str:
        return cls.layers[0]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> Tensor:
        raise NotImplementedError

    def outputs(self, input: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, input: Tensor) -> tuple[Tensor, ...]:
        out = self.outputs(input)
        return tuple(out[name].double() for name in self.features_list)


class _DomainFidelityExtractor(_OneModelExtractor):
    """torch-fidelity adapter around a shipped domain classifier."""

    extractor_name = ""
    layers = (FEATURES, LOGITS)

    def __init__(self, name: str, features_list: list[str], **kwargs: Any) -> None:
        super().__init__(name, features_list)
        self.model = load_domain_classifier(self.extractor_name)[0]

    def outputs(self, input: Tensor) -> dict[str, Tensor]:
        if input.dtype != torch.uint8:
            raise GenbenchError(f"{self.name} expects uint8 images, got {input.dtype}")
        feats, logits = self.model(input)
        return {FEATURES: feats, LOGITS: logits}


class _PluginFidelityExtractor(_OneModelExtractor):
    """torch-fidelity adapter around a plug-in feature network (one layer: its output)."""

    network_name = ""
    layers = (PLUGIN_FEATURES,)

    def __init__(self, name: str, features_list: list[str], **kwargs: Any) -> None:
        super().__init__(name, features_list)
        self.model = feature_network(self.network_name)[0]

    def outputs(self, input: Tensor) -> dict[str, Tensor]:
        return {PLUGIN_FEATURES: self.model(input)}


class FoundationExtractor(_OneModelExtractor):
    """torch-fidelity adapter around DINOv2 or CLIP with weights we loaded ourselves
    (:mod:`bench.metrics.extractors.foundation`); built directly, never through
    torch-fidelity's registry, whose classes of the same names load their own weights."""

    def __init__(self, name: str, features_list: list[str], weights_path: str | None) -> None:
        from bench.metrics.extractors.foundation import LAYERS, build_network

        self.layers = (LAYERS[name],)
        super().__init__(name, features_list)
        self.network_name = name
        self.model = build_network(name, weights_path)

    def get_provided_features_list(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.layers

    def outputs(self, input: Tensor) -> dict[str, Tensor]:
        from bench.metrics.extractors.foundation import features

        return {self.layers[0]: features(self.network_name, self.model, input)}


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
