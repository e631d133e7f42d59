"""The typed, versioned result of one run, and the one writer and reader of result files.

One JSON file per run at ``<out>/<protocol>/<dataset>/<method>/seed-<k>/result.json`` with
top-level keys ``schema_version``, ``method``, ``dataset``, ``protocol``, ``seed``, ``status``,
``metrics``, ``config`` and ``env``. Files are written atomically (temp file, fsync, rename)
so a crash never leaves half a result. :func:`load_result` reads every schema version ever
written (tests keep a file of each in ``tests/data/results/``).

Schema history:
- 1: first version.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.errors import GenbenchError
from bench.killpoints import kill_point

SCHEMA_VERSION = 1
STATUSES = ("ok", "diverged", "failed")
RESULT_FILE = "result.json"
#: a failed or diverged re-run of a run that has an ``ok`` result is kept here, beside it
FAILED_FILE = "result.failed.json"


@dataclasses.dataclass
class RunResult:
    method: str
    dataset: str
    protocol: dict[str, Any]  # {"name", "version"}
    seed: int
    status: str  # ok | diverged | failed
    metrics: dict[str, Any]
    config: dict[str, Any]
    env: dict[str, Any]
    #: step at which training diverged (status "diverged"), else None
    diverged_at_step: int | None = None
    #: one-line error (status "failed")
    error: str | None = None
    schema_version: int = SCHEMA_VERSION
    #: the folder the result was loaded from (not serialised)
    source_dir: Path | None = dataclasses.field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        raw = dataclasses.asdict(self)
        raw.pop("source_dir")
        return {"schema_version": raw.pop("schema_version"), **raw}

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.protocol["name"], self.dataset, self.method, self.seed)


def run_dir(out: Path, protocol: str, dataset: str, method: str, seed: int) -> Path:
    return out / protocol / dataset / method / f"seed-{seed}"


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` atomically."""
    text = json.dumps(payload, indent=2, allow_nan=False, default=_jsonable) + "\n"
    write_text_atomic(path, text)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: temp file in the same folder, fsync, rename."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        kill_point("result-write")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_result(result: RunResult, directory: Path) -> Path:
    """Write atomically; a result already there (an earlier configuration, or a forced
    re-run) is kept under ``history/`` rather than lost."""
    path = directory / RESULT_FILE
    if path.exists():
        history = directory / "history"
        history.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(path.stat().st_mtime))
        target = history / f"result-{stamp}.json"
        counter = 1
        while target.exists():
            target = history / f"result-{stamp}-{counter}.json"
            counter += 1
        os.replace(path, target)
    write_json_atomic(path, _finite(result.to_dict()))
    return path


def record_result(result: RunResult, directory: Path) -> Path:
    """Write a run's outcome without ever losing a success: a failed or diverged run whose
    folder already holds an ``ok`` result is written beside it (:data:`FAILED_FILE`) and the
    ``ok`` result stays; an ``ok`` result replaces the previous one (kept under history/)
    and retires an earlier failure note."""
    path = directory / RESULT_FILE
    if result.status != "ok" and path.exists():
        try:
            previous_ok = load_result(path).status == "ok"
        except GenbenchError:
            previous_ok = False
        if previous_ok:
            target = directory / FAILED_FILE
            write_json_atomic(target, _finite(result.to_dict()))
            return target
    written = write_result(result, directory)
    failed = directory / FAILED_FILE
    if result.status == "ok" and failed.exists():
        history = directory / "history"
        history.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(failed.stat().st_mtime))
        os.replace(failed, history / f"failed-{stamp}-{os.getpid()}.json")
    return written


def remove_orphans(directory: Path) -> list[Path]:
    """Delete temp files left by a writer killed mid-write (``.<name>.*.tmp``). Only the
    holder of the run's lock calls this, so no live writer owns them."""
    removed = []
    if directory.is_dir():
        for tmp in directory.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: store them as null (a metric that could not be computed)."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def load_result(path: Path) -> RunResult:
    """Read a result file of any schema version, validating it."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GenbenchError(f"malformed result file {path}: {exc}") from None
    if not isinstance(raw, dict) or "schema_version" not in raw:
        raise GenbenchError(f"malformed result file {path}: no schema_version")
    version = raw["schema_version"]
    upgrade = _UPGRADES.get(version) if isinstance(version, int) else None
    if upgrade is None:
        raise GenbenchError(
            f"result file {path} has schema_version {version!r}; this genbench reads "
            f"{', '.join(map(str, sorted(_UPGRADES)))}"
        )
    raw = upgrade(raw)
    required = {f.name for f in dataclasses.fields(RunResult) if f.default is dataclasses.MISSING}
    missing = sorted(required - set(raw))
    if missing:
        raise GenbenchError(f"malformed result file {path}: missing {missing[0]!r}")
    if raw["status"] not in STATUSES:
        raise GenbenchError(f"malformed result file {path}: status {raw['status']!r}")
    if not isinstance(raw["metrics"], dict):
        raise GenbenchError(f"malformed result file {path}: metrics must be an object")
    problem = _type_problem(raw)
    if problem:
        raise GenbenchError(f"malformed result file {path}: {problem}")
    known = {f.name for f in dataclasses.fields(RunResult)} - {"source_dir"}
    result = RunResult(**{k: v for k, v in raw.items() if k in known})
    result.source_dir = Path(path).parent
    return result


def _type_problem(raw: dict[str, Any]) -> str | None:
    """The first top-level field of a raw result with the wrong type, described."""
    for key, kind in (("method", str), ("dataset", str), ("protocol", dict), ("config", dict)):
        if not isinstance(raw.get(key), kind):
            return f"{key} must be a {'string' if kind is str else 'JSON object'}"
    if not isinstance(raw.get("env"), dict):
        return "env must be a JSON object"
    seed = raw.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        return f"seed must be an integer, got {seed!r}"
    step = raw.get("diverged_at_step")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
        return "diverged_at_step must be an integer"
    if raw.get("error") is not None and not isinstance(raw["error"], str):
        return "error must be a string"
    return None


def _v1(raw: dict[str, Any]) -> dict[str, Any]:
    return raw


# schema_version -> function upgrading a raw dict of that version to the current one
_UPGRADES = {1: _v1}


def find_results(root: Path) -> list[Path]:
    return sorted(Path(root).rglob(RESULT_FILE))


def environment(device: str, precision: str) -> dict[str, Any]:
    """The reproducibility block: code version, packages, platform, device, precision."""
    packages: dict[str, str | None] = {}
    for name in (
        "genbench",
        "torch",
        "torchvision",
        "torch-fidelity",
        "torchmetrics",
        "numpy",
        "scikit-learn",
    ):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    commit, dirty = _git_state()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "packages": packages,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "precision": precision,
    }


def _git_state() -> tuple[str | None, bool | None]:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, bool(status.strip())
