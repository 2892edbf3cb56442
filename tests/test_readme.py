"""The README's two commands stay true: they name Makefile targets that set up and run the demo
and the tests, and the demo command itself runs (on a reduced budget)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _make_recipe(target: str) -> str:
    text = (ROOT / "Makefile").read_text()
    m = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", text, re.M)
    assert m, f"Makefile has no {target} target"
    return m.group(1)


def test_readme_commands_name_make_targets():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "edgekd demo" in _make_recipe("demo")
    assert "pytest" in _make_recipe("test")
    # every install pins torch through the constraints file
    installs = re.findall(r"(?:pip|\$\(PIP\)) install.*", (ROOT / "Makefile").read_text())
    assert installs and all("-c constraints.txt" in line for line in installs)
    assert "torch==" in (ROOT / "constraints.txt").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "ruff check" in ci


def test_demo_command_runs_reduced(tmp_path):
    """`edgekd demo` (the README's main job) on a reduced budget: every stage leaves all of its artifacts."""
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "edgekd", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1].startswith("note: --quick") and "meaningless" in proc.stdout  # said, last
    summary = json.loads((out / "demo_summary.json").read_text())
    assert (out / "train" / "best.pt").is_file()
    assert "train" in summary
    for stage, path in summary.get("artifacts", {}).items():
        assert (out / path).exists(), f"demo stage {stage} did not write {path}"
    assert set(summary["artifacts"]) >= {"train", "onnx", "int8", "manifest", "kit", "bench", "runtime"}
    assert summary["stages"] == ["train", "export", "kit", "bench", "runtime"]

    # 1. train: the run directory of `edgekd train`
    run = out / "train"
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "summary.json"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, f"train did not write {name}"
    assert yaml.safe_load((run / "config.yaml").read_text())["method"] == "lsskd"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1]

    # 2. export: verified ONNX + INT8 + manifest, nothing left in a staging directory
    export = out / "export"
    for name in ("model.onnx", "model.int8.onnx", "manifest.json"):
        assert (export / name).is_file() and (export / name).stat().st_size > 0, f"export did not write {name}"
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["format"] == "edgekd-manifest" and len(manifest["class_names"]) == 10
    assert manifest["input"]["shape"] == [None, 3, 32, 32] and len(manifest["input"]["mean"]) == 3
    assert manifest["output"]["kind"] == "logits" and manifest["parity"]["top1_agreement"] >= 99.0
    assert manifest["surgery"]["removed_params"] > 0  # the LSSKD aux classifiers were stripped
    assert manifest["int8"]["flavour"] == "U8S8" and set(manifest["files"]) >= {"model.onnx", "model.int8.onnx"}
    assert summary["export"]["parity"] and summary["export"]["int8"]
    assert sorted(p.name for p in out.iterdir()) == ["bench", "demo_summary.json", "export", "jetson", "runtime",
                                                     "train"]

    # 3. Jetson build kit (the engine is built on the device)
    kit = out / "jetson"
    for name in ("model.onnx", "manifest.json", "build_engine.sh", "README.md", "SHA256SUMS"):
        assert (kit / name).is_file(), f"the Jetson kit lacks {name}"
    assert os.access(kit / "build_engine.sh", os.X_OK) and "trtexec" in (kit / "build_engine.sh").read_text()

    # 4. bench: the JSON and markdown reports, the three models side by side
    report = json.loads((out / "bench" / "report.json").read_text())
    assert report["schema"] == "edgekd-bench-report" and len(report["artifacts"]) == 3
    assert all(a["accuracy"] and a["latency"] for a in report["artifacts"])
    assert (out / "bench" / "report.md").read_text().strip()
    assert set(summary["bench"]) == {a["name"] for a in report["artifacts"]}

    # 5. runtime: PNG files classified by the torch-free runtime
    pngs = sorted((out / "runtime" / "images").glob("*.png"))
    predictions = json.loads((out / "runtime" / "predictions.json").read_text())
    assert len(pngs) == predictions["n"] == len(predictions["predictions"]) == summary["runtime"]["n"] == 32
    assert {p["file"] for p in predictions["predictions"]} == {p.name for p in pngs}
    assert set(p["label"] for p in predictions["predictions"]) <= set(manifest["class_names"])
    assert summary["runtime"]["agreement_with_arrays"] == 100.0
