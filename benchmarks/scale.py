"""Real images at real scale (issue 21): training from the on-disk store, bounded memory, 224-px latency.

Three parts, each also runnable alone (`--part`):

- `throughput`: img/s of a CE training step at 224 px (default mobilenetv2_224, batch 32,
  channels_last) fed by edgekd's loader from the on-disk store vs from the same squares held in
  memory (the in-memory regime), in interleaved rounds; medians and the per-round ratio
  store / memory (target >= 0.9). Before each store round the store file is dropped from the page
  cache (posix_fadvise DONTNEED), so the store feed reads from disk, not from RAM.
- `memory`: a store several times larger than the memory allowed (default 20,000 squares of
  256 px = 3.9 GB) is read for one full epoch by the training loader, with training steps, in a
  child process whose address space is capped (RLIMIT_AS) at what importing torch and building the
  model takes plus `--budget-mb` (default 1,500). The child's peak RSS (VmHWM) is reported, and the
  same child with the squares loaded into memory is shown to fail under the same cap.
- `latency`: batch-1 and batch-8 latency of the 224-px students (mobilenetv3_small,
  mobilenetv2_224, resnet18; 10 classes) in torch eager, ONNX Runtime FP32 and ONNX Runtime INT8
  (QDQ, calibrated on 32 synthetic images), with edgekd's interleaved latency harness.

Data: `synthetic:size=224` (procedural; no real 224-px photographs exist offline here), stored at
side 256 (224 / 0.875). Numbers come from the machine that runs this, an x86 CPU unless stated.

    python benchmarks/scale.py [--part all|throughput|memory|latency] [--threads 4] [--tag cpu]
        [--images 1024] [--big-images 20000] [--budget-mb 1500] [--work /tmp/edgekd-scale]

Writes benchmarks/results/scale_<tag>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SIZE = 224
LATENCY_MODELS = ("mobilenetv3_small", "mobilenetv2_224", "resnet18")


# ---------------------------------------------------------------- data


class Cycled:
    """`n` rows cycling through `base` (N, H, W, C): a big store's content without a big array in RAM."""

    def __init__(self, base: np.ndarray, n: int):
        self.base, self.n = base, n
        self.shape = (n,) + base.shape[1:]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: slice) -> np.ndarray:
        return self.base[np.arange(self.n)[key] % len(self.base)]


def synthetic_store(work: Path, n: int, distinct: int | None = None):
    """A store of `n` synthetic 224-px images squared to 256 px (built once under `work`)."""
    from edgekd.data.readers import read_spec
    from edgekd.data.store import open_store, write_store
    from edgekd.runtime.resize import stored_side

    path = work / f"synthetic-{n}-{distinct or n}"
    if (path / "meta.json").is_file():
        return open_store(path)
    k = distinct or n
    raw = read_spec(f"synthetic:n_train={k},n_test=64,size={SIZE}")
    x = raw.x_train if k == n else Cycled(raw.x_train, n)
    y = raw.y_train if k == n else raw.y_train[np.arange(n) % k]
    print(f"writing a store of {n} images to {path} ...", flush=True)
    return write_store(path, {"train": (x, y), "test": (raw.x_test, raw.y_test)}, raw.class_names,
                       stored_side(SIZE), size=SIZE)


