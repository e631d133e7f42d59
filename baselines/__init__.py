"""Reference implementations, one module per method, grouped by family; importing this
package registers them all.

Each family is a subpackage (``reference``, ``gan``, ``diffusion``, ...) whose
``__init__.py`` imports its method modules. Families are discovered here, so adding one
never edits this file; ``common`` holds shared networks and registers nothing.
"""

from __future__ import annotations

import importlib
import pkgutil

#: families imported first (their rows anchor every table); the rest in name order
_FIRST = ("reference",)


def _families() -> list[str]:
    found = sorted(info.name for info in pkgutil.iter_modules(__path__) if info.ispkg)
    rest = [name for name in found if name not in _FIRST and name != "common"]
    return [name for name in _FIRST if name in found] + rest


for _family in _families():
    importlib.import_module(f"{__name__}.{_family}")
