"""The CI regression gate: a report against a baseline report, and interleaved A/B comparison.

A baseline gate compares medians measured at different times, possibly on different machines:
on noisy CI machines it raises false alarms (DESIGN.md section 6 measured 4 in 20 at 10%).
`compare_runners` is the trustworthy form: A and B run in alternating rounds in one process,
each round gives a paired ratio of block medians B/A, and a bootstrap over rounds gives a
confidence interval of the latency ratio. It fails only when the whole interval lies above
1 + threshold; an interval that straddles the threshold is reported as inconclusive.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgekd.bench.latency import LatencySettings, _timed_call, percentile, warm_up
from edgekd.bench.runners import Runner, check_input
from edgekd.errors import EdgekdError, GateError

COMPARE_SCHEMA = "edgekd-bench-compare"
COMPARE_SCHEMA_VERSION = 1


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


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a bench JSON report and check it is one."""
    from edgekd.bench.report import SCHEMA, SCHEMA_VERSION

    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise EdgekdError(f"baseline report not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise EdgekdError(f"{path} is not a JSON bench report ({str(exc).splitlines()[0][:100]})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise EdgekdError(f"{path} is not an edgekd bench report (schema marker missing)")
    if int(data.get("schema_version", 0)) > SCHEMA_VERSION:
        raise EdgekdError(f"{path} was written by a newer edgekd (schema {data.get('schema_version')}); upgrade edgekd")
    return data


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


def check_baseline(report: dict[str, Any], baseline: dict[str, Any], max_latency_regression: float,
                   max_accuracy_drop: float, metric: str = "p50_ms") -> dict[str, Any]:
    """Compare a report with a baseline; returns {passed, failures, checks, notes}.

    `max_latency_regression` is a fraction (0.10 = 10% slower allowed); `max_accuracy_drop` is
    in top-1 percentage points. Each failure names the artifact, batch size and figure.
    """
    failures, checks, notes = [], [], []
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
                           "current": crow[metric], "change": ratio - 1, "limit": max_latency_regression, "passed": ok})
            if not ok:
                failures.append(f"latency {metric.replace('_ms', '')} of {cur['name']} at batch {bs} regressed "
                                f"{(ratio - 1) * 100:.1f}% ({b_val:.3f} ms -> {crow[metric]:.3f} ms; "
                                f"limit {max_latency_regression * 100:g}%)")
    if not checks:
        notes.append("nothing in the baseline matched this run: no figure was gated")
    return {"passed": not failures, "failures": failures, "checks": checks, "notes": notes,
            "max_latency_regression": max_latency_regression, "max_accuracy_drop": max_accuracy_drop,
            "metric": metric}


def enforce_gate(result: dict[str, Any]) -> None:
    """Raise GateError (exit 3) naming the first broken figure (and how many more broke)."""
    failures = result.get("failures") or []
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise GateError(f"gate failed: {failures[0]}{more}")


# ---------------------------------------------------------------------------------------------
# interleaved A/B comparison


@dataclass(frozen=True)
class CompareSettings:
    rounds: int = 30
    time_s: float = 2.0  # total timed calls per side, spread over the rounds
    min_block: int = 3  # calls per side per round, at least
    threshold: float = 0.10  # allowed slowdown of B vs A (fraction)
    confidence: float = 0.95
    n_boot: int = 2000
    seed: int = 0
    warmup: LatencySettings = LatencySettings(warmup_iters=10, warmup_time_s=0.2)

    def __post_init__(self):
        if self.rounds < 5:
            raise EdgekdError("compare needs at least 5 rounds for a confidence interval")
        if not 0.5 < self.confidence < 1:
            raise EdgekdError("--confidence must lie between 0.5 and 1 (e.g. 0.95)")


@dataclass
class CompareResult:
    ratio: float  # median over rounds of B/A block-median latency
    ci_low: float
    ci_high: float
    confidence: float
    threshold: float
    verdict: str  # regression | ok | inconclusive
    rounds: int
    calls_per_round: tuple[int, int]  # median calls per block
    a_p50_ms: float
    b_p50_ms: float
    round_ratios: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def failed(self) -> bool:
        return self.verdict == "regression"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lim = 1 + self.threshold
        text = {"regression": f"B is slower beyond the {self.threshold * 100:g}% threshold: the whole interval lies above {lim:.2f}",
                "ok": f"within the {self.threshold * 100:g}% threshold: the whole interval lies at or below {lim:.2f}",
                "inconclusive": f"the interval straddles {lim:.2f}: not a failure; rerun with more --rounds to decide"}[self.verdict]
        return (f"latency ratio B/A = {self.ratio:.3f} ({self.confidence * 100:g}% CI {self.ci_low:.3f}-{self.ci_high:.3f}; "
                f"A p50 {self.a_p50_ms:.3f} ms, B p50 {self.b_p50_ms:.3f} ms; {self.rounds} rounds) - {text}")


def bootstrap_ratio_ci(a_blocks: np.ndarray, b_blocks: np.ndarray, confidence: float = 0.95,
                       n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Median of paired per-round ratios b/a, and its percentile-bootstrap interval over rounds."""
    ratios = np.asarray(b_blocks, dtype=np.float64) / np.asarray(a_blocks, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ratios), size=(n_boot, len(ratios)))
    boots = np.median(ratios[idx], axis=1)
    alpha = (1 - confidence) / 2
    return (float(np.median(ratios)), float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha)))


def decide(ci_low: float, ci_high: float, threshold: float) -> str:
    limit = 1 + threshold
    if ci_low > limit:
        return "regression"
    if ci_high <= limit:
        return "ok"
    return "inconclusive"


def compare_runners(a: Runner, b: Runner, x: np.ndarray, settings: CompareSettings = CompareSettings()) -> CompareResult:
    """Interleaved A/B rounds on the same input; the order alternates AB, BA, ... each round."""
    start = time.perf_counter()
    for r in (a, b):
        check_input(x, r.info)
    pa, pb = a.prepare(x), b.prepare(x)
    warm_up(a, pa, settings.warmup)
    warm_up(b, pb, settings.warmup)
    # blocks are bounded by time, not by a call count estimated at warm-up: on a busy machine the
    # count estimate runs long, and the comparison must take the time it was given
    block_s = settings.time_s / 2 / settings.rounds
    a_blocks, b_blocks, a_all, b_all, counts = [], [], [], [], ([], [])
    for rnd in range(settings.rounds):
        order = [(a, pa, a_blocks, a_all, counts[0]), (b, pb, b_blocks, b_all, counts[1])]
        if rnd % 2:
            order.reverse()
        for runner, prep, blocks, every, count in order:
            times: list[float] = []
            t0 = time.perf_counter()
            while len(times) < settings.min_block or time.perf_counter() - t0 < block_s:
                times.append(_timed_call(runner, prep, None)[0] / 1e6)
            blocks.append(float(np.median(times)))
            every.extend(times)
            count.append(len(times))
    ratio, lo, hi = bootstrap_ratio_ci(np.array(a_blocks), np.array(b_blocks), settings.confidence,
                                       settings.n_boot, settings.seed)
    return CompareResult(
        ratio=ratio, ci_low=lo, ci_high=hi, confidence=settings.confidence, threshold=settings.threshold,
        verdict=decide(lo, hi, settings.threshold), rounds=settings.rounds,
        calls_per_round=(int(np.median(counts[0])), int(np.median(counts[1]))),
        a_p50_ms=percentile(a_all, 50), b_p50_ms=percentile(b_all, 50),
        round_ratios=[float(v) for v in np.array(b_blocks) / np.array(a_blocks)],
        wall_s=time.perf_counter() - start,
    )
