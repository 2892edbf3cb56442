"""Bench reports: a stable JSON schema, a rich table and a markdown table.

The JSON schema (`schema` = "edgekd-bench-report", `schema_version` = 1) is what `--baseline`
reads back; keys are only ever added within a version. One artifact entry per model, one
latency row per batch size:

    {schema, schema_version, edgekd_version, created_utc, environment, settings,
     artifacts: [{name, path, format, backend, device, precision, size_bytes, sha256,
                  input_shape, output_kind, runner_settings, accuracy, parity, status, warnings,
                  latency: [{batch_size, iters, p50_ms, p90_ms, p99_ms, mean_ms, std_ms, min_ms,
                             max_ms, cv, fps, device_p50_ms, unstable, status, warnings}]}],
     warnings, gate}
"""

from __future__ import annotations

import datetime as _dt
import io
from pathlib import Path
from typing import Any, Optional

from edgekd import __version__
from edgekd.io import write_json_atomic, write_text_atomic

SCHEMA = "edgekd-bench-report"
SCHEMA_VERSION = 1
REPORT_KEYS = ("schema", "schema_version", "edgekd_version", "created_utc", "environment", "settings",
               "artifacts", "warnings", "gate")
ARTIFACT_KEYS = ("name", "path", "format", "backend", "device", "precision", "size_bytes", "sha256",
                 "input_shape", "output_kind", "runner_settings", "accuracy", "parity", "status", "warnings",
                 "latency")
LATENCY_KEYS = ("batch_size", "iters", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms",
                "cv", "fps", "device_p50_ms", "unstable", "status", "warnings")


def new_report(environment: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "edgekd_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment, "settings": settings, "artifacts": [], "warnings": [], "gate": None,
    }


def size_on_disk(path: str | Path) -> int:
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    # ONNX external data lives beside the model; count it as part of the artifact
    extra = sum(f.stat().st_size for f in p.parent.glob(p.name + ".data")) if p.suffix == ".onnx" else 0
    return p.stat().st_size + extra


def format_size(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per artifact and batch size (an artifact with no latency gets one row)."""
    rows = []
    for art in report["artifacts"]:
        acc = art.get("accuracy") or {}
        top1 = f"{acc['top1']:.2f}%" if acc.get("top1") is not None else "-"
        par = art.get("parity")
        fmt = f"{art['format']} {art['precision']}".strip()
        where = f"{art['backend']}/{art['device']}"
        lat = art.get("latency") or [{}]
        for row in lat:
            status = row.get("status") or art.get("status", "")
            if par and row is lat[0]:
                status = f"{status}; parity {par['max_abs_diff']:.1e}, {par['top1_agreement']:.1f}% agree"
            rows.append([
                art["name"], fmt, where, format_size(art.get("size_bytes")), str(row.get("batch_size", "-")), top1,
                _ms(row.get("p50_ms")), _ms(row.get("p90_ms")), _ms(row.get("p99_ms")),
                f"{row['fps']:.0f}" if row.get("fps") else "-", status,
            ])
    return rows


HEADERS = ["artifact", "format", "backend", "size", "batch", "top-1", "p50 ms", "p90 ms", "p99 ms", "fps", "status"]


def _ms(v: Optional[float]) -> str:
    return "-" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}")


def render_table(report: dict[str, Any]) -> str:
    """The rich table as text (colours only on a terminal)."""
    from rich.console import Console
    from rich.table import Table

    from edgekd.bench.fingerprint import describe_fingerprint

    table = Table(title="edgekd bench", caption=describe_fingerprint(report["environment"]))
    for h in HEADERS:
        table.add_column(h, justify="right" if h not in ("artifact", "format", "backend", "status") else "left")
    for row in table_rows(report):
        style = None if row[-1].startswith("ok") else "yellow"
        if "slower than" in row[-1] or "regress" in row[-1]:
            style = "red"
        table.add_row(*row, style=style)
    buf = io.StringIO()
    Console(file=buf, width=160, force_terminal=False).print(table)
    return buf.getvalue()


def render_markdown(report: dict[str, Any]) -> str:
    """A markdown table plus environment, settings, warnings and the gate outcome."""
    from edgekd.bench.fingerprint import describe_fingerprint

    out = [f"# edgekd bench ({report['created_utc']})", "", f"Environment: {describe_fingerprint(report['environment'])}", ""]
    s = report["settings"]
    out.append("Settings: " + ", ".join(f"{k}={v}" for k, v in s.items() if v not in (None, [], "")))
    out += ["", "| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" if i < 4 or i == len(HEADERS) - 1 else "---:"
                                                                 for i in range(len(HEADERS))) + "|"]
    for row in table_rows(report):
        out.append("| " + " | ".join(c.replace("|", "/") for c in row) + " |")
    warnings = list(report.get("warnings") or [])
    for art in report["artifacts"]:
        warnings += [f"{art['name']}: {w}" for w in art.get("warnings", [])]
        for row in art.get("latency", []):
            warnings += [f"{art['name']} batch {row['batch_size']}: {w}" for w in row.get("warnings", [])]
    if warnings:
        out += ["", "Warnings:", ""] + [f"- {w}" for w in warnings]
    gate = report.get("gate")
    if gate:
        out += ["", f"Gate: {'passed' if gate['passed'] else 'FAILED'}"] + [f"- {f}" for f in gate["failures"]]
    return "\n".join(out) + "\n"


def write_reports(report: dict[str, Any], json_path: Optional[Path] = None, markdown_path: Optional[Path] = None) -> None:
    """Write the JSON and markdown reports atomically (either may be None)."""
    if json_path:
        write_json_atomic(json_path, report)
    if markdown_path:
        write_text_atomic(markdown_path, render_markdown(report))
