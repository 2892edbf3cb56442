"""Bench reports: a stable JSON schema, a terminal table and a markdown report.

The JSON schema (`schema` = "edgekd-bench-report", `schema_version` = 1; docs/schemas.md and
docs/schemas/bench-report.v1.json) is what `--baseline` reads back; keys are only ever added
within a version. One artifact entry per model, one
latency row per batch size:

    {schema, schema_version, edgekd_version, created_utc, environment, settings,
     artifacts: [{name, path, format, backend, device, precision, size_bytes, sha256,
                  input_shape, output_kind, runner_settings, accuracy, parity, status, warnings,
                  latency: [{batch_size, iters, p50_ms, p90_ms, p99_ms, mean_ms, std_ms, min_ms,
                             max_ms, cv, fps, device_p50_ms, unstable, histogram, status, warnings}],
                  identity, data, environment}],
     warnings, gate}

`identity`, `data` and `environment` of an entry say what was measured (edgekd.bench.identity);
`--baseline` refuses to compare entries that are other models or were scored on other data.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Optional, Sequence

from edgekd import __version__
from edgekd.bench.reader import SCHEMA, SCHEMA_VERSION  # noqa: F401 - the format's marker lives with its reader
from edgekd.bench.table import format_size  # noqa: F401 - re-exported: the size format of every report
from edgekd.io import write_json_atomic, write_text_atomic

REPORT_KEYS = ("schema", "schema_version", "edgekd_version", "created_utc", "environment", "settings",
               "artifacts", "warnings", "gate", "recommendations")
ARTIFACT_KEYS = ("name", "path", "format", "backend", "device", "precision", "size_bytes", "sha256",
                 "input_shape", "output_kind", "runner_settings", "accuracy", "parity", "status", "warnings",
                 "latency", "identity", "data", "environment")
LATENCY_KEYS = ("batch_size", "iters", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms",
                "cv", "fps", "device_p50_ms", "unstable", "status", "warnings")


def new_report(environment: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "edgekd_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment, "settings": settings, "artifacts": [], "warnings": [], "gate": None,
        "recommendations": [],  # one line per device: the fastest artifact within budget (edgekd.bench.recommend)
    }


def size_on_disk(path: str | Path) -> int:
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    # ONNX external data and OpenVINO IR weights (model.bin) live beside the model: part of the artifact
    extra = sum(f.stat().st_size for f in p.parent.glob(p.name + ".data")) if p.suffix == ".onnx" else 0
    if p.suffix == ".xml" and p.with_suffix(".bin").is_file():
        extra = p.with_suffix(".bin").stat().st_size
    return p.stat().st_size + extra


def render_table(report: dict[str, Any], width: Optional[int] = None, colour: Optional[bool] = None) -> str:
    """The table fitted to the terminal: its width (narrow layout below 100 columns), colour only on a TTY."""
    from edgekd.bench.table import render_table as fitted

    return fitted(report, width=width, colour=colour)


def render_markdown(report: dict[str, Any], images: Sequence[str | Path] = ()) -> str:
    """Markdown: the gate's base-vs-head table (when gated), results, warnings, `images` (edgekd.bench.markdown)."""
    from edgekd.bench.markdown import render_report_markdown

    return render_report_markdown(report, images)


def write_reports(report: dict[str, Any], json_path: Optional[Path] = None,
                  markdown_path: Optional[Path] = None) -> None:
    """Write the JSON and markdown reports atomically (either may be None).

    With the `[plot]` extra installed, the markdown report gets its charts beside it
    (`<name>.latency.png`, `<name>.accuracy-latency.png`, edgekd.plots) and shows them.
    """
    if json_path:
        write_json_atomic(json_path, report)
    if markdown_path:
        write_text_atomic(markdown_path, render_markdown(report, plots_beside(report, Path(markdown_path))))


def plots_beside(report: dict[str, Any], markdown_path: Path) -> list[str]:
    """Chart file names written next to `markdown_path`; none (quietly) without matplotlib."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return []
    from edgekd.plots import plot_bench

    try:
        return [p.name for p in plot_bench(report, markdown_path)]
    except Exception:  # noqa: BLE001 - a chart must never cost the report (a broken matplotlib, a full disk)
        return []
