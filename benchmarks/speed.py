"""Speed on the hardware users have (issue 19): bf16 training, LSSKD's cost, OpenVINO vs ONNX Runtime.

Four measurements on the real CIFAR-10 JPEG folder (`../shared/data/cifar10-jpg.tar.gz`, extracted
once by benchmarks/cifar.py), written with the commands and the CPU's flags to
benchmarks/results/speed_<tag>.{json,md}:

1. Training steps, img/s, fp32 vs bf16 autocast, all interleaved in rounds (medians; ratios taken
   within a round so load drift hits both sides): edgekd's CE step, its LSSKD step with `hsakd`
   and `light` aux branches (the trainer's own method code, channels-last, SGD as configured), and
   the peer: HSAKD's own resnet20_aux step (benchmarks/hsakd_peer.py) in NCHW as published and in
   channels-last. The MAC count of each step (per source image, forward) is the cost floor the
   measured ratios are read against.
2. Top-1 after the same epochs, fp32 vs bf16 (`edgekd train --precision`), several seeds, on a
   class-balanced subset (a short CPU budget).
3. Inference: the fp32 seed-0 run exported to ONNX + INT8 QDQ, then ONE `edgekd bench` run with
   ONNX Runtime FP32/INT8 and OpenVINO FP32/BF16/INT8 interleaved at batch 1 and 32, top-1 on the
   full test split, the accuracy budget, and bench's recommendation line.
4. The targets of the issue, each met or its distance stated.

    python benchmarks/speed.py [--threads 2] [--batch-size 128] [--rounds 5] [--steps 3] [--epochs 5]
        [--train-per-class 500] [--seeds 0,1,2] [--methods ce] [--tag cpu]

A seconds-long smoke run (figures meaningless): --tiny.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from cifar import ensure_cifar, subset_data  # noqa: E402
from hsakd_peer import ResNet20Aux, build_peer, peer_step  # noqa: E402

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
         "avx_vnni")
TINY = dict(threads=1, batch_size=8, rounds=1, steps=1, epochs=1, train_per_class=10, val_per_class=5,
            test_per_class=10, seeds="0", bench_time=0.05, int8_check_processes=3, batch_sizes="1,4",
            max_accuracy_drop=100.0, max_precision_drop=100.0)


# ---------------------------------------------------------------------------------------------- machine


def machine_facts(threads: int, device: str) -> dict:
    """CPU model and the flags that decide bf16/int8 paths, the resolved `--precision auto`, package versions."""
    from edgekd.train.precision import read_cpu_flags, resolve_precision

    flags = read_cpu_flags()
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for mod in ("onnxruntime", "openvino", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    return {"cpu_model": model, "cpu_count": os.cpu_count(), "threads": threads, "device": device,
            "flags": {f: f in flags for f in FLAGS}, "auto_precision": resolve_precision("auto", torch.device(device)),
            "versions": versions, "loadavg_start": [round(v, 2) for v in os.getloadavg()]}


# ---------------------------------------------------------------------------------------------- 1. steps


def _edgekd_step(method_name: str, branch: str, precision: str, device: torch.device, data):
    """(step function, model): edgekd's own method loss + the trainer's optimizer, autocast for `precision`."""
    from edgekd.config import LSSKDConfig, TrainConfig
    from edgekd.models import build_model
    from edgekd.train.loop import make_optimizer
    from edgekd.train.methods import METHODS
    from edgekd.train.model import build_training_model
    from edgekd.train.precision import autocast

    cfg = TrainConfig(method=method_name, lsskd=LSSKDConfig(branch=branch), precision=precision, lr=0.05)
    model = build_training_model(cfg, build_model("resnet20", num_classes=10)).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    opt = make_optimizer(cfg, model)
    method = METHODS[method_name](cfg, data, device, None)

    def step(batch) -> None:
        with autocast(precision, device):
            loss, _ = method.loss(model, batch, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, model


def _macs() -> dict:
    """Forward MACs per source image of each step (4 rotations for the LSSKD steps and the peer)."""
    from torch import nn

    from edgekd.config import LSSKDConfig, TrainConfig
    from edgekd.models import build_model
    from edgekd.models.profile import count_macs
    from edgekd.train.model import build_training_model

    class Heads(nn.Module):  # every head of a TrainingModel, aux classifiers included
        def __init__(self, tm):
            super().__init__()
            self.tm = tm

        def forward(self, x):
            return self.tm.heads(x)["main"]

    shape = (3, 32, 32)
    out = {"ce": count_macs(build_model("resnet20", num_classes=10), shape)}
    for branch in ("hsakd", "light"):
        tm = build_training_model(TrainConfig(method="lsskd", lsskd=LSSKDConfig(branch=branch)),
                                  build_model("resnet20", num_classes=10))
        out[f"lsskd_{branch}"] = 4 * count_macs(Heads(tm), shape)
    out["hsakd_peer"] = out["hsakd_peer_cl"] = 4 * count_macs(ResNet20Aux(10), shape)
    return out


def measure_steps(args, data, device: torch.device) -> dict:
    """img/s of every step at fp32 and bf16, interleaved in rounds; medians and within-round ratios."""
    from edgekd.data.loader import BatchLoader

    loader = BatchLoader(data.x_train, data.y_train, args.batch_size, data.mean, data.std, train=True,
                         hflip=data.hflip, device=device, channels_last=True)
    batch = next(iter(loader))
    x_nchw = batch.x.contiguous()
    steps = {}
    for prec in ("fp32", "bf16"):
        for name, method, branch in (("ce", "ce", "hsakd"), ("lsskd_hsakd", "lsskd", "hsakd"),
                                     ("lsskd_light", "lsskd", "light")):
            fn, _ = _edgekd_step(method, branch, prec, device, data)
            steps[(name, prec)] = (lambda fn=fn: fn(batch))
        dtype = torch.bfloat16 if prec == "bf16" else None
        for name, cl in (("hsakd_peer", False), ("hsakd_peer_cl", True)):
            model, opt = build_peer(10, channels_last=cl, device=str(device))
            x = batch.x if cl else x_nchw
            steps[(name, prec)] = (lambda m=model, o=opt, x=x, d=dtype: peer_step(m, o, x, batch.y, d))
    for fn in steps.values():  # warm-up: allocator, oneDNN primitives, autocast weight casts
        fn()
        fn()
    samples: dict = {k: [] for k in steps}
    for r in range(args.rounds):
        for key, fn in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            samples[key].append(args.steps * args.batch_size / (time.perf_counter() - t0))
        print(f"steps round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {p} {v[-1]:.0f}" for (n, p), v in
                                                                    samples.items()), flush=True)
    return summarize_steps(samples, args.rounds)


def summarize_steps(samples: dict, rounds: int) -> dict:
    """Median img/s per step and precision; median of within-round ratios (cost vs CE, bf16 speed-up, vs peer)."""
    def ratio(a, b):  # median over rounds of img/s(b) / img/s(a): the cost of a relative to b
        return statistics.median(sb / sa for sa, sb in zip(samples[a], samples[b]))

    names = list(dict.fromkeys(n for n, _ in samples))
    out = {"img_per_s": {f"{n}/{p}": [round(v, 1) for v in s] for (n, p), s in samples.items()},
           "median_img_per_s": {f"{n}/{p}": round(statistics.median(s), 1) for (n, p), s in samples.items()},
           "cost_vs_ce": {}, "bf16_speedup": {}, "vs_peer": {}}
    for p in ("fp32", "bf16"):
        out["cost_vs_ce"][p] = {n: round(ratio((n, p), ("ce", p)), 3) for n in names}
        out["vs_peer"][p] = {peer: round(ratio((peer, p), ("lsskd_hsakd", p)), 3)
                             for peer in ("hsakd_peer", "hsakd_peer_cl")}  # edgekd hsakd img/s / peer img/s
    out["bf16_speedup"] = {n: round(ratio((n, "fp32"), (n, "bf16")), 3) for n in names}  # bf16 img/s / fp32 img/s
    out["bf16_policy_vs_peer_fp32"] = {peer: round(ratio((peer, "fp32"), ("lsskd_hsakd", "bf16")), 3)
                                       for peer in ("hsakd_peer", "hsakd_peer_cl")}
    return out


# ---------------------------------------------------------------------------------------------- 2. top-1


def accuracy_runs(args, data, work: Path) -> dict:
    """Train each method at fp32 and bf16 for the same epochs and seeds (interleaved); top-1 and img/s."""
    from edgekd.config import build_config
    from edgekd.train.loop import train

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for method in args.methods.split(","):
            for prec in ("fp32", "bf16"):
                out = work / f"{method}_{prec}_s{seed}"
                extra = {"lsskd": {"branch": args.lsskd_branch}} if method == "lsskd" else {}
                cfg = build_config(overrides=dict(model="resnet20", method=method, epochs=args.epochs,
                                                  batch_size=args.batch_size, lr=args.lr, warmup_epochs=0.5,
                                                  seed=seed, threads=args.threads, precision=prec, out=str(out),
                                                  progress=False, device=args.device, **extra))
                t0 = time.perf_counter()
                res = train(cfg, data=data, log=lambda m: None)
                ips = [json.loads(ln)["img_per_s"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
                rows.append({"method": method, "precision": prec, "seed": seed, "test_acc": res.test_acc,
                             "best_val_acc": res.best_val_acc, "img_per_s_median": statistics.median(ips),
                             "wall_s": round(time.perf_counter() - t0, 1), "ckpt": str(out / "best.pt")})
                print(f"  train {method} {prec} seed {seed}: test {res.test_acc:.2f}%  "
                      f"{rows[-1]['img_per_s_median']:.0f} img/s", flush=True)
    summary = {}
    for method in args.methods.split(","):
        by = {p: [r for r in rows if r["method"] == method and r["precision"] == p] for p in ("fp32", "bf16")}
        acc = {p: [r["test_acc"] for r in v] for p, v in by.items()}
        pairs = [b - a for a, b in zip(acc["fp32"], acc["bf16"])]
        summary[method] = {
            **{f"{p}_mean": round(statistics.mean(v), 3) for p, v in acc.items()},
            **{f"{p}_std": round(statistics.stdev(v), 3) if len(v) > 1 else 0.0 for p, v in acc.items()},
            "bf16_minus_fp32_mean": round(statistics.mean(pairs), 3),
            "img_per_s_ratio": round(statistics.median(b["img_per_s_median"] / a["img_per_s_median"]
                                                       for a, b in zip(by["fp32"], by["bf16"])), 3)}
    return {"runs": rows, "summary": summary}


# ---------------------------------------------------------------------------------------------- 3. inference


def inference(args, ckpt: str, spec: str, data, work: Path) -> dict:
    """Export `ckpt` (ONNX + INT8), then one interleaved `edgekd bench` run: ORT FP32/INT8, OpenVINO FP32/BF16/INT8."""
    from edgekd.bench.compare import CompareSettings
    from edgekd.bench.latency import LatencySettings
    from edgekd.bench.suite import INT8_CHECK, BenchOptions, run_bench
    from edgekd.export.options import ExportOptions
    from edgekd.export.pipeline import run_export

    exp = work / "export"
    run_export(ExportOptions(ckpt=ckpt, out=str(exp), int8=True, max_accuracy_drop=args.max_accuracy_drop),
               log=lambda m: print("  " + m), data=data)
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    check = CompareSettings(time_s=INT8_CHECK.time_s, threshold=0.0, min_block=1, processes=args.int8_check_processes)
    report_path = work / "bench.json"
    opts = BenchOptions(models=(str(exp / "model.onnx"), str(exp / "model.int8.onnx")), backend="ort,openvino",
                        precision_hint="f32,bf16", threads=args.threads, batch_sizes=sizes, data=spec,
                        latency=LatencySettings(min_time_s=args.bench_time), int8_check=check, json_path=report_path,
                        max_precision_drop=args.max_precision_drop)
    command = (f"edgekd bench {exp}/model.onnx {exp}/model.int8.onnx --backend ort,openvino --precision-hint f32,bf16 "
               f"--threads {args.threads} --batch-sizes {args.batch_sizes} --data {spec} --min-time {args.bench_time}")
    report = run_bench(opts, log=lambda m: print("  " + m, flush=True))
    rows = []
    for a in report["artifacts"]:
        hint = (a.get("runner_settings") or {}).get("precision_hint", "-")
        lat = {r["batch_size"]: r.get("p50_ms") for r in a["latency"]}
        rows.append({"name": a["name"], "backend": a["backend"], "precision": a["precision"], "hint": hint,
                     "top1": (a.get("accuracy") or {}).get("top1"), "p50_ms": lat, "status": a["status"],
                     "budget": a.get("accuracy_budget")})
    return {"command": command, "rows": rows, "recommendations": report["recommendations"],
            "report": str(report_path), "environment": report["environment"]}


# ---------------------------------------------------------------------------------------------- 4. targets


def targets(steps: dict, acc: dict, inf: dict) -> list[dict]:
    """The issue's targets: measured figure, target, met or the distance."""
    def row(what, value, target, met, unit="x"):
        return {"target": what, "measured": value, "goal": target, "met": bool(met), "unit": unit}

    out = []
    for n in ("ce", "lsskd_hsakd", "lsskd_light"):
        v = steps["bf16_speedup"][n]
        out.append(row(f"bf16 training img/s vs fp32, {n}", v, ">= 1.5", v >= 1.5))
    for method, s in acc["summary"].items():
        d = s["bf16_minus_fp32_mean"]
        out.append(row(f"bf16 top-1 minus fp32 top-1, {method} (mean of seeds)", d, ">= -0.3 points", d >= -0.3,
                       "points"))
    for p in ("fp32", "bf16"):
        v = steps["vs_peer"][p]["hsakd_peer"]
        out.append(row(f"edgekd LSSKD hsakd step vs HSAKD's own (NCHW as published), {p}", v, ">= 1.5", v >= 1.5))
        v = steps["vs_peer"][p]["hsakd_peer_cl"]
        out.append(row(f"edgekd LSSKD hsakd step vs HSAKD's own in channels-last, {p}", v, ">= 1.5", v >= 1.5))
        v = steps["cost_vs_ce"][p]["lsskd_light"]
        out.append(row(f"LSSKD light step cost vs CE, {p}", v, "<= 4.5", v <= 4.5))
    for rec in inf.get("recommendations", []):
        for bs, b in rec["by_batch"].items():
            goal = 3.0 if int(bs) >= 32 else 1.6
            v = round(b["speedup"], 3) if b["speedup"] else None
            out.append(row(f"best {rec['device']} artifact vs ONNX Runtime FP32 at batch {bs} ({b['name']})", v,
                           f">= {goal}", v is not None and v >= goal))
    return out


