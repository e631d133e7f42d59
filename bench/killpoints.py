"""Named points where a test can kill the process with SIGKILL, to prove that a kill there
loses nothing: ``GENBENCH_KILL_AT=checkpoint-write:2`` kills the process the second time it
reaches ``kill_point("checkpoint-write")``. Unset (always, outside tests) it does nothing.

Points: ``checkpoint-write`` (a checkpoint's temp file is written, not yet renamed),
``result-write`` (the same for a result or any JSON written atomically), ``eval-section``
(an evaluation section was scored and saved), ``train-step`` (a training step finished).
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def kill_point(name: str) -> None:
    target = os.environ.get("GENBENCH_KILL_AT")
    if not target:
        return
    point, _, nth = target.partition(":")
    if point != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def run_command(out: str | os.PathLike[str], methods: str, *extra: str) -> list[str]:
    """``python -m bench.cli run`` on the smoke protocol, CPU, no leaderboard: the study that
    kill, concurrency and fault-injection checks start as a separate process."""
    import sys

    return [
        sys.executable,
        "-m",
        "bench.cli",
        "run",
        "--protocol",
        "smoke",
        "--device",
        "cpu",
        "--methods",
        methods,
        "--out",
        str(out),
        "--no-report",
        *extra,
    ]
