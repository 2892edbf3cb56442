"""Exceptions that map to the exit codes (docs/architecture.md, "Exit codes").

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


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message (at most `limit` characters), or its type name.

    Every one-line `error: ...` message is built from this, so a multi-line library error
    (ONNX checker, YAML parser, pickle) never spills a traceback-like block onto the terminal.
    """
    for line in str(exc).strip().splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__


def exit_code_of(exc: BaseException) -> int:
    """The process exit code for an exception: its class's `exit_code` (1 user error, 3 gate), else 1."""
    return int(getattr(exc, "exit_code", 1))
