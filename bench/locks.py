"""Claiming a run directory, so that two studies on one ``runs/`` (two terminals, a pool, a
Slurm array with a requeue) never run the same run at the same time.

A claim is a lock file ``run.lock`` created with ``O_CREAT | O_EXCL`` (atomic on local and
NFSv3+ file systems) holding the owner's pid, host and start time. While the owner runs, a
daemon thread touches the file every :data:`TOUCH_S` seconds. A lock is stale, and is taken
over with a warning, when its owner is a dead process on this host, or when it has not been
touched for :data:`STALE_S` seconds (an owner on another host that died, or a requeued job).
Taking over renames the stale file away first; only one of several racing takers wins that
rename, so a stale lock is never taken twice.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
LOCK_FILE = "run.lock"
TOUCH_S = float(os.environ.get("GENBENCH_LOCK_TOUCH_SECONDS", "20"))
STALE_S = float(os.environ.get("GENBENCH_LOCK_STALE_SECONDS", "300"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def read_owner(path: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # half-written or garbage: judged by its age alone
        return {}
    return owner if isinstance(owner, dict) else {}


class RunLock:
    """``with RunLock(run_dir) as lock: if lock.claimed: ...``"""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.claimed = False
        self.owner: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _create(self) -> bool:
        self.directory.mkdir(parents=True, exist_ok=True)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump(me, handle)
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def stale_reason(self) -> str | None:
        """Why the existing lock is stale, or None when its owner may still be running."""
        owner = read_owner(self.path)
        if owner is None:
            return "gone"
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return "gone"
        pid, host = owner.get("pid"), owner.get("host")
        if host == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
            return f"its owner, pid {pid} on {host}, is dead"
        if age > STALE_S:
            return f"not touched for {age:.0f} s (owner pid {pid} on {host})"
        return None

    def held_by_other(self) -> bool:
        return not self.claimed and self.path.exists() and self.stale_reason() is None

    def acquire(self) -> bool:
        if self.claimed:
            return True
        if not self._create():
            reason = self.stale_reason()
            if reason is None:
                self.owner = read_owner(self.path)
                return False
            if reason != "gone":
                aside = self.path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
                try:
                    os.rename(self.path, aside)  # only one racing taker wins this
                except FileNotFoundError:
                    pass
                else:
                    aside.unlink(missing_ok=True)
                    log.warning("%s: taking over a stale lock: %s", self.directory, reason)
            if not self._create():
                self.owner = read_owner(self.path)
                return False
        self.claimed = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._touch, daemon=True, name="genbench-lock")
        self._thread.start()
        return True

    def _touch(self) -> None:
        while not self._stop.wait(TOUCH_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        if not self.claimed:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        owner = read_owner(self.path)
        if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)
        self.claimed = False

    def describe_owner(self) -> str:
        owner = self.owner or read_owner(self.path) or {}
        return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"
