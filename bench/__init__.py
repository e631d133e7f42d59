"""genbench: one protocol and one set of evaluators for generative and self-supervised models.

``bench.load_run(run_dir, device="cpu")`` turns a finished run back into its trained model
(:mod:`bench.runs`); ``bench.plugins.include(path)`` loads a method plug-in. Importing
``bench`` itself stays light (no torch).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_run"]


def load_run(run_dir: Any, device: Any = "cpu", data_root: Any = None) -> Any:
    """The trained method of a finished run, in eval mode on ``device`` (see
    :func:`bench.runs.load_run`)."""
    from bench.runs import load_run as _load_run

    return _load_run(run_dir, device, data_root)
