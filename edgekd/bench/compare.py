"""Interleaved A/B latency comparison with an interval at the level that is really independent.

Within one process, A and B alternate in short blocks (AB, BA, AB, ...), so machine drift hits
both alike and each round gives a ratio B/A of block medians. Those rounds are *not* independent
samples of the ratio: a process carries its own offset (where its memory and threads landed, which
session was created first), so a bootstrap over rounds measures only the noise inside one process
and its "95%" interval excluded 1.0 for 9 of 20 A/A comparisons (docs/architecture.md, "Latency gate noise").

`compare_models` therefore runs A and B in several fresh processes (`processes`, default 6), the
load and first-run order alternating between processes, takes one ratio per process (the median
of its round ratios) and gives a Student-t interval over the processes' log ratios:

    exp(mean(log r_p) +- t_{(1+c)/2, P-1} * sd(log r_p) / sqrt(P))

The verdict: `regression` when the whole interval lies above 1 + threshold (exit 3), `ok` when it
lies at or below it, `inconclusive` otherwise (exit 0 with a warning, or exit 4 with
`--fail-on-inconclusive`). `compare_runners` is the one-process measurement (its interval is over
rounds and says so: `level` = "rounds"); the CLI and the INT8 check use `compare_models`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgekd.bench.latency import LatencySettings, _timed_call, percentile, warm_up
from edgekd.bench.runners import Runner, check_input
from edgekd.errors import EdgekdError, GateError, first_line

COMPARE_SCHEMA = "edgekd-bench-compare"
COMPARE_SCHEMA_VERSION = 1
INCONCLUSIVE_EXIT = 4


class InconclusiveError(GateError):
    """`bench compare --fail-on-inconclusive`: the interval straddles the threshold. Exit code 4."""

    exit_code = INCONCLUSIVE_EXIT


@dataclass(frozen=True)
class CompareSettings:
    rounds: int = 10  # interleaved A/B rounds per process
    time_s: float = 2.0  # timed seconds per batch size, both sides and all processes together
    processes: int = 6  # fresh processes: the independent unit of the interval
    min_block: int = 3  # calls per side per round, at least
    threshold: float = 0.10  # allowed slowdown of B vs A (fraction)
    confidence: float = 0.95
    n_boot: int = 2000  # the one-process (rounds) interval only
    seed: int = 0
    warmup: LatencySettings = LatencySettings(warmup_iters=10, warmup_time_s=0.1)

    def __post_init__(self):
        if self.rounds < 5:
            raise EdgekdError("compare needs at least 5 rounds per process")
        if self.processes < 3:
            raise EdgekdError("compare needs at least 3 processes for an interval over processes")
        if not 0.5 < self.confidence < 1:
            raise EdgekdError("--confidence must lie between 0.5 and 1 (e.g. 0.95)")
        if self.time_s <= 0:
            raise EdgekdError("--compare-time must be positive")


@dataclass
class CompareResult:
    ratio: float  # B/A: geometric mean of the per-process ratios (one process: median of round ratios)
    ci_low: float
    ci_high: float
    confidence: float
    threshold: float
    verdict: str  # regression | ok | inconclusive
    rounds: int  # per process
    calls_per_round: tuple[int, int]  # median calls per block, A and B
    a_p50_ms: float
    b_p50_ms: float
    round_ratios: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    processes: int = 1
    process_ratios: list[float] = field(default_factory=list)
    level: str = "rounds"  # what the interval resamples: process | rounds
    method: str = "percentile bootstrap over rounds (one process: the process effect is not in the interval)"

    @property
    def failed(self) -> bool:
        return self.verdict == "regression"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lim = 1 + self.threshold
        pct = f"{self.threshold * 100:g}%"
        text = {"regression": f"B is slower beyond the {pct} threshold: the whole interval lies above {lim:.2f}",
                "ok": f"within the {pct} threshold: the whole interval lies at or below {lim:.2f}",
                "inconclusive": f"inconclusive: the interval straddles {lim:.2f}; rerun with more --processes "
                                "or --compare-time to decide",
                }[self.verdict]
        ci = f"{self.confidence * 100:g}% CI {self.ci_low:.3f}-{self.ci_high:.3f}"
        unit = f"{self.processes} processes x {self.rounds} rounds" if self.level == "process" else \
            f"{self.rounds} rounds in one process"
        return (f"latency ratio B/A = {self.ratio:.3f} ({ci}; A p50 {self.a_p50_ms:.3f} ms, "
                f"B p50 {self.b_p50_ms:.3f} ms; {unit}) - {text}")


# ---------------------------------------------------------------------------------------------
# statistics


def bootstrap_ratio_ci(a_blocks: np.ndarray, b_blocks: np.ndarray, confidence: float = 0.95,
                       n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Median of paired per-round ratios b/a, and its percentile-bootstrap interval over rounds."""
    ratios = np.asarray(b_blocks, dtype=np.float64) / np.asarray(a_blocks, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ratios), size=(n_boot, len(ratios)))
    boots = np.median(ratios[idx], axis=1)
    alpha = (1 - confidence) / 2
    return (float(np.median(ratios)), float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha)))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_quantile(q: float, df: int) -> float:
    """The q-quantile (0.5 < q < 1) of Student's t with `df` degrees of freedom (bisection on the CDF)."""
    def upper_tail(t: float) -> float:  # P(T > t) for t >= 0
        return 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))

    lo, hi = 0.0, 1.0
    while upper_tail(hi) > 1 - q:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if upper_tail(mid) > 1 - q else (lo, mid)
    return (lo + hi) / 2


