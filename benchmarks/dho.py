"""DHO benchmark on real CIFAR-10: CE-only vs single-head KD vs DHO at 10% and 1% labels.

Reduced budget for a 2-core CPU machine (documented in the output): a class-balanced subset of
the CIFAR-10 training split as the training pool, a class-balanced validation subset (for model
selection and DHO's a/b search) and test subset; a small student for a few epochs; 3 seeds.
Every student run takes the same number of optimizer steps on the same batch size:

- `ce`: CE on the labeled part only (dho with kd_weight=0, unlabeled_ratio=0: no teacher);
- `kd`: single-head KD, CE (labeled) + KD (labeled + unlabeled) on the student's own head;
- `dho`: dual head, CE head + KD head, probability mix searched on validation.

Also times epochs, interleaved in one process (same steps, the order rotated every round): CE-only,
DHO with the online teacher (`dho.teacher_cache=none`, the default), with the clean-image cache
(`clean`) and with the cache of fixed augmented views (`views`, `--view-rounds` rounds, view seed 0:
built once, before the first timed run, and timed separately). Writes
benchmarks/results/dho_<tag>.json and .md.

    python benchmarks/dho.py [--teacher CKPT] [--epochs 5] [--seeds 0,1,2] [--tag cpu]
    python benchmarks/dho.py --timing-only [--timing-rounds 3] [--timing-steps 15] [--view-rounds 4] --tag cpu-timing
"""

from __future__ import annotations

import argparse
import json
import os
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

RESULTS = ROOT / "benchmarks" / "results"


METHODS = {
    "ce": dict(single_head=True, ce_weight=1.0, kd_weight=0.0, unlabeled_ratio=0),
    "kd": dict(single_head=True),
    "dho": dict(),
}


def run_student(args, data, teacher: str, method: str, fraction: float, seed: int, work: Path, **extra) -> dict:
    from edgekd.config import build_config
    from edgekd.train.loop import train

    out = work / f"{method}-{fraction}-{seed}-{time.monotonic_ns()}"
    cfg = build_config(overrides=dict(
        model=args.student, method="dho", teacher=teacher if method != "ce" else None, epochs=extra.pop("epochs", args.epochs),
        batch_size=args.batch_size, lr=args.lr, warmup_epochs=0.5, seed=seed, out=str(out), progress=False,
        threads=args.threads, device=args.device, dho={"labeled_fraction": fraction, **METHODS[method], **extra.pop("dho", {})}, **extra))
    lines: list[str] = []
    t0 = time.perf_counter()
    res = train(cfg, data, log=lines.append)
    wall = time.perf_counter() - t0
    state = torch.load(out / "best.pt", weights_only=True)["model_state"]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"method": method, "fraction": fraction, "seed": seed, "test_acc": res.summary["test_acc"],
            "test_acc_ce": res.summary.get("test_acc_main"), "test_acc_kd": res.summary.get("test_acc_kd"),
            "best_val_acc": res.best_val_acc, "alpha": float(state["mix_alpha"]) if method == "dho" else None,
            "beta": float(state["mix_beta"]) if method == "dho" else None, "wall_s": round(wall, 1),
            "epoch_time_s": [m["epoch_time_s"] for m in metrics]}


def timed_variants(view_rounds: int) -> tuple:
    """(name, method of run_student, dho overrides) of the epoch-time comparison."""
    return (("ce_only", "ce", {}), ("dho_online", "dho", {"teacher_cache": "none"}),
            ("dho_clean", "dho", {"teacher_cache": "clean"}),
            ("dho_views", "dho", {"teacher_cache": "views", "view_rounds": view_rounds, "view_seed": 0}))


def time_view_cache(data, teacher: str, view_rounds: int, device: str) -> float:
    """Seconds to build the view cache the timed `dho_views` runs use (R teacher passes over the pool)."""
    from edgekd.data.views import ViewPlan
    from edgekd.train.teachers import load_teacher, view_logits

    dev = torch.device("cuda" if device in ("cuda", "auto") and torch.cuda.is_available() else "cpu")
    t = load_teacher(teacher, data, dev)
    t0 = time.perf_counter()
    view_logits(t, data, ViewPlan.for_data(data, view_rounds, 0), range(view_rounds), device=dev)
    return time.perf_counter() - t0


