"""How often `edgekd bench compare` raises a false alarm, and how reliably it catches a real slowdown.

20 A/A comparisons (one ONNX model against itself, two sessions: target 0 failures) and 20 A/B
comparisons against the same network made ~1.3x slower (30% more identical conv layers: target
20/20 detected), at a 10% threshold, each comparison timed. The models are conv stacks built here
(torch.onnx.export, opset 17) so the cost ratio is known by construction; the nominal 1.3x ratio is
also measured. ONNX Runtime with one intra-op thread, spinning off (DESIGN.md section 6).

    python benchmarks/gate_reliability.py [--n 20] [--rounds 30] [--time 2.0]

Writes benchmarks/results/gate_reliability_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def conv_stack_onnx(path: Path, layers: int, channels: int = 16, size: int = 32) -> Path:
    """An ONNX model of `layers` identical 3x3 conv + ReLU blocks, then pooling and a classifier."""
    import warnings

    import torch
    from torch import nn

    torch.manual_seed(0)
    body = [nn.Conv2d(3, channels, 3, padding=1), nn.ReLU()]
    conv = nn.Conv2d(channels, channels, 3, padding=1)
    for _ in range(layers):  # the same weights each time: the cost is exactly proportional to `layers`
        body += [conv, nn.ReLU()]
    model = nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (torch.zeros(2, 3, size, size),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--time", type=float, default=2.0, help="timed seconds per comparison (both sides)")
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--threshold", type=float, default=0.10)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()

    from edgekd.bench.fingerprint import collect_fingerprint
    from edgekd.bench.gate import CompareSettings, compare_runners
    from edgekd.bench.latency import make_input
    from edgekd.bench.runners import OrtRunner
    from edgekd.io import write_json_atomic, write_text_atomic

    slow_layers = round(args.layers * 1.3)
    settings = CompareSettings(rounds=args.rounds, time_s=args.time, threshold=args.threshold)
    with tempfile.TemporaryDirectory() as tmp:
        fast = conv_stack_onnx(Path(tmp) / "base.onnx", args.layers)
        slow = conv_stack_onnx(Path(tmp) / "slow.onnx", slow_layers)
        x = make_input((3, 32, 32), 1)
        runs = []
        t_all = time.perf_counter()
        # A/A and A/B alternate so both kinds see the same machine conditions
        for i in range(args.n):
            for kind, b_path in (("A/A", fast), ("A/B 1.3x", slow)):
                a = OrtRunner(fast, threads=1, allow_spinning=False)
                b = OrtRunner(b_path, threads=1, allow_spinning=False)
                t0 = time.perf_counter()
                res = compare_runners(a, b, x, settings)
                wall = time.perf_counter() - t0
                a.close(), b.close()
                runs.append({"kind": kind, "i": i, "ratio": res.ratio, "ci_low": res.ci_low, "ci_high": res.ci_high,
                             "verdict": res.verdict, "failed": res.failed, "a_p50_ms": res.a_p50_ms,
                             "b_p50_ms": res.b_p50_ms, "wall_s": wall})
                print(f"{kind:9s} #{i:2d}: ratio {res.ratio:.3f} CI [{res.ci_low:.3f}, {res.ci_high:.3f}] "
                      f"{res.verdict:12s} ({wall:.1f} s)", flush=True)
        total = time.perf_counter() - t_all

    def summary(kind: str) -> dict:
        rs = [r for r in runs if r["kind"] == kind]
        return {"n": len(rs), "failed": sum(r["failed"] for r in rs),
                "verdicts": {v: sum(r["verdict"] == v for r in rs) for v in ("ok", "inconclusive", "regression")},
                "median_ratio": statistics.median(r["ratio"] for r in rs),
                "ratio_range": [min(r["ratio"] for r in rs), max(r["ratio"] for r in rs)],
                "median_wall_s": statistics.median(r["wall_s"] for r in rs),
                "max_wall_s": max(r["wall_s"] for r in rs)}

    aa, ab = summary("A/A"), summary("A/B 1.3x")
    result = {
        "what": "edgekd bench compare reliability: A/A false failures and 1.3x detection at a 10% threshold",
        "command": "python benchmarks/gate_reliability.py " + " ".join(sys.argv[1:]),
        "settings": {"rounds": args.rounds, "time_s": args.time, "threshold": args.threshold,
                     "confidence": settings.confidence, "model": f"conv stack {args.layers} vs {slow_layers} layers, "
                     "16 channels, 32x32, batch 1", "backend": "onnxruntime CPU, 1 intra-op thread, spinning off"},
        "aa": aa, "ab": ab, "total_wall_s": total, "runs": runs,
        "environment": collect_fingerprint(1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "gate_reliability_cpu.json", result)
    md = [
        "# Gate reliability: `edgekd bench compare` (CPU)", "",
        f"Command: `{result['command']}`  ", f"Machine: {result['environment']['cpu_model']}, "
        f"{result['environment']['cpu_count']} cores (shared with other jobs), {platform.python_version()}", "",
        f"Settings: {args.rounds} interleaved rounds, {args.time:g} s timed per comparison, 95% bootstrap CI of the "
        f"median per-round latency ratio, threshold {args.threshold * 100:g}%; {result['settings']['model']}; "
        f"{result['settings']['backend']}.", "",
        "| comparison | n | failed (exit 3) | ok / inconclusive / regression | median ratio | ratio range | median s per comparison | max s |",
        "|---|---:|---:|---|---:|---|---:|---:|",
    ]
    for name, s in (("A/A (same model)", aa), (f"A/B ({slow_layers}/{args.layers} layers)", ab)):
        v = s["verdicts"]
        md.append(f"| {name} | {s['n']} | {s['failed']} | {v['ok']} / {v['inconclusive']} / {v['regression']} | "
                  f"{s['median_ratio']:.3f} | {s['ratio_range'][0]:.3f}-{s['ratio_range'][1]:.3f} | "
                  f"{s['median_wall_s']:.1f} | {s['max_wall_s']:.1f} |")
    md += ["", f"Targets: A/A 0 false failures (measured {aa['failed']}/{aa['n']}); A/B detected 20/20 "
               f"(measured {ab['failed']}/{ab['n']}). Total wall time {total / 60:.1f} min.", ""]
    write_text_atomic(args.out / "gate_reliability_cpu.md", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
