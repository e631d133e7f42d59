"""Reference implementations, one module per method; importing this registers them all."""

from baselines.reference import rows as _reference_rows  # noqa: F401
