"""Plug-ins: methods (and the datasets or feature extractors they need) defined outside
genbench, loaded from a file or package directory (``--include PATH``) or from an installed
package's ``genbench.plugins`` entry point.

A plug-in is ordinary Python that registers what it defines with the decorators our own
baselines use (``bench.registry.register_method``); nothing in ``baselines/`` is special.
Loading one

1. imports it under a private module name (``genbench_plugin_<stem>_<hash>``); a failure to
   import is one line naming the plug-in and the exception;
2. sees what it registered and checks every new method the way ours are held to: a
   :class:`bench.method.Method` subclass, known capabilities, a ``train_step`` when it is
   trainable, and an override of ``sample`` / ``log_likelihood`` / ``encode`` for every
   capability it declares; a name already taken (by us or another plug-in) is refused;
3. records its provenance (source path, sha256 of its source files, version), which goes
   into every result of its methods (``config.plugin``) and into the training configuration,
   so a result names the code that made it and a changed plug-in re-runs its runs.

Before a study starts, :func:`check_outputs` builds each plug-in method on the study's data
(on the CPU, on a few images) and calls the capabilities it declares, so a method returning
images of the wrong shape or outside [0, 1] is one line and exit 2 with nothing under
``runs/`` touched, not a failed run found later.

Entry points: an installed package declares

    [project.entry-points."genbench.plugins"]
    my-methods = "my_package.genbench_plugin"   # a module (imported), or module:function (called)

and genbench loads it the first time a registry is read. ``GENBENCH_NO_PLUGINS=1`` skips
entry points (for when an installed plug-in is broken).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.errors import GenbenchError
from bench.registry import DATASETS, EXTRACTORS, METHODS

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "genbench.plugins"
NO_PLUGINS_ENV = "GENBENCH_NO_PLUGINS"


@dataclasses.dataclass(frozen=True)
class Plugin:
    """One loaded plug-in and what it registered."""

    #: the path given to --include, or ``entry point NAME (DIST)``
    source: str
    #: the module it was imported as
    module: str
    #: sha256 over its source files (a file's bytes; a package's *.py files with their paths)
    sha256: str
    #: the module's ``__version__``, else its distribution's version, else None
    version: str | None
    methods: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    extractors: tuple[str, ...] = ()
    #: its methods' family (``--methods family:NAME``): the file, folder or module name
    family: str = "plugin"

    #: the absolute path of a file or folder plug-in (None for an entry point)
    path: str | None = None

    def provenance(self) -> dict[str, Any]:
        """What a result's configuration records of the plug-in that made it: what the code
        is (its sha256 and version), not where it lies, so that moving the plug-in (or the
        project) does not re-run its runs; the path goes into the result's ``env``."""
        return {"name": self.family, "sha256": self.sha256, "version": self.version}


#: key (resolved path, or entry point) -> the loaded plug-in
_LOADED: dict[str, Plugin] = {}
#: method name -> the plug-in that registered it
_METHOD_OWNER: dict[str, Plugin] = {}
_entry_points_loaded = False


def loaded() -> list[Plugin]:
    return list(_LOADED.values())


def plugin_of(method: str) -> Plugin | None:
    """The plug-in that registered ``method``, None for genbench's own methods."""
    load_entry_points()
    return _METHOD_OWNER.get(method)


def provenance(method: str) -> dict[str, Any] | None:
    plugin = plugin_of(method)
    return plugin.provenance() if plugin is not None else None


