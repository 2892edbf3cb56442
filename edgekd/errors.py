"""Exceptions that map to the exit codes of DESIGN.md section 2.

`EdgekdError` is a user error (exit 1, one line `error: ...`); `GateError` is a failed
verification gate: parity, accuracy budget or latency regression (exit 3).
"""


class EdgekdError(Exception):
    """A user error: bad input, missing file, unknown name. Exit code 1."""

    exit_code = 1


class DataError(EdgekdError):
    """A dataset could not be read or is invalid (empty, labels out of range)."""


class CheckpointError(EdgekdError):
    """A checkpoint is missing, corrupt, or not written by edgekd."""


class ConfigError(EdgekdError):
    """A configuration file or option is invalid."""


class MissingDependencyError(EdgekdError):
    """An optional dependency (an extra) is not installed."""


class GateError(Exception):
    """A verification gate failed (parity, accuracy budget, latency regression). Exit code 3."""

    exit_code = 3
