"""Protocols: the data, budget and evaluator settings every method gets, from versioned toml.

A protocol file (``bench/protocols/<name>.toml``) has top-level ``name``, ``version``,
``description``, ``dataset`` and ``seeds``, a ``[train]`` and an ``[eval]`` table, optional
per-method hyper-parameter overrides under ``[methods.<name>]`` (a protocol that overrides a
method's defaults says so there), and a ``[changelog]`` with one line per version. Every key
is validated on load; unknown keys and wrong types are errors.
"""

from __future__ import annotations

import dataclasses
import math
import re
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
    #: micro-batches per rank and step (gradient accumulation): the gradient is the global
    #: batch's either way; memory falls with it (BatchNorm sees the micro-batch)
    accumulate: int = 1


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
    #: learning curve: images seen at which the cheap metrics are scored during training
    #: (bench/curves.py); empty: no curve
    at_images: tuple[int, ...] = ()
    #: memorization: the quantile of the real test images' distances to the train split
    #: below which a sample counts as memorised (bench/evaluators/fidelity_metrics)
    memorization_quantile: float = 0.05
    #: FD-infinity: the sample counts FID is fitted at, from this fraction of fid_samples up
    fd_inf_points: int = 15
    fd_inf_min_fraction: float = 0.1
    #: samples of FID / KID / precision-recall at a curve point
    curve_fid_samples: int = 500
    #: test images (the first ones) of bits/dim and the probe at a curve point
    curve_test_images: int = 1000


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
            tables = {"train": train, "eval": evals}
            if section not in tables:
                raise GenbenchError(f"unknown protocol section {section!r}. Valid: train, eval")
            table = tables[section]
            if key not in table:
                raise unknown_name(f"{section} setting", key, table)
            table[key] = value
        return dataclasses.replace(
            self,
            train=_build(TrainSettings, train, f"{self.name}: train"),
            eval=_build(EvalSettings, evals, f"{self.name}: eval"),
        )


#: ints beyond these are typos or overflows, not settings
MAX_INT = 2**31 - 1
MAX_IMAGES = 10**12
#: seeds go to torch, numpy and CUDA generators alike: keep them in the common range
MAX_SEED = 2**31
#: names that become folder names under ``runs/`` and ``reports/``
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

#: valid range of every train/eval setting: (lo, hi) inclusive or (lo, hi, brackets), as in
#: :attr:`bench.method.Method.hparam_ranges`; a list setting's range applies to each item
SETTING_RANGES: dict[str, tuple[Any, ...]] = {
    "budget_images": (0, None),  # 0: no training (closed-form and untrained rows)
    "batch_size": (1, None),
    "checkpoint_every_images": (0, None),  # 0: only at the end
    "throughput_warmup_steps": (0, None),
    "accumulate": (1, None),
    "fid_samples": (2, None),
    "kid_subset_size": (2, None),
    "kid_subsets": (1, None),
    "prc_neighborhood": (1, None),
    "sample_batch_size": (1, None),
    "eval_batch_size": (1, None),
    "probe_val_fraction": (0, 1, "()"),  # both the fit and the validation part non-empty
    "probe_c_grid": (0, None, "(]"),
    "probe_max_iter": (1, None),
    "knn_k": (1, None),
    "knn_temperature": (0, None, "(]"),
    "throughput_sample_batch": (1, None),
    "at_images": (1, MAX_IMAGES),
    "curve_fid_samples": (2, None),
    "curve_test_images": (2, None),
    "memorization_quantile": (0, 1, "()"),
    "fd_inf_points": (2, None),
    "fd_inf_min_fraction": (0, 1, "(]"),
}
#: list settings that may be empty
EMPTY_OK = frozenset({"at_images"})


def protocol_names() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.toml"))


