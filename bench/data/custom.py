"""Datasets from the user's own image files: ``folder:PATH``, ``npz:PATH`` or a dataset card.

A dataset argument (``--datasets``, :func:`bench.data.load_dataset`) may be, besides the name
of a built-in dataset:

- ``folder:PATH``: a folder of PNG/JPEG files (suffixes ``.png .jpg .jpeg``, any case), read
  with PIL. Either the images lie directly in the folder (unlabeled data), or in one level of
  class subfolders (label = index of the subfolder's name among the sorted names; the names
  are recorded as ``class_names``). Image files at the root and class subfolders at once are
  an error. A folder holding exactly ``train/`` and ``test/`` (each flat, or with the same
  class subfolders) gives its own split instead of the seeded one. Hidden entries (starting
  with '.') and files with other suffixes are ignored. Images must be 8-bit grayscale (mode
  ``L``) or ``RGB``; ``LA``/``RGBA`` images whose alpha is fully opaque are converted, any
  other mode (``1``, ``P``, ``I;16``, ``CMYK``, transparent pixels...) is an error. All
  images must have the same size and the same number of channels.
- ``npz:PATH``: a numpy ``.npz`` archive (read with ``allow_pickle=False``: an object array
  is refused, never unpickled) with key ``images``, uint8 of shape (N, H, W) or (N, H, W, C)
  with C in {1, 3}, and optionally ``labels``, N integers >= 0 (num_classes = max + 1).
  Other keys are ignored.
- a dataset card, ``PATH.toml`` or ``card:PATH`` (TOML)::

      name = "shapes"          # required; a safe name, not a built-in dataset's
      path = "shapes.npz"      # required; relative to the card's folder
      format = "npz"           # optional: "npz" | "folder" (inferred from the path)
      test_fraction = 0.2      # optional, in (0, 1)
      split_seed = 0           # optional, integer >= 0
      extractor = "digits-cnn" # optional: default feature extractor for FID on this data
      description = "..."      # optional: one line for `genbench list datasets`

- the ``name`` of a registered card: ``*.toml`` cards in the folders of
  ``$GENBENCH_DATASETS`` (``os.pathsep``-separated), else ``~/.config/genbench/datasets``.
  :func:`register_card` validates a card and copies it there.

Levels are uint8 (256 levels), laid out (N, C, H, W); unlabeled data gets label 0 everywhere
and ``num_classes = 1``. The dataset's name is the card's ``name``, else the folder's name or
the npz file's stem made safe (characters outside ``[A-Za-z0-9._-]`` become '-'; a name equal
to a built-in dataset's gets ``-custom`` appended).

Canonical order and split (the same images and labels give the same split whatever format
they come in and whatever order the files or rows are in):

1. every item gets ``sha256(label as 8-byte little-endian integer + its uint8 levels in
   (C, H, W) order)``, and the items are sorted by that digest;
2. ``content_sha256`` = sha256 over the shape (N, C, H, W) as four 8-byte little-endian
   integers followed by the sorted digests (for a given train/test split: ``b"train"``,
   shape and digests of train, then the same for ``b"test"``);
3. the seeded split takes ``perm = np.random.default_rng(split_seed).permutation(N)`` of the
   canonical order: test = the first ``round(N * test_fraction)`` items of ``perm`` (kept
   within [2, N - 2]), train = the rest, in ``perm`` order. A given split puts each of
   train and test in canonical order. Each split needs at least 2 images.

Every problem with the files or the card is one :class:`~bench.errors.GenbenchError` line
naming the offending file. Decoded files are cached in-process only (keyed on the resolved
path and the size and mtime of every file read); nothing is written to disk.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import tomllib
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.data import ImageData
from bench.errors import GenbenchError, unknown_name
from bench.method import DataSpec
from bench.registry import DATASETS, EXTRACTORS, SAFE_NAME

log = logging.getLogger(__name__)

PREFIXES = ("folder:", "npz:", "card:")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_SPLIT_SEED = 0
MIN_PER_SPLIT = 2
CARD_KEYS = ("name", "path", "format", "test_fraction", "split_seed", "extractor", "description")
FORMATS = ("folder", "npz")


# ---------------------------------------------------------------------------- specs


def card_dirs() -> list[Path]:
    """Folders searched for registered ``*.toml`` cards: ``$GENBENCH_DATASETS``
    (``os.pathsep``-separated) if set, else ``~/.config/genbench/datasets``."""
    env = os.environ.get("GENBENCH_DATASETS", "")
    dirs = [Path(part).expanduser() for part in env.split(os.pathsep) if part.strip()]
    return dirs or [Path.home() / ".config" / "genbench" / "datasets"]


def _is_builtin(name: str) -> bool:
    return name in DATASETS


def is_custom(text: str) -> bool:
    """Whether ``text`` names a custom dataset (a prefix, a ``.toml`` path or a registered
    card's name) rather than a built-in one."""
    if text.startswith(PREFIXES) or text.endswith(".toml"):
        return True
    if not SAFE_NAME.fullmatch(text) or _is_builtin(text):
        return False
    return text in registered_cards()


def load_custom(text: str) -> ImageData | None:
    """Load the custom dataset ``text`` names, or None when it does not name one."""
    for prefix in ("folder:", "npz:"):
        if text.startswith(prefix):
            fmt = prefix[:-1]
            path = _spec_path(text, prefix)
            return load_files(path, fmt, name=safe_dataset_name(_base_name(path, fmt)))
    if text.startswith("card:"):
        return load_card(_spec_path(text, "card:"))
    if text.endswith(".toml"):
        return load_card(Path(text).expanduser())
    if not SAFE_NAME.fullmatch(text) or _is_builtin(text):
        return None
    card = registered_cards().get(text)
    return None if card is None else load_card(card)


def _spec_path(text: str, prefix: str) -> Path:
    rest = text[len(prefix) :].strip()
    if not rest:
        raise GenbenchError(f"dataset {text!r}: a path is missing after {prefix!r}")
    return Path(rest).expanduser()


def _base_name(path: Path, fmt: str) -> str:
    resolved = path.resolve()
    return resolved.stem if fmt == "npz" else resolved.name


def safe_dataset_name(raw: str) -> str:
    """``raw`` made a valid dataset name (see :data:`bench.registry.SAFE_NAME`) that is not a
    built-in dataset's."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", raw)
    name = re.sub(r"^[^A-Za-z0-9]+", "", name)[:64] or "custom"
    if _is_builtin(name):  # never mix with a built-in dataset's runs/ folder and results
        name = f"{name[:57]}-custom"
    return name


# ---------------------------------------------------------------------------- cards


@dataclasses.dataclass(frozen=True)
class Card:
    """A validated dataset card."""

    card: Path  # the card file, resolved
    name: str
    path: Path  # the data, resolved
    format: str
    test_fraction: float
    split_seed: int
    extractor: str | None
    description: str | None
    #: the split settings the card sets explicitly
    explicit: frozenset[str]


def _read_toml(card: Path) -> dict[str, Any]:
    if not card.is_file():
        raise GenbenchError(f"dataset card {card} not found")
    try:
        with open(card, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise GenbenchError(f"dataset card {card} is not valid TOML: {_one_line(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GenbenchError(f"cannot read dataset card {card}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def read_card(card: Path) -> Card:
    """Read and validate a dataset card (keys, types, name, that the data path exists);
    the data itself is not read."""
    card = Path(card).expanduser().resolve()
    raw = _read_toml(card)
    for key in raw:
        if key not in CARD_KEYS:
            raise unknown_name("card key", key, CARD_KEYS, where=f"dataset card {card}")

    def typed(key: str, kinds: tuple[type, ...], what: str) -> Any:
        value = raw.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            raise GenbenchError(
                f"dataset card {card}: {key} must be {what}, got {type(value).__name__} {value!r}"
            )
        return value

    for key in ("name", "path"):
        if key not in raw:
            raise GenbenchError(f"dataset card {card}: required key {key!r} is missing")
    name = typed("name", (str,), "a string")
    if not SAFE_NAME.fullmatch(name):
        raise GenbenchError(
            f"dataset card {card}: name {name!r} is not allowed: use letters, digits, '.', '_' "
            "and '-', starting with a letter or digit (at most 64 characters)"
        )
    if _is_builtin(name):
        raise GenbenchError(
            f"dataset card {card}: name {name!r} is a built-in dataset's; choose another"
        )
    if name.endswith(".toml"):  # would be taken for a card's path
        raise GenbenchError(f"dataset card {card}: name {name!r} must not end in '.toml'")
    path_text = typed("path", (str,), "a string")
    if not path_text.strip():
        raise GenbenchError(f"dataset card {card}: path is empty")
    path = Path(path_text).expanduser()
    path = (path if path.is_absolute() else card.parent / path).resolve()
    if not path.exists():
        raise GenbenchError(f"dataset card {card}: path {path} does not exist")
    fmt = typed("format", (str,), "a string")
    if fmt is not None and fmt not in FORMATS:
        raise GenbenchError(
            f"dataset card {card}: format {fmt!r} is not one of {', '.join(FORMATS)}"
        )
    if fmt is None:
        if path.is_dir():
            fmt = "folder"
        elif path.suffix.lower() == ".npz":
            fmt = "npz"
        else:
            raise GenbenchError(
                f"dataset card {card}: cannot tell the format of {path}; "
                'set format = "folder" or "npz"'
            )
    fraction = typed("test_fraction", (int, float), "a number")
    if fraction is not None and not 0.0 < fraction < 1.0:
        raise GenbenchError(f"dataset card {card}: test_fraction must be in (0, 1), got {fraction}")
    seed = typed("split_seed", (int,), "an integer")
    if seed is not None and seed < 0:
        raise GenbenchError(f"dataset card {card}: split_seed must be >= 0, got {seed}")
    extractor = typed("extractor", (str,), "a string")
    if extractor is not None and extractor not in EXTRACTORS:
        raise unknown_name(
            "feature extractor", extractor, EXTRACTORS.names(), where=f"dataset card {card}"
        )
    description = typed("description", (str,), "a string")
    if description is not None and len(description.strip().splitlines()) > 1:
        raise GenbenchError(f"dataset card {card}: description must be one line")
    return Card(
        card=card,
        name=name,
        path=path,
        format=fmt,
        test_fraction=float(DEFAULT_TEST_FRACTION if fraction is None else fraction),
        split_seed=DEFAULT_SPLIT_SEED if seed is None else seed,
        extractor=extractor,
        description=None if description is None else description.strip(),
        explicit=frozenset(k for k in ("test_fraction", "split_seed") if k in raw),
    )


def load_card(card: Path) -> ImageData:
    """The dataset a card describes."""
    info = read_card(card)
    return load_files(
        info.path,
        info.format,
        name=info.name,
        test_fraction=info.test_fraction,
        split_seed=info.split_seed,
        card=info,
    )


def registered_cards() -> dict[str, Path]:
    """Name -> card file of the cards in :func:`card_dirs` (earlier folders win; a card that
    cannot be read, or has no valid name, is skipped with a warning)."""
    cards: dict[str, Path] = {}
    for folder in card_dirs():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            if path.name.startswith(".") or not path.is_file():
                continue
            try:
                name = _read_toml(path).get("name")
            except GenbenchError as exc:
                log.warning("skipping dataset card: %s", exc)
                continue
            if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
                log.warning("skipping dataset card %s: no valid 'name'", path)
            elif name in cards:
                log.warning("skipping dataset card %s: %r is already %s", path, name, cards[name])
            else:
                cards[name] = path.resolve()
    return cards


def _card_toml(info: Card) -> str:
    values: dict[str, Any] = {"name": info.name, "path": str(info.path), "format": info.format}
    if "test_fraction" in info.explicit:
        values["test_fraction"] = info.test_fraction
    if "split_seed" in info.explicit:
        values["split_seed"] = info.split_seed
    values["extractor"] = info.extractor
    values["description"] = info.description
    lines = []
    for key, value in values.items():
        if value is None:
            continue
        # json's string escapes (and \uXXXX) are valid TOML basic strings
        text = json.dumps(value) if isinstance(value, str) else repr(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def _same_card(a: Card, b: Card) -> bool:
    fields = ("name", "path", "format", "test_fraction", "split_seed", "extractor")
    if any(getattr(a, f) != getattr(b, f) for f in fields):
        return False
    return (a.description or "") == (b.description or "")


def register_card(card: Path) -> Path:
    """Validate ``card`` (its data must load) and copy it, with an absolute ``path``, to the
    first of :func:`card_dirs` as ``<name>.toml``; returns the registered file. Registering a
    card with the same content again is a no-op; a different card of that name is refused."""
    info = read_card(card)
    load_files(
        info.path,
        info.format,
        name=info.name,
        test_fraction=info.test_fraction,
        split_seed=info.split_seed,
        card=info,
    )
    target = card_dirs()[0] / f"{info.name}.toml"
    existing = registered_cards().get(info.name)
    if existing is None and target.exists():
        existing = target  # a file by that name that does not hold a valid card
    if existing is not None:
        try:
            same = _same_card(read_card(existing), info)
        except GenbenchError:
            same = False
        if same:
            return existing
        raise GenbenchError(
            f"a dataset card named {info.name!r} is already registered as {existing}; "
            "remove it first or choose another name"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.tmp")
    temp.write_text(_card_toml(info), encoding="utf-8")
    os.replace(temp, target)
    return target


# ---------------------------------------------------------------------------- files


@dataclasses.dataclass(frozen=True)
class _Content:
    """Decoded items of one source, each split in canonical order (arrays read-only)."""

    splits: tuple[tuple[np.ndarray, np.ndarray], ...]  # ((levels, labels),): 1 or 2 (given)
    labeled: bool
    num_classes: int
    class_names: tuple[str, ...] | None
    content_sha256: str


def _canonical(levels: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """Items sorted by their digests (see the module docstring)."""
    digests = []
    for level, label in zip(levels, labels, strict=True):
        item = hashlib.sha256(int(label).to_bytes(8, "little", signed=True))
        item.update(np.ascontiguousarray(level).tobytes())
        digests.append(item.digest())
    order = sorted(range(len(digests)), key=digests.__getitem__)
    levels, labels = levels[order], labels[order]
    levels.flags.writeable = False
    labels.flags.writeable = False
    return levels, labels, [digests[i] for i in order]


def _content(
    parts: list[tuple[np.ndarray, np.ndarray]],
    labeled: bool,
    num_classes: int,
    class_names: tuple[str, ...] | None,
) -> _Content:
    content = hashlib.sha256()
    splits = []
    for index, (levels, labels) in enumerate(parts):
        levels, labels, digests = _canonical(levels, labels)
        if len(parts) > 1:
            content.update(("train", "test")[index].encode())
        content.update(np.asarray(levels.shape, dtype="<i8").tobytes())
        for digest in digests:
            content.update(digest)
        splits.append((levels, labels))
    return _Content(tuple(splits), labeled, num_classes, class_names, content.hexdigest())


def _stat_key(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


# -- npz


@functools.lru_cache(maxsize=4)
def _read_npz(path: Path, stamp: tuple[int, int]) -> _Content:
    del stamp  # part of the cache key only
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise GenbenchError(f"{path} is not a readable .npz archive: {_one_line(exc)}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise GenbenchError(f"{path} is a single .npy array, not an .npz archive")
    with archive:
        if "images" not in archive.files:
            keys = ", ".join(archive.files) or "(none)"
            raise GenbenchError(f"{path} has no 'images' array (its keys: {keys})")
        images = _npz_array(archive, "images", path)
        labels = _npz_array(archive, "labels", path) if "labels" in archive.files else None
    if images.dtype != np.uint8:
        raise GenbenchError(
            f"{path}: key 'images' has dtype {images.dtype}; expected uint8 (levels 0..255)"
        )
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[3] in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    else:
        raise GenbenchError(
            f"{path}: key 'images' has shape {images.shape}; expected (N, H, W) or (N, H, W, C) "
            "with C = 1 or 3"
        )
    if images.shape[2] == 0 or images.shape[3] == 0:
        raise GenbenchError(f"{path}: key 'images' holds empty images (shape {images.shape})")
    count = len(images)
    if labels is None:
        label_array = np.zeros(count, dtype=np.int64)
    else:
        if labels.dtype.kind not in "iu":
            raise GenbenchError(
                f"{path}: key 'labels' has dtype {labels.dtype}; expected integers >= 0"
            )
        if labels.shape != (count,):
            raise GenbenchError(
                f"{path}: key 'labels' has shape {labels.shape} but 'images' holds {count} "
                f"images; expected ({count},)"
            )
        if count and int(labels.min()) < 0:
            raise GenbenchError(f"{path}: key 'labels' holds {int(labels.min())}; expected >= 0")
        if count and int(labels.max()) >= 2**31:
            raise GenbenchError(f"{path}: key 'labels' holds {int(labels.max())}; too large")
        label_array = labels.astype(np.int64)
    _check_count(count, path)
    num_classes = int(label_array.max()) + 1 if labels is not None else 1
    return _content(
        [(np.ascontiguousarray(images), label_array)], labels is not None, num_classes, None
    )


def _npz_array(archive: Any, key: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(archive[key])
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise GenbenchError(
                f"{path}: key {key!r} has dtype object, which is never unpickled; store uint8 "
                "images and integer labels"
            ) from None
        raise GenbenchError(f"{path}: cannot read key {key!r}: {_one_line(exc)}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise GenbenchError(f"{path}: cannot read key {key!r}: {_one_line(exc)}") from None


# -- folder


def _visible(entries: list[Path]) -> list[Path]:
    return sorted(p for p in entries if not p.name.startswith("."))


def _scan(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, subfolders) directly in ``folder``, hidden entries skipped, sorted."""
    try:
        entries = _visible(list(folder.iterdir()))
    except OSError as exc:
        raise GenbenchError(f"cannot list {folder}: {_one_line(exc)}") from None
    dirs = [p for p in entries if p.is_dir()]
    files = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return files, dirs


def _scan_split(folder: Path) -> tuple[tuple[str, ...] | None, list[tuple[int, Path]]]:
    """One flat or class-subfoldered folder: (class names or None, [(label, file)])."""
    files, dirs = _scan(folder)
    if files and dirs:
        raise GenbenchError(
            f"{folder} holds image files (e.g. {files[0].name}) and subfolders (e.g. "
            f"{dirs[0].name}/) at once: put all images in class subfolders, or none"
        )
    if not dirs:
        return None, [(0, f) for f in files]
    items: list[tuple[int, Path]] = []
    for label, class_dir in enumerate(dirs):
        class_files, nested = _scan(class_dir)
        if nested:
            raise GenbenchError(
                f"{nested[0]} is a folder inside class folder {class_dir}: only one level of "
                "class subfolders is supported"
            )
        if not class_files:
            raise GenbenchError(f"class folder {class_dir} holds no PNG/JPEG images")
        items.extend((label, f) for f in class_files)
    return tuple(d.name for d in dirs), items


def _layout(folder: Path) -> tuple[tuple[str, ...] | None, list[list[tuple[int, Path]]]]:
    """(class names, [items] or [train items, test items] for a given split)."""
    files, dirs = _scan(folder)
    names = {d.name for d in dirs}
    if not files and names & {"train", "test"}:
        if names != {"train", "test"}:
            raise GenbenchError(
                f"{folder} has {', '.join(sorted(n + '/' for n in names))}: a given split "
                "needs exactly train/ and test/ (and nothing else)"
            )
        train_names, train = _scan_split(folder / "train")
        test_names, test = _scan_split(folder / "test")
        if train_names != test_names:
            raise GenbenchError(
                f"{folder}/train and {folder}/test have different class subfolders "
                f"({list(train_names or [])} vs {list(test_names or [])})"
            )
        return train_names, [train, test]
    class_names, items = _scan_split(folder)
    return class_names, [items]


def _mode_text(channels: int) -> str:
    return "L" if channels == 1 else "RGB"


def _read_image(path: Path) -> np.ndarray:
    """One image file -> uint8 (C, H, W)."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            opened.load()
            image: Image.Image = opened
            mode = image.mode
            if mode in ("LA", "RGBA"):
                alpha = np.asarray(image.getchannel("A"))
                if alpha.size and int(alpha.min()) < 255:
                    raise GenbenchError(
                        f"{path}: mode {mode} with transparent pixels is not supported; "
                        "save it as opaque L (grayscale) or RGB"
                    )
                image = image.convert(mode[:-1])
                mode = image.mode
            if mode not in ("L", "RGB"):
                raise GenbenchError(
                    f"{path}: image mode {mode!r} is not supported; save it as 8-bit L "
                    "(grayscale) or RGB"
                )
            array = np.asarray(image, dtype=np.uint8)
    except GenbenchError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise GenbenchError(f"{path}: not a readable image: {_one_line(exc)}") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _folder_stamp(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Name, size and mtime of every image file the layout reads (the cache key)."""
    _, parts = _layout(folder)
    return tuple((str(p), *_stat_key(p)) for items in parts for _, p in items)


@functools.lru_cache(maxsize=4)
def _read_folder(folder: Path, stamp: tuple[tuple[str, int, int], ...]) -> _Content:
    del stamp  # part of the cache key only
    class_names, parts = _layout(folder)
    if not any(parts):
        raise GenbenchError(f"{folder} holds no PNG/JPEG images (.png, .jpg, .jpeg)")
    first: tuple[Path, tuple[int, ...]] | None = None
    arrays = []
    for items in parts:
        split_levels: list[np.ndarray] = []
        for _, path in items:
            array = _read_image(path)
            if first is None:
                first = (path, array.shape)
            elif array.shape != first[1]:
                got, want = array.shape, first[1]
                raise GenbenchError(
                    f"{path}: {got[2]}x{got[1]} {_mode_text(got[0])} but expected "
                    f"{want[2]}x{want[1]} {_mode_text(want[0])} like {first[0]}: all images "
                    "must have the same size and mode"
                )
            split_levels.append(array)
        labels = np.asarray([label for label, _ in items], dtype=np.int64)
        stacked = np.stack(split_levels) if split_levels else np.zeros((0, 1, 1, 1), np.uint8)
        arrays.append((stacked, labels))
    names = ("train/", "test/") if len(parts) == 2 else ("",)
    for (levels, _), sub in zip(arrays, names, strict=True):
        _check_count(len(levels), folder / sub if sub else folder, per_split=len(parts) == 2)
    num_classes = len(class_names) if class_names else 1
    return _content(arrays, class_names is not None, num_classes, class_names)


# -- splits


def _check_count(count: int, where: Path, per_split: bool = False) -> None:
    need = MIN_PER_SPLIT if per_split else 2 * MIN_PER_SPLIT
    if count < need:
        reason = "per split" if per_split else f"{MIN_PER_SPLIT} per split"
        raise GenbenchError(
            f"{where} holds {count} image{'s' * (count != 1)}; at least {need} are needed "
            f"({reason})"
        )


def _num_test(count: int, fraction: float) -> int:
    return min(max(int(round(count * fraction)), MIN_PER_SPLIT), count - MIN_PER_SPLIT)


def load_files(
    path: Path,
    format: str | None = None,
    *,
    name: str | None = None,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    split_seed: int = DEFAULT_SPLIT_SEED,
    card: Card | None = None,
) -> ImageData:
    """A folder or ``.npz`` file as an :class:`ImageData` (see the module docstring)."""
    path = Path(path).expanduser().resolve()
    if format is None:
        format = "folder" if path.is_dir() else "npz"
    if format == "folder":
        if not path.is_dir():
            what = "does not exist" if not path.exists() else "is not a folder"
            raise GenbenchError(f"image folder {path} {what}")
        content = _read_folder(path, _folder_stamp(path))
    elif format == "npz":
        if not path.is_file():
            what = "does not exist" if not path.exists() else "is not a file"
            raise GenbenchError(f"npz file {path} {what}")
        content = _read_npz(path, _stat_key(path))
    else:
        raise GenbenchError(f"unknown dataset format {format!r}; valid: {', '.join(FORMATS)}")
    if name is None:
        name = safe_dataset_name(path.stem if format == "npz" else path.name)
    given = len(content.splits) == 2
    if given:
        if card is not None and card.explicit:
            raise GenbenchError(
                f"dataset card {card.card} sets {', '.join(sorted(card.explicit))} but {path} "
                "has its own train/ and test/ split"
            )
        (train_x, train_y), (test_x, test_y) = content.splits
        train_x, train_y, test_x, test_y = (a.copy() for a in (train_x, train_y, test_x, test_y))
        fraction = len(test_x) / (len(train_x) + len(test_x))
    else:
        if not 0.0 < test_fraction < 1.0:
            raise GenbenchError(f"test_fraction must be in (0, 1), got {test_fraction}")
        levels, labels = content.splits[0]
        perm = np.random.default_rng(split_seed).permutation(len(levels))
        num_test = _num_test(len(levels), test_fraction)
        test_x, test_y = levels[perm[:num_test]], labels[perm[:num_test]]
        train_x, train_y = levels[perm[num_test:]], labels[perm[num_test:]]
        fraction = float(test_fraction)
    channels, height, width = train_x.shape[1:]
    spec = DataSpec(name, channels, height, width, num_levels=256, num_classes=content.num_classes)
    meta: dict[str, Any] = {
        "format": format,
        "path": str(path),
        "content_sha256": content.content_sha256,
        "split": "given" if given else "seeded",
        "split_seed": int(split_seed),
        "test_fraction": fraction,
        "labeled": content.labeled,
        "class_names": list(content.class_names) if content.class_names else None,
        "card": str(card.card) if card is not None else None,
        "extractor": card.extractor if card is not None else None,
        "num_images": len(train_x) + len(test_x),
    }
    source = f"{format} {path}" + (f" (card {card.card})" if card is not None else "")
    return ImageData(
        spec,
        torch.from_numpy(train_x),
        torch.from_numpy(train_y),
        torch.from_numpy(test_x),
        torch.from_numpy(test_y),
        source=source,
        meta=meta,
    )