def drop_from_page_cache(path: Path) -> bool:
    """Evict a (clean) file's pages from the page cache, so the next reads go to the disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return True
    except (AttributeError, OSError):
        return False


# ---------------------------------------------------------------- throughput


def make_step(model_name: str, num_classes: int):
    import torch
    import torch.nn.functional as F

    from edgekd.models import build_model

    model = build_model(model_name, num_classes=num_classes).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-5)

    def step(x, y) -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def endless(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        for b in loader:
            yield b.x, b.y
        epoch += 1


def throughput(args) -> dict:
    from edgekd.data.images import ImageRows, View, stats_from_sums
    from edgekd.data.loader import BatchLoader

    store = synthetic_store(Path(args.work), args.images)
    split, view = store.split("train"), View(SIZE)
    mean, std = stats_from_sums(split.sums, view.side ** 2)
    feeds = {"memory": ImageRows(split.load(), view=view), "store": split.image_rows(view=view)}
    steps = {k: make_step(args.model, len(store.class_names)) for k in feeds}
    iters = {k: endless(BatchLoader(rows, split.labels, args.batch_size, mean, std, train=True,
                                    channels_last=True, seed=1)) for k, rows in feeds.items()}

    def timed(name: str, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            steps[name](*next(iters[name]))
        return n * args.batch_size / (time.perf_counter() - t0)

    for k in feeds:
        timed(k, 2)  # warm-up: allocator, kernels
    samples: dict[str, list[float]] = {k: [] for k in feeds}
    cold = []
    for r in range(args.rounds):
        for k in feeds:
            if k == "store":
                cold.append(drop_from_page_cache(split.images.path))
            samples[k].append(round(timed(k, args.steps), 1))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in samples.items()), flush=True)
    ratios = [s / m for s, m in zip(samples["store"], samples["memory"])]
    return {"model": args.model, "batch_size": args.batch_size, "images": args.images, "rounds": args.rounds,
            "steps_per_round": args.steps, "store_bytes": split.images.path.stat().st_size,
            "page_cache_dropped": all(cold), "img_per_s": samples,
            "median_img_per_s": {k: statistics.median(v) for k, v in samples.items()},
            "store_over_memory_median": round(statistics.median(ratios), 3),
            "target_ge_0.9": statistics.median(ratios) >= 0.9}


# ---------------------------------------------------------------- memory


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args) -> None:
    """One measured process: (probe) import torch and build the model, or train + read a full epoch."""
    if args.limit_as:
        resource.setrlimit(resource.RLIMIT_AS, (args.limit_as, args.limit_as))
    import torch

    from edgekd.data.images import ImageRows, View, stats_from_sums
    from edgekd.data.loader import BatchLoader
    from edgekd.data.store import open_store

    torch.set_num_threads(args.threads)
    step = make_step(args.model, 10)
    out = {"ok": True}
    t0 = time.perf_counter()
    try:
        step(torch.randn(2, 3, SIZE, SIZE).contiguous(memory_format=torch.channels_last), torch.tensor([0, 1]))
        if not args.probe:
            split, view = open_store(args.store).split("train"), View(SIZE)
            rows = ImageRows(split.load(), view=view) if args.in_memory else split.image_rows(view=view)
            mean, std = stats_from_sums(split.sums[:1000], view.side ** 2)
            loader = BatchLoader(rows, split.labels, args.batch_size, mean, std, train=True, channels_last=True)
            n = 0
            for i, b in enumerate(loader):
                if i < args.steps:
                    step(b.x, b.y)
                n += len(b.y)
            out["images_read"] = n
    except (MemoryError, RuntimeError) as exc:  # torch's allocator raises RuntimeError("... can't allocate memory")
        if isinstance(exc, RuntimeError) and "allocate" not in str(exc):
            raise
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
    out.update({"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(_status_mb("VmHWM"), 1),
                "vm_peak_mb": round(_status_mb("VmPeak"), 1)})
    print("RESULT " + json.dumps(out), flush=True)


def run_child(args, *extra: str, limit_as: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--part", "_child", "--model", args.model, "--threads", str(args.threads),
           "--batch-size", str(args.batch_size), "--steps", str(args.mem_steps), "--limit-as", str(limit_as), *extra]
    env = dict(os.environ, MALLOC_ARENA_MAX="2")  # glibc reserves 64 MB of address space per extra arena
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        return {"ok": False, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:200],
                "returncode": proc.returncode}
    return json.loads(lines[-1][len("RESULT "):])


def memory(args) -> dict:
    store = synthetic_store(Path(args.work), args.big_images, distinct=512)
    store_mb = store.split("train").images.path.stat().st_size / 2**20
    probe = run_child(args, "--probe")
    limit = int((probe["vm_peak_mb"] + args.budget_mb) * 2**20)
    print(f"store {store_mb:.0f} MB; torch + model take {probe['vm_peak_mb']:.0f} MB of address space; "
          f"cap {limit / 2**20:.0f} MB", flush=True)
    on_store = run_child(args, "--store", str(store.root), limit_as=limit)
    in_memory = run_child(args, "--store", str(store.root), "--in-memory", limit_as=limit)
    return {"model": args.model, "batch_size": args.batch_size, "train_steps": args.mem_steps,
            "store_images": args.big_images, "store_mb": round(store_mb), "probe": probe,
            "address_space_cap_mb": round(limit / 2**20), "budget_mb": args.budget_mb,
            "store_run": on_store, "in_memory_run_same_cap": in_memory,
            "store_over_budget": round(store_mb / args.budget_mb, 1)}


# ---------------------------------------------------------------- latency


def latency(args) -> dict:
    import torch

    from edgekd.bench.latency import LatencySettings, measure_interleaved
    from edgekd.bench.runners import ModelInfo, OrtRunner, Runner
    from edgekd.data.readers import read_spec
    from edgekd.deps import require
    from edgekd.export.onnx import export_onnx, simplify_onnx
    from edgekd.export.quantize import quantize_int8
    from edgekd.models import build_model
    from edgekd.names import LOGITS_NAME
    from edgekd.runtime.preprocess import normalize_batch
    from edgekd.runtime.resize import eval_view, stored_side

    class ModuleRunner(Runner):
        def __init__(self, module, name):
            self.module = module
            self.info = ModelInfo(path=name, format="module", backend="torch", device="cpu",
                                  input_shape=(3, SIZE, SIZE), output_kind=LOGITS_NAME)

        def prepare(self, x):
            return torch.from_numpy(np.ascontiguousarray(x)).contiguous(memory_format=torch.channels_last)

        def infer(self, x):
            with torch.inference_mode():
                return self.module(x)

        def fetch(self, out):
            return out.numpy()

    onnx = require("onnx")
    torch.set_num_threads(args.threads)
    raw = read_spec(f"synthetic:n_train=32,n_test=8,size={SIZE}")
    calib = normalize_batch(np.stack([eval_view(im, SIZE, stored_side(SIZE)) for im in raw.x_train]),
                            (0.5,) * 3, (0.25,) * 3)
    work = Path(args.work) / "latency"
    work.mkdir(parents=True, exist_ok=True)
    settings = LatencySettings(min_time_s=args.min_time)
    results = {}
    for name in args.latency_models.split(","):
        model = build_model(name, num_classes=10).eval()
        fp32, int8 = work / f"{name}.onnx", work / f"{name}.int8.onnx"
        proto, _ = simplify_onnx(export_onnx(model, (3, SIZE, SIZE), LOGITS_NAME))
        onnx.save(proto, str(fp32))
        quantize_int8(fp32, int8, calib)
        runners = {"torch_eager": ModuleRunner(model.to(memory_format=torch.channels_last), name),
                   "ort_fp32": OrtRunner(fp32, threads=args.threads, allow_spinning=False),
                   "ort_int8": OrtRunner(int8, threads=args.threads, allow_spinning=False)}
        results[name] = {}
        for bs in (1, 8):
            x = calib[:bs]
            stats = measure_interleaved(list(runners.values()), [x] * len(runners), settings)
            results[name][f"batch{bs}"] = {k: {"p50_ms": round(s.p50_ms, 2), "p90_ms": round(s.p90_ms, 2),
                                               "img_per_s": round(s.fps, 1), "unstable": s.unstable}
                                           for k, s in zip(runners, stats)}
            print(f"{name} batch {bs}: " + ", ".join(f"{k} {v['p50_ms']} ms" for k, v in
                                                      results[name][f"batch{bs}"].items()), flush=True)
        for r in runners.values():
            r.close()
    return {"threads": args.threads, "models": results}


# ---------------------------------------------------------------- report


def report(result: dict) -> str:
    lines = [f"# Real images at real scale ({result['tag']})", "", f"{result['machine']}.", ""]
    t = result.get("throughput")
    if t:
        med = t["median_img_per_s"]
        lines += [f"## Training throughput at {SIZE} px: on-disk store vs in memory", "",
                  f"{t['model']}, CE step, batch {t['batch_size']}, channels_last; {t['images']} images "
                  f"({t['store_bytes'] / 2**20:.0f} MB store); {t['rounds']} interleaved rounds of "
                  f"{t['steps_per_round']} steps; page cache dropped before each store round: "
                  f"{t['page_cache_dropped']}.", "",
                  "| feed | median img/s | per round |", "|---|---:|---|"]
        lines += [f"| {k} | {med[k]:.1f} | {', '.join(f'{s:.1f}' for s in v)} |" for k, v in t["img_per_s"].items()]
        lines += ["", f"Store / memory (median of per-round ratios): **{t['store_over_memory_median']:.2f}x** "
                  f"(target >= 0.90: {'met' if t['target_ge_0.9'] else 'not met'}).", ""]
    m = result.get("memory")
    if m:
        s, im = m["store_run"], m["in_memory_run_same_cap"]
        lines += ["## Bounded memory", "",
                  f"{m['store_images']} images in a {m['store_mb']} MB store, {m['store_over_budget']}x the "
                  f"{m['budget_mb']} MB budget. Address space capped at {m['address_space_cap_mb']} MB "
                  f"(torch + model: {m['probe']['vm_peak_mb']:.0f} MB, plus the budget).", "",
                  "| run | ok | peak RSS MB | images read | seconds |", "|---|---|---:|---:|---:|",
                  f"| store (training loader, {m['train_steps']} steps + full epoch) | {s['ok']} | "
                  f"{s.get('peak_rss_mb', '-')} | {s.get('images_read', '-')} | {s.get('seconds', '-')} |",
                  f"| in memory, same cap | {im['ok']} | {im.get('peak_rss_mb', '-')} | "
                  f"{im.get('images_read', '-')} | {im.get('seconds', '-')} |", ""]
    lat = result.get("latency")
    if lat:
        lines += [f"## Latency at {SIZE} px ({lat['threads']} threads), p50 ms (img/s)", "",
                  "| model | batch | torch eager | ORT FP32 | ORT INT8 |", "|---|---:|---:|---:|---:|"]
        for name, per in lat["models"].items():
            for b, row in per.items():
                cells = [f"{row[k]['p50_ms']} ({row[k]['img_per_s']:.0f})"
                         for k in ("torch_eager", "ort_fp32", "ort_int8")]
                lines.append(f"| {name} | {b.removeprefix('batch')} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="all", choices=("all", "throughput", "memory", "latency", "_child"))
    ap.add_argument("--model", default="mobilenetv2_224")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--images", type=int, default=1024, help="throughput: images in the store")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8, help="throughput: training steps per round and feed")
    ap.add_argument("--big-images", type=int, default=20000, help="memory: images in the big store")
    ap.add_argument("--budget-mb", type=int, default=1500, help="memory: address space allowed beyond torch + model")
    ap.add_argument("--mem-steps", type=int, default=10, help="memory: training steps before reading the rest")
    ap.add_argument("--latency-models", default=",".join(LATENCY_MODELS))
    ap.add_argument("--min-time", type=float, default=2.0, help="latency: seconds of timed calls per runner")
    ap.add_argument("--work", default="/tmp/edgekd-scale")
    ap.add_argument("--tag", default="cpu")
    # child-process options (memory part)
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--in-memory", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--limit-as", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part == "_child":
        return child(args)
    import torch
    from cifar import machine_line

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = {"tag": args.tag, "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:]),
              "machine": machine_line("cpu", args.threads), "loadavg": [round(v, 2) for v in os.getloadavg()]}
    parts = ("throughput", "memory", "latency") if args.part == "all" else (args.part,)
    for part in parts:
        result[part] = {"throughput": throughput, "memory": memory, "latency": latency}[part](args)
    from edgekd.io import write_json_atomic, write_text_atomic

    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / f"scale_{args.tag}.json", result)
    text = report(result)
    write_text_atomic(out / f"scale_{args.tag}.md", text)
    print(text)


if __name__ == "__main__":
    main()