def source_sha256(path: Path) -> str:
    """sha256 of a plug-in's source: a file's bytes, or every ``*.py`` file of a package
    directory (relative path and bytes, in sorted order)."""
    digest = hashlib.sha256()
    if path.is_file():
        digest.update(path.read_bytes())
        return digest.hexdigest()
    for file in sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts):
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(b"\0")
        digest.update(file.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _snapshot() -> dict[str, set[str]]:
    return {
        "methods": set(METHODS.names()),
        "datasets": set(DATASETS.names()),
        "extractors": set(EXTRACTORS.names()),
    }


def include(path: str | Path) -> Plugin:
    """Load the plug-in at ``path`` (a ``.py`` file, or a package directory with an
    ``__init__.py``) once; a second call with the same path returns the same plug-in."""
    given = str(path)
    if not given.strip():
        raise GenbenchError("--include is empty: give a plug-in file or package directory")
    resolved = Path(given).expanduser().resolve()
    key = str(resolved)
    if key in _LOADED:
        return _LOADED[key]
    where = f"plug-in {given}"
    if not resolved.exists():
        raise GenbenchError(f"{where} does not exist")
    if resolved.is_dir():
        init = resolved / "__init__.py"
        if not init.is_file():
            raise GenbenchError(
                f"{where} is a folder without __init__.py: give a .py file or a package folder"
            )
        entry, search = init, [str(resolved)]
    elif resolved.suffix == ".py":
        entry, search = resolved, None
    else:
        raise GenbenchError(f"{where} is not a .py file or a package folder")
    sha = source_sha256(resolved)
    stem = "".join(c if c.isalnum() else "_" for c in resolved.stem)
    module_name = f"genbench_plugin_{stem}_{sha[:8]}"
    spec = importlib.util.spec_from_file_location(
        module_name, entry, submodule_search_locations=search
    )
    if spec is None or spec.loader is None:
        raise GenbenchError(f"{where} cannot be imported")
    module = importlib.util.module_from_spec(spec)

    def run() -> None:
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        except BaseException:
            sys.modules.pop(module_name, None)
            raise

    plugin = _load(key, given, module_name, sha, run, lambda: _module_version(module))
    plugin = dataclasses.replace(plugin, family=resolved.stem, path=key)
    _record(key, plugin)
    return plugin


def _module_version(module: Any) -> str | None:
    version = getattr(module, "__version__", None)
    return str(version) if version is not None else None


def _load(
    key: str,
    source: str,
    module_name: str,
    sha: str,
    run: Callable[[], Any],
    version: Callable[[], str | None],
) -> Plugin:
    """Run a plug-in's import, then validate and record what it registered."""
    before = _snapshot()  # also loads genbench's own registrations, so clashes are seen
    where = f"plug-in {source}"
    try:
        run()
    except GenbenchError as exc:
        _forget_new(before)
        raise GenbenchError(f"{where}: {exc}") from None
    except SystemExit as exc:
        _forget_new(before)
        raise GenbenchError(f"{where} called exit({exc.code}) while importing") from None
    except Exception as exc:  # its own bug: one line naming it, never a traceback
        _forget_new(before)
        line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise GenbenchError(
            f"{where} failed to import: {exc.__class__.__name__}: {line}".rstrip(": ")
        ) from None
    after = _snapshot()
    new = {kind: sorted(after[kind] - before[kind]) for kind in after}
    try:
        for name in new["methods"]:
            check_method_class(name, METHODS.get(name))
    except GenbenchError as exc:
        _forget_new(before)
        raise GenbenchError(f"{where}: {exc}") from None
    if not any(new.values()):
        log.warning("%s registered nothing (no @register_method, dataset or extractor)", where)
    plugin = Plugin(
        source,
        module_name,
        sha,
        version(),
        tuple(new["methods"]),
        tuple(new["datasets"]),
        tuple(new["extractors"]),
    )
    _record(key, plugin)
    return plugin


def _record(key: str, plugin: Plugin) -> None:
    _LOADED[key] = plugin
    for name in plugin.methods:
        _METHOD_OWNER[name] = plugin


def _forget_new(before: dict[str, set[str]]) -> None:
    """Undo the registrations of a plug-in that was refused: nothing half-loaded stays."""
    for kind, registry in (
        ("methods", METHODS),
        ("datasets", DATASETS),
        ("extractors", EXTRACTORS),
    ):
        for name in set(registry.names()) - before[kind]:
            registry.unregister(name)
            if kind == "extractors":
                from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

                from bench.metrics.extractors import FEATURE_NETWORKS

                FEATURE_NETWORKS.pop(name, None)
                FEATURE_EXTRACTORS_REGISTRY.pop(name, None)


def check_method_class(name: str, cls: Any) -> None:
    """The static half of the interface: what a class must have before it is built."""
    from bench.method import CAPABILITIES, Method

    if not (inspect.isclass(cls) and issubclass(cls, Method)):
        raise GenbenchError(
            f"method {name!r} is a {type(cls).__name__}, not a bench.method.Method subclass"
        )
    capabilities = cls.capabilities
    if not isinstance(capabilities, (set, frozenset)) or not all(
        isinstance(c, str) for c in capabilities
    ):
        raise GenbenchError(f"method {name!r}: capabilities must be a frozenset of names")
    unknown = sorted(set(capabilities) - set(CAPABILITIES))
    if unknown:
        raise GenbenchError(
            f"method {name!r} declares unknown capability {unknown[0]!r}. "
            f"Valid: {', '.join(CAPABILITIES)}"
        )
    if cls.trainable and cls.train_step is Method.train_step:
        raise GenbenchError(
            f"method {name!r} lacks train_step (set trainable = False for a method fitted "
            "in prepare)"
        )
    for capability in sorted(capabilities):
        if getattr(cls, capability) is getattr(Method, capability):
            raise GenbenchError(
                f"method {name!r} declares capability {capability!r} but does not implement "
                f"{capability}()"
            )
    if not capabilities:
        raise GenbenchError(
            f"method {name!r} declares no capability ({', '.join(CAPABILITIES)}): "
            "no evaluator could score it"
        )
    try:
        defaults = cls.default_hparams(_probe_spec())
    except Exception as exc:  # noqa: BLE001 - the plug-in's own bug, in one line
        line = (str(exc).strip().splitlines() or [""])[0][:160]
        raise GenbenchError(
            f"method {name!r}: default_hparams failed: {exc.__class__.__name__}: {line}"
        ) from None
    if not isinstance(defaults, dict):
        raise GenbenchError(f"method {name!r}: default_hparams must return a dict")


def _probe_spec() -> Any:
    from bench.method import DataSpec

    return DataSpec("probe", 1, 8, 8, 17, 10)


def load_entry_points() -> list[Plugin]:
    """Load every installed ``genbench.plugins`` entry point once (unless
    ``GENBENCH_NO_PLUGINS`` is set)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return [p for p in _LOADED.values() if p.source.startswith("entry point")]
    _entry_points_loaded = True
    if os.environ.get(NO_PLUGINS_ENV, "").strip() not in ("", "0"):
        return []
    plugins = []
    for point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(point, "dist", None)
        dist_name = getattr(dist, "name", None) or "?"
        source = f"entry point {point.name} ({dist_name})"
        key = f"entry-point:{point.name}={point.value}"
        if key in _LOADED:
            continue
        module_name = point.module

        def run(point: Any = point) -> None:
            loaded_obj = point.load()
            if callable(loaded_obj) and not inspect.ismodule(loaded_obj):
                loaded_obj()

        def version(dist: Any = dist, module_name: str = module_name) -> str | None:
            found = _module_version(sys.modules.get(module_name))
            if found is None and dist is not None:
                found = getattr(dist, "version", None)
            return found

        def sha(module_name: str = module_name) -> str:
            spec = importlib.util.find_spec(module_name)
            origin = Path(spec.origin) if spec is not None and spec.origin else None
            if origin is None or not origin.exists():
                return "unknown"
            return source_sha256(origin.parent if origin.name == "__init__.py" else origin)

        try:
            digest = sha()
        except (ImportError, ValueError) as exc:
            raise GenbenchError(
                f"plug-in {source}: cannot find module {module_name!r} ({exc}); "
                f"set {NO_PLUGINS_ENV}=1 to skip installed plug-ins"
            ) from None
        try:
            plugin = _load(key, source, module_name, digest, run, version)
            plugin = dataclasses.replace(plugin, family=module_name.split(".")[0])
            _record(key, plugin)
            plugins.append(plugin)
        except GenbenchError as exc:
            raise GenbenchError(
                f"{exc} (set {NO_PLUGINS_ENV}=1 to skip installed plug-ins)"
            ) from None
    return plugins


def check_outputs(name: str, spec: Any, hparams: dict[str, Any], data: Any) -> None:
    """The dynamic half of the interface, for a plug-in method before its study starts:
    build it on the CPU with the study's hyper-parameters, ``prepare`` it on a few train
    images and call every capability it declares on a few images. Wrong shapes, values
    outside [0, 1], NaN, or an exception are one line naming the plug-in. Torch's random
    state is restored afterwards: the study's numbers do not depend on the check."""
    plugin = plugin_of(name)
    if plugin is None:
        return
    import torch

    from bench.method import ENCODE, LOG_LIKELIHOOD, SAMPLE

    cls = METHODS.get(name)
    where = f"plug-in {plugin.source}: method {name!r}"
    count = 4
    train_x, train_y = data.images("train"), data.labels("train")
    probe = train_x[:count]
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            method = cls.build(spec, hparams)
            method.prepare(train_x[:64], train_y[:64], data.images("test")[:64])
            method.eval()
            if SAMPLE in cls.capabilities:
                labels = None
                if cls.class_conditional:
                    labels = torch.arange(count) % spec.num_classes
                generator = torch.Generator().manual_seed(0)
                out = method.sample(count, generator, labels)
                _check_images(out, count, spec.shape, f"{where}: sample({count})")
            if LOG_LIKELIHOOD in cls.capabilities:
                out = method.log_likelihood(probe)
                if not isinstance(out, torch.Tensor) or tuple(out.shape) != (count,):
                    raise GenbenchError(
                        f"{where}: log_likelihood of {count} images returned "
                        f"{_describe(out)}, not a tensor of shape ({count},)"
                    )
                if not bool(torch.isfinite(out).all()):
                    raise GenbenchError(f"{where}: log_likelihood returned NaN or inf")
            if ENCODE in cls.capabilities:
                out = method.encode(probe)
                if not isinstance(out, torch.Tensor) or out.ndim != 2 or len(out) != count:
                    raise GenbenchError(
                        f"{where}: encode of {count} images returned {_describe(out)}, not "
                        f"a tensor of shape ({count}, d)"
                    )
                if not bool(torch.isfinite(out).all()):
                    raise GenbenchError(f"{where}: encode returned NaN or inf")
    except GenbenchError:
        raise
    except Exception as exc:
        line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise GenbenchError(f"{where} fails its check: {exc.__class__.__name__}: {line}") from None


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"shape {tuple(shape)}"
    return f"a {type(value).__name__}"


def _check_images(out: Any, count: int, shape: tuple[int, ...], what: str) -> None:
    import torch

    if not isinstance(out, torch.Tensor):
        raise GenbenchError(f"{what} returned {_describe(out)}, not a tensor")
    if tuple(out.shape) != (count, *shape):
        raise GenbenchError(
            f"{what} returned shape {tuple(out.shape)}; images of this data are {(count, *shape)}"
        )
    values = out.float()
    if not bool(torch.isfinite(values).all()):
        raise GenbenchError(f"{what} returned NaN or inf")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 1:
        raise GenbenchError(f"{what} returned values in [{low:.3g}, {high:.3g}], not in [0, 1]")
