"""Reading a bench report back (`--baseline`, `edgekd plot`): the schema marker and a structural check.

A leaf module (standard library and edgekd.errors only), so the gate, the report writer and the
plots can all read reports without importing each other. A file that is not a well-formed bench
report is one EdgekdError line (exit 1) naming what is wrong, never a KeyError later.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from edgekd.errors import EdgekdError, first_line

SCHEMA = "edgekd-bench-report"
SCHEMA_VERSION = 1


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a bench JSON report and check that it is a well-formed one (`validate_report`)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise EdgekdError(f"baseline report not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise EdgekdError(f"{path} is not a JSON bench report ({first_line(exc, 100)})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise EdgekdError(f"{path} is not an edgekd bench report (schema marker missing)")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise EdgekdError(f"{path} is not a usable bench report: schema_version is {version!r}")
    if version > SCHEMA_VERSION:
        raise EdgekdError(f"{path} was written by a newer edgekd (schema {version}); upgrade edgekd")
    validate_report(data, str(path))
    return data


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _report_problem(data: dict[str, Any]) -> Optional[str]:
    """The first structural problem of a decoded report, or None."""
    arts = data.get("artifacts")
    if not isinstance(arts, list):
        return "'artifacts' is not a list"
    if not isinstance(data.get("environment", {}), dict):
        return "'environment' is not an object"
    for i, art in enumerate(arts):
        where = f"artifacts[{i}]"
        if not isinstance(art, dict):
            return f"{where} is not an object"
        if not isinstance(art.get("name"), str):
            return f"{where} has no name"
        for key in ("accuracy", "identity", "data", "environment"):
            if art.get(key) is not None and not isinstance(art[key], dict):
                return f"{where}.{key} is not an object"
        top1 = (art.get("accuracy") or {}).get("top1")
        if top1 is not None and not _is_number(top1):
            return f"{where}.accuracy.top1 is {top1!r}, not a number"
        rows = art.get("latency", [])
        if not isinstance(rows, list):
            return f"{where}.latency is not a list"
        for j, row in enumerate(rows):
            if not isinstance(row, dict) or not isinstance(row.get("batch_size"), int):
                return f"{where}.latency[{j}] has no batch_size"
            bad = [k for k, v in row.items() if k.endswith("_ms") and v is not None and not _is_number(v)]
            if bad:
                return f"{where}.latency[{j}].{bad[0]} is {row[bad[0]]!r}, not a number"
    return None


def validate_report(data: dict[str, Any], source: str) -> None:
    """EdgekdError (one line, exit 1) when a decoded report lacks what the gate and the plots read."""
    problem = _report_problem(data)
    if problem:
        raise EdgekdError(f"{source} is not a usable bench report: {problem}")


__all__ = ["SCHEMA", "SCHEMA_VERSION", "load_report", "validate_report"]