def time_epochs(args, data, teacher: str, work: Path) -> dict:
    """Median epoch time of CE-only and DHO with each teacher source (online, clean cache, view cache).

    Interleaved rounds, the order rotated every round; the timed epoch is each run's second (caches,
    allocator and threads warm). Both caches are built before the first round (clean in main(), views
    here, timed), so the epoch times hold only what every later epoch costs.
    """
    variants = timed_variants(args.view_rounds)
    views_s = time_view_cache(data, teacher, args.view_rounds, args.device)
    times: dict[str, list] = {name: [] for name, _, _ in variants}
    for r in range(args.timing_rounds):
        for name, method, dho in variants[r % len(variants):] + variants[:r % len(variants)]:
            row = run_student(args, data, teacher, method, 0.1, 100 + r, work, epochs=2,
                              max_steps_per_epoch=args.timing_steps, dho=dict(dho))
            times[name].append(row["epoch_time_s"][-1])
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {f"{k[4:]}_over_ce": round(med[k] / med["ce_only"], 3) for k in med if k != "ce_only"}
    return {"steps_per_epoch": args.timing_steps, "rounds": args.timing_rounds, "view_rounds": args.view_rounds,
            "views_cache_build_s": round(views_s, 2), "epoch_time_s": times, "median_s": med, **ratios}


def train_teacher(args, data, work: Path) -> str:
    from edgekd.config import build_config
    from edgekd.train.loop import train

    out = work / "teacher"
    cfg = build_config(overrides=dict(model=args.teacher_model, epochs=args.teacher_epochs, batch_size=args.batch_size,
                                      lr=args.lr, warmup_epochs=0.5, out=str(out), progress=False, threads=args.threads,
                                      device=args.device))
    train(cfg, data, log=print)
    return str(out / "best.pt")


def summarize(rows: list[dict]) -> dict:
    table = {}
    for f in sorted({r["fraction"] for r in rows}, reverse=True):
        for m in METHODS:
            accs = [r["test_acc"] for r in rows if r["fraction"] == f and r["method"] == m]
            if accs:
                table[f"{m}@{f}"] = {"mean": round(statistics.mean(accs), 2),
                                     "std": round(statistics.stdev(accs), 2) if len(accs) > 1 else 0.0, "n": len(accs)}
    return table


def write_markdown(path: Path, result: dict) -> None:
    s, b = result["summary"], result["budget"]
    lines = [f"# DHO benchmark ({result['tag']})", "",
             f"CIFAR-10 JPEG folder, class-balanced subsets: training pool {b['pool_per_class']}/class "
             f"({b['pool_per_class'] * 10} images), validation {b['val_per_class']}/class, test {b['test_per_class']}/class. "
             f"Student {b['student']}, {b['epochs']} epochs x {b['steps_per_epoch']} steps, batch {b['batch_size']}, "
             f"lr {b['lr']} cosine; teacher `{result['teacher']['source']}` (test top-1 on the subset "
             f"{result['teacher']['test_acc']:.2f}%). Seeds {b['seeds']}. {result['machine']}.", "",
             "| labels | CE only (labeled) | single-head KD | DHO (mix) | DHO CE head | DHO KD head | DHO - KD |",
             "|---|---|---|---|---|---|---|"]
    rows = result["runs"]
    for f in sorted({r["fraction"] for r in rows}, reverse=True):
        def cell(m: str, f: float = f) -> str:
            return f"{s[f'{m}@{f}']['mean']:.2f} ± {s[f'{m}@{f}']['std']:.2f}" if f"{m}@{f}" in s else "-"

        d = [r for r in rows if r["fraction"] == f and r["method"] == "dho"]
        ce_h = statistics.mean(r["test_acc_ce"] for r in d) if d else float("nan")
        kd_h = statistics.mean(r["test_acc_kd"] for r in d) if d else float("nan")
        gap = s[f"dho@{f}"]["mean"] - s[f"kd@{f}"]["mean"] if f"dho@{f}" in s and f"kd@{f}" in s else float("nan")
        lines.append(f"| {f:.0%} | {cell('ce')} | {cell('kd')} | {cell('dho')} | {ce_h:.2f} | {kd_h:.2f} | {gap:+.2f} |")
    lines += ["", "Top-1 % on the test subset, mean ± std over seeds. DHO's a/b per run: " +
              ", ".join(f"{r['fraction']:.0%}/s{r['seed']}: a={r['alpha']:g} b={r['beta']:g}" for r in rows if r["method"] == "dho"), ""]
    t = result.get("timing")
    if t:
        lines += timing_markdown(t, result["teacher"])
    lines += [f"Command: `{result['command']}`", ""]
    from edgekd.io import write_text_atomic

    write_text_atomic(path, "\n".join(lines))


