"""OpenVINO backend: the device runtime (torch-free), `edgekd export --format openvino` with its proof,
and `edgekd bench --backend ort,openvino --precision-hint f32,bf16` (entries, budget, recommendation).

Real OpenVINO sessions; the module skips, naming the extra, only where `openvino` is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("openvino") is None:  # the [openvino] extra (part of [test]) is absent
    pytest.skip("needs OpenVINO: `import openvino` fails (pip extra edgekd[openvino])", allow_module_level=True)

from typer.testing import CliRunner  # noqa: E402

from edgekd.bench.plan import Entry, entries_for, plan_entries, reference_of  # noqa: E402
from edgekd.bench.recommend import check_budgets, recommend  # noqa: E402
from edgekd.cli import app  # noqa: E402
from edgekd.errors import EdgekdError, GateError  # noqa: E402
from edgekd.runtime import Classifier, ModelError  # noqa: E402
from edgekd.runtime.__main__ import main as run_main  # noqa: E402
from edgekd.runtime.openvino import OpenVinoModel  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_runtime import NO_TORCH, make_model_dir, write_pngs  # noqa: E402

DATA = "synthetic:n_train=300,n_test=100"


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("ov-rgb"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny trained run exported with --format openvino --int8 (ONNX, INT8 QDQ, both IRs, manifest)."""
    from edgekd.config import build_config
    from edgekd.export.options import ExportOptions
    from edgekd.export.pipeline import run_export
    from edgekd.train.loop import train

    root = tmp_path_factory.mktemp("ov-export")
    train(build_config(overrides=dict(model="tiny", epochs=1, out=str(root / "run"), data=DATA, max_steps_per_epoch=3,
                                      progress=False)), log=lambda m: None)
    logs: list[str] = []
    res = run_export(ExportOptions(ckpt=str(root / "run" / "best.pt"), out=str(root / "exp"), format="openvino",
                                   int8=True, max_accuracy_drop=100.0), log=logs.append)
    return {"root": root, "exp": root / "exp", "result": res, "logs": logs}


# ------------------------------------------------------------------------------ runtime


