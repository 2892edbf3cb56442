"""The bench table as terminal text: fitted to the real terminal width, coloured only on a terminal.

Three layouts, tried widest first, the first that fits the width wins:

- ``wide``: every column, the status in the last column (a 160-column terminal, a CI log);
- ``status-below``: the status moves to its own line under the row (from ~100 columns);
- ``narrow``: fewer columns (no p90, size and backend), the status on its own line, long artifact
  names shortened from the left (``…/export/model.int8.onnx``) - an 80-column terminal.

Below ``NARROW_BELOW`` columns the wide layouts are not tried even when they would fit: a status
column squeezed to a few characters is harder to read than a line of its own.

Colour (bold header, yellow warnings, red failures) only when writing to a terminal, never when
``NO_COLOR`` is set (https://no-color.org) or ``TERM=dumb``; pipes and CI logs get plain text.
Width: ``COLUMNS`` when set, else the terminal's, else 160 (a log file does not wrap).
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
from dataclasses import dataclass
from typing import Any, Optional, TextIO

NARROW_BELOW = 100  # columns: below this the status always gets its own line
PIPE_WIDTH = 160  # width when the output is not a terminal and COLUMNS is unset
MIN_ARTIFACT = 14  # an artifact name is never cut shorter than this
GAP = "  "  # between columns

_ANSI = {"bold": "\x1b[1m", "yellow": "\x1b[33m", "red": "\x1b[31m", "dim": "\x1b[2m", "reset": "\x1b[0m"}
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    right: bool = True  # numbers right-aligned, words left-aligned


# the order they are shown in; `narrow` keeps NARROW_KEYS only
COLUMNS = (
    Column("artifact", "artifact", right=False), Column("format", "format", right=False),
    Column("backend", "backend", right=False), Column("size", "size"), Column("batch", "batch"),
    Column("top1", "top-1"), Column("p50", "p50 ms"), Column("p90", "p90 ms"), Column("p99", "p99 ms"),
    Column("fps", "fps"), Column("status", "status", right=False),
)
PER_ARTIFACT = ("artifact", "format", "backend", "size", "top1")
NARROW_KEYS = ("artifact", "format", "batch", "top1", "p50", "p99", "fps")


def terminal_width(stream: Optional[TextIO] = None) -> int:
    """COLUMNS when set (a user's or a test's choice), else the terminal's width, else PIPE_WIDTH."""
    env = os.environ.get("COLUMNS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    stream = stream if stream is not None else sys.stdout
    try:
        if stream.isatty():
            return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):  # a StringIO, a closed or redirected stream
        pass
    return PIPE_WIDTH


def use_colour(stream: Optional[TextIO] = None) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (to anything) or TERM=dumb."""
    if "NO_COLOR" in os.environ and os.environ["NO_COLOR"] != "":
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    stream = stream if stream is not None else sys.stdout
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def visible_len(text: str) -> int:
    """Characters a terminal shows (ANSI colour codes take no room)."""
    return len(_ANSI_RE.sub("", text))


def format_size(n: Optional[int]) -> str:
    """Bytes for people: '302.7 KB'."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _ms(v: Optional[float]) -> str:
    return "-" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}")


def table_records(report: dict[str, Any]) -> list[dict[str, str]]:
    """One record per artifact and batch size (an artifact with no latency gets one), as display strings."""
    out = []
    for art in report["artifacts"]:
        acc = art.get("accuracy") or {}
        par = art.get("parity")
        lat = art.get("latency") or [{}]
        for row in lat:
            status = row.get("status") or art.get("status", "")
            if par and row is lat[0]:
                status = f"{status}; parity {par['max_abs_diff']:.1e}, {par['top1_agreement']:.1f}% agree"
            out.append({
                "artifact": art["name"], "format": f"{art.get('format', '')} {art.get('precision', '')}".strip(),
                "backend": f"{art.get('backend', '')}/{art.get('device', '')}",
                "size": format_size(art.get("size_bytes")), "batch": str(row.get("batch_size", "-")),
                "top1": f"{acc['top1']:.2f}%" if acc.get("top1") is not None else "-",
                "p50": _ms(row.get("p50_ms")), "p90": _ms(row.get("p90_ms")), "p99": _ms(row.get("p99_ms")),
                "fps": f"{row['fps']:.0f}" if row.get("fps") else "-", "status": status or "-",
            })
    return out


def status_style(status: str) -> Optional[str]:
    """red for failures, yellow for anything else that is not plainly ok, None for ok."""
    s = status.lower()
    if any(w in s for w in ("regress", "slower than", "fail")):
        return "red"
    if s.startswith("ok") or s == "-":
        return None
    return "yellow"


def shorten_left(text: str, width: int) -> str:
    """'runs/a/export/model.onnx' -> '…/export/model.onnx': the file name is the part that tells artifacts apart."""
    if len(text) <= width:
        return text
    return "…" + text[len(text) - width + 1:]


