"""The CI regression gate: a report against a baseline report (and the A/B comparison's names).

A baseline gate compares medians measured at different times, possibly on different machines:
on noisy CI machines it raises false alarms (measured 4 in 20 at 10%: docs/architecture.md,
"Latency gate noise"); `edgekd bench compare` (edgekd.bench.compare) is the trustworthy form.

Before any figure is compared, each matched pair of entries must be the same model on the same
data (edgekd.bench.identity): a different model or different evaluated images is refused with one
line (EdgekdError, exit 1) naming what differs, and a different environment is a warning. A
baseline file that is not a well-formed bench report is refused in one line too, never a KeyError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

# the comparison's names lived here: re-exported for `from edgekd.bench.gate import ...`
from edgekd.bench.compare import (  # noqa: F401
    COMPARE_SCHEMA,
    COMPARE_SCHEMA_VERSION,
    CompareResult,
    CompareSettings,
    bootstrap_ratio_ci,
    compare_runners,
    decide,
)
from edgekd.bench.identity import build_note, data_differences, environment_differences, model_differences
from edgekd.bench.reader import load_report, validate_report  # noqa: F401 - load_report re-exported
from edgekd.errors import EdgekdError, GateError


def parse_percent(text: str | float) -> float:
    """'10%' or '10' -> 0.10 (always percent units)."""
    s = str(text).strip()
    try:
        value = float(s[:-1] if s.endswith("%") else s)
    except ValueError:
        raise EdgekdError(f"not a percentage: {text!r} (write e.g. 10%)") from None
    if value < 0:
        raise EdgekdError(f"a percentage must not be negative: {text!r}")
    return value / 100.0


# ---------------------------------------------------------------------------------------------
# baseline gate


def validate_baseline(baseline: dict[str, Any], source: str = "baseline") -> None:
    """A baseline must also carry each entry's identity, or nothing proves what it measured."""
    validate_report(baseline, source)
    for i, art in enumerate(baseline["artifacts"]):
        if not isinstance(art.get("identity"), dict):
            raise EdgekdError(f"{source}: artifacts[{i}] ({art['name']}) carries no identity (a report from an "
                              f"edgekd before artifact identities); record the baseline again")


def _match_artifacts(current: list[dict], baseline: list[dict]) -> list[tuple[dict, Optional[dict]]]:
    """Pair baseline artifacts with current ones: by name, then by file name when unique."""
    by_name = {a["name"]: a for a in current}
    by_file: dict[str, list[dict]] = {}
    for a in current:
        by_file.setdefault(Path(a["name"]).name, []).append(a)
    pairs = []
    for b in baseline:
        cur = by_name.get(b["name"])
        if cur is None:
            same = by_file.get(Path(b["name"]).name, [])
            cur = same[0] if len(same) == 1 else None
        pairs.append((b, cur))
    return pairs


def check_comparable(artifacts: list[dict], baseline: dict[str, Any],
                     source: str = "baseline") -> tuple[list[str], list[str]]:
    """Refuse a baseline whose matched entries are other models or other data; returns (notes, environment
    differences). `artifacts` are this run's entries with their `identity` (and `data` when scored)."""
    validate_baseline(baseline, source)
    refused, notes, env = [], [], []
    for base, cur in _match_artifacts(artifacts, baseline["artifacts"]):
        if cur is None:
            continue
        diffs = model_differences(base["identity"], cur.get("identity") or {})
        if diffs:
            refused.append(f"{cur['name']} is not the model of the baseline entry {base['name']}: {'; '.join(diffs)}")
            continue
        both_scored = (base.get("accuracy") or {}).get("top1") is not None and \
            (cur.get("accuracy") or {}).get("top1") is not None
        data = data_differences(base.get("data"), cur.get("data")) if both_scored else []
        if data:
            refused.append(f"top-1 of {cur['name']} was measured on other data than the baseline: {data[0]}")
        note = build_note(base["identity"], cur["identity"])
        if note:
            notes.append(f"{cur['name']}: {note}")
        env += [d for d in environment_differences(base.get("environment"), cur.get("environment")) if d not in env]
    if refused:
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise EdgekdError(f"{source}: refusing to compare: {refused[0]}{more}")
    if env:
        notes.append(f"the environment differs from the baseline ({'; '.join(env)}): figures compared anyway, "
                     f"but they may move for that reason")
    return notes, env


def check_baseline(report: dict[str, Any], baseline: dict[str, Any], max_latency_regression: float,
                   max_accuracy_drop: float, metric: str = "p50_ms", source: str = "baseline") -> dict[str, Any]:
    """Compare a report with a baseline; returns {passed, failures, checks, notes, environment_differences}.

    EdgekdError (exit 1) first when a matched pair is not the same model on the same data
    (`check_comparable`), or the baseline is malformed.

    `max_latency_regression` is a fraction (0.10 = 10% slower allowed); `max_accuracy_drop` is
    in top-1 percentage points. Each failure names the artifact, batch size and figure.
    """
    notes, env = check_comparable(report["artifacts"], baseline, source)
    failures, checks = [], []
    for base, cur in _match_artifacts(report["artifacts"], baseline["artifacts"]):
        if cur is None:
            notes.append(f"{base['name']}: in the baseline but not benchmarked now; not gated")
            continue
        b_acc, c_acc = (base.get("accuracy") or {}).get("top1"), (cur.get("accuracy") or {}).get("top1")
        if b_acc is not None and c_acc is not None:
            drop = b_acc - c_acc
            ok = drop <= max_accuracy_drop + 1e-9
            checks.append({"artifact": cur["name"], "figure": "top1", "baseline": b_acc, "current": c_acc,
                           "change": -drop, "limit": max_accuracy_drop, "passed": ok})
            if not ok:
                failures.append(f"top-1 of {cur['name']} dropped {drop:.2f} points ({b_acc:.2f}% -> {c_acc:.2f}%; "
                                f"limit {max_accuracy_drop:g})")
        cur_lat = {row["batch_size"]: row for row in cur.get("latency", []) if row.get(metric) is not None}
        for brow in base.get("latency", []):
            bs, b_val = brow["batch_size"], brow.get(metric)
            crow = cur_lat.get(bs)
            if b_val is None:
                continue
            if crow is None:
                notes.append(f"{cur['name']} batch {bs}: in the baseline but not measured now; not gated")
                continue
            ratio = crow[metric] / b_val if b_val > 0 else float("inf")
            ok = ratio <= 1 + max_latency_regression + 1e-9
            checks.append({"artifact": cur["name"], "figure": f"{metric} batch {bs}", "baseline": b_val,
                           "current": crow[metric], "change": ratio - 1, "limit": max_latency_regression,
                           "passed": ok})
            if not ok:
                failures.append(f"latency {metric.replace('_ms', '')} of {cur['name']} at batch {bs} regressed "
                                f"{(ratio - 1) * 100:.1f}% ({b_val:.3f} ms -> {crow[metric]:.3f} ms; "
                                f"limit {max_latency_regression * 100:g}%)")
    if not checks:
        notes.append("nothing in the baseline matched this run: no figure was gated")
    return {"passed": not failures, "failures": failures, "checks": checks, "notes": notes,
            "max_latency_regression": max_latency_regression, "max_accuracy_drop": max_accuracy_drop,
            "metric": metric, "environment_differences": env}


def enforce_gate(result: dict[str, Any]) -> None:
    """Raise GateError (exit 3) naming the first broken figure (and how many more broke)."""
    failures = result.get("failures") or []
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise GateError(f"gate failed: {failures[0]}{more}")
