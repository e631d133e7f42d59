"""The one exception type for errors a user can cause.

The CLI turns a :class:`GenbenchError` into one line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GenbenchError(Exception):
    """Bad input: unknown names, missing data, malformed configs or result files."""


def unknown_name(kind: str, name: str, choices: Iterable[str], where: str = "") -> GenbenchError:
    """An error for an unknown ``name`` that suggests the closest valid choices."""
    valid = sorted(choices)
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    prefix = f"{where}: " if where else ""
    return GenbenchError(
        f"{prefix}unknown {kind} {name!r}.{hint} Valid {kind}s: {', '.join(valid) or '(none)'}"
    )
