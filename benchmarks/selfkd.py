"""Self-distillation benchmark on real CIFAR-10: CE vs PS-KD vs LSSKD (and Hinton KD).

Same student, same epochs, same batches for every method, several seeds; reports mean and std
of test top-1 and each method's training throughput relative to CE, measured in the same run
(methods interleaved within every seed, so machine load hits them alike; medians of per-seed ratios).

The issue's budget (resnet20 / resnet8x4 on the full training set for a full schedule) does not
fit a shared 2-core CPU: `--train-per-class`, `--epochs` and `--model` choose a reduced,
class-balanced budget that is written into the results. KD's teacher is an edgekd checkpoint
(`--teacher`, default the CE resnet20 run at /tmp/edgekd-runs/cifar_resnet20_ce/best.pt when
present); without one, a teacher is trained here on the same subset and reported as such.

    python benchmarks/selfkd.py [--model resnet8] [--epochs 5] [--train-per-class 300] [--seeds 0,1,2] [--tag cpu]

Writes benchmarks/results/selfkd_<tag>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from cifar import ensure_cifar, machine_line, subset_data  # noqa: E402

DEFAULT_TEACHER = Path("/tmp/edgekd-runs/cifar_resnet20_ce/best.pt")
RESULTS = ROOT / "benchmarks" / "results"


def run_one(args, data, method: str, seed: int, work: Path, teacher: str | None = None, **extra) -> dict:
    """Train one student; return test top-1 (and per head), best val and per-epoch throughput."""
    from edgekd.config import build_config
    from edgekd.train.loop import train

    out = work / f"{method}_s{seed}"
    overrides = dict(model=extra.pop("model", args.model), method=method, epochs=extra.pop("epochs", args.epochs),
                     batch_size=args.batch_size, lr=args.lr, warmup_epochs=args.warmup_epochs, seed=seed,
                     threads=args.threads, out=str(out), progress=False, teacher=teacher, device=args.device, **extra)
    cfg = build_config(overrides=overrides)
    t0 = time.perf_counter()
    res = train(cfg, data=data, log=lambda s: None)
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ips = [r["img_per_s"] for r in records]
    row = {"method": method, "seed": seed, "test_acc": res.test_acc, "best_val_acc": res.best_val_acc,
           "img_per_s_median": statistics.median(ips), "img_per_s": ips, "wall_s": round(wall, 1),
           "heads": {k[len("test_acc_"):]: v for k, v in res.summary.items() if k.startswith("test_acc_")}}
    print(f"  {method:6s} seed {seed}: test {res.test_acc:6.2f}%  val {res.best_val_acc:6.2f}%  "
          f"{row['img_per_s_median']:6.1f} img/s  {wall:6.1f} s  heads {row['heads']}", flush=True)
    return row


def resolve_teacher(args, data, work: Path) -> dict:
    """Use the given/default edgekd teacher checkpoint, else train one on the subset."""
    from edgekd.train.checkpoint import load_checkpoint, save_checkpoint

    path = Path(args.teacher) if args.teacher else DEFAULT_TEACHER
    if path.is_file():
        ck = load_checkpoint(path)
        frozen = work / "teacher.pt"  # a snapshot: the source run may still be writing best.pt
        save_checkpoint(frozen, {k: v for k, v in ck.items() if k not in ("format", "format_version", "edgekd_version", "path")})
        return {"path": str(frozen), "source": str(path), "model": ck["model_name"], "epoch": ck.get("epoch"),
                "val_acc": ck.get("val_acc"), "trained_here": False}
    print(f"no teacher at {path}: training {args.teacher_model} CE for {args.teacher_epochs} epochs on the subset", flush=True)
    row = run_one(args, data, "ce", 1000, work / "teacher", model=args.teacher_model, epochs=args.teacher_epochs)
    return {"path": str(work / "teacher" / "ce_s1000" / "best.pt"), "source": "trained here on the same subset",
            "model": args.teacher_model, "epoch": args.teacher_epochs, "val_acc": row["best_val_acc"],
            "test_acc": row["test_acc"], "wall_s": row["wall_s"], "trained_here": True}


def summarize(rows: list[dict], methods: list[str]) -> dict:
    out = {}
    ce_ips = {r["seed"]: r["img_per_s_median"] for r in rows if r["method"] == "ce"}
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        accs = [r["test_acc"] for r in rs]
        ratios = [r["img_per_s_median"] / ce_ips[r["seed"]] for r in rs if r["seed"] in ce_ips]
        out[m] = {"test_acc_mean": round(statistics.mean(accs), 2),
                  "test_acc_std": round(statistics.stdev(accs), 2) if len(accs) > 1 else 0.0,
                  "test_accs": accs, "img_per_s_median": round(statistics.median(r["img_per_s_median"] for r in rs), 1),
                  "throughput_vs_ce": round(statistics.median(ratios), 3) if ratios else None,
                  "wall_s_mean": round(statistics.mean(r["wall_s"] for r in rs), 1)}
        heads = sorted({h for r in rs for h in r["heads"] if h != "main"})
        for h in heads:
            vals = [r["heads"][h] for r in rs if h in r["heads"]]
            out[m][f"test_acc_{h}_mean"] = round(statistics.mean(vals), 2)
    return out


def teacher_line(t) -> str:
    if not t:
        return "No KD run (no teacher)."
    return (f"KD teacher: `{t['model']}` ({t['source']}"
            + (f", epoch {t['epoch']}, val {t['val_acc']:.2f}%" if t.get("val_acc") is not None else "")
            + (f", test {t['test_acc']:.2f}%" if t.get("test_acc") is not None else "") + ").")


def write_markdown(path: Path, result: dict) -> None:
    b, s = result["budget"], result["summary"]
    lines = [f"# Self-distillation on CIFAR-10 ({result['tag']})", "",
             ("**Reduced budget** (a shared 2-core CPU; the issue's full budget does not fit): " if b.get("reduced", True)
              else f"Budget on {b.get('device', 'cpu')}: ") + f"student `{b['model']}`, "
             f"{b['train_images']} class-balanced training images ({b['train_per_class']}/class), {b['epochs']} epochs, "
             f"batch {b['batch_size']}, SGD lr {b['lr']} cosine, {len(result['seeds'])} seeds; validation "
             f"{b['val_images']} images (best epoch kept), test {b['test_images']} images of the CIFAR-10 test split.", "",
             teacher_line(result.get("teacher")), "",
             "| method | test top-1 mean | std | per seed | img/s (median) | throughput vs CE | mean wall s |",
             "|---|---|---|---|---|---|---|"]
    for m, v in s.items():
        lines.append(f"| {m} | {v['test_acc_mean']:.2f} | {v['test_acc_std']:.2f} | "
                     f"{', '.join(f'{a:.2f}' for a in v['test_accs'])} | {v['img_per_s_median']:.1f} | "
                     + (f"{v['throughput_vs_ce']:.2f}x" if v['throughput_vs_ce'] is not None else "-") + f" | {v['wall_s_mean']:.0f} |")
    aux = {m: {k: v for k, v in d.items() if k.startswith("test_acc_aux")} for m, d in s.items()}
    for m, a in aux.items():
        if a:
            lines += ["", f"{m} auxiliary heads (test top-1, rotation logits summed): "
                      + ", ".join(f"{k[len('test_acc_'):-len('_mean')]} {v:.2f}%" for k, v in a.items())]
    lines += ["", "## Verdict", "", result["verdict"], "",
              f"Command: `{result['command']}`  ", f"Machine: {result['machine']}; total {result['total_s']:.0f} s."]
    path.write_text("\n".join(lines) + "\n")


def build_result(args, rows: list[dict], methods: list[str], seeds: list[int], teacher, data_sizes: dict,
                 total_s: float, command: str, machine: str) -> dict:
    summary = summarize(rows, methods)
    verdict = []
    if "lsskd" in summary and "ce" in summary:
        d = summary["lsskd"]["test_acc_mean"] - summary["ce"]["test_acc_mean"]
        verdict.append(f"LSSKD vs CE: {d:+.2f} points (target >= +1.0: {'met' if d >= 1.0 else 'not met'}).")
    if "lsskd" in summary and "pskd" in summary:
        d = summary["lsskd"]["test_acc_mean"] - summary["pskd"]["test_acc_mean"]
        verdict.append(f"LSSKD vs PS-KD: {d:+.2f} points (target >= +0.5: {'met' if d >= 0.5 else 'not met'}).")
    if "lsskd" in summary and summary["lsskd"]["throughput_vs_ce"] is not None:
        verdict.append(f"LSSKD trains at {summary['lsskd']['throughput_vs_ce']:.2f}x CE's images/s "
                       "(4 rotations per image through the backbone plus the auxiliary branches).")
    return {
        "tag": args.tag, "command": command, "machine": machine,
        "budget": {"model": args.model, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                   "train_per_class": args.train_per_class, **data_sizes,
                   "reduced": data_sizes["train_images"] < 45000, "device": args.device},
        "seeds": seeds, "teacher": teacher, "runs": rows, "summary": summary, "verdict": " ".join(verdict),
        "total_s": round(total_s, 1),
    }


def write_result(result: dict) -> None:
    from edgekd.io import write_json_atomic

    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / f"selfkd_{result['tag']}.json", result)
    write_markdown(RESULTS / f"selfkd_{result['tag']}.md", result)


def merge(args, tags: list[str]) -> None:
    """Combine the runs of several partial results (e.g. one process per seed on a GPU) into one."""
    parts = [json.loads((RESULTS / f"selfkd_{t}.json").read_text()) for t in tags]
    rows = [r for p in parts for r in p["runs"]]
    methods = [m for m in ("ce", "pskd", "lsskd", "kd") if any(r["method"] == m for r in rows)]
    seeds = sorted({r["seed"] for r in rows})
    teacher = next((p["teacher"] for p in parts if p.get("teacher")), None)
    first = parts[0]
    for k in ("model", "epochs", "batch_size", "lr", "train_per_class"):
        setattr(args, k, first["budget"][k])
    args.device = first["budget"].get("device", "cpu")
    sizes = {k: first["budget"][k] for k in ("train_images", "val_images", "test_images")}
    result = build_result(args, rows, methods, seeds, teacher, sizes, max(p["total_s"] for p in parts),
                          " ; ".join(p["command"] for p in parts),
                          first["machine"] + f"; {len(parts)} processes sharing it: " + ", ".join(tags))
    write_result(result)
    print(json.dumps(result["summary"], indent=1))
    print(result["verdict"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet8")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=0.5)
    p.add_argument("--train-per-class", type=int, default=300)
    p.add_argument("--val-per-class", type=int, default=50)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default="ce,pskd,lsskd,kd")
    p.add_argument("--teacher", default=None)
    p.add_argument("--teacher-model", default="resnet8")
    p.add_argument("--teacher-epochs", type=int, default=9)
    p.add_argument("--teacher-only", default=None, metavar="PATH",
                   help="train the KD teacher on the subset, copy its best.pt to PATH and exit")
    p.add_argument("--merge", default=None, metavar="TAG,TAG", help="combine earlier results into --tag and exit")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", default="cpu")
    args = p.parse_args()
    if args.merge is not None:
        if not args.merge.strip():
            sys.exit("--merge: no partial results to merge")
        return merge(args, args.merge.split(","))
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    from edgekd.data import load_dataset

    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    data = subset_data(load_dataset(ensure_cifar(), 0.1, 0), args.train_per_class, args.val_per_class, args.test_per_class)
    sizes = {"train_images": int(len(data.y_train)), "val_images": int(len(data.y_val)), "test_images": int(len(data.y_test))}
    print(f"data: {sizes}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="edgekd-selfkd-"))
    if args.teacher_only:
        args.teacher = "/nonexistent"
        teacher = resolve_teacher(args, data, work)
        Path(args.teacher_only).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(teacher["path"], args.teacher_only)
        Path(args.teacher_only + ".json").write_text(json.dumps({**teacher, "path": args.teacher_only}))
        print(f"teacher written to {args.teacher_only}: {teacher}")
        return
    teacher = None  # resolved at the first KD run (a teacher being trained elsewhere may be ready by then)
    command = "python benchmarks/selfkd.py " + " ".join(sys.argv[1:])
    machine = machine_line(args.device, args.threads)
    rows = []
    for seed in seeds:  # methods interleaved inside each seed: throughput ratios see the same machine load
        for m in methods:
            if m == "kd" and teacher is None:
                teacher = resolve_teacher(args, data, work)
                side = Path(str(args.teacher) + ".json")
                if side.is_file():  # written by --teacher-only: keep its training figures
                    teacher.update({k: v for k, v in json.loads(side.read_text()).items() if k not in ("path",)})
                print(f"teacher: {teacher}", flush=True)
            rows.append(run_one(args, data, m, seed, work, teacher=teacher["path"] if m == "kd" else None))
            # written after every run: a run cut short (e.g. at a time limit) still leaves its figures
            write_result(build_result(args, rows, [x for x in methods if any(r["method"] == x for r in rows)], seeds,
                                      teacher, sizes, time.perf_counter() - t_start, command, machine))
    result = json.loads((RESULTS / f"selfkd_{args.tag}.json").read_text())
    print(json.dumps(result["summary"], indent=1))
    print(result["verdict"])
    print(f"wrote {RESULTS / f'selfkd_{args.tag}.json'} and .md ({result['total_s']:.0f} s)")


if __name__ == "__main__":
    main()