def common_directory(names: list[str]) -> str:
    """The directory every name lies in ('' for one artifact, mixed places, or none): 'runs/demo/export'."""
    import posixpath

    unique = sorted(set(names))
    if len(unique) < 2 or any("/" not in n for n in unique):
        return ""
    prefix = posixpath.commonpath([posixpath.dirname(n) for n in unique]) if all(
        n.startswith("/") for n in unique) or not any(n.startswith("/") for n in unique) else ""
    return "" if prefix in ("", "/", ".") else prefix


def _layouts(width: int) -> list[tuple[str, tuple[str, ...], bool]]:
    """(name, column keys, status inline) in the order they are tried."""
    every = tuple(c.key for c in COLUMNS if c.key != "status")
    narrow = [("narrow", NARROW_KEYS, False), ("narrow", tuple(k for k in NARROW_KEYS if k != "format"), False)]
    if width < NARROW_BELOW:
        return narrow
    return [("wide", every + ("status",), True), ("status-below", every, False),
            ("status-below", tuple(k for k in every if k != "p90"), False)] + narrow


def _column_widths(records: list[dict[str, str]], keys: tuple[str, ...]) -> dict[str, int]:
    heads = {c.key: c.header for c in COLUMNS}
    return {k: max([len(heads[k])] + [len(r[k]) for r in records]) for k in keys}


def choose_layout(records: list[dict[str, str]], width: int) -> tuple[str, tuple[str, ...], bool, dict[str, int]]:
    """The first layout whose columns fit `width` (the artifact column may shrink to MIN_ARTIFACT)."""
    for name, keys, inline in _layouts(width):
        widths = _column_widths(records, keys)
        total = sum(widths.values()) + len(GAP) * (len(keys) - 1)
        if total <= width:
            return name, keys, inline, widths
        excess = total - width
        if widths["artifact"] - excess >= MIN_ARTIFACT and not inline:
            widths["artifact"] -= excess
            return name, keys, inline, widths
    # nothing fits (a very narrow terminal): the smallest layout, lines may be cut by the terminal
    name, keys, inline = _layouts(width)[-1]
    widths = _column_widths(records, keys)
    widths["artifact"] = MIN_ARTIFACT
    return name, keys, inline, widths


def _paint(text: str, style: Optional[str], colour: bool) -> str:
    return f"{_ANSI[style]}{text}{_ANSI['reset']}" if (colour and style) else text


def render_table(report: dict[str, Any], width: Optional[int] = None, colour: Optional[bool] = None,
                 stream: Optional[TextIO] = None) -> str:
    """The bench table fitted to `width` columns (default: the terminal's), coloured when `colour`.

    Every line is at most `width` characters wide (ANSI codes not counted), except on terminals
    narrower than the narrowest layout (about 60 columns).
    """
    from edgekd.bench.fingerprint import describe_fingerprint

    width = width or terminal_width(stream)
    colour = use_colour(stream) if colour is None else colour
    records = table_records(report)
    name, keys, inline, widths = choose_layout(records, width)
    where = common_directory([r["artifact"] for r in records])
    if where and widths["artifact"] < max(len(r["artifact"]) for r in records):
        # names cut short: say their shared directory once, in the title, and show the rest whole
        for r in records:
            r["artifact"] = r["artifact"][len(where) + 1:]
        name, keys, inline, widths = choose_layout(records, width)
    else:
        where = ""
    heads = {c.key: c for c in COLUMNS}

    def cells(values: dict[str, str]) -> str:
        parts = []
        for k in keys:
            v = shorten_left(values[k], widths[k]) if k == "artifact" else values[k]
            is_last = k == keys[-1] and not heads[k].right
            parts.append(v if is_last else (v.rjust(widths[k]) if heads[k].right else v.ljust(widths[k])))
        return GAP.join(parts).rstrip()

    lines = [_paint("edgekd bench" + (f" (artifacts in {where}/)" if where else ""), "bold", colour)]
    header = cells({k: heads[k].header for k in keys})
    lines += [_paint(header, "bold", colour), "-" * min(width, len(header))]
    indent = "    "
    last_artifact = None
    for rec in records:
        style = status_style(rec["status"])
        shown = dict(rec)
        if rec["artifact"] == last_artifact and not inline:
            # the same artifact at another batch size: its per-artifact cells once, the eye finds the batch rows
            shown.update({k: "" for k in PER_ARTIFACT})
        last_artifact = rec["artifact"]
        lines.append(_paint(cells(shown), style if inline else None, colour))
        if not inline and rec["status"] not in ("ok", "-"):
            for part in textwrap.wrap(rec["status"], width=max(width - len(indent), 20), initial_indent=indent,
                                      subsequent_indent=indent + "  "):
                lines.append(_paint(part, style, colour))
    caption = describe_fingerprint(report.get("environment") or {})
    if not inline:
        caption = "status: ok unless a line below a row says otherwise | " + caption
    lines += [_paint(part, "dim", colour) for part in textwrap.wrap(caption, width=width)]
    return "\n".join(lines) + "\n"


__all__ = ["render_table", "terminal_width", "use_colour", "visible_len", "table_records", "choose_layout"]
