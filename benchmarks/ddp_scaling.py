"""DDP scaling: training throughput (img/s) of one model at one global batch with 1, 2, ... processes.

Usage:
    python benchmarks/ddp_scaling.py --tag cpu                  # this machine: 1 and 2 processes, CPU (~2-3 min)
    python benchmarks/ddp_scaling.py --device cuda --tag h100   # a GPU box: 1 and N processes (N = GPU count)
    python benchmarks/ddp_scaling.py --data imagefolder:/tmp/edgekd-data/CIFAR-10-images --tag cpu-cifar

Each configuration is one `edgekd train` run (CE, `--nproc-per-node N` for N > 1, `--batch-size
GLOBAL / N` per process) of two short epochs of `--steps` optimizer steps each. The figure is the
second epoch's `img_per_s` from the run's metrics.jsonl: the fit loop's own timer over all ranks'
images (global throughput), after a warm-up epoch, without process start-up, data loading or
evaluation. On CPU every configuration gets the same cores: N processes of cores/N threads each;
one more row, 1 process with 1 thread, separates "more processes" from "fewer threads per
process" (on a loaded machine a multi-threaded process loses more to contention than 1-thread ones).
The default data is the built-in synthetic set (32x32, in memory like every edgekd dataset, so
throughput is the same as on CIFAR-10); no validation split, a small test split.

Writes benchmarks/results/ddp_scaling_<tag>.json and .md: the commands, the machine (CPUs, load
average before and after each run, GPUs), and per configuration img/s and speed-up over 1 process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_names() -> list[str]:
    import torch

    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def train_command(args: argparse.Namespace, nproc: int, threads: int | None, out: Path) -> list[str]:
    """The `edgekd train` command of one configuration (as a user would type it)."""
    per_process = args.global_batch // nproc
    data = args.data or f"synthetic:n_train={args.steps * args.global_batch + args.global_batch},n_test={args.global_batch}"
    cmd = ["edgekd", "train"]
    if nproc > 1:
        cmd += ["--nproc-per-node", str(nproc)]
    cmd += ["--model", args.model, "--method", "ce", "--data", data, "--epochs", "2", "--batch-size", str(per_process),
            "--device", args.device, "--seed", "0", "--no-progress", "--out", str(out),
            "--set", f"max_steps_per_epoch={args.steps}", "--set", "val_fraction=0"]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    return cmd


def run_config(args: argparse.Namespace, nproc: int, threads: int | None, tmp: Path) -> dict:
    out = tmp / f"run_{nproc}x{threads}"
    cmd = train_command(args, nproc, threads, out)
    print("$", shlex.join(cmd), flush=True)
    load_before = loadavg()
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "edgekd", *cmd[1:]], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"  failed (exit {proc.returncode}): {tail}", flush=True)
        return {"nproc": nproc, "threads_per_process": threads, "command": shlex.join(cmd), "error": tail,
                "load_before": load_before}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    warm = metrics[-1]
    entry = {
        "nproc": nproc, "batch_per_process": args.global_batch // nproc, "global_batch": args.global_batch,
        "threads_per_process": threads,
        "img_per_s": warm["img_per_s"], "epoch_time_s": warm["epoch_time_s"],
        "img_per_s_first_epoch": metrics[0]["img_per_s"], "steps_per_epoch": args.steps,
        "wall_s": round(wall, 1), "load_before": load_before, "load_after": loadavg(), "command": shlex.join(cmd),
    }
    print(f"  {entry['img_per_s']:.0f} img/s (warm epoch), {wall:.0f} s wall, load {load_before} -> {entry['load_after']}",
          flush=True)
    return entry


def render_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# DDP scaling: {report['model']}, global batch {report['global_batch']}, {report['device']} (tag {report['tag']})",
             "", f"- machine: {m['cpu_model']}, {m['cpu_count']} CPUs visible" +
             (f", GPUs: {', '.join(m['gpus'])}" if m["gpus"] else ", no GPU"),
             f"- torch {m['torch']}, Python {m['python']}, {m['platform']}",
             f"- load average (1, 5, 15 min) at start: {m['load_start']}, at end: {m['load_end']}",
             f"- data: {report['data']}; {report['steps']} steps per epoch, 2 epochs, figure = epoch 2 (warm)",
             f"- command: `{report['command']}`", "",
             "| processes | batch / process | threads / process | img/s | speed-up | epoch s | load before -> after |",
             "|---:|---:|---:|---:|---:|---:|---|"]
    base = next((r["img_per_s"] for r in report["results"] if r["nproc"] == 1 and "img_per_s" in r), None)
    lines[-2:-2] = [] if base is None else ["Speed-up is over the first row (1 process, all cores).", ""]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['nproc']} | | | failed: {r['error']} | | | |")
            continue
        speed = f"{r['img_per_s'] / base:.2f}x" if base else "n/a"
        lines.append(f"| {r['nproc']} | {r['batch_per_process']} | {r['threads_per_process'] or '-'} | "
                     f"{r['img_per_s']:.0f} | {speed} | {r['epoch_time_s']:.1f} | {r['load_before']} -> {r['load_after']} |")
    lines += ["", "Per-configuration commands:", ""] + [f"- `{r['command']}`" for r in report["results"]]
    if report.get("notes"):
        lines += ["", "## Notes", "", report["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--global-batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=24, help="optimizer steps per epoch (2 epochs per configuration)")
    ap.add_argument("--procs", default=None, help="process counts, comma-separated (default: 1,2 on CPU; 1,N GPUs on CUDA)")
    ap.add_argument("--data", default=None, help="data spec (default: synthetic, sized to the steps)")
    ap.add_argument("--tag", default=None, help="results file suffix (default: the device)")
    ap.add_argument("--notes", default="", help="free text for the markdown report")
    args = ap.parse_args(argv)
    import torch

    args.cores = os.cpu_count() or 1
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 1
    if args.procs:
        procs = [int(p) for p in args.procs.split(",") if p.strip()]
    elif args.device == "cuda":
        procs = sorted({1, torch.cuda.device_count()})
    else:
        procs = [1, 2]
    bad = [p for p in procs if p < 1 or args.global_batch % p]
    if bad:
        print(f"error: process counts {bad} must be >= 1 and divide --global-batch {args.global_batch}", file=sys.stderr)
        return 1
    if args.device == "cpu":  # the same cores for every row, plus 1 process x 1 thread (see the docstring)
        configs = [(p, max(1, args.cores // p)) for p in procs]
        if 1 in procs and args.cores > 1:
            configs.insert(1, (1, 1))
    else:
        configs = [(p, None) for p in procs]
    tag = args.tag or args.device
    report = {
        "benchmark": "ddp_scaling", "tag": tag, "device": args.device, "model": args.model,
        "global_batch": args.global_batch, "steps": args.steps,
        "data": args.data or "synthetic (built-in, 32x32, 10 classes)",
        "command": shlex.join(["python", "benchmarks/ddp_scaling.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpu_model": cpu_model(), "cpu_count": args.cores, "gpus": gpu_names(), "torch": torch.__version__,
                    "python": platform.python_version(), "platform": platform.platform(), "load_start": loadavg()},
        "results": [], "notes": args.notes,
    }
    with tempfile.TemporaryDirectory(prefix="edgekd-ddp-scaling-") as tmp:
        for nproc, threads in configs:
            report["results"].append(run_config(args, nproc, threads, Path(tmp)))
    report["machine"]["load_end"] = loadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS / f"ddp_scaling_{tag}.json", RESULTS / f"ddp_scaling_{tag}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(render_markdown(report))
    print(f"wrote {json_path.relative_to(ROOT)} and {md_path.relative_to(ROOT)}")
    return 0 if all("img_per_s" in r for r in report["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
