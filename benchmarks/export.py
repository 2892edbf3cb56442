"""What surgery and export buy at inference, all in one run on this CPU (issue 5's figures).

From one trained resnet20 (the CIFAR-10 CE baseline, `benchmarks/baseline.py run cifar`; random
weights on synthetic data when it is absent) this builds, exports through `edgekd export`'s own
pipeline, and times side by side (interleaved rounds, medians, ONNX Runtime with spinning off):

- `plain`: the plain student's export;
- `stripped`: an LSSKD training model (aux classifiers on stages 0 and 1, hsakd branches)
  exported through surgery: target <= 1.02x `plain`;
- `naive_aux`: the same training model exported as-is, every head computed (what a hand-written
  export script that forgets surgery ships);
- `dho_exact`: a DHO dual head folded `exact` (one GEMM of 2C rows + the softmax mix): target
  <= 1.03x `plain`;
- `int8`: `plain`'s INT8 QDQ export (CPU flavour U8S8): target >= 1.5x faster than FP32 at batch
  32 with <= 1.0 point top-1 drop on the CIFAR-10 test split;
- torch eager on the plain student at batch 1 vs ONNX Runtime: target ORT >= 2x faster.

    python benchmarks/export.py [--rounds 7] [--time 0.5] [--tag cpu]

Writes benchmarks/results/export_<tag>.json and .md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from cifar import ARCHIVE, ensure_cifar, machine_line  # noqa: E402

CIFAR_CKPT = Path("/tmp/edgekd-runs/cifar_resnet20_ce/best.pt")


def training_checkpoint(path: Path, base: dict, method: str, data, **overrides) -> Path:
    """A checkpoint of `method`'s TrainingModel whose student holds `base`'s trained weights."""
    from edgekd.config import build_config, config_to_dict
    from edgekd.models import build_model
    from edgekd.train.checkpoint import save_checkpoint
    from edgekd.train.model import build_training_model

    cfg = build_config(overrides=dict(model=base["model_name"], method=method, data=data.spec, **overrides))
    student = build_model(base["model_name"], **base["model_kwargs"])
    student.load_state_dict({k[len("student."):]: v for k, v in base["model_state"].items() if k.startswith("student.")})
    tm = build_training_model(cfg, student)
    if method == "dho":
        with torch.no_grad():
            tm.mix_alpha.fill_(0.5)
            tm.mix_beta.fill_(1.5)
    save_checkpoint(path, {**{k: v for k, v in base.items() if k not in ("format", "format_version", "edgekd_version", "path")},
                           "model_state": tm.state_dict(), "config": config_to_dict(cfg), "output_kind": tm.output_kind})
    return path


def naive_export(ckpt: Path, out: Path, input_shape) -> Path:
    """The training model exported with every head as an output (no surgery)."""
    import warnings

    from edgekd.train.checkpoint import load_checkpoint, rebuild_training_model

    tm = rebuild_training_model(load_checkpoint(ckpt)).eval()

    class AllHeads(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return tuple(self.m.heads(x).values())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(AllHeads(tm), (torch.zeros(2, *input_shape),), str(out), dynamo=False, opset_version=17,
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    return out


def session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # backends alternate here
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def time_call(fn, min_time: float, min_iters: int = 10) -> float:
    """Median ms of fn() over at least min_time seconds and min_iters calls."""
    samples, t_end = [], time.perf_counter() + min_time
    while len(samples) < min_iters or time.perf_counter() < t_end:
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--time", type=float, default=0.5, help="timed seconds per model, batch and round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from edgekd.data import load_dataset
    from edgekd.export.pipeline import ExportOptions, run_export
    from edgekd.train.checkpoint import load_checkpoint, rebuild_training_model

    if CIFAR_CKPT.is_file() and ARCHIVE.is_file():
        data = load_dataset(ensure_cifar(), 0.1, 0)
        base_path, trained = CIFAR_CKPT, True
    else:  # figures of speed only: random weights on synthetic data
        print(f"no {CIFAR_CKPT} (or no CIFAR-10 archive): timing a randomly initialised resnet20 on synthetic data")
        from edgekd.config import build_config
        from edgekd.train.loop import train

        data = load_dataset("synthetic:n_train=600,n_test=200", 0.1, 0)
        tmp_run = Path(tempfile.mkdtemp()) / "run"
        train(build_config(overrides=dict(model="resnet20", epochs=1, max_steps_per_epoch=2, out=str(tmp_run),
                                          progress=False, data=data.spec)), data=data, log=lambda s: None)
        base_path, trained = tmp_run / "best.pt", False
    base = load_checkpoint(base_path)
    shape = tuple(base["input_shape"])
    work = Path(tempfile.mkdtemp(prefix="edgekd-export-bench-"))
    quiet = lambda s: None  # noqa: E731
    files, manifests = {}, {}
    r = run_export(ExportOptions(ckpt=str(base_path), out=str(work / "plain"), int8=True), log=quiet, data=data)
    files["plain"], files["int8"], manifests["plain"] = r.files["onnx"], r.files["int8"], r.manifest
    aux_ck = training_checkpoint(work / "lsskd.pt", base, "lsskd", data, lsskd={"stages": (0, 1), "branch": "hsakd"})
    r = run_export(ExportOptions(ckpt=str(aux_ck), out=str(work / "stripped")), log=quiet, data=data)
    files["stripped"], manifests["stripped"] = r.files["onnx"], r.manifest
    files["naive_aux"] = naive_export(aux_ck, work / "naive_aux.onnx", shape)
    dho_ck = training_checkpoint(work / "dho.pt", base, "dho", data)
    r = run_export(ExportOptions(ckpt=str(dho_ck), out=str(work / "dho_exact"), fold="exact"), log=quiet, data=data)
    files["dho_exact"], manifests["dho_exact"] = r.files["onnx"], r.manifest

    sessions = {k: session(p, args.threads) for k, p in files.items()}
    eager = rebuild_training_model(base).student.eval()
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, *shape)).astype(np.float32) for b in (1, 32)}
    ms: dict[str, dict[int, list[float]]] = {k: {1: [], 32: []} for k in [*files, "torch_eager"]}
    for s in sessions.values():  # warm-up
        s.run(None, {"input": inputs[32]})
    with torch.inference_mode():
        for r_i in range(args.rounds):
            for b, x in inputs.items():
                for name, s in sessions.items():
                    ms[name][b].append(time_call(lambda s=s, x=x: s.run(None, {"input": x}), args.time))
                xt = torch.from_numpy(x)
                ms["torch_eager"][b].append(time_call(lambda xt=xt: eager(xt), args.time))
            print(f"round {r_i + 1}/{args.rounds}: " + ", ".join(f"{k} {v[1][-1]:.3f}" for k, v in ms.items()), flush=True)
    med = {k: {b: statistics.median(v) for b, v in d.items()} for k, d in ms.items()}

    def ratio(a: str, b: str, batch: int) -> float:  # median of per-round ratios (same round, same load)
        return round(statistics.median(x / y for x, y in zip(ms[a][batch], ms[b][batch])), 3)

    acc = manifests["plain"]["int8"]["accuracy"]
    # the test split too (the export's budget is on validation)
    xt = ((data.x_test.transpose(0, 3, 1, 2).astype(np.float32) / 255.0) - np.array(base["mean"], np.float32).reshape(1, -1, 1, 1)) \
        / np.array(base["std"], np.float32).reshape(1, -1, 1, 1)
    top1 = {}
    for k in ("plain", "int8"):
        pred = np.concatenate([sessions[k].run(None, {"input": xt[i:i + 500]})[0].argmax(1) for i in range(0, len(xt), 500)])
        top1[k] = round(float((pred == data.y_test).mean() * 100), 2)
    res = {
        "tag": args.tag, "command": "python benchmarks/export.py " + " ".join(sys.argv[1:]),
        "machine": machine_line("cpu", args.threads), "loadavg": [round(v, 2) for v in os.getloadavg()],
        "model": base["model_name"], "trained_weights": trained, "data": data.spec,
        "params": {k: manifests[k]["graph"]["params"] for k in manifests},
        "removed_by_surgery": manifests["stripped"]["surgery"].get("removed_params"),
        "median_ms": med, "ms": ms,
        "ratios": {"stripped_over_plain_b1": ratio("stripped", "plain", 1), "stripped_over_plain_b32": ratio("stripped", "plain", 32),
                   "naive_aux_over_plain_b1": ratio("naive_aux", "plain", 1), "naive_aux_over_plain_b32": ratio("naive_aux", "plain", 32),
                   "dho_exact_over_plain_b1": ratio("dho_exact", "plain", 1), "dho_exact_over_plain_b32": ratio("dho_exact", "plain", 32),
                   "torch_eager_over_ort_b1": ratio("torch_eager", "plain", 1),
                   "fp32_over_int8_b32": ratio("plain", "int8", 32), "fp32_over_int8_b1": ratio("plain", "int8", 1)},
        "int8": {"flavour": manifests["plain"]["int8"]["flavour"], "val_budget": acc, "test_top1": top1,
                 "test_drop_points": round(top1["plain"] - top1["int8"], 2)},
    }
    q = res["ratios"]
    res["targets"] = {"stripped <= 1.02x plain": max(q["stripped_over_plain_b1"], q["stripped_over_plain_b32"]) <= 1.02,
                      "dho exact <= 1.03x plain": max(q["dho_exact_over_plain_b1"], q["dho_exact_over_plain_b32"]) <= 1.03,
                      "ORT >= 2x torch eager at batch 1": q["torch_eager_over_ort_b1"] >= 2.0,
                      "INT8 >= 1.5x FP32 at batch 32, drop <= 1.0": q["fp32_over_int8_b32"] >= 1.5 and res["int8"]["test_drop_points"] <= 1.0}
    from edgekd.io import write_json_atomic, write_text_atomic

    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / f"export_{args.tag}.json", res)
    lines = [f"# Surgery and export at inference ({args.tag})", "",
             f"{res['machine']}; load average at the end {res['loadavg']}. {base['model_name']} "
             f"({'the CIFAR-10 CE baseline' if trained else 'random weights'}); {args.rounds} interleaved rounds, "
             f"{args.time} s per model and batch each; ONNX Runtime CPU, {args.threads} threads, spinning off.", "",
             "| artifact | params in graph | p50 ms batch 1 | p50 ms batch 32 | vs plain b1 | vs plain b32 |", "|---|---:|---:|---:|---:|---:|"]
    for k in [*files, "torch_eager"]:
        p = res["params"].get(k, "-") if k not in ("naive_aux", "int8", "torch_eager") else "-"
        vs = (f"{ratio(k, 'plain', 1):.3f}x | {ratio(k, 'plain', 32):.3f}x")
        lines.append(f"| {k} | {p} | {med[k][1]:.3f} | {med[k][32]:.3f} | {vs} |")
    lines += ["", f"Surgery removed {res['removed_by_surgery']} parameters (the aux classifiers). INT8 ({res['int8']['flavour']}): "
              f"CIFAR-10 test top-1 {top1['int8']:.2f}% vs FP32 {top1['plain']:.2f}% (drop {res['int8']['test_drop_points']:.2f} points).", "",
              "| target | met |", "|---|---|"] + [f"| {k} | {'yes' if v else 'NO'} |" for k, v in res["targets"].items()]
    lines += ["", f"Command: `{res['command']}`", ""]
    write_text_atomic(out / f"export_{args.tag}.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
