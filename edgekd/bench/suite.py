"""`edgekd bench` as a library call: build runners, score accuracy and parity, measure latency
side by side, flag slow INT8 artifacts, gate against a baseline, write the reports.

`run_bench` returns the report (and writes it) before anything fails, so a failing gate still
leaves its evidence; `raise_on_failures` then turns failures into GateError (exit 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from edgekd.bench.accuracy import check_data_shape, evaluate_accuracy, measure_parity, normalisation, preprocess_images
from edgekd.bench.fingerprint import collect_fingerprint
from edgekd.bench.gate import (COMPARE_SCHEMA, COMPARE_SCHEMA_VERSION, CompareResult, CompareSettings, check_baseline,
                               compare_runners, load_report)
from edgekd.bench.latency import LatencySettings, make_input, measure_interleaved
from edgekd.bench.report import new_report, size_on_disk, write_reports
from edgekd.bench.runners import BACKENDS, Runner, build_runner, infer_backend, int8_source, manifest_precision
from edgekd.errors import EdgekdError, GateError
from edgekd.io import sha256_file, write_json_atomic

PARITY_IMAGES = 256  # inputs compared against --reference

# An INT8 model fails the check only when it is this much slower than FP32: one noisy run on a
# shared machine moves a ratio by a few percent (measured here: 0.86-1.31 for a model vs itself).
INT8_SLOW_TOLERANCE = 0.05


@dataclass(frozen=True)
class BenchOptions:
    models: tuple[str, ...]
    backend: Optional[str] = None  # None: from each file's suffix
    device: str = "cpu"
    providers: Optional[tuple[str, ...]] = None
    threads: Optional[int] = None
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    data: Optional[str] = None
    split: str = "test"
    reference: Optional[str] = None
    json_path: Optional[Path] = None
    markdown_path: Optional[Path] = None
    baseline: Optional[Path] = None
    max_latency_regression: float = 0.10  # fraction
    max_accuracy_drop: float = 0.5  # top-1 points
    latency: LatencySettings = field(default_factory=LatencySettings)
    torch_mode: str = "eager"
    allow_slow_int8: bool = False
    add_int8_source: bool = True  # bench an INT8 artifact's FP32 source beside it to check the speed-up


def parse_batch_sizes(text: str | Sequence[int]) -> tuple[int, ...]:
    """'1,8,32' -> (1, 8, 32)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        sizes = tuple(int(str(v).strip()) for v in items if str(v).strip())
    except ValueError:
        raise EdgekdError(f"--batch-sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise EdgekdError(f"--batch-sizes must be positive integers, got {text!r}")
    return tuple(dict.fromkeys(sizes))


def validate_options(opts: BenchOptions) -> None:
    if not opts.models:
        raise EdgekdError("no model given: edgekd bench MODEL [MODEL ...]")
    if opts.backend is not None and opts.backend not in BACKENDS:
        raise EdgekdError(f"unknown backend {opts.backend!r}; use torch, ort or trt")
    if opts.device not in ("cpu", "cuda"):
        raise EdgekdError(f"unknown device {opts.device!r}; use cpu or cuda")
    for m in list(opts.models) + ([opts.reference] if opts.reference else []):
        if not Path(m).exists():
            raise EdgekdError(f"model not found: {m}")
        if opts.backend is None:
            infer_backend(m)
    if opts.threads is not None and opts.threads < 1:
        raise EdgekdError("--threads must be at least 1")


def _build(path: str, opts: BenchOptions, spinning: bool) -> Runner:
    return build_runner(path, backend=opts.backend or infer_backend(path), device=opts.device,
                        providers=opts.providers, threads=opts.threads, allow_spinning=spinning,
                        torch_mode=opts.torch_mode)


def _artifact_entry(name: str, runner: Runner) -> dict[str, Any]:
    info = runner.info
    p = Path(info.path)
    return {
        "name": name, "path": str(p.resolve()), "format": info.format, "backend": info.backend, "device": info.device,
        "precision": info.precision, "size_bytes": size_on_disk(p), "sha256": sha256_file(p) if p.is_file() else None,
        "input_shape": list(info.input_shape), "output_kind": info.output_kind,
        "runner_settings": {k: v for k, v in info.settings.items()}, "accuracy": None, "parity": None,
        "status": "ok", "warnings": list(info.warnings), "latency": [],
    }


def _unique_names(paths: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        seen[p] = seen.get(p, 0) + 1
        out.append(p if seen[p] == 1 else f"{p}#{seen[p]}")
    return out


def run_bench(opts: BenchOptions, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Benchmark every model side by side; returns the report (also written to --json/--markdown)."""
    validate_options(opts)
    baseline = load_report(opts.baseline) if opts.baseline else None  # fail early on a bad baseline
    paths = list(opts.models)
    added: dict[str, str] = {}
    if opts.add_int8_source:
        for path in list(paths):
            backend = opts.backend or infer_backend(path)
            src = int8_source(path) if backend == "ort" and manifest_precision(path, {}) == "int8" else None
            if src is not None and not any(Path(p).resolve() == src.resolve() for p in paths):
                paths.append(str(src))
                added[str(src)] = f"FP32 source of {path}, benchmarked beside it to check the INT8 speed-up"
    # runners alternating in one process: ORT threads must not spin (DESIGN.md section 6)
    spinning = len(paths) == 1 and not opts.reference
    runners: list[Runner] = []
    try:
        for path in paths:
            runners.append(_build(path, opts, spinning))
        settings = {
            "backend": opts.backend or "auto", "device": opts.device, "providers": list(opts.providers or []),
            "threads": opts.threads, "batch_sizes": list(opts.batch_sizes), "data": opts.data, "split": opts.split,
            "reference": opts.reference, "torch_mode": opts.torch_mode, "interleaved": len(runners) > 1,
            "ort_allow_spinning": spinning, "warmup_iters": opts.latency.warmup_iters,
            "warmup_time_s": opts.latency.warmup_time_s, "min_iters": opts.latency.min_iters,
            "min_time_s": opts.latency.min_time_s, "timing": "perf_counter_ns around infer + synchronize (CUDA only); "
                                                             "pre-processing and copies to the device outside the clock",
        }
        report = new_report(collect_fingerprint(opts.threads), settings)
        names = _unique_names(paths)
        arts = [_artifact_entry(n, r) for n, r in zip(names, runners)]
        for art in arts:
            if art["name"] in added:
                art["warnings"].append(f"added: {added[art['name']]}")
        _score(opts, runners, arts, log)
        _time(opts, runners, arts, log)
        _check_int8(opts, paths, runners, arts)
        report["artifacts"] = arts
        if baseline is not None:
            report["gate"] = check_baseline(report, baseline, opts.max_latency_regression, opts.max_accuracy_drop)
            report["warnings"] += report["gate"]["notes"]
            for f in report["gate"]["failures"]:
                _mark_gate_failure(arts, f)
        write_reports(report, opts.json_path, opts.markdown_path)
        return report
    finally:
        for r in runners:
            r.close()


def _score(opts: BenchOptions, runners: list[Runner], arts: list[dict], log) -> None:
    """Accuracy on --data and parity against --reference."""
    data = None
    if opts.data:
        from edgekd.data import load_dataset

        log(f"loading {opts.data}")
        data = load_dataset(opts.data)
        for r in runners:
            check_data_shape(r, data.input_shape, opts.data)
        for r, art in zip(runners, arts):
            log(f"accuracy: {art['name']}")
            art["accuracy"] = evaluate_accuracy(r, opts.data, opts.split, max(opts.batch_sizes), data=data)
    if opts.reference:
        ref = _build(opts.reference, opts, False)
        try:
            for r, art in zip(runners, arts):
                if data is not None:
                    x_u8, _ = data.split(opts.split)
                    mean, std, _ = normalisation(ref, data.mean, data.std)
                    x, source = preprocess_images(x_u8[:PARITY_IMAGES], mean, std), f"{opts.data} {opts.split}"
                else:
                    x, source = make_input(r.info.input_shape, 64, seed=1), "random normal"
                art["parity"] = measure_parity(r, ref, x, max(opts.batch_sizes), source)
        finally:
            ref.close()


def _time(opts: BenchOptions, runners: list[Runner], arts: list[dict], log) -> None:
    """Latency per batch size, all runners that accept that batch interleaved."""
    for bs in opts.batch_sizes:
        active = [i for i, r in enumerate(runners) if r.info.fixed_batch in (None, bs)]
        for i, r in enumerate(runners):
            if i not in active:
                arts[i]["latency"].append({"batch_size": bs, "status": f"skipped: static batch {r.info.fixed_batch}",
                                           "warnings": []})
        if not active:
            continue
        log(f"latency: batch {bs} ({len(active)} model{'s' if len(active) > 1 else ''} interleaved)")
        stats = measure_interleaved([runners[i] for i in active],
                                    [make_input(runners[i].info.input_shape, bs) for i in active], opts.latency)
        for i, st in zip(active, stats):
            row = st.to_dict()
            row["status"] = f"unstable (cv {st.cv:.2f})" if st.unstable else "ok"
            arts[i]["latency"].append(row)


def _check_int8(opts: BenchOptions, paths: list[str], runners: list[Runner], arts: list[dict]) -> None:
    """Flag an INT8 artifact that is slower than its FP32 source at any batch size (DESIGN.md section 6)."""
    resolved = {Path(p).resolve(): i for i, p in enumerate(paths)}
    for i, r in enumerate(runners):
        src = int8_source(paths[i]) if r.info.precision == "int8" else None
        j = resolved.get(src.resolve()) if src is not None else None
        if j is None:
            continue
        fp32 = {row["batch_size"]: row for row in arts[j]["latency"] if row.get("p50_ms")}
        for row in arts[i]["latency"]:
            base = fp32.get(row["batch_size"])
            if not row.get("p50_ms") or base is None:
                continue
            speedup = base["p50_ms"] / row["p50_ms"]
            row["int8_speedup"] = speedup
            if speedup < 1.0 - INT8_SLOW_TOLERANCE:
                msg = (f"INT8 slower than its FP32 source {arts[j]['name']} at batch {row['batch_size']}: "
                       f"{speedup:.2f}x ({row['p50_ms']:.3f} ms vs {base['p50_ms']:.3f} ms); check the INT8 flavour "
                       "for this runtime (S8S8 QDQ is for TensorRT, U8S8 for CPU)")
                row["status"] = f"int8 slower than fp32 ({speedup:.2f}x)"
                row["warnings"].append(msg)
                arts[i]["status"] = "int8 slower than fp32"
                arts[i].setdefault("failures", []).append(msg)
            elif speedup < 1.0:  # within timing noise of FP32: said, not failed
                row["warnings"].append(f"INT8 no faster than its FP32 source at batch {row['batch_size']} "
                                       f"({speedup:.2f}x, within the {INT8_SLOW_TOLERANCE:.0%} noise tolerance)")


def _mark_gate_failure(arts: list[dict], failure: str) -> None:
    for art in arts:
        if f" of {art['name']} " in failure:
            art["status"] = "gate failed"
            for row in art["latency"]:
                if f"at batch {row['batch_size']} " in failure:
                    row["status"] = "regression"


def report_failures(report: dict[str, Any], allow_slow_int8: bool = False) -> list[str]:
    """Every failed figure: gate failures, then INT8 artifacts slower than FP32 (unless allowed)."""
    out = list((report.get("gate") or {}).get("failures") or [])
    if not allow_slow_int8:
        for art in report["artifacts"]:
            out += art.get("failures", [])
    return out


def raise_on_failures(report: dict[str, Any], allow_slow_int8: bool = False) -> None:
    failures = report_failures(report, allow_slow_int8)
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise GateError(f"{failures[0]}{more}")


# ---------------------------------------------------------------------------------------------


def run_compare(a: str, b: str, opts: BenchOptions, rounds: int = 30, time_s: float = 2.0,
                confidence: float = 0.95, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Interleaved A/B latency comparison at the first batch size; writes --json when given."""
    validate_options(BenchOptions(models=(a, b), backend=opts.backend, device=opts.device, threads=opts.threads))
    settings = CompareSettings(rounds=rounds, time_s=time_s, threshold=opts.max_latency_regression,
                               confidence=confidence,
                               warmup=LatencySettings(warmup_iters=opts.latency.warmup_iters,
                                                      warmup_time_s=opts.latency.warmup_time_s))
    ra = rb = None
    try:
        ra, rb = _build(a, opts, False), _build(b, opts, False)
        if tuple(ra.info.input_shape) != tuple(rb.info.input_shape):
            raise EdgekdError(f"compare: {a} takes {ra.info.input_shape} but {b} takes {rb.info.input_shape}")
        bs = opts.batch_sizes[0]
        log(f"compare: {settings.rounds} interleaved rounds at batch {bs}")
        result: CompareResult = compare_runners(ra, rb, make_input(ra.info.input_shape, bs), settings)
        out = {"schema": COMPARE_SCHEMA, "schema_version": COMPARE_SCHEMA_VERSION, "a": a, "b": b, "batch_size": bs,
               "backend": [ra.info.backend, rb.info.backend], "device": opts.device, "threads": opts.threads,
               "result": result.to_dict(), "summary": result.summary(), "passed": not result.failed,
               "environment": collect_fingerprint(opts.threads)}
        if opts.json_path:
            write_json_atomic(opts.json_path, out)
        return out
    finally:
        for r in (ra, rb):
            if r is not None:
                r.close()