def write_results(result: dict, results_dir: Path, tag: str) -> Path:
    from edgekd.io import write_json_atomic, write_text_atomic

    results_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(results_dir / f"speed_{tag}.json", result)
    md = results_dir / f"speed_{tag}.md"
    write_text_atomic(md, render_markdown(result))
    return md


def render_markdown(r: dict) -> str:
    m, st, acc, inf = r["machine"], r["steps"], r["accuracy"], r["inference"]
    flags = ", ".join(f for f, on in m["flags"].items() if on) or "none of " + ", ".join(m["flags"])
    lines = [f"# Speed on this CPU: bf16 training, LSSKD cost, OpenVINO vs ONNX Runtime ({r['tag']})", "",
             f"{m['cpu_model']}, {m['cpu_count']} CPUs, {m['threads']} threads, device {m['device']}; CPU flags: "
             f"{flags}; `--precision auto` resolves to **{m['auto_precision']}**. Versions: "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + f". Load average: start "
             f"{m['loadavg_start']}, end {r['loadavg_end']}.", "",
             f"Command: `{r['command']}`", "", "## Targets", "", "| target | measured | goal | met |", "|---|---:|---|---|"]
    lines += [f"| {t['target']} | {t['measured']}{'' if t['unit'] == 'x' else ' ' + t['unit']} | {t['goal']} | "
              f"{'yes' if t['met'] else '**no**'} |" for t in r["targets"]]
    lines += ["", f"## 1. Training steps (resnet20, batch {r['batch_size']}, {r['rounds']} interleaved rounds of "
              f"{r['steps_per_round']} steps, medians)", "",
              "| step | fp32 img/s | bf16 img/s | bf16 speed-up | cost vs CE fp32 | cost vs CE bf16 | MACs/image | "
              "MAC floor vs CE |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n in st["bf16_speedup"]:
        lines.append(f"| {n} | {st['median_img_per_s'][n + '/fp32']:.0f} | {st['median_img_per_s'][n + '/bf16']:.0f} | "
                     f"{st['bf16_speedup'][n]:.2f}x | {st['cost_vs_ce']['fp32'][n]:.2f}x | "
                     f"{st['cost_vs_ce']['bf16'][n]:.2f}x | {st['macs'][n] / 1e6:.0f}M | "
                     f"{st['macs'][n] / st['macs']['ce']:.2f}x |")
    lines += ["", "edgekd's `hsakd` step against HSAKD's own step (img/s ratio, same round): "
              + "; ".join(f"{p}: {v['hsakd_peer']:.2f}x the NCHW peer, {v['hsakd_peer_cl']:.2f}x the channels-last peer"
                          for p, v in st["vs_peer"].items())
              + ". edgekd at bf16 (`--precision auto` here) vs the peer at fp32: "
              + ", ".join(f"{k} {v:.2f}x" for k, v in st["bf16_policy_vs_peer_fp32"].items()) + ".", "",
              "The MAC floor is the forward multiply-accumulates per source image (4 rotations for LSSKD and the "
              "peer): the hsakd layout re-runs fresh copies of the later stages on all 4N rows, so its floor is "
              "well above 4x CE; `light` adds one conv block per aux stage.", "",
              f"## 2. Top-1 after {r['epochs']} epochs, fp32 vs bf16 ({r['train_per_class']} training images per "
              f"class, full test split of the subset: {r['test_images']} images)", "",
              "| method | fp32 top-1 | bf16 top-1 | bf16 - fp32 | bf16/fp32 img/s |", "|---|---:|---:|---:|---:|"]
    for method, s in acc["summary"].items():
        lines.append(f"| {method} | {s['fp32_mean']:.2f} ± {s['fp32_std']:.2f} | {s['bf16_mean']:.2f} ± "
                     f"{s['bf16_std']:.2f} | {s['bf16_minus_fp32_mean']:+.2f} | {s['img_per_s_ratio']:.2f}x |")
    lines += ["", "Per run: " + "; ".join(f"{x['method']} {x['precision']} seed {x['seed']} {x['test_acc']:.2f}%"
                                         for x in acc["runs"]), "",
              "## 3. Inference: one interleaved `edgekd bench` run (fp32 seed-0 model, ONNX + INT8 QDQ)", "",
              f"Command: `{inf['command']}`", "",
              "| entry | backend | precision | hint | top-1 | " + " | ".join(f"p50 ms b{b}" for b in r["batch_sizes"])
              + " | status |", "|---|---|---|---|---:|" + "---:|" * len(r["batch_sizes"]) + "---|"]
    for row in inf["rows"]:
        top1 = f"{row['top1']:.2f}" if row["top1"] is not None else "-"
        lat = " | ".join(f"{row['p50_ms'].get(b, 0) or 0:.3f}" for b in r["batch_sizes"])
        lines.append(f"| {Path(row['name'].split(' [')[0]).name}{' [' + row['name'].split(' [')[1] if ' [' in row['name'] else ''}"
                     f" | {row['backend']} | {row['precision']} | {row['hint']} | {top1} | {lat} | {row['status']} |")
    lines += [""] + [rec["line"] for rec in inf["recommendations"]] + [""]
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the step measurement")
    ap.add_argument("--steps", type=int, default=3, help="steps per step kind per round")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--val-per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=1000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default="ce", help="methods trained fp32 vs bf16 for top-1 (ce,lsskd)")
    ap.add_argument("--lsskd-branch", default="light")
    ap.add_argument("--batch-sizes", default="1,32", help="bench batch sizes")
    ap.add_argument("--bench-time", type=float, default=2.0, help="timed seconds per entry and batch size")
    ap.add_argument("--int8-check-processes", type=int, default=6)
    ap.add_argument("--max-accuracy-drop", type=float, default=1.0, help="the export's INT8 budget, points")
    ap.add_argument("--max-precision-drop", type=float, default=1.0, help="bench's INT8/bf16 budget, points")
    ap.add_argument("--tag", default="cpu")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--tiny", action="store_true", help="seconds-long smoke settings (figures meaningless)")
    args = ap.parse_args(argv)
    if args.tiny:
        for k, v in TINY.items():
            setattr(args, k, v)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    from edgekd.data import load_dataset

    spec = ensure_cifar()
    full = load_dataset(spec, 0.1, 0)  # decoded once, then read from the on-disk cache
    data = subset_data(full, args.train_per_class, args.val_per_class, args.test_per_class)
    result = {"tag": args.tag, "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine_facts(args.threads, args.device), "batch_size": args.batch_size,
              "rounds": args.rounds, "steps_per_round": args.steps, "epochs": args.epochs,
              "train_per_class": args.train_per_class, "test_images": int(len(data.y_test)),
              "batch_sizes": [int(b) for b in args.batch_sizes.split(",")]}
    print("1/3 training steps, fp32 vs bf16, interleaved", flush=True)
    result["steps"] = {**measure_steps(args, data, device), "macs": _macs()}
    with tempfile.TemporaryDirectory(prefix="edgekd-speed-") as tmp:
        work = Path(tmp)
        print("2/3 top-1 after the same epochs, fp32 vs bf16", flush=True)
        result["accuracy"] = accuracy_runs(args, data, work)
        print("3/3 inference: ONNX Runtime vs OpenVINO in one edgekd bench run", flush=True)
        ckpt = next(x["ckpt"] for x in result["accuracy"]["runs"] if x["precision"] == "fp32")
        result["inference"] = inference(args, ckpt, spec, data, work)
        result["inference"]["report_json"] = json.loads(Path(result["inference"].pop("report")).read_text())
    result["targets"] = targets(result["steps"], result["accuracy"], result["inference"])
    result["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    md = write_results(result, args.results, args.tag)
    print(md.read_text())
    return result


if __name__ == "__main__":
    main()
