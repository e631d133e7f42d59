"""genbench: one protocol and one set of evaluators for generative and self-supervised models."""

from __future__ import annotations

__version__ = "0.1.0"
