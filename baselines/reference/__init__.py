"""The trivial rows that anchor every table (METHODS.md, "Reference rows")."""