def process_interval(process_ratios: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Geometric mean of per-process ratios and its Student-t interval over processes (in log space)."""
    logs = np.log(np.asarray(process_ratios, dtype=np.float64))
    if len(logs) < 2:
        raise ValueError("an interval over processes needs at least two processes")
    mean, sd = float(logs.mean()), float(logs.std(ddof=1))
    half = t_quantile(0.5 + confidence / 2, len(logs) - 1) * sd / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def decide(ci_low: float, ci_high: float, threshold: float) -> str:
    limit = 1 + threshold
    if ci_low > limit:
        return "regression"
    if ci_high <= limit:
        return "ok"
    return "inconclusive"


# ---------------------------------------------------------------------------------------------
# one process


def measure_rounds(a: Runner, b: Runner, x: np.ndarray, rounds: int, block_s: float, min_block: int,
                   warmup: LatencySettings, b_first: bool = False) -> dict[str, Any]:
    """Interleaved rounds in this process: per-round block medians (ms) of A and B, calls per block,
    and each side's p50. The order alternates every round; `b_first` starts with B."""
    for r in (a, b):
        check_input(x, r.info)
    pa, pb = a.prepare(x), b.prepare(x)
    for r, p in ((b, pb), (a, pa)) if b_first else ((a, pa), (b, pb)):
        warm_up(r, p, warmup)
    blocks: dict[str, list[float]] = {"a": [], "b": []}
    counts: dict[str, list[int]] = {"a": [], "b": []}
    every: dict[str, list[float]] = {"a": [], "b": []}
    for rnd in range(rounds):
        order = [("a", a, pa), ("b", b, pb)]
        if (rnd % 2 == 1) != b_first:
            order.reverse()
        for side, runner, prep in order:
            # blocks are bounded by time, not by a count estimated at warm-up: on a busy machine the
            # count estimate runs long, and the comparison must take the time it was given
            times: list[float] = []
            t0 = time.perf_counter()
            while len(times) < min_block or time.perf_counter() - t0 < block_s:
                times.append(_timed_call(runner, prep, None)[0] / 1e6)
            blocks[side].append(float(np.median(times)))
            counts[side].append(len(times))
            every[side].extend(times)
    return {"a_blocks": blocks["a"], "b_blocks": blocks["b"], "a_calls": counts["a"], "b_calls": counts["b"],
            "a_p50_ms": percentile(every["a"], 50), "b_p50_ms": percentile(every["b"], 50)}


def compare_runners(a: Runner, b: Runner, x: np.ndarray,
                    settings: CompareSettings = CompareSettings()) -> CompareResult:
    """A and B interleaved in *this* process, with a bootstrap interval over rounds.

    The interval leaves out the process-to-process effect (see the module docstring): it is for
    libraries and tests that hold runners; the CLI gate and the INT8 check use `compare_models`.
    """
    start = time.perf_counter()
    block_s = settings.time_s / 2 / settings.rounds
    m = measure_rounds(a, b, x, settings.rounds, block_s, settings.min_block, settings.warmup)
    ratio, lo, hi = bootstrap_ratio_ci(np.array(m["a_blocks"]), np.array(m["b_blocks"]), settings.confidence,
                                       settings.n_boot, settings.seed)
    return CompareResult(
        ratio=ratio, ci_low=lo, ci_high=hi, confidence=settings.confidence, threshold=settings.threshold,
        verdict=decide(lo, hi, settings.threshold), rounds=settings.rounds,
        calls_per_round=(int(np.median(m["a_calls"])), int(np.median(m["b_calls"]))),
        a_p50_ms=m["a_p50_ms"], b_p50_ms=m["b_p50_ms"],
        round_ratios=[float(v) for v in np.array(m["b_blocks"]) / np.array(m["a_blocks"])],
        wall_s=time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# fresh processes


def summarize_processes(per_process: Sequence[Mapping[str, Any]], settings: CompareSettings,
                        wall_s: float = 0.0) -> CompareResult:
    """The process-level result from each process's `measure_rounds` output (one batch size)."""
    round_ratios = [np.asarray(p["b_blocks"], np.float64) / np.asarray(p["a_blocks"], np.float64)
                    for p in per_process]
    process_ratios = [float(np.median(r)) for r in round_ratios]
    ratio, lo, hi = process_interval(process_ratios, settings.confidence)
    return CompareResult(
        ratio=ratio, ci_low=lo, ci_high=hi, confidence=settings.confidence, threshold=settings.threshold,
        verdict=decide(lo, hi, settings.threshold), rounds=settings.rounds,
        calls_per_round=(int(np.median([c for p in per_process for c in p["a_calls"]])),
                         int(np.median([c for p in per_process for c in p["b_calls"]]))),
        a_p50_ms=float(np.median([p["a_p50_ms"] for p in per_process])),
        b_p50_ms=float(np.median([p["b_p50_ms"] for p in per_process])),
        round_ratios=[float(v) for r in round_ratios for v in r], wall_s=wall_s, processes=len(per_process),
        process_ratios=process_ratios, level="process",
        method=f"Student-t interval over {len(per_process)} fresh processes of the log per-process ratio "
               "(median of its interleaved round ratios); load and first-run order alternate between processes")


def run_worker(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run one measurement process (`python -m edgekd.bench.worker`) and return its result."""
    with tempfile.TemporaryDirectory(prefix="edgekd-compare-") as tmp:
        out = Path(tmp) / "result.json"
        spec = {**spec, "out": str(out)}
        try:
            proc = subprocess.run([sys.executable, "-m", "edgekd.bench.worker"], input=json.dumps(spec), text=True,
                                  capture_output=True, timeout=timeout_s, env=os.environ.copy())
        except subprocess.TimeoutExpired:
            raise EdgekdError(f"compare: a measurement process ran past {timeout_s:.0f} s") from None
        if not out.is_file():
            raise EdgekdError(f"compare: the measurement process failed (exit {proc.returncode}): "
                              f"{first_line(Exception(proc.stderr or 'no output'))}")
        result = json.loads(out.read_text())
    if "error" in result:
        raise EdgekdError(result["error"])
    return result


def compare_models(a: Mapping[str, Any], b: Mapping[str, Any], batch_sizes: Sequence[int],
                   settings: CompareSettings = CompareSettings(), log=lambda s: None) -> dict[int, CompareResult]:
    """A and B (`build_runner` keyword arguments, `path` included) in `settings.processes` fresh
    processes, one after the other; returns the process-level result per batch size."""
    start = time.perf_counter()
    block_s = settings.time_s / 2 / (settings.rounds * settings.processes)
    timeout = 120 + 20 * settings.time_s * len(batch_sizes) / settings.processes
    per_batch: dict[int, list[dict]] = {int(bs): [] for bs in batch_sizes}
    for p in range(settings.processes):
        log(f"compare: process {p + 1}/{settings.processes}")
        res = run_worker({"a": dict(a), "b": dict(b), "batch_sizes": [int(v) for v in batch_sizes],
                          "rounds": settings.rounds, "block_s": block_s, "min_block": settings.min_block,
                          "warmup": asdict(settings.warmup), "b_first": p % 2 == 1}, timeout)
        for bs in per_batch:
            per_batch[bs].append(res["batches"][str(bs)])
    wall = time.perf_counter() - start
    return {bs: summarize_processes(rows, settings, wall) for bs, rows in per_batch.items()}


__all__ = ["COMPARE_SCHEMA", "COMPARE_SCHEMA_VERSION", "INCONCLUSIVE_EXIT", "InconclusiveError", "CompareSettings",
           "CompareResult", "bootstrap_ratio_ci", "t_quantile", "process_interval", "decide", "measure_rounds",
           "compare_runners", "summarize_processes", "compare_models", "run_worker"]