def load_protocol(name_or_path: str | Path) -> Protocol:
    """Load a protocol by registered name or from a toml path, validating every key."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        if str(name_or_path) not in protocol_names():
            raise unknown_name("protocol", str(name_or_path), protocol_names())
        path = PROTOCOL_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise GenbenchError(f"protocol file {path} {what}")
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise GenbenchError(f"malformed protocol file {path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise GenbenchError(f"malformed protocol file {path}: {_one_line(exc)}") from None
    except (OSError, RecursionError) as exc:
        raise GenbenchError(f"cannot read protocol file {path}: {_one_line(exc)}") from None
    return parse_protocol(raw, str(path))


def parse_protocol(raw: Any, where: str = "<protocol>") -> Protocol:
    """A :class:`Protocol` from a parsed toml document, or one :class:`GenbenchError` line
    for the first thing wrong with it: nothing malformed reaches a run."""
    if not isinstance(raw, dict):
        raise GenbenchError(f"{where}: a protocol must be a table of keys")
    required = {"name", "version", "description", "dataset", "seeds", "train", "eval"}
    allowed = required | {"methods", "changelog"}
    missing = sorted(required - set(raw))
    if missing:
        raise GenbenchError(f"{where}: missing key {missing[0]!r}")
    extra = sorted(str(k) for k in set(raw) - allowed)
    if extra:
        raise unknown_name("protocol key", extra[0], allowed, where)
    for key in ("name", "description", "dataset"):
        if not isinstance(raw[key], str):
            raise GenbenchError(f"{where}: {key} must be a string, got {_short(raw[key])}")
    for key in ("name", "dataset"):  # both become folder names
        if not _NAME.match(raw[key]):
            raise GenbenchError(
                f"{where}: {key} {_short(raw[key])} must be 1-64 letters, digits, '.', '_' "
                "or '-', starting with a letter or digit"
            )
    version = raw["version"]
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MAX_INT:
        raise GenbenchError(f"{where}: version must be a positive integer, got {_short(version)}")
    seeds = check_seeds(raw["seeds"], f"{where}: seeds")
    methods = raw.get("methods", {})
    if not isinstance(methods, dict) or not all(isinstance(v, dict) for v in methods.values()):
        raise GenbenchError(f"{where}: [methods.<name>] tables must hold key = value pairs")
    _check_method_tables(methods, where)
    changelog = raw.get("changelog", {})
    if not isinstance(changelog, dict) or not all(isinstance(v, str) for v in changelog.values()):
        raise GenbenchError(f'{where}: [changelog] must hold version = "text" lines')
    if not all(re.fullmatch(r"[0-9]+", str(k)) for k in changelog):
        raise GenbenchError(f"{where}: [changelog] keys must be version numbers")
    changelog = {str(k): v for k, v in changelog.items()}
    if str(version) not in changelog:
        raise GenbenchError(f"{where}: the changelog has no line for version {version}")
    return Protocol(
        name=raw["name"],
        version=version,
        description=raw["description"],
        dataset=raw["dataset"],
        seeds=seeds,
        train=_build(TrainSettings, raw["train"], f"{where} [train]"),
        eval=_build(EvalSettings, raw["eval"], f"{where} [eval]"),
        methods=methods,
        changelog=changelog,
    )


def check_seeds(seeds: Any, where: str) -> tuple[int, ...]:
    """A non-empty list of distinct integer seeds in [0, 2**31), or one clear error."""
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise GenbenchError(f"{where} must be a non-empty list of integers")
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise GenbenchError(f"{where} must be a non-empty list of integers, got {_short(seed)}")
        if not 0 <= seed < MAX_SEED:
            raise GenbenchError(f"{where}: seed {_short(seed)} is not in [0, 2**31)")
    duplicates = sorted({s for s in seeds if seeds.count(s) > 1})
    if duplicates:
        raise GenbenchError(f"{where}: seed {duplicates[0]} is listed twice")
    return tuple(seeds)


def _check_method_tables(methods: dict[str, Any], where: str) -> None:
    """Every ``[methods.X]`` names a registered method and sets known hyper-parameters to
    values of the right type and range (checked against its defaults at a probe scale: the
    types do not depend on the data; the values are resolved again for the real data)."""
    from bench.method import DataSpec
    from bench.registry import METHODS

    probe = DataSpec("probe", 1, 8, 8, 17, 10)
    for name, table in methods.items():
        if name not in METHODS:
            raise unknown_name("method", str(name), METHODS.names(), f"{where} [methods]")
        try:
            METHODS.get(name).resolve_hparams(probe, table)
        except GenbenchError as exc:
            raise GenbenchError(f"{where} [methods.{name}]: {exc}") from None


def _build(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise GenbenchError(f"{where} must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            raise unknown_name("setting", str(key), fields, where)
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
    """One setting (a toml value or a ``--set`` string) typed and range-checked: ints are
    ints (not bools, not floats), floats are finite numbers, lists are non-empty lists of
    finite numbers; every value within :data:`SETTING_RANGES`."""
    kind = str(field.type)
    if kind.startswith("tuple"):
        if isinstance(value, str):
            text = value.strip()
            if text[:1] == "[" and text[-1:] == "]":
                text = text[1:-1]
            value = [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise GenbenchError(f"{where}: {key} must be a list of numbers, got {_short(value)}")
        if not value and key not in EMPTY_OK:
            raise GenbenchError(f"{where}: {key} must not be empty")
        item = "int" if kind.startswith("tuple[int") else "float"
        noun = "a list of integers" if item == "int" else "a list of numbers"
        value = tuple(_number(key, v, item, where, noun) for v in value)
    else:
        value = _number(key, value, kind, where)
    return value


def _number(key: str, value: Any, kind: str, where: str, noun: str = "") -> Any:
    from bench.method import describe_range, in_range

    noun = noun or ("an integer" if kind == "int" else "a number")
    if isinstance(value, str):
        try:
            value = int(value.strip()) if kind == "int" else float(value.strip())
        except ValueError:
            raise GenbenchError(f"{where}: {key} must be {noun}, got {_short(value)}") from None
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise GenbenchError(f"{where}: {key} must be {noun}, got {_short(value)}")
        cap = MAX_IMAGES if key.endswith("_images") else MAX_INT
        if value > cap:
            raise GenbenchError(f"{where}: {key} {_short(value)} is too large (at most {cap})")
    else:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise GenbenchError(f"{where}: {key} must be {noun}, got {_short(value)}")
        try:
            value = float(value)
        except OverflowError:
            raise GenbenchError(f"{where}: {key} {_short(value)} is too large") from None
        if not math.isfinite(value):
            raise GenbenchError(f"{where}: {key} must be finite, got {value}")
    bounds = SETTING_RANGES.get(key)
    if bounds is not None and not in_range(value, bounds):
        closed_floor = bounds[1] is None and (len(bounds) < 3 or bounds[2][0] == "[")
        wanted = f"at least {bounds[0]}" if closed_floor else describe_range(bounds)
        raise GenbenchError(f"{where}: {key} must be {wanted}, got {value}")
    return value


def _short(value: Any) -> str:
    """repr of a user's value, cut so that an error stays one readable line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300]