def test_openvino_model_matches_onnx_runtime(rgb_model):
    import torch

    path, module = rgb_model
    x = np.random.default_rng(0).normal(size=(7, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    m = OpenVinoModel(path, threads=1)
    assert (m.input_name, m.output_name, m.input_type) == ("input", "logits", "tensor(float)")
    assert m.input_dims == [None, 3, 16, 16] and m.output_dims == [None, 3]
    assert m.inference_precision == "f32" and m.settings["threads"] == 1
    np.testing.assert_allclose(m.run(x), want, atol=1e-5)
    bf = OpenVinoModel(path, threads=1, precision_hint="bf16")
    assert bf.inference_precision in ("bf16", "f32")  # f32 on a CPU without bf16
    assert (bf.run(x).argmax(1) == want.argmax(1)).mean() > 0.5


def test_classifier_and_cli_on_openvino_agree_with_ort(tmp_path, capsys, rgb_model):
    path, _ = rgb_model
    files = write_pngs(tmp_path / "imgs", 5, size=16)
    ort = [r.prediction for r in Classifier(path).classify_files(files, top_k=3)]
    ov = Classifier(path, backend="openvino", threads=1)
    assert ov.backend_name == "openvino"
    got = [r.prediction for r in ov.classify_files(files, top_k=3)]
    assert [p.label for p in got] == [p.label for p in ort]
    assert np.allclose([p.score for p in got], [p.score for p in ort], atol=1e-5)
    code = run_main([str(path), str(tmp_path / "imgs"), "--backend", "openvino", "--json", "--precision-hint", "bf16"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["backend"] == "openvino" and len(doc["results"]) == 5


def test_runtime_backend_errors_are_one_line(tmp_path, capsys, rgb_model):
    path, _ = rgb_model
    with pytest.raises(EdgekdError, match="cannot run on the trt backend; use ort or openvino"):
        Classifier(path, backend="trt")
    with pytest.raises(EdgekdError, match="providers are ONNX Runtime's"):
        Classifier(path, backend="openvino", providers=["cpu"])
    with pytest.raises(EdgekdError, match="unknown OpenVINO precision hint"):
        OpenVinoModel(path, precision_hint="fp8")
    xml = tmp_path / "model.xml"
    xml.write_text("<net/>")
    with pytest.raises(ModelError, match="needs its weights file model.bin"):
        Classifier(xml)
    xml.with_suffix(".bin").write_bytes(b"")
    with pytest.raises(ModelError, match="not a model OpenVINO can read"):
        OpenVinoModel(xml)
    img = write_pngs(tmp_path / "imgs", 1, size=16)[0]
    assert run_main([str(xml), str(img)]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and "OpenVINO" in err[0]


def test_openvino_runtime_needs_no_torch(tmp_path, rgb_model):
    path, _ = rgb_model
    files = [str(f) for f in write_pngs(tmp_path / "imgs", 2, size=16)]
    code = NO_TORCH.replace("rt.Classifier(sys.argv[1])", "rt.Classifier(sys.argv[1], backend='openvino')").replace(
        '"--json"]', '"--json", "--backend", "openvino"]')
    proc = subprocess.run([sys.executable, "-c", code, str(path), *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = proc.stderr.strip().splitlines()[-1]
    assert "CODE 0" in summary and "HEAVY []" in summary and "OURS []" in summary, summary
    assert json.loads(proc.stdout)["backend"] == "openvino"


# ------------------------------------------------------------------------------ export


def test_export_format_openvino_writes_proven_ir(exported, tmp_path):
    exp, res = exported["exp"], exported["result"]
    names = {p.name for p in exp.iterdir()}
    assert {"model.onnx", "model.int8.onnx", "model.xml", "model.bin", "model.int8.xml", "model.int8.bin",
            "manifest.json"} <= names
    rec = json.loads((exp / "manifest.json").read_text())["openvino"]
    assert rec["ir"] == "model.xml" and rec["compress_to_fp16"] is False
    assert rec["parity"]["max_abs_diff"] <= rec["parity"]["tolerance"] and rec["parity"]["top1_agreement"] >= 99
    assert rec["accuracy"]["within_budget"] and rec["int8"]["accuracy"]["within_budget"]
    assert any(line.startswith("openvino: IR model.xml") for line in exported["logs"])
    assert res.manifest["files"]["model.xml"] and res.manifest["files"]["model.int8.bin"]
    # the IR runs by its suffix on the runtime and agrees with ONNX Runtime on model.onnx
    files = write_pngs(tmp_path / "imgs", 4, size=32)
    ir = Classifier(exp / "model.xml")
    assert ir.backend_name == "openvino" and ir.manifest.num_classes == 10
    onnx_preds = [r.prediction.label for r in Classifier(exp / "model.onnx").classify_files(files)]
    assert [r.prediction.label for r in ir.classify_files(files)] == onnx_preds


def test_export_openvino_parity_failure_is_a_gate(exported, tmp_path, monkeypatch):
    import edgekd.export.openvino as ovx
    from edgekd.export.options import ExportOptions
    from edgekd.export.pipeline import run_export

    real = ovx.predict
    monkeypatch.setattr(ovx, "predict", lambda m, x, batch=256: real(m, x, batch) + 0.5)  # a broken conversion
    out = tmp_path / "exp"
    with pytest.raises(GateError, match="OpenVINO IR parity failed"):
        run_export(ExportOptions(ckpt=str(exported["root"] / "run" / "best.pt"), out=str(out), format="openvino"),
                   log=lambda m: None)
    assert not out.exists()  # nothing half-written


def test_export_openvino_refuses_jetson_target(exported):
    from edgekd.export.options import ExportOptions, validate_options

    with pytest.raises(EdgekdError, match="--format openvino runs on CPUs"):
        validate_options(ExportOptions(ckpt="x.pt", out="o", format="openvino", target="jetson"))


# ------------------------------------------------------------------------------ bench


def test_plan_entries_tags_and_references(exported):
    exp = exported["exp"]
    onnx, int8, ir = str(exp / "model.onnx"), str(exp / "model.int8.onnx"), str(exp / "model.int8.xml")
    entries, added = plan_entries([int8, ir], "ort,openvino", "bf16")
    names = [e.name for e in entries]
    assert names[:3] == [int8, f"{int8} [openvino bf16]", f"{ir} [bf16]"]
    # FP32 references added at f32 on the same backend: the INT8 sources (ONNX, IR)
    assert set(names[3:]) == {onnx, f"{onnx} [openvino]", str(exp / "model.xml")} and set(added) == set(names[3:])
    precisions = ["int8", "int8", "int8", "fp32", "fp32", "fp32"]
    refs = [reference_of(entries, i, precisions) for i in range(3)]
    assert [entries[j].name for j in refs] == [onnx, f"{onnx} [openvino]", str(exp / "model.xml")]
    bf16, _ = plan_entries([onnx], "openvino", "bf16")
    assert [e.name for e in bf16] == [f"{onnx} [openvino bf16]", f"{onnx} [openvino]"]
    with pytest.raises(EdgekdError, match="cannot run on --backend openvino"):
        entries_for(str(exported["root"] / "run" / "best.pt"), ("openvino",), ("f32",))
    with pytest.raises(EdgekdError, match="unknown backend 'tflite' in --backend 'ort,tflite'"):
        plan_entries([onnx], "ort,tflite", None)


def _art(name, device, precision, p50s, top1=None, status="ok"):
    return {"name": name, "device": device, "precision": precision, "backend": name.split(":")[0], "status": status,
            "accuracy": {"top1": top1} if top1 is not None else None, "runner_settings": {},
            "latency": [{"batch_size": bs, "p50_ms": p} for bs, p in p50s.items()]}


def test_budget_and_recommendation_pick_the_fastest_within_budget(tmp_path):
    for f in ("model.onnx", "model.int8.onnx"):
        (tmp_path / f).write_bytes(b"")
    onnx, int8 = str(tmp_path / "model.onnx"), str(tmp_path / "model.int8.onnx")
    entries = [Entry(onnx, "ort"), Entry(int8, "ort"), Entry(onnx, "openvino", "bf16"), Entry(int8, "openvino")]
    arts = [_art("ort:fp32", "cpu", "fp32", {1: 0.8, 32: 12.0}, 90.0),
            _art("ort:int8", "cpu", "int8", {1: 0.5, 32: 8.0}, 89.5),
            _art("openvino:bf16", "cpu", "bf16", {1: 0.45, 32: 4.0}, 89.6),
            _art("openvino:int8", "cpu", "int8", {1: 0.3, 32: 3.0}, 87.0)]  # fastest, but 3 points down
    check_budgets(arts, entries, 1.0)
    assert arts[1]["accuracy_budget"]["within_budget"] and arts[2]["accuracy_budget"]["reference"] == "ort:fp32"
    assert arts[3]["status"] == "accuracy budget exceeded" and "drop of 3.00 points" in arts[3]["budget_failures"][0]
    (rec,) = recommend(arts, 1.0)
    assert rec["by_batch"][32]["name"] == "openvino:bf16" and rec["by_batch"][32]["speedup"] == pytest.approx(3.0)
    assert rec["line"].startswith("recommendation (cpu): openvino:bf16 (openvino bf16) (batch 1 0.450 ms, 1.78x")
    from edgekd.bench.suite import report_failures

    assert report_failures({"artifacts": arts}, allow_slow_int8=True) == arts[3]["budget_failures"]  # never waived
    # without --data nothing reduced is within a checked budget: FP32 only, and the line says why
    plain = [_art("ort:fp32", "cpu", "fp32", {1: 0.8}), _art("ort:int8", "cpu", "int8", {1: 0.5})]
    check_budgets(plain, entries[:2], 1.0)
    (rec,) = recommend(plain, 1.0)
    assert rec["by_batch"][1]["name"] == "ort:fp32" and "without --data are not considered" in rec["line"]
    two = recommend([_art("a", "cpu", "fp32", {1: 1.0}), _art("b", "cuda", "fp32", {1: 0.1})], 1.0)
    assert [r["device"] for r in two] == ["cpu", "cuda"]  # one line per device


def test_cli_bench_ort_and_openvino_interleaved_with_recommendation(exported, tmp_path):
    exp = exported["exp"]
    out = tmp_path / "report.json"
    res = CliRunner().invoke(app, ["bench", str(exp / "model.onnx"), "--backend", "ort,openvino", "--precision-hint",
                                   "f32,bf16", "--data", DATA, "--batch-sizes", "1,4", "--min-time", "0.05",
                                   "--min-iters", "3", "--warmup", "1", "--json", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    names = [a["name"] for a in report["artifacts"]]
    onnx = str(exp / "model.onnx")
    assert names == [onnx, f"{onnx} [openvino]", f"{onnx} [openvino bf16]"]
    ov_bf16 = report["artifacts"][2]
    assert ov_bf16["backend"] == "openvino" and ov_bf16["runner_settings"]["precision_hint"] == "bf16"
    assert ov_bf16["precision"] in ("bf16", "fp32") and ov_bf16["environment"]["backend_version"]
    if ov_bf16["precision"] == "bf16":
        assert ov_bf16["accuracy_budget"]["reference"] in (onnx, f"{onnx} [openvino]")
    assert all(a["accuracy"]["top1"] == report["artifacts"][0]["accuracy"]["top1"] for a in report["artifacts"][:2])
    assert all(a["parity"] is None for a in report["artifacts"])
    (rec,) = report["recommendations"]
    tail = res.stdout[res.stdout.index("recommendation (cpu): "):]  # the last thing printed, wrapped to the terminal
    assert "".join(tail.split()) == "".join(rec["line"].split()) and set(rec["by_batch"]) == {"1", "4"}


def test_bench_openvino_int8_is_checked_against_its_fp32_source(exported):
    from edgekd.bench.compare import CompareSettings
    from edgekd.bench.latency import LatencySettings
    from edgekd.bench.suite import BenchOptions, run_bench

    exp = exported["exp"]
    quick = CompareSettings(rounds=5, time_s=0.2, processes=3, min_block=1, threshold=0.0)
    report = run_bench(BenchOptions(models=(str(exp / "model.int8.onnx"),), backend="openvino", data=DATA,
                                    batch_sizes=(2,), int8_check=quick, max_precision_drop=100.0,
                                    latency=LatencySettings(warmup_iters=1, warmup_time_s=0.01, min_iters=3,
                                                            min_time_s=0.05)))
    int8, src = report["artifacts"]
    assert int8["name"] == f"{exp / 'model.int8.onnx'} [openvino]" and int8["precision"] == "int8"
    assert src["name"] == f"{exp / 'model.onnx'} [openvino]" and src["precision"] == "fp32"
    assert any("FP32 source of" in w for w in src["warnings"])
    assert int8["latency"][0]["int8_check"]["processes"] == 3  # the fresh-process speed check ran on OpenVINO
    assert int8["accuracy_budget"]["reference"] == src["name"] and int8["accuracy_budget"]["within_budget"]
    assert report["recommendations"][0]["device"] == "cpu"
