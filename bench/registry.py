"""One registry for methods, datasets, feature extractors and protocols.

Methods, datasets and extractors register themselves with a decorator at import time;
protocols are the ``*.toml`` files in ``bench/protocols``. Lookups of unknown names raise a
:class:`~bench.errors.GenbenchError` with "did you mean" suggestions.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from bench.errors import GenbenchError, unknown_name

T = TypeVar("T")
#: what a registered name may be: it becomes a folder name and appears in HTML
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class Registry(Generic[T]):
    """A name -> object table for one kind of thing."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
            # names become folder names (runs/<protocol>/<dataset>/<method>/) and HTML
            raise GenbenchError(
                f"{self.kind} name {name!r} is not allowed: use letters, digits, '.', '_' "
                "and '-', starting with a letter or digit"
            )

        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                owner = getattr(self._items[name], "__module__", None) or "?"
                raise GenbenchError(
                    f"{self.kind} name {name!r} is already taken (registered by {owner}); "
                    "choose another name"
                )
            self._items[name] = obj
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Forget ``name`` (a refused plug-in's registrations are undone)."""
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        _load_plugins()
        if name not in self._items:
            raise unknown_name(self.kind, name, self._items)
        return self._items[name]

    def names(self) -> list[str]:
        _load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        _load_plugins()
        return name in self._items


METHODS: Registry[Any] = Registry("method")
DATASETS: Registry[Any] = Registry("dataset")
EXTRACTORS: Registry[Any] = Registry("feature extractor")


def register_method(name: str) -> Callable[[T], T]:
    """Register a :class:`~bench.method.Method` subclass under ``name`` (sets ``cls.name``)."""

    def decorator(cls: T) -> T:
        cls.name = name  # type: ignore[attr-defined]
        return METHODS.register(name)(cls)

    return decorator


register_dataset = DATASETS.register
register_extractor = EXTRACTORS.register

# Modules whose import registers things. Baselines live outside bench/ so bench never has
# to know a method family; importing the `baselines` package imports every method module.
_PLUGIN_MODULES = ("bench.data", "bench.metrics.extractors", "baselines")
_loaded = False


def _load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _PLUGIN_MODULES:
        importlib.import_module(module)
    # installed plug-ins (the ``genbench.plugins`` entry points), after ours so that a
    # plug-in taking one of our names is refused rather than replacing it
    from bench.plugins import load_entry_points

    load_entry_points()


FAMILY_PREFIX = "family:"


def method_families() -> dict[str, list[str]]:
    """Family (the ``baselines`` subpackage a method lives in) -> its method names."""
    from bench.plugins import plugin_of

    families: dict[str, list[str]] = {}
    for name in METHODS.names():
        parts = METHODS.get(name).__module__.split(".")
        family = parts[1] if len(parts) > 2 and parts[0] == "baselines" else parts[0]
        plugin = plugin_of(name)
        if plugin is not None:
            family = plugin.family
        families.setdefault(family, []).append(name)
    return families


def parse_names(kind: str, text: str, registry: Registry[Any]) -> list[str]:
    """Split a comma-separated list of names and check each one against ``registry``. For
    methods, ``family:<name>`` stands for every method of a family (``family:ssl``)."""
    names: list[str] = []
    for part in (part.strip() for part in text.split(",")):
        if not part:
            continue
        if registry is METHODS and part.startswith(FAMILY_PREFIX):
            families = method_families()
            family = part[len(FAMILY_PREFIX) :]
            if family not in families:
                raise GenbenchError(
                    f"unknown method family {family!r}. Known: {', '.join(sorted(families))}"
                )
            names.extend(n for n in families[family] if n not in names)
            continue
        registry.get(part)
        if part not in names:
            names.append(part)
    if not names:
        raise GenbenchError(f"empty list of {kind}s")
    return names
