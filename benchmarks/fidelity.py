"""Fair evidence for the seed papers' claims (issue 18): DHO with a teacher that never saw the pool,
LSSKD at equal epochs and equal compute (with an ablation of its terms), a low-data regime, and the
KD family, on the real CIFAR-10 JPEG folder, 3 seeds, mean ± std.

Protocols (`--protocols`, all by default):

- `dho`: the training split is cut into a teacher-only part (all labeled; the teacher is trained
  here on it and never sees the pool) and a student pool. Students at 1% and 10% labels of the pool:
  CE on the labeled part only, single-head KD, DHO (mix searched on validation; its two heads alone
  are reported too), and DHKD on the labeled part (DHKD is supervised). The teacher runs on the
  student's augmented view (the faithful default).
- `lsskd`: CE, PS-KD and LSSKD at the same epochs; CE again at the same wall-clock as LSSKD (epochs
  scaled by LSSKD's measured time per epoch over CE's); an ablation of LSSKD's four terms and of
  the HSAKD layout (deepest branch, HSAKD main-head form).
- `lowdata`: a small per-class training set with a long schedule: CE, PS-KD, LSSKD.
- `kdfamily`: Hinton KD, DKD, logit-standardised KD and DHKD from the same teacher.

Budgets: `--budget cpu` (resnet8 student, class-balanced subsets, a few epochs: 2 cores) and
`--budget gpu` (resnet20, the full splits; meant for one GPU with `--jobs` processes). Every run
is written as soon as it ends, so a run cut short keeps its figures. Output:
benchmarks/results/fidelity_<tag>.json and .md with a top-level "summary" (differences in top-1
points, mean and std over seeds of the per-seed paired difference).

    python benchmarks/fidelity.py --budget cpu [--protocols dho,lsskd,lowdata,kdfamily] [--seeds 0,1,2] [--tag cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from cifar import balanced, ensure_cifar, machine_line  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Budget:
    student: str
    teacher_model: str
    teacher_per_class: int  # teacher-only images per class (dho, kdfamily)
    pool_per_class: int  # student pool per class (dho) / training set per class (lsskd, kdfamily)
    lowdata_per_class: int
    val_per_class: int
    test_per_class: int
    epochs: int
    lowdata_epochs: int
    teacher_epochs: int
    batch_size: int
    lr: float


BUDGETS = {
    # ~1 h per protocol on a 2-core CPU
    "cpu": Budget(student="resnet8", teacher_model="resnet14", teacher_per_class=600, pool_per_class=400,
                  lowdata_per_class=100, val_per_class=100, test_per_class=200, epochs=8, lowdata_epochs=30,
                  teacher_epochs=10, batch_size=64, lr=0.05),
    # seconds: checks that the script runs end to end (its figures mean nothing)
    "smoke": Budget(student="tiny", teacher_model="resnet8", teacher_per_class=20, pool_per_class=100,
                    lowdata_per_class=10, val_per_class=10, test_per_class=10, epochs=1, lowdata_epochs=1,
                    teacher_epochs=1, batch_size=32, lr=0.05),
    # one GPU, ~10 min with the runs as parallel processes
    "gpu": Budget(student="resnet20", teacher_model="resnet32x4", teacher_per_class=2000, pool_per_class=2500,
                  lowdata_per_class=500, val_per_class=500, test_per_class=1000, epochs=30, lowdata_epochs=100,
                  teacher_epochs=30, batch_size=128, lr=0.1),
}

# LSSKD ablation: config overrides of the lsskd section, each against the default
ABLATION = {
    "lsskd": {},
    "lsskd-no-layer-kd": {"layer_kd_weight": 0.0},
    "lsskd-no-ensemble-kd": {"ensemble_kd_weight": 0.0},
    "lsskd-no-aux-kd": {"layer_kd_weight": 0.0, "ensemble_kd_weight": 0.0},
    "lsskd-deepest-branch": {"deepest_branch": True},
    "lsskd-hsakd-main": {"main_head": "hsakd"},
}


def subset(data, idx_train: np.ndarray, b: Budget, tag: str):
    """The given training rows, class-balanced validation and test subsets; the spec is tagged so caches never mix."""
    va, te = balanced(data.y_val, b.val_per_class, 12), balanced(data.y_test, b.test_per_class, 13)
    return replace(data, spec=f"{data.spec}#{tag}", x_train=data.x_train[idx_train], y_train=data.y_train[idx_train],
                   train_ids=data.train_ids[idx_train], x_val=data.x_val[va], y_val=data.y_val[va],
                   val_ids=data.val_ids[va], x_test=data.x_test[te], y_test=data.y_test[te])


def split_teacher_pool(data, b: Budget):
    """Disjoint teacher-only and pool rows of the training split (fixed seed): the teacher never sees the pool."""
    rng = np.random.default_rng(21)
    teacher, pool = [], []
    for c in np.unique(data.y_train):
        rows = rng.permutation(np.flatnonzero(data.y_train == c))
        teacher.append(rows[:b.teacher_per_class])
        pool.append(rows[b.teacher_per_class:b.teacher_per_class + b.pool_per_class])
    t, p = np.sort(np.concatenate(teacher)), np.sort(np.concatenate(pool))
    assert not set(t.tolist()) & set(p.tolist())
    return t, p


def run(args, data, name: str, seed: int, work: Path, **over) -> dict:
    """One training run in this process; returns its test top-1 and wall time."""
    from edgekd.config import build_config
    from edgekd.train.loop import train

    out = work / f"{name}-s{seed}-{time.monotonic_ns()}"
    b = BUDGETS[args.budget]
    cfg = build_config(overrides=dict(dict(
        model=b.student, epochs=b.epochs, batch_size=b.batch_size, lr=b.lr, warmup_epochs=0.5, seed=seed,
        out=str(out), progress=False, threads=args.threads, device=args.device, precision=args.precision), **over))
    t0 = time.perf_counter()
    res = train(cfg, data, log=lambda m: None)
    wall = time.perf_counter() - t0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    row = {"run": name, "seed": seed, "test_acc": res.summary["test_acc"], "best_val_acc": res.best_val_acc,
           "epochs": cfg.epochs, "wall_s": round(wall, 1),
           "epoch_time_s": round(statistics.median(m["epoch_time_s"] for m in metrics), 3)}
    for k in ("test_acc_main", "test_acc_kd"):
        if k in res.summary:
            row[k] = res.summary[k]
    print(json.dumps(row), flush=True)
    return row


def train_teacher(args, data, work: Path) -> tuple[str, float]:
    b = BUDGETS[args.budget]
    row = run(args, data, "teacher", 0, work, model=b.teacher_model, epochs=b.teacher_epochs)
    best = sorted(work.glob("teacher-s0-*/best.pt"))[-1]
    return str(best), row["test_acc"]


def protocol_dho(args, full, work: Path, record) -> None:
    b = BUDGETS[args.budget]
    t_rows, p_rows = split_teacher_pool(full, b)
    teacher, t_acc = train_teacher(args, subset(full, t_rows, b, f"teacher{b.teacher_per_class}"), work)
    record("teacher", {"model": b.teacher_model, "images": int(len(t_rows)), "test_acc": t_acc,
                       "saw_pool_labels": False})
    record.state["teacher_path"] = teacher
    pool = subset(full, p_rows, b, f"pool{b.pool_per_class}")
    for frac in (0.01, 0.1):
        tag = f"{round(frac * 100)}pct"
        labeled = balanced(pool.y_train, max(1, round(b.pool_per_class * frac)), 31)
        lab = replace(pool, spec=f"{pool.spec}#lab{tag}", x_train=pool.x_train[labeled], y_train=pool.y_train[labeled],
                      train_ids=pool.train_ids[labeled])
        # every semi-supervised run takes the same steps: one epoch = one pass over the pool
        steps = max(1, len(pool.y_train) // b.batch_size)
        for seed in args.seed_list:
            dho = {"labeled_fraction": frac}
            record(f"dho/{tag}", run(args, pool, f"ce@{tag}", seed, work, method="dho", teacher=None,
                                     dho=dict(dho, single_head=True, ce_weight=1.0, kd_weight=0.0, unlabeled_ratio=0)))
            record(f"dho/{tag}", run(args, pool, f"kd@{tag}", seed, work, method="dho", teacher=teacher,
                                     dho=dict(dho, single_head=True)))
            record(f"dho/{tag}", run(args, pool, f"dho@{tag}", seed, work, method="dho", teacher=teacher, dho=dho))
            # DHKD is supervised: it sees only the labeled rows, for as many optimizer steps as the pool runs
            bs = min(b.batch_size, len(labeled))
            record(f"dho/{tag}", run(args, lab, f"dhkd@{tag}", seed, work, method="dhkd", teacher=teacher,
                                     batch_size=bs, epochs=max(1, b.epochs * steps // max(1, len(labeled) // bs))))


def protocol_lsskd(args, full, work: Path, record) -> None:
    b = BUDGETS[args.budget]
    data = subset(full, balanced(full.y_train, b.pool_per_class, 11), b, f"train{b.pool_per_class}")
    for seed in args.seed_list:
        ce = run(args, data, "ce", seed, work)
        record("lsskd", ce)
        record("lsskd", run(args, data, "pskd", seed, work, method="pskd"))
        lss = None
        for name, over in ABLATION.items():
            row = run(args, data, name, seed, work, method="lsskd", lsskd=over)
            record("lsskd", row)
            lss = row if name == "lsskd" else lss
        # equal compute: CE for as many epochs as LSSKD's wall-clock buys at CE's time per epoch
        ratio = lss["epoch_time_s"] / max(1e-9, ce["epoch_time_s"])
        record("lsskd", run(args, data, "ce-equal-compute", seed, work, epochs=max(b.epochs, round(b.epochs * ratio))))


def protocol_lowdata(args, full, work: Path, record) -> None:
    b = BUDGETS[args.budget]
    data = subset(full, balanced(full.y_train, b.lowdata_per_class, 41), b, f"low{b.lowdata_per_class}")
    for seed in args.seed_list:
        for name, over in (("ce", {}), ("pskd", {"method": "pskd"}), ("lsskd", {"method": "lsskd"})):
            record("lowdata", run(args, data, name, seed, work, epochs=b.lowdata_epochs, **over))


def protocol_kdfamily(args, full, work: Path, record) -> None:
    b = BUDGETS[args.budget]
    t_rows, p_rows = split_teacher_pool(full, b)
    teacher = record.state.get("teacher_path")
    if teacher is None:
        teacher, t_acc = train_teacher(args, subset(full, t_rows, b, f"teacher{b.teacher_per_class}"), work)
        record("teacher", {"model": b.teacher_model, "images": int(len(t_rows)), "test_acc": t_acc,
                           "saw_pool_labels": False})
    data = subset(full, p_rows, b, f"pool{b.pool_per_class}")
    for seed in args.seed_list:
        record("kdfamily", run(args, data, "kd", seed, work, method="kd", teacher=teacher))
        record("kdfamily", run(args, data, "dkd", seed, work, method="kd", teacher=teacher, kd={"variant": "dkd"}))
        record("kdfamily", run(args, data, "kd-logit-std", seed, work, method="kd", teacher=teacher,
                               kd={"logit_standardize": True}))
        record("kdfamily", run(args, data, "dhkd", seed, work, method="dhkd", teacher=teacher))


PROTOCOLS = {"dho": protocol_dho, "lsskd": protocol_lsskd, "lowdata": protocol_lowdata, "kdfamily": protocol_kdfamily}


def paired(rows: list[dict], group: str, a: str, b: str) -> dict | None:
    """Mean and std over seeds of (a - b) in top-1 points, paired by seed."""
    by = {(r["run"], r["seed"]): r["test_acc"] for r in rows if r["group"] == group}
    d = [by[(a, s)] - by[(b, s)] for (name, s) in by if name == a and (b, s) in by]
    if not d:
        return None
    return {"mean": round(statistics.mean(d), 2), "std": round(statistics.stdev(d), 2) if len(d) > 1 else 0.0,
            "per_seed": [round(x, 2) for x in d]}


def summarize(rows: list[dict], b: Budget, seeds: list[int]) -> dict:
    s = {
        "lsskd_minus_ce": paired(rows, "lsskd", "lsskd", "ce"),
        "lsskd_minus_ce_equal_compute": paired(rows, "lsskd", "lsskd", "ce-equal-compute"),
        "lsskd_minus_pskd": paired(rows, "lsskd", "lsskd", "pskd"),
        "dho_minus_kd_1pct": paired(rows, "dho/1pct", "dho@1pct", "kd@1pct"),
        "dho_minus_kd_10pct": paired(rows, "dho/10pct", "dho@10pct", "kd@10pct"),
        "dhkd_minus_kd": paired(rows, "kdfamily", "dhkd", "kd"),
        "lowdata_lsskd_minus_ce": paired(rows, "lowdata", "lsskd", "ce"),
    }
    return {**s, "seeds": seeds, "epochs": b.epochs, "teacher_saw_pool_labels": False}


def table(rows: list[dict], group: str) -> list[str]:
    names = list(dict.fromkeys(r["run"] for r in rows if r["group"] == group))
    out = [f"### {group}", "", "| run | top-1 (mean ± std) | per seed | epochs | s/epoch |", "|---|---|---|---|---|"]
    for n in names:
        rs = [r for r in rows if r["group"] == group and r["run"] == n]
        acc = [r["test_acc"] for r in rs]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        extra = ""
        if "test_acc_main" in rs[0] and "test_acc_kd" in rs[0] and n.startswith("dho@"):
            extra = (f" (CE head {statistics.mean(r['test_acc_main'] for r in rs):.2f}, "
                     f"KD head {statistics.mean(r['test_acc_kd'] for r in rs):.2f})")
        out.append(f"| {n}{extra} | {statistics.mean(acc):.2f} ± {sd:.2f} | {', '.join(f'{a:.2f}' for a in acc)} | "
                   f"{rs[0]['epochs']} | {statistics.median(r['epoch_time_s'] for r in rs):.2f} |")
    return out + [""]


def verdicts(s: dict) -> list[str]:
    targets = [("lsskd_minus_ce", 1.0), ("lsskd_minus_pskd", 0.5), ("dho_minus_kd_1pct", 0.5),
               ("dho_minus_kd_10pct", 0.5), ("dhkd_minus_kd", 0.0)]
    out = []
    for key, t in targets:
        v = s.get(key)
        out.append(f"- `{key}`: " + ("not measured" if v is None else
                                     f"{v['mean']:+.2f} ± {v['std']:.2f} (target ≥ {t:+.1f}: "
                                     f"{'met' if v['mean'] >= t else 'not met'})"))
    v = s.get("lsskd_minus_ce_equal_compute")
    if v is not None:
        out.append(f"- `lsskd_minus_ce_equal_compute`: {v['mean']:+.2f} ± {v['std']:.2f} (CE given LSSKD's wall-clock)")
    return out


def write(args, rows, extra, command, machine, t0) -> Path:
    from edgekd.io import write_json_atomic, write_text_atomic

    b = BUDGETS[args.budget]
    summary = summarize(rows, b, args.seed_list)
    result = {"tag": args.tag, "budget": args.budget, "budget_settings": b.__dict__, "command": command,
              "machine": machine, "precision": args.precision, "summary": summary, "teacher": extra.get("teacher"),
              "runs": rows, "total_wall_s": round(time.perf_counter() - t0, 1)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / f"fidelity_{args.tag}.json", result)
    lines = [f"# Fidelity benchmark ({args.tag})", "",
             f"Budget `{args.budget}`: {b}. Seeds {args.seed_list}. {machine}. Precision {args.precision}.", "",
             f"Command: `{command}`", "",
             *(["**Smoke budget: these figures only show that the script runs; they mean nothing.**", ""]
               if args.budget == "smoke" else []),
             "## Verdicts", "", *verdicts(summary), ""]
    if extra.get("teacher"):
        t = extra["teacher"]
        lines += [f"Teacher: {t['model']} trained here on {t['images']} teacher-only images "
                  f"(never the pool), test top-1 {t['test_acc']:.2f}%.", ""]
    lines += ["## Tables (test top-1 %, mean ± std over seeds)", ""]
    for g in dict.fromkeys(r["group"] for r in rows):
        lines += table(rows, g)
    md = RESULTS / f"fidelity_{args.tag}.md"
    write_text_atomic(md, "\n".join(lines))
    return md


class Recorder:
    """Collects rows (tagged with their protocol group) and rewrites the result after every run."""

    def __init__(self, args, command, machine, t0):
        self.args, self.command, self.machine, self.t0 = args, command, machine, t0
        self.rows: list[dict] = []
        self.extra: dict = {}
        self.state: dict = {}

    def __call__(self, group: str, row: dict) -> None:
        if group == "teacher":
            self.extra["teacher"] = row
        else:
            self.rows.append({"group": group, **row})
        write(self.args, self.rows, self.extra, self.command, self.machine, self.t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", help="training precision (fp32 | bf16 | auto)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default=None, help="result name (default: the budget's device, cpu or cuda)")
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    args.tag = args.tag or ("cuda" if args.budget == "gpu" else "cpu")
    unknown = set(args.protocols.split(",")) - set(PROTOCOLS)
    if unknown:
        sys.exit(f"unknown protocol(s): {', '.join(sorted(unknown))}; choose from {', '.join(PROTOCOLS)}")
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("EDGEKD_CACHE", str(Path(tempfile.gettempdir()) / "edgekd-bench-cache"))
    from edgekd.data import load_dataset

    t0 = time.perf_counter()
    full = load_dataset(ensure_cifar(), 0.1, 0)
    work = Path(args.work or tempfile.mkdtemp(prefix="edgekd-fidelity-"))
    command = "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    rec = Recorder(args, command, machine_line(args.device, args.threads), t0)
    for p in args.protocols.split(","):
        PROTOCOLS[p](args, full, work, rec)
    print((RESULTS / f"fidelity_{args.tag}.md").read_text())


if __name__ == "__main__":
    main()
