"""x86 side of scripts/aarch64_verify.sh: prepare the case (model + real images + host predictions)
and compare the host's predictions with the emulated aarch64 ones.

    python scripts/aarch64_case.py prepare --ckpt CKPT --data CIFAR_DIR --n-per-class N --out CASE
    python scripts/aarch64_case.py compare --case CASE --results benchmarks/results

Needs edgekd[train] on the host (export, torch reference); the aarch64 side needs only the runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

KNOWN_CKPTS = ("/tmp/edgekd-runs/cifar_resnet20_ce/best.pt", "/tmp/edgekd-rt/resnet20_ce/best.pt")
MAX_SCORE_DIFF = 1e-4  # probabilities; FP32 kernels on two ISAs differ by ~1e-6
RUNTIME_ARGS = ["--json", "--top-k", "10", "--batch-size", "32"]


def find_checkpoint(ckpt: str, data: str) -> Path:
    """The given checkpoint, a known CIFAR-10 run, or a short resnet20 run trained now."""
    if ckpt:
        return Path(ckpt)
    for cand in KNOWN_CKPTS:
        if Path(cand).is_file():
            return Path(cand)
    from edgekd.config import build_config
    from edgekd.train.loop import train

    out = Path(KNOWN_CKPTS[1]).parent
    print(f"[aarch64] no trained checkpoint found; training a short resnet20 run into {out}", file=sys.stderr)
    cfg = build_config(overrides=dict(model="resnet20", epochs=1, out=str(out), data=f"imagefolder:{data}",
                                      max_steps_per_epoch=120, progress=False))
    train(cfg, log=lambda s: print(s, file=sys.stderr))
    return out / "best.pt"


def run_runtime(model: Path, images: Path) -> tuple[dict, float]:
    """The host's `python -m edgekd.runtime` on the case (same command as inside the root)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgekd.runtime", str(model), str(images), *RUNTIME_ARGS],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"error: host runtime failed (exit {proc.returncode}): {proc.stderr.strip()[:400]}")
    return json.loads(proc.stdout), wall


def prepare(args: argparse.Namespace) -> None:
    import torch

    from edgekd.data.transforms import eval_transform
    from edgekd.export.pipeline import ExportOptions, run_export
    from edgekd.train.checkpoint import load_checkpoint, rebuild_training_model

    torch.set_num_threads(1)
    case = Path(args.out)
    data = Path(args.data)
    ckpt = find_checkpoint(args.ckpt, str(data))
    res = run_export(ExportOptions(ckpt=str(ckpt), out=str(case / "export"), format="onnx", data=f"imagefolder:{data}"),
                     log=lambda s: print(s, file=sys.stderr))
    shutil.copy(res.out_dir / "model.onnx", case / "model.onnx")
    shutil.copy(res.out_dir / "manifest.json", case / "manifest.json")

    # the first N test images of every class, real JPEGs as they are on disk
    files = []
    for cdir in sorted(p for p in (data / "test").iterdir() if p.is_dir()):
        for f in sorted(cdir.glob("*.jpg"))[: args.n_per_class]:
            dst = case / "images" / cdir.name / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dst)
            files.append(dst)
    host, wall = run_runtime(case / "model.onnx", case / "images")
    (case / "x86_pred.json").write_text(json.dumps(host))

    # torch reference: training's decode + eval transform on the same files
    from PIL import Image

    ck = load_checkpoint(ckpt)
    model = rebuild_training_model(ck)
    x = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.uint8) for f in files])
    with torch.no_grad():
        out = model(eval_transform(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), ck["mean"], ck["std"]))
    torch_top1 = {str(f.relative_to(case / "images")): int(i) for f, i in zip(files, out.argmax(1).tolist())}
    info = {"checkpoint": str(ckpt), "checkpoint_test_acc": ck.get("test_acc"), "n_images": len(files),
            "x86_wall_s": round(wall, 3), "torch_top1": torch_top1,
            "host": {"machine": platform.machine(), "python": platform.python_version(),
                     "numpy": np.__version__, "onnxruntime": __import__("onnxruntime").__version__,
                     "pillow": __import__("PIL").__version__, "torch": torch.__version__}}
    (case / "x86_info.json").write_text(json.dumps(info))


