"""How reliable `edgekd bench compare` and the INT8-slower check are, on this machine (issue 14's figures).

Every comparison goes through the code the CLI runs (`edgekd.bench.suite.run_compare` for
`bench compare`, `edgekd.bench.compare.compare_models` with `INT8_CHECK` for the INT8 check of
`edgekd bench`): A and B in several fresh processes, interleaved inside each, a Student-t interval
over the processes' ratios (docs/architecture.md, "Latency gate noise"). For each of `--n` repetitions:

- A/A: a conv stack against itself at a 10% threshold. Targets: 0 false alarms (exit 3) in 20,
  and >= 18 of 20 95% intervals contain 1.0 (the interval is as wide as it claims).
- A/B: against the same network with 30% more identical conv layers (a 1.3x cost by
  construction). Target: caught (exit 3) 20 of 20.
- INT8 check, U8S8: resnet8's INT8 export for CPU (really faster on x86 ORT). Target: never fails.
- INT8 check, S8S8: the TensorRT flavour, slower than FP32 on ORT's CPU kernels. Target: fails 20/20.

`--load K` runs K busy processes for the whole run (a loaded machine); the results are then
tagged `<tag>-loaded`. Each comparison is timed (wall seconds, process starts included).

    python benchmarks/gate_reliability.py [--n 20] [--load 0] [--processes 6] [--rounds 10] [--time 2.0]
    python benchmarks/gate_reliability.py --n 20 --load 1        # the loaded run

Writes benchmarks/results/gate_reliability_<tag>.json and .md (tag: cpu, or cpu-loaded with --load).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUSY = "import time\nwhile True:\n    sum(i * i for i in range(10000))\n"


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


def int8_pair(root: Path, target: str, model: str = "resnet8") -> tuple[Path, Path]:
    """`model`'s FP32 export and its INT8 QDQ export for `target` (cpu: U8S8, tensorrt: S8S8),
    side by side as model.onnx / model.int8.onnx (how `edgekd bench` pairs them)."""
    import numpy as np
    import onnx

    from edgekd import names
    from edgekd.export.onnx import export_onnx
    from edgekd.export.quantize import quantize_int8
    from edgekd.models import build_model

    d = root / target
    d.mkdir()
    fp32 = d / names.MODEL_ONNX
    onnx.save(export_onnx(build_model(model, num_classes=10).eval(), (3, 32, 32), names.LOGITS_NAME), str(fp32))
    calib = np.random.default_rng(0).standard_normal((64, 3, 32, 32)).astype(np.float32)
    quantize_int8(fp32, d / names.MODEL_INT8_ONNX, calib, target)
    return fp32, d / names.MODEL_INT8_ONNX


def summarize(runs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    rs = [r for r in runs if r["kind"] == kind]
    return {"n": len(rs), "failed": sum(r["verdict"] == "regression" for r in rs),
            "verdicts": {v: sum(r["verdict"] == v for r in rs) for v in ("ok", "inconclusive", "regression")},
            "ci_contains_1": sum(r["ci_low"] <= 1.0 <= r["ci_high"] for r in rs),
            "median_ratio": statistics.median(r["ratio"] for r in rs),
            "ratio_range": [min(r["ratio"] for r in rs), max(r["ratio"] for r in rs)],
            "median_wall_s": statistics.median(r["wall_s"] for r in rs), "max_wall_s": max(r["wall_s"] for r in rs)}


def measure(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """Every comparison, the kinds alternating so that all see the same machine conditions."""
    from dataclasses import replace

    from edgekd.bench.compare import compare_models
    from edgekd.bench.suite import INT8_CHECK, BenchOptions, run_compare

    slow_layers = round(args.layers * 1.3)
    fast = str(conv_stack_onnx(tmp / "base.onnx", args.layers))
    slow = str(conv_stack_onnx(tmp / "slow.onnx", slow_layers))
    pairs = {} if args.skip_int8 else {"INT8 U8S8": int8_pair(tmp, "cpu"), "INT8 S8S8": int8_pair(tmp, "tensorrt")}
    opts = BenchOptions(models=(fast, fast), threads=1, batch_sizes=(1,), max_latency_regression=args.threshold)
    check = replace(INT8_CHECK, processes=args.processes, rounds=args.rounds)
    spec = {"backend": "ort", "device": "cpu", "providers": None, "threads": 1, "allow_spinning": False,
            "torch_mode": "eager"}
    runs = []
    for i in range(args.n):
        jobs = [("A/A", fast), (f"A/B {slow_layers}/{args.layers} layers", slow)] + list(pairs.items())
        for kind, target in jobs:
            t0 = time.perf_counter()
            if isinstance(target, tuple):  # the INT8 check: A = FP32 source, B = INT8
                res = compare_models({"path": str(target[0]), **spec}, {"path": str(target[1]), **spec},
                                     [args.int8_batch], check)[args.int8_batch].to_dict()
            else:
                res = run_compare(fast, target, opts, rounds=args.rounds, time_s=args.time,
                                  processes=args.processes)["result"]
            wall = time.perf_counter() - t0
            runs.append({"kind": kind, "i": i, "ratio": res["ratio"], "ci_low": res["ci_low"],
                         "ci_high": res["ci_high"], "verdict": res["verdict"], "process_ratios": res["process_ratios"],
                         "wall_s": wall})
            print(f"{kind:22s} #{i:2d}: ratio {res['ratio']:.3f} CI [{res['ci_low']:.3f}, {res['ci_high']:.3f}] "
                  f"{res['verdict']:12s} ({wall:.1f} s)", flush=True)
    return runs


def write_results(args: argparse.Namespace, runs: list[dict[str, Any]], total: float, tag: str) -> None:
    from edgekd.bench.fingerprint import collect_fingerprint
    from edgekd.io import write_json_atomic, write_text_atomic

    kinds = list(dict.fromkeys(r["kind"] for r in runs))
    summary = {k: summarize(runs, k) for k in kinds}
    result = {"what": "edgekd bench compare and the INT8 check: A/A false alarms and interval coverage, 1.3x "
                      "detection, INT8 U8S8/S8S8 verdicts",
              "command": "python benchmarks/gate_reliability.py " + " ".join(sys.argv[1:]),
              "settings": {"processes": args.processes, "rounds": args.rounds, "time_s": args.time,
                           "threshold": args.threshold, "confidence": 0.95, "load_processes": args.load,
                           "int8_batch": args.int8_batch, "int8_threshold": 0.0,
                           "backend": "onnxruntime CPU, 1 intra-op thread, spinning off"},
              "summary": summary, "total_wall_s": total, "runs": runs, "environment": collect_fingerprint(1)}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / f"gate_reliability_{tag}.json", result)
    env = result["environment"]
    md = [f"# Gate reliability: `edgekd bench compare` and the INT8 check ({tag})", "",
          f"Command: `{result['command']}`  ",
          f"Machine: {env['cpu_model']}, {env['cpu_count']} cores, Python {platform.python_version()}; "
          f"{args.load} busy processes running beside it", "",
          f"Statistic: {args.processes} fresh processes x {args.rounds} interleaved rounds, Student-t 95% interval "
          f"over the per-process log ratios; compare threshold {args.threshold * 100:g}% ({args.time:g} s timed per "
          f"comparison), INT8 check threshold 0 at batch {args.int8_batch}.", "",
          "| comparison | n | failed (exit 3) | ok / inconclusive / regression | 95% CI contains 1.0 | median ratio "
          "| ratio range | median s per comparison | max s |",
          "|---|---:|---:|---|---:|---:|---|---:|---:|"]
    for kind, s in summary.items():
        v = s["verdicts"]
        md.append(f"| {kind} | {s['n']} | {s['failed']} | {v['ok']} / {v['inconclusive']} / {v['regression']} | "
                  f"{s['ci_contains_1']}/{s['n']} | {s['median_ratio']:.3f} | {s['ratio_range'][0]:.3f}-"
                  f"{s['ratio_range'][1]:.3f} | {s['median_wall_s']:.1f} | {s['max_wall_s']:.1f} |")
    md += ["", "Targets: A/A 0 failures and >= 18/20 intervals containing 1.0; A/B caught 20/20; INT8 U8S8 never "
               "fails; INT8 S8S8 fails 20/20.", f"Total wall time {total / 60:.1f} min.", ""]
    write_text_atomic(args.out / f"gate_reliability_{tag}.md", "\n".join(md))
    print("\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="repetitions of each comparison")
    ap.add_argument("--processes", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds per process")
    ap.add_argument("--time", type=float, default=2.0, help="timed seconds per comparison (both sides)")
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--threshold", type=float, default=0.10)
    ap.add_argument("--int8-batch", type=int, default=1)
    ap.add_argument("--skip-int8", action="store_true")
    ap.add_argument("--load", type=int, default=0, help="busy processes to run beside the comparisons")
    ap.add_argument("--tag", default=None, help="results name (default cpu, or cpu-loaded with --load)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    tag = args.tag or ("cpu-loaded" if args.load else "cpu")

    load = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.load)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            runs = measure(args, Path(tmp))
            total = time.perf_counter() - t0
    finally:
        for p in load:  # only the processes started here
            p.kill()
            p.wait()
    write_results(args, runs, total, tag)


if __name__ == "__main__":
    main()
