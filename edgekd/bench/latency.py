"""Latency measurement: warm-up, a minimum duration and iteration count, percentiles.

Each timed call is `infer` + `synchronize` between two `perf_counter_ns` readings; the
synchronisation is a no-op except on CUDA, where CUDA events around `infer` also give the
device time. Input preparation (normalisation, host-to-device copies) happens before the
clock starts. Several runners are measured *interleaved*: short blocks in rotating order, so
machine drift (other tenants, thermal throttling, frequency scaling) hits all of them alike.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from edgekd.bench.runners import Runner, check_input
from edgekd.errors import EdgekdError


@dataclass(frozen=True)
class LatencySettings:
    """How long to warm up and measure.

    Warm-up runs until both `warmup_iters` calls and `warmup_time_s` seconds are done;
    measurement until both `min_iters` calls and `min_time_s` seconds of timed calls are done
    for every runner, or `max_time_s` of wall time passes (a model too slow for the budget).
    """

    warmup_iters: int = 10
    warmup_time_s: float = 0.2
    min_iters: int = 20
    min_time_s: float = 1.0
    max_time_s: Optional[float] = None  # default: 10 * min_time_s + 10 s
    blocks: int = 20  # interleaving granularity: about this many blocks per runner
    cv_warn: float = 0.25  # coefficient of variation above which a measurement is flagged

    def __post_init__(self):
        if self.warmup_iters < 0 or self.min_iters < 1 or self.min_time_s < 0 or self.warmup_time_s < 0:
            raise EdgekdError("latency settings: --warmup, --min-iters and --min-time must be non-negative "
                              "(and --min-iters at least 1)")


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks.

    Same definition as numpy's default: position (n - 1) * q / 100 in the sorted samples.
    """
    if not len(samples):
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    s = sorted(samples)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


@dataclass
class LatencyStats:
    """Per-call latency of one runner at one batch size, in milliseconds."""

    batch_size: int
    iters: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    cv: float  # std / mean
    fps: float  # images per second of back-to-back calls: batch / mean
    device_p50_ms: Optional[float] = None  # CUDA event time, CUDA runners only
    unstable: bool = False
    histogram: Optional[dict[str, list]] = None  # latency_histogram(): the distribution, for plots made later
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


HISTOGRAM_BINS = 40


def latency_histogram(samples_ms: Sequence[float], bins: int = HISTOGRAM_BINS) -> dict[str, list]:
    """A fixed-size histogram of per-call latency: `bins` log-spaced bins from the fastest to the slowest call.

    Returns {"edges_ms": bins + 1 edges (6 significant digits), "counts": bins counts}; counts[i]
    calls took edges_ms[i] <= t < edges_ms[i+1], the slowest in the last bin. Log spacing keeps a
    long tail (a 10x outlier) from squeezing the body of the distribution into one bin; a fixed
    size keeps the report small however many calls were timed (raw samples of a fast model run
    to tens of thousands).
    """
    arr = np.asarray(samples_ms, dtype=np.float64)
    lo, hi = max(float(arr.min()), 1e-9), float(arr.max())
    if hi <= lo:  # every call took the same time (a coarse clock)
        return {"edges_ms": [float(f"{lo:.6g}")] * 2, "counts": [int(arr.size)]}
    edges = np.geomspace(lo, hi, bins + 1)
    counts, _ = np.histogram(np.clip(arr, lo, hi), bins=edges)
    return {"edges_ms": [float(f"{e:.6g}") for e in edges], "counts": [int(c) for c in counts]}