def _by_file(doc: dict) -> dict:
    """{path relative to images/: (class index list in score order, probability vector)}."""
    out = {}
    for r in doc["results"]:
        rel = r["file"].split("images/", 1)[1]
        if "error" in r:
            out[rel] = None
            continue
        probs = np.zeros(len(r["top_k"]), dtype=np.float64)
        for t in r["top_k"]:
            probs[t["index"]] = t["score"]
        out[rel] = (r["index"], probs, r["label"])
    return out


def qemu_version() -> str:
    try:
        return subprocess.run(["qemu-aarch64-static", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "unknown"


def compare_openvino(case: Path, x86: dict, n_images: int) -> dict | None:
    """The aarch64 OpenVINO run (arm_pred_openvino.json) against the x86 ONNX Runtime predictions; None when absent."""
    path = case / "arm_pred_openvino.json"
    if not path.is_file() or not path.read_text().strip():
        return None
    doc = json.loads(path.read_text())
    ov = _by_file(doc)
    ok = [k for k in sorted(set(x86) & set(ov)) if x86[k] is not None and ov[k] is not None]
    agree = sum(x86[k][0] == ov[k][0] for k in ok)
    diffs = np.array([np.abs(x86[k][1] - ov[k][1]).max() for k in ok]) if ok else np.array([np.inf])
    env = json.loads((case / "arm_env.json").read_text())
    return {"backend": doc.get("backend"), "openvino": env.get("openvino", "unknown"), "classified": len(ok),
            "top1_agreement_pct": round(100.0 * agree / max(1, len(ok)), 3), "max_abs_prob_diff": float(diffs.max()),
            "passed": len(ok) == n_images and agree == len(ok) and float(diffs.max()) <= MAX_SCORE_DIFF,
            "command": "python3 -m edgekd.runtime model.onnx images/ " + " ".join(RUNTIME_ARGS) + " --backend openvino"}


def compare(args: argparse.Namespace) -> int:
    from edgekd.io import write_json_atomic, write_text_atomic

    case, results = Path(args.case), Path(args.results)
    x86 = _by_file(json.loads((case / "x86_pred.json").read_text()))
    arm = _by_file(json.loads((case / "arm_pred.json").read_text()))
    info = json.loads((case / "x86_info.json").read_text())
    arm_env = json.loads((case / "arm_env.json").read_text())
    arm_wall = json.loads((case / "arm_time.json").read_text())["wall_ms"] / 1000.0
    manifest = json.loads((case / "manifest.json").read_text())
    names = manifest["class_names"]
    common = sorted(set(x86) & set(arm))
    ok = [k for k in common if x86[k] is not None and arm[k] is not None]
    agree = sum(x86[k][0] == arm[k][0] for k in ok)
    torch_agree = sum(info["torch_top1"].get(k) == x86[k][0] for k in ok)
    diffs = np.array([np.abs(x86[k][1] - arm[k][1]).max() for k in ok]) if ok else np.array([np.inf])
    labels = {k: names.index(k.split("/")[0]) for k in ok}
    acc = lambda d: 100.0 * sum(d[k][0] == labels[k] for k in ok) / max(1, len(ok))  # noqa: E731
    passed = (len(ok) == info["n_images"] == len(common) and agree == len(ok) and float(diffs.max()) <= MAX_SCORE_DIFF)
    report = {
        "what": "edgekd.runtime on aarch64 under qemu-user-static vs x86, same ONNX model and real CIFAR-10 test JPEGs",
        "passed": passed,
        "n_images": info["n_images"],
        "classified_x86": sum(v is not None for v in x86.values()),
        "classified_aarch64": sum(v is not None for v in arm.values()),
        "top1_agreement_pct": round(100.0 * agree / max(1, len(ok)), 3),
        "max_abs_prob_diff": float(diffs.max()),
        "median_abs_prob_diff": float(np.median(diffs)),
        "score_tolerance": MAX_SCORE_DIFF,
        "torch_vs_x86_runtime_top1_agreement_pct": round(100.0 * torch_agree / max(1, len(ok)), 3),
        "accuracy_x86_pct": round(acc(x86), 2),
        "accuracy_aarch64_pct": round(acc(arm), 2),
        "wall_s": {"x86_native": info["x86_wall_s"], "aarch64_emulated": round(arm_wall, 3),
                   "note": "whole `python -m edgekd.runtime` process incl. imports; emulation is not Pi speed"},
        "model": {"checkpoint": info["checkpoint"], "name": manifest.get("model", {}).get("name"),
                  "params": manifest.get("model", {}).get("params"), "opset": manifest.get("opset"),
                  "input_shape": manifest["input"]["shape"], "output": manifest["output"]["name"]},
        "command": "python3 -m edgekd.runtime model.onnx images/ " + " ".join(RUNTIME_ARGS),
        "qemu": {"version": qemu_version(), "QEMU_CPU": os.environ.get("QEMU_CPU", "cortex-a72")},
        "aarch64_env": arm_env,
        "aarch64_files": "edgekd/__init__.py, errors.py, names.py, deps.py, io.py, edgekd/runtime/*.py only",
        "x86_env": info["host"],
        "date": time.strftime("%Y-%m-%d"),
    }
    ov = compare_openvino(case, x86, report["n_images"])
    if ov is not None:  # `edgekd-run --backend openvino` in the root: correctness only
        report["openvino_aarch64"] = ov
        passed = report["passed"] = passed and ov["passed"]
    results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(results / "aarch64_qemu.json", report)
    w = report["wall_s"]
    ov_row = ("" if ov is None else f"| `--backend openvino` (OpenVINO {ov['openvino']}) aarch64 vs x86 ONNX Runtime: "
              f"classified / top-1 agreement / max abs prob diff | {ov['classified']} / {ov['top1_agreement_pct']}% / "
              f"{ov['max_abs_prob_diff']:.2e} (tolerance {MAX_SCORE_DIFF:g}) |\n")
    md = f"""# edgekd.runtime on aarch64 (qemu-user-static) vs x86

Produced by `sudo make aarch64-check` (scripts/aarch64_verify.sh) on {report['date']}.

- Root: Debian bookworm arm64 (debootstrap minbase) with python3 {arm_env['python']}, numpy {arm_env['numpy']} (Debian),
  onnxruntime {arm_env['onnxruntime']} and Pillow {arm_env['pillow']} (PyPI aarch64 wheels); torch importable: {arm_env['torch_importable']}.
  Only {report['aarch64_files']} were copied in.
- Emulation: {report['qemu']['version']}, `QEMU_CPU={report['qemu']['QEMU_CPU']}` (Raspberry Pi 4 core), machine `{arm_env['machine']}`.
- Model: `{report['model']['name']}` ({report['model']['params']} params, opset {report['model']['opset']}, output `{report['model']['output']}`)
  exported by `edgekd export` from `{report['model']['checkpoint']}`.
- Data: {report['n_images']} real CIFAR-10 test JPEGs ({report['n_images'] // 10} per class).
- Command (both sides): `{report['command']}`

| check | result |
|---|---|
| images classified x86 / aarch64 | {report['classified_x86']} / {report['classified_aarch64']} |
| top-1 agreement aarch64 vs x86 | {report['top1_agreement_pct']}% |
| max abs probability diff | {report['max_abs_prob_diff']:.2e} (median {report['median_abs_prob_diff']:.2e}, tolerance {MAX_SCORE_DIFF:g}) |
| top-1 agreement torch (x86) vs x86 runtime | {report['torch_vs_x86_runtime_top1_agreement_pct']}% |
| accuracy x86 / aarch64 | {report['accuracy_x86_pct']}% / {report['accuracy_aarch64_pct']}% |
| wall time of the command, x86 native / aarch64 emulated | {w['x86_native']} s / {w['aarch64_emulated']} s |
{ov_row}| **passed** | **{passed}** |

The wall times include interpreter start-up and imports; emulated time says nothing about a real
Pi's speed (measure that with `edgekd bench` on the device, see deploy/raspberrypi/README.md).
"""
    write_text_atomic(results / "aarch64_qemu.md", md)
    print(md)
    return 0 if passed else 3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--ckpt", default="")
    a.add_argument("--data", required=True)
    a.add_argument("--n-per-class", type=int, default=10)
    a.add_argument("--out", required=True)
    b = sub.add_parser("compare")
    b.add_argument("--case", required=True)
    b.add_argument("--results", required=True)
    args = p.parse_args()
    if args.cmd == "prepare":
        prepare(args)
        return 0
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
