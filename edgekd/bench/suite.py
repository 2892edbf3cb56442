"""`edgekd bench` as a library call: build runners, score accuracy and parity, measure latency
side by side, flag slow INT8 artifacts, gate against a baseline, write the reports.

`run_bench` returns the report (and writes it) before anything fails, so a failing gate still
leaves its evidence; `raise_on_failures` then turns failures into GateError (exit 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from edgekd.bench.accuracy import check_data_shape, data_view, evaluate_accuracy, measure_parity, normalisation
from edgekd.bench.compare import (
    COMPARE_SCHEMA,
    COMPARE_SCHEMA_VERSION,
    CompareResult,
    CompareSettings,
    compare_models,
)
from edgekd.bench.fingerprint import collect_fingerprint
from edgekd.bench.gate import check_baseline, check_comparable, load_report
from edgekd.bench.identity import artifact_identity, data_identity, entry_environment
from edgekd.bench.latency import LatencySettings, make_input, measure_interleaved
from edgekd.bench.plan import Entry, entries_for, fp32_reference, index_of, parse_backends, parse_hints, plan_entries
from edgekd.bench.recommend import check_budgets, recommend
from edgekd.bench.report import new_report, size_on_disk, write_reports
from edgekd.bench.runners import Runner, build_runner
from edgekd.errors import EdgekdError, GateError
from edgekd.export.quantize import DEFAULT_MAX_ACCURACY_DROP
from edgekd.io import sha256_file, write_json_atomic, write_text_atomic
from edgekd.runtime.preprocess import normalize_batch

PARITY_IMAGES = 256  # inputs compared against --reference

# The INT8 check: INT8 (B) against its FP32 source (A) with the compare statistic, in fresh
# processes. Threshold 0: it fails only when the whole interval of INT8/FP32 latency lies above 1
# (INT8 slower with confidence) and warns when the interval straddles 1 (docs/architecture.md, "INT8 flavour").
# One call per block at least (blocks are time-bounded): a slow model at a large batch is not
# held to 3 calls x 10 rounds x 6 processes per side.
INT8_CHECK = CompareSettings(time_s=1.0, threshold=0.0, min_block=1)


@dataclass(frozen=True)
class BenchOptions:
    models: tuple[str, ...]
    backend: Optional[str] = None  # None: from each file's suffix; "ort,openvino": each model on each (bench.plan)
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
    int8_check: CompareSettings = INT8_CHECK  # how the INT8-vs-FP32 speed is decided
    precision_hint: Optional[str] = None  # OpenVINO: f32 | bf16 | "f32,bf16" (each); None: f32
    max_precision_drop: float = DEFAULT_MAX_ACCURACY_DROP  # INT8/bf16 top-1 budget vs their FP32 reference, points


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
    backends = parse_backends(opts.backend)  # one-line errors for unknown names
    parse_hints(opts.precision_hint)
    if opts.device not in ("cpu", "cuda"):
        raise EdgekdError(f"unknown device {opts.device!r}; use cpu or cuda")
    for m in list(opts.models) + ([opts.reference] if opts.reference else []):
        if not Path(m).exists():
            raise EdgekdError(f"model not found: {m}")
        entries_for(m, backends, ("f32",))  # a file no listed backend runs is refused here
    if opts.threads is not None and opts.threads < 1:
        raise EdgekdError("--threads must be at least 1")


def _entry(path: str | Entry, opts: BenchOptions) -> Entry:
    """A model given by path (the reference, compare's A and B): on the first listed backend that runs it, f32."""
    return path if isinstance(path, Entry) else entries_for(path, parse_backends(opts.backend), ("f32",))[0]


def _build(path: str | Entry, opts: BenchOptions, spinning: bool) -> Runner:
    e = _entry(path, opts)
    return build_runner(e.path, backend=e.backend, device=opts.device, providers=opts.providers, threads=opts.threads,
                        allow_spinning=spinning, torch_mode=opts.torch_mode, precision_hint=e.precision_hint)


def _artifact_entry(name: str, runner: Runner, fingerprint: dict[str, Any],
                    settings: dict[str, Any]) -> dict[str, Any]:
    info = runner.info
    p = Path(info.path)
    sha = info.source_sha256 if info.format == "checkpoint" else (sha256_file(p) if p.is_file() else None)
    return {
        "name": name, "path": str(p.resolve()), "format": info.format, "backend": info.backend, "device": info.device,
        "precision": info.precision, "size_bytes": size_on_disk(p), "sha256": sha,
        "input_shape": list(info.input_shape), "output_kind": info.output_kind,
        "runner_settings": {k: v for k, v in info.settings.items()}, "accuracy": None, "parity": None,
        "status": "ok", "warnings": list(info.warnings), "latency": [],
        # what was measured (edgekd.bench.identity): `--baseline` compares these before any figure
        "identity": artifact_identity(info, sha), "data": None,
        "environment": entry_environment(fingerprint, info, settings),
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
    # (file, backend, hint) entries, with the FP32 references of INT8/bf16 entries added (edgekd.bench.plan)
    entries, added = plan_entries(opts.models, opts.backend, opts.precision_hint, opts.add_int8_source)
    # runners alternating in one process: ORT threads must not spin
    # (docs/architecture.md, "ONNX Runtime thread spinning")
    spinning = len(entries) == 1 and not opts.reference
    runners: list[Runner] = []
    try:
        for entry in entries:
            runners.append(_build(entry, opts, spinning))
        settings = {
            "backend": opts.backend or "auto", "precision_hint": opts.precision_hint or "f32",
            "device": opts.device, "providers": list(opts.providers or []),
            "threads": opts.threads, "batch_sizes": list(opts.batch_sizes), "data": opts.data, "split": opts.split,
            "reference": opts.reference, "torch_mode": opts.torch_mode, "interleaved": len(runners) > 1,
            "ort_allow_spinning": spinning, "warmup_iters": opts.latency.warmup_iters,
            "warmup_time_s": opts.latency.warmup_time_s, "min_iters": opts.latency.min_iters,
            "min_time_s": opts.latency.min_time_s,
            "timing": "perf_counter_ns around infer + synchronize (CUDA only); "
                      "pre-processing and copies to the device outside the clock",
        }
        report = new_report(collect_fingerprint(opts.threads), settings)
        names = _unique_names([e.name for e in entries])
        arts = [_artifact_entry(n, r, report["environment"], settings) for n, r in zip(names, runners)]
        for art in arts:
            if art["name"] in added:
                art["warnings"].append(f"added: {added[art['name']]}")
        _score(opts, runners, arts, log)
        if baseline is not None:  # another model or other data is refused before minutes of timing
            check_comparable(arts, baseline, str(opts.baseline))
        _time(opts, runners, arts, log)
        _check_int8(opts, entries, runners, arts, log)
        check_budgets(arts, entries, opts.max_precision_drop)  # INT8/bf16 top-1 vs their FP32 reference
        report["artifacts"] = arts
        report["recommendations"] = recommend(arts, opts.max_precision_drop)
        if baseline is not None:
            report["gate"] = check_baseline(report, baseline, opts.max_latency_regression, opts.max_accuracy_drop,
                                            source=str(opts.baseline))
            report["gate"]["baseline"] = str(opts.baseline)  # the markdown report names the file compared against
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
        data = load_dataset(opts.data, view=data_view(runners))  # at the view the models were trained at
        if data.skipped:  # never a silent skip: top-1 is then over the readable images only
            (first, why), n = data.skipped[0], len(data.skipped)
            log(f"warning: skipped {n} unreadable image(s) of {opts.data}; accuracy is over the readable ones "
                f"(first: {first}: {why})")
        for r in runners:
            check_data_shape(r, data.input_shape, opts.data)
        x_u8, y = data.split(opts.split)
        evaluated = data_identity(opts.data, opts.split, x_u8, y)  # a content hash: the spec alone proves nothing
        for k, (r, art) in enumerate(zip(runners, arts), 1):
            log(f"accuracy [{k}/{len(arts)}]: {art['name']}")
            art["accuracy"] = evaluate_accuracy(r, opts.data, opts.split, max(opts.batch_sizes), data=data)
            art["data"] = dict(evaluated)
    if opts.reference:
        ref = _build(opts.reference, opts, False)
        try:
            for r, art in zip(runners, arts):
                if data is not None:
                    x_u8, _ = data.split(opts.split)
                    mean, std, _ = normalisation(ref, data.mean, data.std)
                    x, source = normalize_batch(x_u8[:PARITY_IMAGES], mean, std), f"{opts.data} {opts.split}"
                else:
                    x, source = make_input(r.info.input_shape, 64, seed=1), "random normal"
                art["parity"] = measure_parity(r, ref, x, max(opts.batch_sizes), source)
        finally:
            ref.close()


def _time(opts: BenchOptions, runners: list[Runner], arts: list[dict], log) -> None:
    """Latency per batch size, all runners that accept that batch interleaved."""
    for k, bs in enumerate(opts.batch_sizes, 1):
        active = [i for i, r in enumerate(runners) if r.info.fixed_batch in (None, bs)]
        for i, r in enumerate(runners):
            if i not in active:
                arts[i]["latency"].append({"batch_size": bs, "status": f"skipped: static batch {r.info.fixed_batch}",
                                           "warnings": []})
        if not active:
            continue
        log(f"latency [{k}/{len(opts.batch_sizes)}]: batch {bs}, {len(active)} model{'s' if len(active) > 1 else ''} "
            f"interleaved (about {len(active) * opts.latency.min_time_s:.2g} s or more)")
        stats = measure_interleaved([runners[i] for i in active],
                                    [make_input(runners[i].info.input_shape, bs) for i in active], opts.latency)
        for i, st in zip(active, stats):
            row = st.to_dict()
            row["status"] = f"unstable (cv {st.cv:.2f})" if st.unstable else "ok"
            arts[i]["latency"].append(row)


def _runner_spec(path: str | Entry, opts: BenchOptions) -> dict[str, Any]:
    """`build_runner` keyword arguments for a measurement process (A and B alternate: no spinning)."""
    e = _entry(path, opts)
    return {"path": str(e.path), "backend": e.backend, "device": opts.device,
            "providers": list(opts.providers) if opts.providers else None, "threads": opts.threads,
            "allow_spinning": False, "torch_mode": opts.torch_mode, "precision_hint": e.precision_hint}


def _check_int8(opts: BenchOptions, entries: list[Entry], runners: list[Runner], arts: list[dict], log) -> None:
    """Decide whether each INT8 artifact is slower than its FP32 source (same backend, f32), with the compare
    statistic (fresh processes, interval over processes) at every batch size both were timed at."""
    for i, r in enumerate(runners):
        src = fp32_reference(entries[i]) if r.info.precision == "int8" else None
        j = index_of(entries, src) if src is not None else None
        if j is None:
            continue
        timed = {row["batch_size"] for row in arts[j]["latency"] if row.get("p50_ms")}
        sizes = [row["batch_size"] for row in arts[i]["latency"] if row.get("p50_ms") and row["batch_size"] in timed]
        if not sizes:
            continue
        log(f"int8 check: {arts[i]['name']} vs {arts[j]['name']} in {opts.int8_check.processes} processes")
        results = compare_models(_runner_spec(entries[j], opts), _runner_spec(entries[i], opts), sizes,
                                 opts.int8_check, log)
        judge_int8(arts[i], arts[j]["name"], results)


def judge_int8(art: dict[str, Any], fp32_name: str, results: dict[int, CompareResult]) -> None:
    """Mark `art` (an INT8 entry) from INT8-vs-FP32 comparisons by batch size (A = FP32, B = INT8):
    a failure when INT8 is slower with confidence, a warning when the interval straddles 1."""
    for row in art["latency"]:
        res = results.get(row["batch_size"])
        if res is None:
            continue
        speedup = 1.0 / res.ratio
        ci = f"{res.confidence * 100:g}% CI of INT8/FP32 latency {res.ci_low:.3f}-{res.ci_high:.3f}"
        row["int8_speedup"] = speedup
        row["int8_check"] = {"ratio": res.ratio, "ci_low": res.ci_low, "ci_high": res.ci_high,
                             "verdict": res.verdict, "processes": res.processes, "level": res.level}
        if res.verdict == "regression":
            msg = (f"INT8 slower than its FP32 source {fp32_name} at batch {row['batch_size']}: {speedup:.2f}x "
                   f"({ci}, above 1); check the INT8 flavour for this runtime (S8S8 QDQ is for TensorRT, "
                   "U8S8 for CPU)")
            row["status"] = f"int8 slower than fp32 ({speedup:.2f}x)"
            row["warnings"].append(msg)
            art["status"] = "int8 slower than fp32"
            art.setdefault("failures", []).append(msg)
        elif res.verdict == "inconclusive":  # within the noise tolerance of the interval: said, not failed
            row["warnings"].append(f"INT8 no faster than its FP32 source at batch {row['batch_size']} "
                                   f"({speedup:.2f}x; {ci} includes 1: inconclusive, within the noise tolerance "
                                   f"of {res.processes} processes); not failed")


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
    for art in report["artifacts"]:  # the INT8/bf16 accuracy budget is never waived
        out += art.get("budget_failures", [])
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


def run_compare(a: str, b: str, opts: BenchOptions, rounds: int = CompareSettings.rounds,
                time_s: float = CompareSettings.time_s, confidence: float = CompareSettings.confidence,
                processes: int = CompareSettings.processes,
                log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """A/B latency comparison at the first batch size, in `processes` fresh processes with the interval
    over processes (edgekd.bench.compare); writes --json and --markdown when given.

    Returns the compare record; its `verdict` is ok | regression | inconclusive and `passed` is
    False only for a regression (the CLI maps inconclusive to a warning, or exit 4 on request).
    """
    validate_options(BenchOptions(models=(a, b), backend=opts.backend, device=opts.device, threads=opts.threads))
    settings = CompareSettings(rounds=rounds, time_s=time_s, processes=processes,
                               threshold=opts.max_latency_regression, confidence=confidence,
                               warmup=LatencySettings(warmup_iters=opts.latency.warmup_iters,
                                                      warmup_time_s=CompareSettings().warmup.warmup_time_s))
    bs = opts.batch_sizes[0]
    spec_a, spec_b = _runner_spec(a, opts), _runner_spec(b, opts)
    log(f"compare: {settings.processes} processes x {settings.rounds} interleaved rounds at batch {bs}")
    result: CompareResult = compare_models(spec_a, spec_b, [bs], settings, log)[bs]
    out = {"schema": COMPARE_SCHEMA, "schema_version": COMPARE_SCHEMA_VERSION, "a": a, "b": b, "batch_size": bs,
           "backend": [spec_a["backend"], spec_b["backend"]], "device": opts.device, "threads": opts.threads,
           "result": result.to_dict(), "summary": result.summary(), "passed": not result.failed,
           "verdict": result.verdict, "environment": collect_fingerprint(opts.threads)}
    if opts.json_path:
        write_json_atomic(opts.json_path, out)
    if opts.markdown_path:
        from edgekd.bench.markdown import render_compare_markdown

        write_text_atomic(opts.markdown_path, render_compare_markdown(out))
    return out