def timing_markdown(t: dict, teacher: dict) -> list[str]:
    m = t["median_s"]
    return ["## Epoch time (10% labels, interleaved rounds, median)", "",
            "| teacher targets | epoch | vs CE-only |", "|---|---|---|",
            f"| CE only (no teacher) | {m['ce_only']:.2f} s | 1.00x |",
            f"| online: teacher on every augmented batch (default) | {m['dho_online']:.2f} s | {t['online_over_ce']:.2f}x |",
            f"| clean cache: logits on un-augmented images | {m['dho_clean']:.2f} s | {t['clean_over_ce']:.2f}x |",
            f"| view cache: logits on {t['view_rounds']} fixed augmented views per image | {m['dho_views']:.2f} s "
            f"| {t['views_over_ce']:.2f}x |", "",
            f"{t['steps_per_epoch']} steps per timed epoch, {t['rounds']} rounds. Built once before the first epoch and "
            f"reused by every later run: the clean cache (one teacher pass over the pool, "
            f"{teacher.get('cache_build_s', float('nan')):.1f} s), the view cache ({t['view_rounds']} passes, "
            f"{t['views_cache_build_s']:.1f} s).", ""]


def build_result(args, rows, timing, teacher_info, command, machine, total_s, steps) -> dict:
    return {
        "tag": args.tag, "command": command, "machine": machine,
        "budget": {"student": args.student, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                   "steps_per_epoch": steps, "pool_per_class": args.pool_per_class, "val_per_class": args.val_per_class,
                   "test_per_class": args.test_per_class, "seeds": args.seeds, "fractions": args.fractions,
                   "device": args.device},
        "teacher": teacher_info, "summary": summarize(rows), "runs": rows, "timing": timing,
        "total_wall_s": round(total_s, 1),
    }


def write_result(result: dict) -> Path:
    from edgekd.io import write_json_atomic

    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / f"dho_{result['tag']}.json", result)
    md = RESULTS / f"dho_{result['tag']}.md"
    write_markdown(md, result)
    return md


