"""Protocols: the data, budget and evaluator settings every method gets, from versioned toml.

A protocol file (``bench/protocols/<name>.toml``) has top-level ``name``, ``version``,
``description``, ``dataset`` and ``seeds``, a ``[train]`` and an ``[eval]`` table, optional
per-method hyper-parameter overrides under ``[methods.<name>]`` (a protocol that overrides a
method's defaults says so there), and a ``[changelog]`` with one line per version. Every key
is validated on load; unknown keys and wrong types are errors.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from bench.errors import GenbenchError, unknown_name

PROTOCOL_DIR = Path(__file__).parent / "protocols"


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    #: training budget in images seen by the method's training steps (never epochs)
    budget_images: int
    batch_size: int = 64
    #: write a resumable checkpoint every this many images (0: only at the end)
    checkpoint_every_images: int = 0
    #: steps excluded from the training-throughput window (warm-up, allocator, caches)
    throughput_warmup_steps: int = 5


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    #: generated samples for FID / KID / precision-recall (capped at the reference size)
    fid_samples: int = 1000
    kid_subset_size: int = 1000
    kid_subsets: int = 100
    #: k of the k-NN radii of improved precision/recall (Kynkaanniemi et al. 2019)
    prc_neighborhood: int = 3
    sample_batch_size: int = 500
    eval_batch_size: int = 500
    #: fraction of train carved out (fixed seed) to pick the probe's L2 strength
    probe_val_fraction: float = 0.1
    #: inverse L2 strengths C of the logistic-regression probe
    probe_c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    probe_max_iter: int = 1000
    knn_k: int = 20
    knn_temperature: float = 0.07
    #: images per timed sampling call for sample throughput
    throughput_sample_batch: int = 100


@dataclasses.dataclass(frozen=True)
class Protocol:
    name: str
    version: int
    description: str
    dataset: str
    seeds: tuple[int, ...]
    train: TrainSettings
    eval: EvalSettings
    methods: dict[str, dict[str, Any]]
    changelog: dict[str, str]

    @property
    def tag(self) -> str:
        return f"{self.name}@v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: dict[str, Any]) -> Protocol:
        """A copy with ``train.key`` / ``eval.key`` values replaced (from ``--set``)."""
        train, evals = dataclasses.asdict(self.train), dataclasses.asdict(self.eval)
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            table = {"train": train, "eval": evals}[section]
            if key not in table:
                raise unknown_name(f"{section} setting", key, table)
            table[key] = value
        return dataclasses.replace(
            self,
            train=_build(TrainSettings, train, f"{self.name}: train"),
            eval=_build(EvalSettings, evals, f"{self.name}: eval"),
        )


def protocol_names() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.toml"))


def load_protocol(name_or_path: str | Path) -> Protocol:
    """Load a protocol by registered name or from a toml path, validating every key."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        if str(name_or_path) not in protocol_names():
            raise unknown_name("protocol", str(name_or_path), protocol_names())
        path = PROTOCOL_DIR / f"{name_or_path}.toml"
    if not path.exists():
        raise GenbenchError(f"protocol file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise GenbenchError(f"malformed protocol file {path}: {exc}") from None
    return parse_protocol(raw, str(path))


def parse_protocol(raw: dict[str, Any], where: str = "<protocol>") -> Protocol:
    required = {"name", "version", "description", "dataset", "seeds", "train", "eval"}
    allowed = required | {"methods", "changelog"}
    missing = sorted(required - set(raw))
    if missing:
        raise GenbenchError(f"{where}: missing key {missing[0]!r}")
    extra = sorted(set(raw) - allowed)
    if extra:
        raise unknown_name("protocol key", extra[0], allowed, where)
    version = raw["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise GenbenchError(f"{where}: version must be a positive integer, got {version!r}")
    seeds = raw["seeds"]
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)):
        raise GenbenchError(f"{where}: seeds must be a non-empty list of integers")
    methods = raw.get("methods", {})
    if not isinstance(methods, dict) or not all(isinstance(v, dict) for v in methods.values()):
        raise GenbenchError(f"{where}: [methods.<name>] tables must hold key = value pairs")
    changelog = {str(k): str(v) for k, v in raw.get("changelog", {}).items()}
    if str(version) not in changelog:
        raise GenbenchError(f"{where}: the changelog has no line for version {version}")
    for key in ("name", "description", "dataset"):
        if not isinstance(raw[key], str):
            raise GenbenchError(f"{where}: {key} must be a string")
    return Protocol(
        name=raw["name"],
        version=version,
        description=raw["description"],
        dataset=raw["dataset"],
        seeds=tuple(seeds),
        train=_build(TrainSettings, raw["train"], f"{where} [train]"),
        eval=_build(EvalSettings, raw["eval"], f"{where} [eval]"),
        methods=methods,
        changelog=changelog,
    )


def _build(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise GenbenchError(f"{where} must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            raise unknown_name("setting", key, fields, where)
        values[key] = _check_type(key, value, fields[key], where)
    missing = [
        n
        for n, f in fields.items()
        if n not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise GenbenchError(f"{where}: missing setting {missing[0]!r}")
    return cls(**values)


def _check_type(key: str, value: Any, field: dataclasses.Field[Any], where: str) -> Any:
    kind = str(field.type)
    if isinstance(value, str) and kind in ("int", "float"):
        try:
            value = int(value) if kind == "int" else float(value)
        except ValueError:
            raise GenbenchError(f"{where}: {key} must be {kind}, got {value!r}") from None
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise GenbenchError(f"{where}: {key} must be a non-negative integer, got {value!r}")
    elif kind == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise GenbenchError(f"{where}: {key} must be a number, got {value!r}")
        value = float(value)
    elif kind.startswith("tuple"):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        try:
            value = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise GenbenchError(f"{where}: {key} must be a list of numbers") from None
        if not value:
            raise GenbenchError(f"{where}: {key} must not be empty")
    minimum = {
        "batch_size": 1,
        "sample_batch_size": 1,
        "eval_batch_size": 1,
        "fid_samples": 2,
        "kid_subset_size": 2,
        "kid_subsets": 1,
        "prc_neighborhood": 1,
        "knn_k": 1,
    }
    if key in minimum and value < minimum[key]:
        raise GenbenchError(f"{where}: {key} must be at least {minimum[key]}, got {value}")
    return value
