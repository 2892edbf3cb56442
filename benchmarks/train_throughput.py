"""Training throughput: resnet20, CE step, batch 128, on this CPU.

Three feeds of the same training step (SGD + nesterov, CE, channels_last as the trainer uses it
on CPU), timed in interleaved rounds so machine drift hits them alike; medians are reported:

- `preloaded`: one fixed, already normalised batch (the ceiling: no data work at all);
- `pipeline`: edgekd's real loader over the decoded CIFAR-10 JPEG folder (shuffle, random crop
  with padding, flip, normalisation, batched on the device), exactly as `edgekd train` feeds it;
- `preloaded_nchw`: the preloaded feed without channels_last (what channels_last buys).

Target (issue 2): >= 500 img/s preloaded on 2 cores and the pipeline within 10% of it.

    python benchmarks/train_throughput.py [--rounds 5] [--steps 20] [--threads 2] [--tag cpu]

Writes benchmarks/results/train_throughput_<tag>.json and .md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from cifar import ensure_cifar, machine_line  # noqa: E402


def make_step(channels_last: bool, device: torch.device):
    from edgekd.models import build_model

    model = build_model("resnet20", num_classes=10).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model.train()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def time_feed(step, batches, steps: int, batch_size: int) -> float:
    """img/s over `steps` steps, the data work inside the clock."""
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = next(batches)
        step(x, y)
    return steps * batch_size / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cpu")

    from edgekd.data import load_dataset
    from edgekd.data.loader import BatchLoader

    t0 = time.perf_counter()
    data = load_dataset(ensure_cifar(), 0.1, 0)  # decoded once, then from the on-disk cache
    load_s = time.perf_counter() - t0
    loader = BatchLoader(data.x_train, data.y_train, args.batch_size, data.mean, data.std, train=True,
                         hflip=data.hflip, device=device, channels_last=True)

    def pipeline_batches():
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            for b in loader:
                yield b.x, b.y
            epoch += 1

    fixed = next(iter(loader))

    def fixed_batches(channels_last: bool):
        x = fixed.x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        while True:
            yield x, fixed.y

    feeds = {
        "preloaded": (make_step(True, device), fixed_batches(True)),
        "pipeline": (make_step(True, device), pipeline_batches()),
        "preloaded_nchw": (make_step(False, device), fixed_batches(False)),
    }
    for step, batches in feeds.values():  # warm-up: allocator, kernels, first epoch permutation
        time_feed(step, batches, 3, args.batch_size)
    samples: dict[str, list[float]] = {k: [] for k in feeds}
    for r in range(args.rounds):
        for name, (step, batches) in feeds.items():
            samples[name].append(round(time_feed(step, batches, args.steps, args.batch_size), 1))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in samples.items()), flush=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    ratios = [p / q for p, q in zip(samples["pipeline"], samples["preloaded"])]  # same round, same load
    result = {
        "tag": args.tag, "command": "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]),
        "machine": machine_line("cpu", args.threads), "loadavg": [round(v, 2) for v in os.getloadavg()],
        "model": "resnet20", "batch_size": args.batch_size, "rounds": args.rounds, "steps_per_round": args.steps,
        "dataset_load_s": round(load_s, 1), "img_per_s": samples, "median_img_per_s": med,
        "pipeline_over_preloaded_median": round(statistics.median(ratios), 3),
        "channels_last_gain": round(med["preloaded"] / med["preloaded_nchw"], 3),
        "targets": {"preloaded_ge_500": med["preloaded"] >= 500,
                    "pipeline_within_10pct": statistics.median(ratios) >= 0.9},
    }
    from edgekd.io import write_json_atomic, write_text_atomic

    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / f"train_throughput_{args.tag}.json", result)
    lines = [f"# Training throughput, resnet20 CE step, batch {args.batch_size} ({args.tag})", "",
             f"{result['machine']}; load average at the end {result['loadavg']}. {args.rounds} interleaved rounds of "
             f"{args.steps} steps; medians.", "",
             "| feed | median img/s | per round |", "|---|---:|---|"]
    for k, v in samples.items():
        lines.append(f"| {k} | {med[k]:.0f} | {', '.join(f'{s:.0f}' for s in v)} |")
    lines += ["", f"Real pipeline / preloaded (median of per-round ratios): **{result['pipeline_over_preloaded_median']:.2f}x** "
              f"(target >= 0.90: {'met' if result['targets']['pipeline_within_10pct'] else 'not met'}); preloaded "
              f"{med['preloaded']:.0f} img/s (target >= 500: {'met' if result['targets']['preloaded_ge_500'] else 'not met'}); "
              f"channels_last gives {result['channels_last_gain']:.2f}x over NCHW.", "",
              f"Command: `{result['command']}`", ""]
    write_text_atomic(out / f"train_throughput_{args.tag}.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
