"""The reduced-precision accuracy budget and the closing recommendation of `edgekd bench`.

- Budget: an INT8 artifact (ONNX Runtime or OpenVINO) or an FP32 file run under OpenVINO's bf16
  hint changes the numerics, so with `--data` its top-1 is held against its FP32 reference entry
  (`edgekd.bench.plan.reference_of`): a drop of more than `--max-precision-drop` points (default
  1.0, the export's INT8 budget) fails the run (exit 3), as the export's INT8 budget does.
- Recommendation: one line per device naming the fastest artifact within that budget at each
  timed batch size, with its speed-up over the FP32 ONNX Runtime entry when there is one. FP32
  entries are always within budget; reduced-precision ones only when their budget was checked.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from edgekd.bench.plan import Entry, reference_of

# artifact states that rule an entry out of the recommendation
FAILED_STATES = ("accuracy budget exceeded", "int8 slower than fp32", "gate failed", "error")
REDUCED = ("int8", "bf16", "fp16")


def check_budgets(arts: list[dict[str, Any]], entries: Sequence[Entry], max_drop: float) -> None:
    """Add `accuracy_budget` to every reduced-precision entry with a measured FP32 reference; a drop
    above `max_drop` marks the entry and adds its message to `budget_failures` (always a failure)."""
    precisions = [a["precision"] for a in arts]
    for i, art in enumerate(arts):
        j = reference_of(entries, i, precisions)
        acc, ref = art.get("accuracy"), arts[j].get("accuracy") if j is not None else None
        if not acc or not ref:
            continue
        drop = float(ref["top1"]) - float(acc["top1"])
        art["accuracy_budget"] = {"reference": arts[j]["name"], "fp32_top1": ref["top1"], "top1": acc["top1"],
                                  "drop_points": round(drop, 4), "max_accuracy_drop": max_drop,
                                  "within_budget": drop <= max_drop}
        if drop > max_drop:
            msg = (f"accuracy budget exceeded: {art['name']} ({art['precision']}) top-1 {acc['top1']:.2f}% vs "
                   f"{ref['top1']:.2f}% for its FP32 reference {arts[j]['name']}, a drop of {drop:.2f} points "
                   f"> --max-precision-drop {max_drop:g}")
            art["status"] = "accuracy budget exceeded"
            art.setdefault("budget_failures", []).append(msg)


def _eligible(art: dict[str, Any]) -> bool:
    if art.get("status") in FAILED_STATES:
        return False
    if art["precision"] != "fp32":  # reduced (or unknown) precision: only with a checked budget
        return bool((art.get("accuracy_budget") or {}).get("within_budget"))
    return True


def _p50(art: dict[str, Any], bs: int) -> Optional[float]:
    row = next((r for r in art["latency"] if r.get("batch_size") == bs and r.get("p50_ms")), None)
    return float(row["p50_ms"]) if row else None


def _label(art: dict[str, Any]) -> str:
    hint = (art.get("runner_settings") or {}).get("precision_hint")
    extra = f", {hint} hint" if art["backend"] == "openvino" and art["precision"] == "int8" and hint == "bf16" else ""
    return f"{art['name']} ({art['backend']} {art['precision']}{extra})"


def recommend(arts: list[dict[str, Any]], max_drop: float) -> list[dict[str, Any]]:
    """One record per device: {device, line, by_batch {bs: {name, backend, precision, p50_ms, speedup}}, reference}."""
    out = []
    for device in dict.fromkeys(a["device"] for a in arts):
        mine = [a for a in arts if a["device"] == device]
        ok = [a for a in mine if _eligible(a)]
        sizes = sorted({r["batch_size"] for a in ok for r in a["latency"] if r.get("p50_ms")})
        if not ok or not sizes:
            continue
        base = next((a for a in ok if a["backend"] == "ort" and a["precision"] == "fp32"), None)
        by_batch: dict[int, dict[str, Any]] = {}
        for bs in sizes:
            timed = [(p, a) for a in ok if (p := _p50(a, bs)) is not None]
            p, best = min(timed, key=lambda t: t[0])
            ref = _p50(base, bs) if base is not None else None
            by_batch[bs] = {"name": best["name"], "backend": best["backend"], "precision": best["precision"],
                            "p50_ms": p, "speedup": (ref / p) if ref else None}
        out.append({"device": device, "reference": base["name"] if base else None, "by_batch": by_batch,
                    "line": _line(device, by_batch, ok, base, max_drop, skipped=[a for a in mine if a not in ok])})
    return out


def _line(device: str, by_batch: dict[int, dict[str, Any]], ok: list[dict], base: Optional[dict], max_drop: float,
          skipped: list[dict]) -> str:
    labels = {a["name"]: _label(a) for a in ok}

    def figures(bs: int) -> str:
        b = by_batch[bs]
        faster = b["speedup"] and b["name"] != (base or {}).get("name")
        vs = f", {b['speedup']:.2f}x ONNX Runtime FP32" if faster else ""
        return f"batch {bs} {b['p50_ms']:.3f} ms{vs}"

    winners = list(dict.fromkeys(b["name"] for b in by_batch.values()))
    if len(winners) == 1:
        what = f"{labels[winners[0]]} ({'; '.join(figures(bs) for bs in by_batch)})"
    else:
        what = "; ".join(f"batch {bs}: {labels[b['name']]} ({figures(bs)[len(f'batch {bs} '):]})"
                         for bs, b in by_batch.items())
    unchecked = [a for a in skipped if a["precision"] in REDUCED and not a.get("accuracy_budget")
                 and a.get("status") not in FAILED_STATES]
    note = " (INT8/bf16 entries without --data are not considered: their accuracy is unchecked)" if unchecked else ""
    return f"recommendation ({device}): {what}, the fastest within the {max_drop:g}-point accuracy budget{note}"


def render_recommendations(report: dict[str, Any], width: Optional[int] = None) -> str:
    """The report's recommendation lines, each wrapped to the terminal (continuations indented); "" when none."""
    import textwrap

    from edgekd.bench.table import terminal_width

    width = width or terminal_width()
    return "\n".join(textwrap.fill(rec["line"], width=width, subsequent_indent="  ", break_on_hyphens=False)
                     for rec in report.get("recommendations") or [])


__all__ = ["check_budgets", "recommend", "render_recommendations", "FAILED_STATES"]