def merge(args, tags: list[str]) -> None:
    """Combine partial results (e.g. one process per labeled fraction and seed on a GPU)."""
    parts = [json.loads((RESULTS / f"dho_{t}.json").read_text()) for t in tags]
    first = parts[0]
    b = first["budget"]
    for k in ("student", "epochs", "batch_size", "lr", "pool_per_class", "val_per_class", "test_per_class", "device"):
        setattr(args, k, b[k])
    rows = [r for p in parts for r in p["runs"]]
    args.seeds = ",".join(str(s) for s in sorted({r["seed"] for r in rows}))
    args.fractions = ",".join(str(f) for f in sorted({r["fraction"] for r in rows}, reverse=True))
    timing = next((p["timing"] for p in parts if p.get("timing")), None)
    result = build_result(args, rows, timing, first["teacher"], " ; ".join(p["command"] for p in parts),
                          first["machine"] + f"; {len(parts)} processes sharing it: " + ", ".join(tags),
                          max(p["total_wall_s"] for p in parts), b["steps_per_epoch"])
    print(write_result(result).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="/tmp/edgekd-runs/cifar_resnet20_ce/best.pt",
                    help="teacher checkpoint; trained here on the pool's full labels when absent")
    ap.add_argument("--teacher-model", default="resnet14")
    ap.add_argument("--teacher-epochs", type=int, default=8)
    ap.add_argument("--teacher-only", default=None, metavar="PATH",
                    help="train the teacher on the pool's full labels, copy its best.pt to PATH and exit")
    ap.add_argument("--student", default="resnet8")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--pool-per-class", type=int, default=400)
    ap.add_argument("--val-per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--fractions", default="0.1,0.01")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default="ce,kd,dho")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timing-rounds", type=int, default=3)
    ap.add_argument("--timing-steps", type=int, default=15)
    ap.add_argument("--view-rounds", type=int, default=4, help="dho.view_rounds of the timed view-cache runs")
    ap.add_argument("--timing-only", action="store_true", help="only the epoch-time comparison (no accuracy runs)")
    ap.add_argument("--merge", default=None, metavar="TAG,TAG", help="combine earlier results into --tag and exit")
    ap.add_argument("--tag", default="cpu")
    ap.add_argument("--work", default=None, help="scratch directory for the runs (default: a temp dir)")
    args = ap.parse_args()
    if args.merge is not None:
        if not args.merge.strip():
            sys.exit("--merge: no partial results to merge")
        return merge(args, args.merge.split(","))
    torch.set_num_threads(args.threads)
    os.environ.setdefault("EDGEKD_CACHE", str(Path(tempfile.gettempdir()) / "edgekd-bench-cache"))

    from edgekd.data import load_dataset
    from edgekd.data.loader import BatchLoader
    from edgekd.train.checkpoint import load_checkpoint, rebuild_training_model
    from edgekd.train.evaluate import evaluate
    from edgekd.train.evaluate import summarize as summarize_eval
    from edgekd.train.teachers import load_teacher, teacher_logits

    t_start = time.perf_counter()
    full = load_dataset(ensure_cifar(), 0.1, 0)
    data = subset_data(full, args.pool_per_class, args.val_per_class, args.test_per_class, tag="pool")
    work = Path(args.work or tempfile.mkdtemp(prefix="edgekd-dho-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.teacher_only or not Path(args.teacher).is_file():
        print(f"training teacher {args.teacher_model} on the pool's full labels")
        t0 = time.perf_counter()
        teacher = train_teacher(args, data, work)
        source = (f"{args.teacher_model}, {args.teacher_epochs} epochs on the pool's {len(data.y_train)} labeled images "
                  f"(trained here in {time.perf_counter() - t0:.0f} s)")
        if args.teacher_only:
            Path(args.teacher_only).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(teacher, args.teacher_only)
            Path(args.teacher_only + ".json").write_text(json.dumps({"source": source}))
            print(f"teacher written to {args.teacher_only}")
            return
    else:
        side = Path(args.teacher + ".json")
        teacher = args.teacher
        source = f"{args.teacher} (given)"
        if side.is_file():  # written by a --teacher-only run (this script's or selfkd.py's)
            info = json.loads(side.read_text())
            source = info["source"] if "model" not in info else (
                f"{info['model']}, CE, {info.get('epoch')} epochs on the full CIFAR-10 train split, trained by edgekd "
                f"(best val {info.get('val_acc', float('nan')):.2f}%)")
    ck = load_checkpoint(teacher)
    dev = torch.device("cuda" if args.device in ("cuda", "auto") and torch.cuda.is_available() else "cpu")
    tmodel = rebuild_training_model(ck, dev)
    test_loader = BatchLoader(data.x_test, data.y_test, 500, mean=ck["mean"], std=ck["std"], train=False, device=dev)
    t_acc = summarize_eval(evaluate(tmodel, test_loader, data.num_classes), "test")["test_acc"]
    t0 = time.perf_counter()
    # fills the cache once for every run below (on the GPU when there is one: a CPU pass of a
    # resnet32x4 over 45k images takes minutes)
    teacher_logits(load_teacher(teacher, data, dev), data, "train", device=dev)
    cache_s = time.perf_counter() - t0
    print(f"teacher: {source}; test top-1 on the subset {t_acc:.2f}%; cache built in {cache_s:.1f} s")
    teacher_info = {"source": source, "test_acc": t_acc, "cache_build_s": round(cache_s, 2)}
    command = "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    machine = machine_line(args.device, args.threads)
    steps = len(data.y_train) // args.batch_size

    rows = []
    for f in ([] if args.timing_only else [float(v) for v in args.fractions.split(",")]):
        for seed in [int(v) for v in args.seeds.split(",")]:
            for m in args.methods.split(","):
                row = run_student(args, data, teacher, m, f, seed, work)
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("method", "fraction", "seed", "test_acc", "test_acc_ce", "test_acc_kd",
                                                      "alpha", "beta", "wall_s")}), flush=True)
                # written after every run: a run cut short (e.g. at a time limit) still leaves its figures
                write_result(build_result(args, rows, None, teacher_info, command, machine,
                                          time.perf_counter() - t_start, steps))
    timing = time_epochs(args, data, teacher, work) if args.timing_rounds > 0 else None
    md = write_result(build_result(args, rows, timing, teacher_info, command, machine, time.perf_counter() - t_start, steps))
    print(md.read_text())


if __name__ == "__main__":
    main()
