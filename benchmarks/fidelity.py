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
- `long`: the `lsskd` training set on a 3x longer schedule: CE, the four-term LSSKD and edgekd's
  LSSKD default (does the ablation's choice hold once the auxiliary classifiers are good teachers?).
- `lowdata`: a small per-class training set with a long schedule: CE, PS-KD, the four-term LSSKD and
  edgekd's LSSKD default.
- `kdfamily`: Hinton KD, DKD, logit-standardised KD (with KD's own weights and with the authors'
  recipe) and DHKD from the same teacher, on the whole pool with every label.

Budgets: `--budget cpu` (resnet8 student, class-balanced subsets, 8 epochs (`long`: 24): ~75 min for
dho, lsskd, lowdata and kdfamily on 2 cores with `--jobs 2`, ~30 min more for `long` with `--jobs 3`), `--budget gpu` (resnet20, resnet32x4 teacher; ~10 min on one
GPU with `--jobs 15`, `benchmarks/fidelity_gpu.sh`), `--budget smoke` (seconds; checks the script).
Units (protocol x seed) run as `--jobs` parallel processes after the teacher is trained once (kept in
the work folder and reused); `--probe` runs one epoch of everything and estimates the full run. Rows
are written as each run ends, so a run cut short keeps its figures, and protocols run one command at
a time merge into one result. Output: benchmarks/results/fidelity_<tag>.json and .md with a top-level
"summary" (differences in top-1 points: mean, std and 95% interval over seeds of the per-seed paired
difference); `--report` writes the .md again from the .json.

    python benchmarks/fidelity.py --budget cpu --jobs 2 [--protocols dho,lsskd,lowdata,kdfamily,long] [--seeds 0,1,2]
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
    long_epochs: int = 0  # the `long` protocol: the lsskd training set for this many epochs


BUDGETS = {
    # all four protocols in ~75 min on 2 cores with --jobs 2 (71 min measured, fidelity_cpu.md)
    "cpu": Budget(student="resnet8", teacher_model="resnet14", teacher_per_class=600, pool_per_class=400,
                  lowdata_per_class=100, val_per_class=100, test_per_class=200, epochs=8, lowdata_epochs=30,
                  teacher_epochs=10, batch_size=64, lr=0.05, long_epochs=24),
    # seconds: checks that the script runs end to end (its figures mean nothing)
    "smoke": Budget(student="tiny", teacher_model="resnet8", teacher_per_class=20, pool_per_class=100,
                    lowdata_per_class=10, val_per_class=10, test_per_class=10, epochs=1, lowdata_epochs=1,
                    teacher_epochs=1, batch_size=32, lr=0.05, long_epochs=2),
    # one GPU, ~10 min of device time in all with the 15 units as parallel processes (sized from the H100 runs of
    # benchmarks/results/selfkd_cuda.md: ~2500-3700 img/s per process with 6 sharing it); `--probe` checks first
    "gpu": Budget(student="resnet20", teacher_model="resnet32x4", teacher_per_class=2000, pool_per_class=1000,
                  lowdata_per_class=200, val_per_class=200, test_per_class=1000, epochs=10, lowdata_epochs=40,
                  teacher_epochs=15, batch_size=128, lr=0.1, long_epochs=30),
}

# LSSKD ablation: overrides of the lsskd section, every weight explicit so a row means the same whatever the
# defaults are. `lsskd` is the paper-shaped loss, all four terms at unit weight (HSAKD's weights; edgekd's
# default before this ablation); `lsskd-no-aux-kd` (both KD terms off) is edgekd's default since.
FOUR_TERMS = {"main_ce_weight": 1.0, "aux_ce_weight": 1.0, "layer_kd_weight": 1.0, "ensemble_kd_weight": 1.0}
ABLATION = {
    "lsskd": FOUR_TERMS,
    "lsskd-no-layer-kd": {**FOUR_TERMS, "layer_kd_weight": 0.0},
    "lsskd-no-ensemble-kd": {**FOUR_TERMS, "ensemble_kd_weight": 0.0},
    "lsskd-no-aux-kd": {**FOUR_TERMS, "layer_kd_weight": 0.0, "ensemble_kd_weight": 0.0},
    "lsskd-deepest-branch": {**FOUR_TERMS, "deepest_branch": True},
    "lsskd-hsakd-main": {**FOUR_TERMS, "main_head": "hsakd"},
}
DEFAULT_LSSKD = "lsskd-no-aux-kd"  # the row that is edgekd's LSSKD default (edgekd.config.LSSKDConfig)


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


def prepare_teacher(args, full, work: Path) -> dict:
    """Train the teacher once on the teacher-only rows (never the pool) into work/teacher; reuse it when there."""
    from edgekd.io import write_json_atomic

    b = BUDGETS[args.budget]
    done = work / "teacher" / "teacher.json"
    if done.is_file():
        info = json.loads(done.read_text())
        if info.get("budget") == args.budget and Path(info["path"]).is_file():
            return info
    t_rows, _ = split_teacher_pool(full, b)
    data = subset(full, t_rows, b, f"teacher{b.teacher_per_class}")
    row = run(args, data, "teacher", 0, work / "teacher", model=b.teacher_model, epochs=b.teacher_epochs)
    best = sorted((work / "teacher").glob("teacher-s0-*/best.pt"))[-1]
    info = {"model": b.teacher_model, "images": int(len(t_rows)), "test_acc": row["test_acc"],
            "saw_pool_labels": False, "epochs": b.teacher_epochs, "budget": args.budget, "path": str(best),
            "wall_s": row["wall_s"]}
    write_json_atomic(done, info)
    return info


def protocol_dho(args, full, work: Path, record, seed: int) -> None:
    b = BUDGETS[args.budget]
    from edgekd.data.semisup import select_labeled

    _, p_rows = split_teacher_pool(full, b)
    teacher = args.teacher_path
    pool = subset(full, p_rows, b, f"pool{b.pool_per_class}")
    for frac in (0.01, 0.1):
        tag = f"{round(frac * 100)}pct"
        # the very rows the dho runs of this seed label (edgekd.data.semisup.select_labeled), so DHKD is paired
        labeled = select_labeled(pool.y_train, frac, None, seed)
        # DHKD is supervised: it sees only the labeled rows, repeated to the pool's size so that every run
        # takes the same optimizer steps (one epoch = one pass over the pool)
        reps = np.tile(labeled, max(1, len(pool.y_train) // len(labeled)))
        lab = replace(pool, spec=f"{pool.spec}#lab{tag}", x_train=pool.x_train[reps], y_train=pool.y_train[reps],
                      train_ids=pool.train_ids[reps])
        dho = {"labeled_fraction": frac}
        record(f"dho/{tag}", run(args, pool, f"ce@{tag}", seed, work, method="dho", teacher=None,
                                 dho=dict(dho, single_head=True, ce_weight=1.0, kd_weight=0.0, unlabeled_ratio=0)))
        record(f"dho/{tag}", run(args, pool, f"kd@{tag}", seed, work, method="dho", teacher=teacher,
                                 dho=dict(dho, single_head=True)))
        record(f"dho/{tag}", run(args, pool, f"dho@{tag}", seed, work, method="dho", teacher=teacher, dho=dho))
        record(f"dho/{tag}", run(args, lab, f"dhkd@{tag}", seed, work, method="dhkd", teacher=teacher))


def protocol_lsskd(args, full, work: Path, record, seed: int) -> None:
    b = BUDGETS[args.budget]
    data = subset(full, balanced(full.y_train, b.pool_per_class, 11), b, f"train{b.pool_per_class}")
    ce = run(args, data, "ce", seed, work)
    record("lsskd", ce)
    record("lsskd", run(args, data, "pskd", seed, work, method="pskd"))
    lss = None
    for name, over in ABLATION.items():
        row = run(args, data, name, seed, work, method="lsskd", lsskd=over)
        record("lsskd", row)
        lss = row if name == "lsskd" else lss
    # equal compute: CE for as many epochs as LSSKD's wall-clock buys at CE's time per epoch (both measured
    # in this process, one after the other, under the same load)
    ratio = lss["epoch_time_s"] / max(1e-9, ce["epoch_time_s"])
    record("lsskd", run(args, data, "ce-equal-compute", seed, work, epochs=max(b.epochs, round(b.epochs * ratio))))


def protocol_long(args, full, work: Path, record, seed: int) -> None:
    """The LSSKD protocol's training set on a 3x longer schedule: does the ablation's choice hold when the
    auxiliary classifiers have time to become good teachers?"""
    b = BUDGETS[args.budget]
    data = subset(full, balanced(full.y_train, b.pool_per_class, 11), b, f"train{b.pool_per_class}")
    for name, over in (("ce", {}), ("lsskd", {"method": "lsskd", "lsskd": FOUR_TERMS}),
                       (DEFAULT_LSSKD, {"method": "lsskd", "lsskd": ABLATION[DEFAULT_LSSKD]})):
        record("long", run(args, data, name, seed, work, epochs=b.long_epochs, **over))


def protocol_lowdata(args, full, work: Path, record, seed: int) -> None:
    b = BUDGETS[args.budget]
    data = subset(full, balanced(full.y_train, b.lowdata_per_class, 41), b, f"low{b.lowdata_per_class}")
    # lsskd-no-aux-kd: the ablation's best variant, checked again on a long schedule before it may become a default
    for name, over in (("ce", {}), ("pskd", {"method": "pskd"}), ("lsskd", {"method": "lsskd", "lsskd": FOUR_TERMS}),
                       ("lsskd-no-aux-kd", {"method": "lsskd", "lsskd": ABLATION["lsskd-no-aux-kd"]})):
        record("lowdata", run(args, data, name, seed, work, epochs=b.lowdata_epochs, **over))


def protocol_kdfamily(args, full, work: Path, record, seed: int) -> None:
    b = BUDGETS[args.budget]
    _, p_rows = split_teacher_pool(full, b)
    teacher = args.teacher_path
    data = subset(full, p_rows, b, f"pool{b.pool_per_class}")
    record("kdfamily", run(args, data, "kd", seed, work, method="kd", teacher=teacher))
    record("kdfamily", run(args, data, "dkd", seed, work, method="kd", teacher=teacher, kd={"variant": "dkd"}))
    # logit standardization with KD's own weights (what `--set kd.logit_standardize=true` alone does) and with
    # the authors' recipe (sunshangquan/logit-standardization-KD README: --base-temp 2 --kd-weight 9)
    record("kdfamily", run(args, data, "kd-logit-std", seed, work, method="kd", teacher=teacher,
                           kd={"logit_standardize": True}))
    record("kdfamily", run(args, data, "kd-logit-std-recipe", seed, work, method="kd", teacher=teacher,
                           kd={"logit_standardize": True, "temperature": 2.0, "kd_weight": 9.0}))
    record("kdfamily", run(args, data, "dhkd", seed, work, method="dhkd", teacher=teacher))


PROTOCOLS = {"dho": protocol_dho, "lsskd": protocol_lsskd, "lowdata": protocol_lowdata, "kdfamily": protocol_kdfamily,
             "long": protocol_long}


def paired(rows: list[dict], group: str, a: str, b: str, field_b: str = "test_acc",
           field_a: str = "test_acc") -> dict | None:
    """Mean and std over seeds of (a - b) in top-1 points, paired by seed (b's `field_b`: a head alone;
    `best_val_acc` for both: the validation figure a choice is made on)."""
    by = {(r["run"], r["seed"]): r for r in rows if r["group"] == group}
    d = [by[(a, s)][field_a] - by[(b, s)][field_b] for (name, s) in by
         if name == a and (b, s) in by and field_b in by[(b, s)] and field_a in by[(a, s)]]
    if not d:
        return None
    out = {"mean": round(statistics.mean(d), 2), "std": round(statistics.stdev(d), 2) if len(d) > 1 else 0.0,
           "per_seed": [round(x, 2) for x in d]}
    if len(d) > 1:  # Student-t 95% interval of the mean paired difference (3 seeds: t = 4.30, wide on purpose)
        from edgekd.bench.compare import t_quantile

        half = t_quantile(0.975, len(d) - 1) * statistics.stdev(d) / len(d) ** 0.5
        out["ci95"] = [round(statistics.mean(d) - half, 2), round(statistics.mean(d) + half, 2)]
    return out


def summarize(rows: list[dict], b: Budget, seeds: list[int]) -> dict:
    s = {
        "lsskd_minus_ce": paired(rows, "lsskd", "lsskd", "ce"),
        "lsskd_minus_ce_equal_compute": paired(rows, "lsskd", "lsskd", "ce-equal-compute"),
        "lsskd_minus_pskd": paired(rows, "lsskd", "lsskd", "pskd"),
        "dho_minus_kd_1pct": paired(rows, "dho/1pct", "dho@1pct", "kd@1pct"),
        "dho_minus_kd_10pct": paired(rows, "dho/10pct", "dho@10pct", "kd@10pct"),
        "dhkd_minus_kd": paired(rows, "kdfamily", "dhkd", "kd"),
        # edgekd's LSSKD default (both KD terms off, chosen by the ablation below) against the same baselines
        "lsskd_default_minus_ce": paired(rows, "lsskd", DEFAULT_LSSKD, "ce"),
        "lsskd_default_minus_pskd": paired(rows, "lsskd", DEFAULT_LSSKD, "pskd"),
        "lsskd_default_minus_ce_equal_compute": paired(rows, "lsskd", DEFAULT_LSSKD, "ce-equal-compute"),
        "lowdata_lsskd_default_minus_ce": paired(rows, "lowdata", DEFAULT_LSSKD, "ce"),
        "lowdata_lsskd_minus_ce": paired(rows, "lowdata", "lsskd", "ce"),
        "long_lsskd_minus_ce": paired(rows, "long", "lsskd", "ce"),
        "long_lsskd_default_minus_ce": paired(rows, "long", DEFAULT_LSSKD, "ce"),
        "long_lsskd_default_minus_lsskd": paired(rows, "long", DEFAULT_LSSKD, "lsskd"),
        "lowdata_lsskd_minus_pskd": paired(rows, "lowdata", "lsskd", "pskd"),
        "dkd_minus_kd": paired(rows, "kdfamily", "dkd", "kd"),
        "kd_logit_std_minus_kd": paired(rows, "kdfamily", "kd-logit-std", "kd"),
        "kd_logit_std_recipe_minus_kd": paired(rows, "kdfamily", "kd-logit-std-recipe", "kd"),
        # each ablation variant against the four-term loss (positive: the variant is better)
        "lsskd_ablation": {n: paired(rows, "lsskd", n, "lsskd") for n in ABLATION if n != "lsskd"},
        # the same on the validation split (best epoch): the split a default is chosen on
        "lsskd_ablation_val": {n: paired(rows, "lsskd", n, "lsskd", "best_val_acc", "best_val_acc")
                               for n in ABLATION if n != "lsskd"},
        "lowdata_lsskd_default_minus_lsskd_val": paired(rows, "lowdata", DEFAULT_LSSKD, "lsskd", "best_val_acc",
                                                        "best_val_acc"),
        # DHO's searched mix against each of its heads alone (the dual head's own claim)
        "dho_mix_minus_heads": {f"{t}_{h}": paired(rows, f"dho/{t}", f"dho@{t}", f"dho@{t}", f"test_acc_{h}")
                                for t in ("1pct", "10pct") for h in ("main", "kd")},
    }
    return {**s, "seeds": seeds, "epochs": b.epochs, "teacher_saw_pool_labels": False}


def difference_lines(s: dict) -> list[str]:
    """The LSSKD ablation and DHO's mix against its heads, as paired differences."""
    out = ["## LSSKD ablation (variant − the four-term loss `lsskd`, paired by seed; "
           f"`{DEFAULT_LSSKD}` is edgekd's default)", "",
           "| variant | what changes | validation: difference (per seed) | test: difference (mean ± std) | "
           "per seed | 95% CI |", "|---|---|---|---|---|---|"]
    for name, v in s["lsskd_ablation"].items():
        if v is not None:
            what = ", ".join(f"{k}={val}" for k, val in ABLATION[name].items() if FOUR_TERMS.get(k) != val)
            val = s["lsskd_ablation_val"].get(name)
            val_text = "-" if val is None else f"{val['mean']:+.2f} ({', '.join(f'{x:+.2f}' for x in val['per_seed'])})"
            out.append(f"| {name} | {what} | {val_text} | {v['mean']:+.2f} ± {v['std']:.2f} | "
                       f"{', '.join(f'{x:+.2f}' for x in v['per_seed'])} | {ci_text(v)} |")
    low = s.get("lowdata_lsskd_default_minus_lsskd_val")
    if low is not None:
        out += ["", f"Low-data regime, `{DEFAULT_LSSKD}` − `lsskd` on validation: {low['mean']:+.2f} "
                    f"({', '.join(f'{x:+.2f}' for x in low['per_seed'])})."]
    out += ["", "## DHO: the searched mix against each head alone (paired by seed)", "",
            "| labels | mix − CE head | mix − KD head |", "|---|---|---|"]
    for t in ("1pct", "10pct"):
        m, k = s["dho_mix_minus_heads"][f"{t}_main"], s["dho_mix_minus_heads"][f"{t}_kd"]
        if m is not None and k is not None:
            out.append(f"| {t} | {m['mean']:+.2f} ± {m['std']:.2f} ({ci_text(m)}) | "
                       f"{k['mean']:+.2f} ± {k['std']:.2f} ({ci_text(k)}) |")
    return out + [""]


def ci_text(v: dict) -> str:
    return f"[{v['ci95'][0]:+.2f}, {v['ci95'][1]:+.2f}]" if "ci95" in v else "-"


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
                                     f"{v['mean']:+.2f} ± {v['std']:.2f}{noise(v)} (target ≥ {t:+.1f}: "
                                     f"{'met' if v['mean'] >= t else 'not met'})"))
    for key, what in (("lsskd_minus_ce_equal_compute", "CE given LSSKD's wall-clock"),
                      ("lsskd_default_minus_ce", "edgekd's LSSKD default"),
                      ("lsskd_default_minus_pskd", "edgekd's LSSKD default"),
                      ("lsskd_default_minus_ce_equal_compute", "edgekd's LSSKD default, CE given its wall-clock"),
                      ("lowdata_lsskd_default_minus_ce", "low-data regime, edgekd's LSSKD default"),
                      ("long_lsskd_minus_ce", "3x longer schedule"),
                      ("long_lsskd_default_minus_ce", "3x longer schedule, edgekd's LSSKD default"),
                      ("long_lsskd_default_minus_lsskd", "3x longer schedule, the ablation's choice vs four terms"),
                      ("lowdata_lsskd_minus_ce", "low-data regime"), ("lowdata_lsskd_minus_pskd", "low-data regime"),
                      ("dkd_minus_kd", "KD family"), ("kd_logit_std_minus_kd", "KD family, KD's own weights"),
                      ("kd_logit_std_recipe_minus_kd", "KD family, the authors' T 2 / kd_weight 9")):
        v = s.get(key)
        if v is not None:
            out.append(f"- `{key}`: {v['mean']:+.2f} ± {v['std']:.2f}{noise(v)} ({what})")
    return out


def noise(v: dict) -> str:
    """The 95% interval over seeds and whether it excludes 0 (a difference the seeds can tell from none)."""
    if "ci95" not in v:
        return ""
    lo, hi = v["ci95"]
    return f", 95% CI [{lo:+.2f}, {hi:+.2f}]" + ("" if lo > 0 or hi < 0 else ", not distinguishable from 0")


def write(args, rows, extra, command, machine, t0) -> Path:
    from edgekd.io import write_json_atomic, write_text_atomic

    b = BUDGETS[args.budget]
    summary = summarize(rows, b, args.seed_list)
    result = {"tag": args.tag, "budget": args.budget, "budget_settings": b.__dict__, "command": command,
              "commands": extra.get("commands", [command]), "machine": machine, "precision": args.precision,
              "summary": summary, "teacher": extra.get("teacher"),
              "runs": rows, "total_wall_s": round(time.perf_counter() - t0, 1)}
    # each command's own wall time (a later command that runs one protocol keeps the earlier ones' figures)
    result["wall_s_by_command"] = {**extra.get("walls", {}), command: result["total_wall_s"]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / f"fidelity_{args.tag}.json", result)
    lines = [f"# Fidelity benchmark ({args.tag})", "",
             f"Budget `{args.budget}`: {b}. Seeds {args.seed_list}. {machine}.", "",
             "Commands (each ran the protocols it names; rows of the others were kept from the earlier ones), "
             "with their wall times:", "",
             *[f"    {c}    # {result['wall_s_by_command'].get(c, float('nan')) / 60:.1f} min"
               for c in extra.get("commands", [command])], "",
             *(["**Smoke budget: these figures only show that the script runs; they mean nothing.**", ""]
               if args.budget == "smoke" else []),
             "## Verdicts", "", *verdicts(summary), ""]
    if extra.get("teacher"):
        t = extra["teacher"]
        lines += [f"Teacher: {t['model']} trained here on {t['images']} teacher-only images "
                  f"(never the pool), test top-1 {t['test_acc']:.2f}%.", ""]
    lines += difference_lines(summary)
    lines += ["## Tables (test top-1 %, mean ± std over seeds)", ""]
    for g in dict.fromkeys(r["group"] for r in rows):
        lines += table(rows, g)
    md = RESULTS / f"fidelity_{args.tag}.md"
    write_text_atomic(md, "\n".join(lines))
    return md


# the order units start in: the longest first, so parallel jobs end together
UNIT_COST = {"long": 5, "lsskd": 4, "dho": 3, "kdfamily": 2, "lowdata": 1}


def protocol_of(group: str) -> str:
    return group.split("/")[0]


class Recorder:
    """Collects rows (tagged with their protocol group) and rewrites the result after every run.

    Rows of protocols not run now are kept from an earlier result of the same budget and tag, so the
    protocols can be run one command at a time into one file."""

    def __init__(self, args, command, machine, t0):
        self.args, self.command, self.machine, self.t0 = args, command, machine, t0
        self.rows: list[dict] = []
        self.extra: dict = {}
        self.kept: list[dict] = []
        old = RESULTS / f"fidelity_{args.tag}.json"
        if old.is_file():
            prev = json.loads(old.read_text())
            if prev.get("budget") == args.budget and prev.get("summary", {}).get("seeds") == args.seed_list:
                now = set(args.protocols.split(","))
                self.kept = [r for r in prev.get("runs", []) if protocol_of(r["group"]) not in now]
                self.extra = {k: prev[k] for k in ("teacher", "commands") if prev.get(k)}
                self.extra["walls"] = {c: w for c, w in prev.get("wall_s_by_command", {}).items() if c != command}
        self.extra["commands"] = [c for c in self.extra.get("commands", []) if c != command] + [command]

    def __call__(self, group: str, row: dict) -> None:
        self.rows.append({"group": group, **row})
        self.flush()

    def flush(self) -> None:
        write(self.args, self.kept + self.rows, self.extra, self.command, self.machine, self.t0)


def run_unit(args, full, work: Path, unit: str, record) -> None:
    protocol, seed = unit.split(":")
    PROTOCOLS[protocol](args, full, work, record, int(seed))


def run_parallel(args, units: list[str], work: Path, rec: Recorder) -> int:
    """Every unit (protocol:seed) in its own process, `--jobs` at a time with `--threads` split between them;
    each appends its rows to work/parts/<unit>.jsonl and the result is rewritten whenever one ends."""
    import subprocess

    parts = work / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    threads = max(1, args.threads // args.jobs)
    todo, running, failed = list(units), {}, []
    for u in units:
        (parts / f"{u.replace(':', '-s')}.jsonl").unlink(missing_ok=True)

    def collect() -> None:
        rec.rows = []
        for u in units:
            f = parts / f"{u.replace(':', '-s')}.jsonl"
            if f.is_file():
                rec.rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        rec.flush()

    while todo or running:
        while todo and len(running) < args.jobs:
            u = todo.pop(0)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--budget", args.budget, "--unit", u,
                   "--rows", str(parts / f"{u.replace(':', '-s')}.jsonl"), "--work", str(work),
                   "--threads", str(threads),
                   "--device", args.device, "--precision", args.precision, "--seeds", args.seeds, "--tag", args.tag]
            cmd += ["--probe"] if args.probe else []
            log = open(parts / f"{u.replace(':', '-s')}.log", "w")
            running[u] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
            print(f"started {u} ({threads} threads)", flush=True)
        time.sleep(2)
        for u, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                del running[u]
                print(f"ended {u}: exit {proc.returncode}", flush=True)
                if proc.returncode != 0:
                    failed.append(u)
                collect()
    collect()
    for u in failed:
        print(f"error: unit {u} failed; see {parts / (u.replace(':', '-s') + '.log')}", file=sys.stderr)
    return 1 if failed else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", help="training precision (fp32 | bf16 | auto)")
    ap.add_argument("--threads", type=int, default=2, help="threads in all (split between the jobs)")
    ap.add_argument("--jobs", type=int, default=1, help="units (protocol, seed) run as parallel processes")
    ap.add_argument("--tag", default=None, help="result name (default: cpu, cuda for the gpu budget, smoke)")
    ap.add_argument("--work", default=None, help="run folder (default: a fixed folder per budget, so the teacher "
                                                 "trained once is reused)")
    ap.add_argument("--probe", action="store_true", help="one epoch of every run (teacher included), into "
                    "fidelity_<tag>-probe and its own folder, and an estimate of the full run's wall time")
    ap.add_argument("--max-minutes", type=float, default=None, help="with --probe: exit 5 when the estimate is over")
    ap.add_argument("--report", action="store_true", help="only write the .md again from the .json (no training)")
    ap.add_argument("--unit", default=None, help=argparse.SUPPRESS)  # internal: one protocol:seed, rows to --rows
    ap.add_argument("--rows", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    args.tag = args.tag or {"gpu": "cuda", "cpu": "cpu"}.get(args.budget, args.budget)  # smoke never overwrites cpu
    unknown = set(args.protocols.split(",")) - set(PROTOCOLS)
    if unknown:
        sys.exit(f"unknown protocol(s): {', '.join(sorted(unknown))}; choose from {', '.join(PROTOCOLS)}")
    if args.jobs < 1:
        sys.exit("--jobs must be >= 1")
    if args.report:
        prev = json.loads((RESULTS / f"fidelity_{args.tag}.json").read_text())
        args.budget, args.precision, args.seed_list = prev["budget"], prev["precision"], prev["summary"]["seeds"]
        extra = {"teacher": prev.get("teacher"), "commands": prev.get("commands", [prev["command"]]),
                 "walls": prev.get("wall_s_by_command", {})}
        write(args, prev["runs"], extra, prev["command"], prev["machine"], time.perf_counter() - prev["total_wall_s"])
        print((RESULTS / f"fidelity_{args.tag}.md").read_text())
        return
    full_budget = BUDGETS[args.budget]
    if args.probe:  # children get --probe too, so every process runs the same one-epoch budget
        BUDGETS[args.budget] = replace(full_budget, epochs=1, lowdata_epochs=1, teacher_epochs=1, long_epochs=1)
        args.tag = args.tag if args.unit else f"{args.tag}-probe"
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("EDGEKD_CACHE", str(Path(tempfile.gettempdir()) / "edgekd-bench-cache"))
    from edgekd.data import load_dataset

    t0 = time.perf_counter()
    full = load_dataset(ensure_cifar(), 0.1, 0)
    work = Path(args.work or Path(tempfile.gettempdir()) / f"edgekd-fidelity-{args.budget}{'-probe' * args.probe}")
    work.mkdir(parents=True, exist_ok=True)
    protocols = args.protocols.split(",")
    if args.unit:  # a child of run_parallel: the teacher is already trained
        args.teacher_path = json.loads((work / "teacher" / "teacher.json").read_text())["path"] \
            if protocol_of(args.unit.split(":")[0]) in ("dho", "kdfamily") else None
        with open(args.rows, "a") as out:
            def record(group: str, row: dict) -> None:
                out.write(json.dumps({"group": group, **row}) + "\n")
                out.flush()
                os.fsync(out.fileno())
            run_unit(args, full, work, args.unit, record)
        return
    command = "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    where = machine_line(args.device, args.threads)
    if args.precision == "auto":  # say what auto meant here
        from edgekd.train.precision import resolve_precision

        where += f"; precision auto = {resolve_precision('auto', torch.device(args.device))}"
    if args.jobs > 1:
        where += f"; {args.jobs} parallel jobs of {max(1, args.threads // args.jobs)} thread(s)"
    rec = Recorder(args, command, where, t0)
    args.teacher_path = None
    if {"dho", "kdfamily"} & set(protocols):
        info = prepare_teacher(args, full, work)
        args.teacher_path = info["path"]
        rec.extra["teacher"] = {k: v for k, v in info.items() if k != "path"}
    units = [f"{p}:{s}" for p in sorted(protocols, key=lambda p: -UNIT_COST[p]) for s in args.seed_list]
    if args.jobs == 1:
        for u in units:
            run_unit(args, full, work, u, rec)
        rc = 0
    else:
        rc = run_parallel(args, units, work, rec)
    rec.flush()
    print((RESULTS / f"fidelity_{args.tag}.md").read_text())
    if args.probe:
        est = estimate_full_s(rec.rows, rec.extra.get("teacher"), full_budget, args.jobs)
        print(f"probe: the full `{args.budget}` run would take about {est / 60:.1f} min with {args.jobs} job(s)")
        if rc == 0 and args.max_minutes is not None and est > args.max_minutes * 60:
            print(f"error: over the {args.max_minutes:g}-minute limit; make the budget smaller", file=sys.stderr)
            rc = 5
    sys.exit(rc)


def estimate_full_s(rows: list[dict], teacher: dict | None, full: Budget, jobs: int) -> float:
    """From one-epoch probe rows: each run's wall plus its epoch time for the epochs the full budget adds;
    units (protocol, seed) packed on `jobs` processes (the longest unit or the even share, whichever is more)."""
    units: dict = {}
    for r in rows:
        # the probe ran 1 epoch where the full budget runs k
        k = {"lowdata": full.lowdata_epochs, "long": full.long_epochs}.get(r["group"], full.epochs)
        key = (protocol_of(r["group"]), r["seed"])
        units[key] = units.get(key, 0.0) + r["wall_s"] + r["epoch_time_s"] * r["epochs"] * (k - 1)
    t = 0.0 if not teacher else teacher.get("wall_s", 0.0) * full.teacher_epochs
    return t + max(max(units.values(), default=0.0), sum(units.values()) / max(1, jobs))


if __name__ == "__main__":
    main()
