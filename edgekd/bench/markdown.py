"""Markdown reports a reviewer reads: base vs head side by side for every gated figure.

Two documents, both GitHub-flavoured markdown (a PR comment, a job summary, a file):

- `render_report_markdown(report)`: one `edgekd bench` report. When it was gated against a
  `--baseline`, a table first gives every gated figure (top-1 per artifact, p50 per artifact and
  batch) as baseline, current, change, threshold and verdict; then the full results table,
  warnings, and any plots beside the report (`![...](latency.png)`).
- `render_compare_markdown(result)`: one `edgekd bench compare A B` result, naming both files,
  with both medians, the latency ratio and its confidence interval, threshold and verdict.

Figures and units: top-1 in percent, its change in percentage points; latency in milliseconds,
its change in percent of the baseline (docs/schemas.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

PASS, FAIL, UNSURE = "✅ pass", "❌ fail", "⚠️ inconclusive"
MARKER = "<!-- edgekd-bench-gate -->"  # lets a CI job find and update its own PR comment


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Sequence[bool] = ()) -> list[str]:
    """Lines of a markdown table; `right[i]` right-aligns column i (numbers)."""
    align = ["---:" if (i < len(right) and right[i]) else "---" for i in range(len(headers))]
    out = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def _ms(v: Optional[float]) -> str:
    return "-" if v is None else (f"{v:.3f} ms" if v < 10 else f"{v:.1f} ms")


def gate_rows(gate: dict[str, Any]) -> list[list[str]]:
    """One row per gated figure: artifact, figure, baseline, current, change, threshold, verdict.

    `check_baseline` writes `change` as a fraction for latency (ratio - 1) and as signed points
    for top-1 (current - baseline); `limit` likewise (fraction / points).
    """
    rows = []
    for c in gate.get("checks") or []:
        verdict = PASS if c["passed"] else FAIL
        if c["figure"] == "top1":
            rows.append([c["artifact"], "top-1", f"{c['baseline']:.2f}%", f"{c['current']:.2f}%",
                         f"{c['change'] + 0.0:+.2f} pts", f"drop ≤ {c['limit']:g} pts", verdict])
        else:
            metric, _, where = c["figure"].partition(" ")  # "p50_ms batch 8" -> "p50 latency, batch 8"
            figure = f"{metric.replace('_ms', '')} latency, {where}".rstrip(", ")
            rows.append([c["artifact"], figure, _ms(c["baseline"]), _ms(c["current"]),
                         f"{c['change'] * 100:+.1f}%", f"≤ +{c['limit'] * 100:g}%", verdict])
    return rows


GATE_HEADERS = ("artifact", "figure", "baseline", "current", "change", "threshold", "verdict")


def render_gate_section(gate: dict[str, Any], level: str = "###") -> list[str]:
    """The gate verdict, the base-vs-head table of every gated figure, its failures and notes."""
    against = f" against `{gate['baseline']}`" if gate.get("baseline") else ""
    out = [f"{level} Gate: {'passed' if gate['passed'] else 'FAILED'}{against}", ""]
    rows = gate_rows(gate)
    if rows:
        out += md_table(GATE_HEADERS, rows, right=(False, False, True, True, True, True, False)) + [""]
    if not rows:  # with a table its verdict column already says what failed
        out += [f"- ❌ {f}" for f in gate.get("failures") or []]
    out += [f"- note: {n}" for n in gate.get("notes") or []]
    return out


def render_report_markdown(report: dict[str, Any], images: Sequence[str | Path] = (), level: str = "##") -> str:
    """A bench report as markdown: gate table (when gated), results, warnings, plots."""
    from edgekd.bench.fingerprint import describe_fingerprint
    from edgekd.bench.table import COLUMNS, table_records

    out = [f"{level} edgekd bench ({report['created_utc']})", ""]
    gate = report.get("gate")
    if gate:
        out += render_gate_section(gate, level + "#") + [""]
    out += [f"Environment: {describe_fingerprint(report.get('environment') or {})}", ""]
    settings = report.get("settings") or {}
    out += ["<details><summary>Settings</summary>", "",
            ", ".join(f"{k}={v}" for k, v in settings.items() if v not in (None, [], "")), "", "</details>", ""]
    out += md_table([c.header for c in COLUMNS], ([r[c.key] for c in COLUMNS] for r in table_records(report)),
                    right=[c.right for c in COLUMNS])
    warnings = list(report.get("warnings") or [])
    for art in report["artifacts"]:
        warnings += [f"{art['name']}: {w}" for w in art.get("warnings", [])]
        for row in art.get("latency", []):
            warnings += [f"{art['name']} batch {row.get('batch_size')}: {w}" for w in row.get("warnings", [])]
    if warnings:
        out += ["", "Warnings:", ""] + [f"- {w}" for w in warnings]
    if images:
        out += [""] + [f"![{Path(p).stem.replace('_', ' ')}]({Path(p).as_posix()})" for p in images]
    return "\n".join(out) + "\n"


def _unit(r: dict[str, Any]) -> str:
    """What the interval was computed over: fresh processes (each with interleaved rounds), or rounds in one."""
    if r.get("level") == "process":
        return f"{r.get('processes')} fresh processes x {r['rounds']} interleaved rounds"
    return f"{r['rounds']} interleaved rounds in one process"


def render_compare_markdown(result: dict[str, Any], level: str = "##") -> str:
    """An `edgekd bench compare A B` result (the dict `run_compare` returns) as markdown."""
    r = result["result"]
    lim = 1 + r["threshold"]
    verdict = {"ok": PASS, "regression": FAIL, "inconclusive": UNSURE}[r["verdict"]]
    backend = result.get("backend")
    backend = "/".join(dict.fromkeys(backend)) if isinstance(backend, list) else backend
    out = [f"{level} edgekd bench compare: {'passed' if result['passed'] else 'FAILED'}", "",
           f"- A (baseline): `{result['a']}`", f"- B (candidate): `{result['b']}`",
           f"- batch {result['batch_size']}, {backend} on {result.get('device')}, {_unit(r)}, "
           f"{r['calls_per_round'][0]}/{r['calls_per_round'][1]} calls per round (A/B)", ""]
    out += md_table(("figure", "A (baseline)", "B (candidate)", "change", "threshold", "verdict"),
                    [(f"p50 latency, batch {result['batch_size']}", _ms(r["a_p50_ms"]), _ms(r["b_p50_ms"]),
                      f"B/A {r['ratio']:.3f} ({r['confidence'] * 100:g}% CI {r['ci_low']:.3f}–{r['ci_high']:.3f})",
                      f"B/A ≤ {lim:.2f}", verdict)],
                    right=(False, True, True, True, True, False))
    out += ["", result.get("summary", "")]
    return "\n".join(out).rstrip() + "\n"


__all__ = ["render_report_markdown", "render_compare_markdown", "render_gate_section", "gate_rows", "md_table",
           "MARKER"]
