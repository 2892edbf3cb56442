"""CE baselines on real data: resnet20 on CIFAR-10 (JPEG image folder) and resnet8 on MNIST.

Usage:
    python benchmarks/baseline.py run cifar      # trains (long: see the budget in RUNS)
    python benchmarks/baseline.py run mnist
    python benchmarks/baseline.py collect        # writes benchmarks/results/baseline_cpu.{json,md}

`run` calls the `edgekd train` CLI with the exact arguments recorded in RUNS; `collect` reads
each run directory (summary.json, metrics.jsonl) so a run started in the background with nohup
can be recorded when it ends. Run directories live in /tmp/edgekd-runs/ so other benchmarks can
use the CIFAR checkpoint as a teacher.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUN_ROOT = Path("/tmp/edgekd-runs")
CIFAR_FOLDER = "/tmp/edgekd-data/CIFAR-10-images"  # extracted from ../shared/data/cifar10-jpg.tar.gz
MNIST_NPZ = str(ROOT.parent / "shared" / "data" / "mnist_uint8.npz")

RUNS = {
    "cifar": {
        "name": "cifar_resnet20_ce",
        "what": "resnet20, CE, CIFAR-10 JPEG image folder (45k train / 5k val / 10k test)",
        "args": ["--data", f"imagefolder:{CIFAR_FOLDER}", "--model", "resnet20", "--method", "ce", "--epochs", "10",
                 "--batch-size", "128", "--lr", "0.1", "--schedule", "cosine", "--warmup-epochs", "1",
                 "--seed", "0", "--no-progress"],
    },
    "mnist": {
        "name": "mnist_resnet8_ce",
        "what": "resnet8, CE, MNIST npz (54k train / 6k val / 10k test), grayscale 28x28",
        "args": ["--data", f"npz:{MNIST_NPZ}", "--model", "resnet8", "--method", "ce", "--epochs", "2",
                 "--batch-size", "128", "--lr", "0.1", "--schedule", "cosine", "--warmup-epochs", "0.3",
                 "--seed", "0", "--no-progress"],
    },
}


def command_for(key: str) -> list[str]:
    spec = RUNS[key]
    return ["edgekd", "train", *spec["args"], "--out", str(RUN_ROOT / spec["name"])]


def run_one(key: str) -> int:
    """Train one baseline in the foreground (prepares the CIFAR folder first)."""
    if key == "cifar":
        sys.path.insert(0, str(ROOT / "tests"))
        from imagedata import extract_cifar10_folder

        extract_cifar10_folder()
    cmd = command_for(key)
    exe = str(Path(sys.executable).with_name("edgekd"))
    print("$", shlex.join(cmd), flush=True)
    return subprocess.call([exe, *cmd[1:]])


def collect_one(key: str) -> dict:
    spec = RUNS[key]
    run = RUN_ROOT / spec["name"]
    entry = {"run": spec["name"], "what": spec["what"], "command": shlex.join(command_for(key)), "run_dir": str(run)}
    metrics_file = run / "metrics.jsonl"
    if not metrics_file.is_file():
        return {**entry, "status": "not run"}
    metrics = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    summary_file = run / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    entry.update({
        "status": "finished" if summary else f"running or stopped after epoch {metrics[-1]['epoch'] if metrics else 0}",
        "epochs_done": metrics[-1]["epoch"] if metrics else 0,
        "best_val_acc": max((m.get("val_acc", 0.0) for m in metrics), default=None),
        "test_acc": summary.get("test_acc") if summary else None,
        "train_minutes": round(sum(m["epoch_time_s"] for m in metrics) / 60, 1),
        "median_img_per_s": sorted(m["img_per_s"] for m in metrics)[len(metrics) // 2] if metrics else None,
        "per_epoch": [{k: m.get(k) for k in ("epoch", "train_loss", "train_acc", "val_acc", "img_per_s", "lr")} for m in metrics],
    })
    return entry


def write_results(entries: list[dict]) -> None:
    from edgekd.io import write_json_atomic, write_text_atomic

    env = {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
           "loadavg_at_collect": [round(v, 2) for v in os.getloadavg()]}
    try:
        import torch

        env["torch"] = torch.__version__
    except ImportError:
        pass
    write_json_atomic(RESULTS / "baseline_cpu.json", {"environment": env, "runs": entries})
    lines = ["# CE baselines on real data (CPU)", "",
             f"Machine: {env['cpus']} CPU cores shared with other jobs (load average at collection "
             f"{env['loadavg_at_collect']}), torch {env.get('torch')}. Throughput is therefore a lower bound.", "",
             "| run | epochs | best val top-1 | test top-1 | train time | median img/s | status |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for e in entries:
        fmt = lambda v: "-" if v is None else f"{v:.2f}%"  # noqa: E731
        lines.append(f"| {e['what']} | {e.get('epochs_done', 0)} | {fmt(e.get('best_val_acc'))} | {fmt(e.get('test_acc'))} | "
                     f"{e.get('train_minutes', '-')} min | {e.get('median_img_per_s', '-')} | {e['status']} |")
    lines += ["", "Commands (run from the repository root; the CIFAR folder is extracted by `baseline.py run cifar`):", ""]
    lines += [f"- `{e['command']}`" for e in entries]
    lines += ["", "Per-epoch figures are in `baseline_cpu.json`.", ""]
    write_text_atomic(RESULTS / "baseline_cpu.md", "\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train one baseline in the foreground")
    r.add_argument("which", choices=sorted(RUNS))
    sub.add_parser("collect", help="record every baseline's figures from its run directory")
    args = ap.parse_args()
    if args.cmd == "run":
        return run_one(args.which)
    entries = [collect_one(k) for k in RUNS]
    write_results(entries)
    for e in entries:
        print(json.dumps({k: v for k, v in e.items() if k != "per_epoch"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
