"""The trivial rows that anchor every table (METHODS.md, "Reference rows")."""

from baselines.reference import rows as rows  # noqa: F401  (registers the rows)