def summarize_samples(samples_ms: Sequence[float], batch_size: int, device_ms: Sequence[float] = (),
                      cv_warn: float = 0.25) -> LatencyStats:
    """Percentiles, mean, std, min, throughput and the stability flag of measured samples."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no latency samples")
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    cv = std / mean if mean > 0 else 0.0
    stats = LatencyStats(
        batch_size=batch_size, iters=int(arr.size), p50_ms=percentile(arr, 50), p90_ms=percentile(arr, 90),
        p99_ms=percentile(arr, 99), mean_ms=mean, std_ms=std, min_ms=float(arr.min()), max_ms=float(arr.max()),
        cv=cv, fps=batch_size * 1000.0 / mean if mean > 0 else float("inf"),
        device_p50_ms=percentile(device_ms, 50) if len(device_ms) else None, histogram=latency_histogram(arr),
    )
    if cv > cv_warn:
        stats.unstable = True
        stats.warnings.append(f"unstable measurement: coefficient of variation {cv:.2f} > {cv_warn:.2f} "
                              "(a busy or throttling machine); compare ratios measured in one run")
    return stats


def _timed_call(runner: Runner, prepared: Any, events) -> tuple[int, Optional[float]]:
    """One inference: wall ns around infer + synchronize, and CUDA event ms when given."""
    t0 = time.perf_counter_ns()
    if events is not None:
        events[0].record()
    runner.infer(prepared)
    if events is not None:
        events[1].record()
    runner.synchronize()
    t1 = time.perf_counter_ns()
    device = events[0].elapsed_time(events[1]) if events is not None else None
    return t1 - t0, device


def warm_up(runner: Runner, prepared: Any, settings: LatencySettings) -> float:
    """Run until both the warm-up count and time are reached; returns the median call in seconds
    (the estimate that sizes measurement blocks)."""
    start = time.perf_counter()
    times: list[float] = []
    while len(times) < settings.warmup_iters or time.perf_counter() - start < settings.warmup_time_s:
        times.append(_timed_call(runner, prepared, None)[0] / 1e9)
    if not times:  # still call once: the first call allocates, and the block size needs an estimate
        times.append(_timed_call(runner, prepared, None)[0] / 1e9)
    # the first calls allocate and compile: estimate from the second half
    return float(np.median(times[len(times) // 2:]))


def measure_interleaved(runners: Sequence[Runner], inputs: Sequence[np.ndarray],
                        settings: LatencySettings = LatencySettings()) -> list[LatencyStats]:
    """Measure several runners side by side on their inputs (one float32 NCHW batch each).

    Blocks of calls alternate between runners in rotating order until every runner has at
    least `min_iters` samples and `min_time_s` seconds of timed calls.
    """
    if len(runners) != len(inputs):
        raise ValueError("one input per runner")
    prepared = []
    for r, x in zip(runners, inputs):
        check_input(x, r.info)
        prepared.append(r.prepare(x))
    for r, p in zip(runners, prepared):
        warm_up(r, p, settings)
    # each block lasts about min_time / blocks (at least one call): bounded by time, so a busy
    # machine does not stretch a block that was sized by a count
    block_s = settings.min_time_s / max(settings.blocks, 1)
    events = [r.device_events() for r in runners]
    samples: list[list[float]] = [[] for _ in runners]
    device: list[list[float]] = [[] for _ in runners]
    timed = [0.0] * len(runners)
    max_time = settings.max_time_s if settings.max_time_s is not None else 10 * settings.min_time_s + 10
    start = time.perf_counter()
    rnd = 0
    while True:
        done = all(len(s) >= settings.min_iters and t >= settings.min_time_s for s, t in zip(samples, timed))
        if done or (time.perf_counter() - start > max_time and all(samples)):
            break
        order = list(range(len(runners)))
        k = rnd % len(order)
        for i in order[k:] + order[:k]:
            t0 = time.perf_counter()
            while True:
                ns, dev = _timed_call(runners[i], prepared[i], events[i])
                samples[i].append(ns / 1e6)
                timed[i] += ns / 1e9
                if dev is not None:
                    device[i].append(dev)
                if time.perf_counter() - t0 >= block_s:
                    break
        rnd += 1
    out = []
    for i in range(len(runners)):
        stats = summarize_samples(samples[i], inputs[i].shape[0], device[i], settings.cv_warn)
        if len(samples[i]) < settings.min_iters or timed[i] < settings.min_time_s:
            stats.warnings.append(f"stopped at the time limit ({max_time:.0f} s) with {len(samples[i])} calls")
        out.append(stats)
    return out


def measure_latency(runner: Runner, x: np.ndarray, settings: LatencySettings = LatencySettings()) -> LatencyStats:
    """Latency of one runner on one input batch."""
    return measure_interleaved([runner], [x], settings)[0]


def make_input(input_shape: Sequence[int], batch_size: int, seed: int = 0) -> np.ndarray:
    """A fixed standard-normal float32 NCHW batch: what normalised images look like to a model."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch_size, *input_shape)).astype(np.float32)
