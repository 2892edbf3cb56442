"""Export: verified single-file ONNX, INT8 with its budget, manifest, and the CLI's error paths."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from edgekd import names
from edgekd.cli import app
from edgekd.config import build_config
from edgekd.data.dataset import load_dataset
from edgekd.errors import EdgekdError, GateError
from edgekd.export.onnx import check_parity, count_onnx_params, export_onnx, make_session
from edgekd.export.pipeline import ExportOptions, run_export
from edgekd.export.quantize import check_accuracy_budget, quantize_int8
from edgekd.models import ZOO, build_model
from edgekd.runtime.manifest import METADATA_KEY, read_manifest_data
from edgekd.train.checkpoint import build_payload, load_checkpoint, rebuild_training_model, save_checkpoint
from edgekd.train.model import build_training_model

SYN = "synthetic:n_train=200,n_test=60"
SLOW_ZOO = {"resnet56", "resnet32x4", "wrn_40_2", "mobilenetv2"}


@pytest.fixture(scope="module")
def data():
    return load_dataset(SYN)


def make_checkpoint(path, data, model="tiny", method="ce", seed=0, a=0.6, b=1.5, **overrides):
    """A real edgekd checkpoint of a method's TrainingModel (weights randomised, not trained)."""
    cfg = build_config(overrides=dict(model=model, method=method, data=SYN, **overrides))
    student = build_model(model, num_classes=data.num_classes, in_channels=data.input_shape[0])
    tm = build_training_model(cfg, student)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in tm.state_dict().items():
            if t.is_floating_point() and t.ndim > 0:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var")
                        else torch.randn(t.shape, generator=g) * 0.3)
        tm.mix_alpha.fill_(a)
        tm.mix_beta.fill_(b)
    save_checkpoint(path, build_payload(cfg, tm, data, epoch=1, val_acc=0.0))
    return path


@pytest.fixture(scope="module")
def ce_ckpt(tmp_path_factory, data):
    return make_checkpoint(tmp_path_factory.mktemp("ce") / "best.pt", data)


def real_batch(data, n=64):
    x = torch.from_numpy(data.x_train[:n].transpose(0, 3, 1, 2).copy()).float() / 255
    return (x - torch.tensor(data.mean).view(1, -1, 1, 1)) / torch.tensor(data.std).view(1, -1, 1, 1)


def test_export_cli_writes_verified_onnx_and_manifest(tmp_path, ce_ckpt, data):
    out = tmp_path / "exp"
    res = CliRunner().invoke(app, ["export", str(ce_ckpt), "--format", "onnx", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [names.MANIFEST_FILE, names.MODEL_ONNX]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    model = onnx.load(str(out / names.MODEL_ONNX))
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert [i.name for i in model.graph.input] == [names.INPUT_NAME]
    assert [o.name for o in model.graph.output] == [names.LOGITS_NAME]
    manifest = json.loads((out / names.MANIFEST_FILE).read_text())
    embedded = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert {k: v for k, v in manifest.items() if k != "files"} == embedded
    assert read_manifest_data(out / names.MODEL_ONNX) == embedded
    assert manifest["opset"] == 17 and manifest["output"]["kind"] == names.LOGITS_NAME
    assert manifest["class_names"] == list(data.class_names)
    assert manifest["input"]["shape"] == [None, *data.input_shape] and manifest["input"]["layout"] == "NCHW"
    assert manifest["source"]["sha256"] == hashlib.sha256(ce_ckpt.read_bytes()).hexdigest()
    assert manifest["parity"]["max_abs_diff"] <= manifest["parity"]["tolerance"]
    assert manifest["versions"]["torch"] and manifest["versions"]["onnxruntime"]
    # dynamic batch: 1, 7 and 64 run and match torch
    student = rebuild_training_model(load_checkpoint(ce_ckpt))
    sess = make_session(out / names.MODEL_ONNX)
    x = real_batch(data, 64)
    for n in (1, 7, 64):
        got = sess.run(None, {names.INPUT_NAME: x[:n].numpy()})[0]
        assert got.shape == (n, data.num_classes)
        with torch.no_grad():
            np.testing.assert_allclose(got, student(x[:n]).numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_ZOO else n for n in ZOO])
def test_onnx_parity_on_every_zoo_model(name, data):
    model = build_model(name, num_classes=10).eval()
    proto = export_onnx(model, (3, 32, 32), names.LOGITS_NAME)
    parity = check_parity(proto, model, real_batch(data, 4))
    assert parity["max_abs_diff"] <= parity["tolerance"] and parity["top1_agreement"] == 100.0


def test_parity_gate_fires_when_graph_and_module_differ(data):
    model = build_model("tiny").eval()
    proto = export_onnx(model, (3, 32, 32), names.LOGITS_NAME)
    with torch.no_grad():
        model.head.bias.add_(0.05)
    with pytest.raises(GateError, match="parity"):
        check_parity(proto, model, real_batch(data, 8))


def test_aux_trained_model_exports_like_a_plain_student(tmp_path, data):
    aux = make_checkpoint(tmp_path / "aux.pt", data, method="lsskd", lsskd={"stages": (0, 1)})
    ce = make_checkpoint(tmp_path / "ce.pt", data, method="ce")
    ra = run_export(ExportOptions(ckpt=str(aux), out=str(tmp_path / "a")), log=lambda s: None, data=data)
    rc = run_export(ExportOptions(ckpt=str(ce), out=str(tmp_path / "c")), log=lambda s: None, data=data)
    ma, mc = (onnx.load(str(r.files["onnx"])) for r in (ra, rc))
    assert ra.manifest["surgery"]["removed_modules"] == ["aux_heads.0", "aux_heads.1"]
    assert ra.manifest["surgery"]["removed_params"] > 0
    assert len(ma.graph.node) == len(mc.graph.node)
    assert [n.op_type for n in ma.graph.node] == [n.op_type for n in mc.graph.node]
    assert count_onnx_params(ma) == count_onnx_params(mc) == ra.manifest["graph"]["expected_params"]
    assert not any("aux" in t.name for t in ma.graph.initializer)


def test_dho_exact_export_emits_probs_equal_to_the_training_model(tmp_path, data):
    ck = make_checkpoint(tmp_path / "dho.pt", data, method="dho", a=0.35, b=2.0)
    r = run_export(ExportOptions(ckpt=str(ck), out=str(tmp_path / "e")), log=lambda s: None, data=data)
    assert r.manifest["output"]["kind"] == names.PROBS_NAME
    assert r.manifest["fold"] == {"mode": "exact", "alpha": 0.35, "beta": 2.0}
    tm = rebuild_training_model(load_checkpoint(ck))
    x = real_batch(data, 32)
    got = make_session(r.files["onnx"]).run(None, {names.INPUT_NAME: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, tm(x).numpy(), atol=1e-5)
    # the folded graph holds the plain student plus the KD head's rows, and one Gemm
    assert sum(n.op_type == "Gemm" for n in onnx.load(str(r.files["onnx"])).graph.node) == 1


def test_logit_fold_gate_exits_3_and_writes_nothing(tmp_path, data):
    ck = make_checkpoint(tmp_path / "dho.pt", data, method="dho", a=0.6, b=1.0)
    sd = torch.load(ck, weights_only=True)
    sd["model_state"]["student.head.weight"] *= 100  # the two mixes now disagree (see test_surgery)
    sd["model_state"]["kd_head.weight"] *= 1000
    torch.save(sd, ck)
    out = tmp_path / "exp"
    res = CliRunner().invoke(app, ["export", str(ck), "--out", str(out), "--fold", "logit", "--min-agreement", "99"])
    assert res.exit_code == 3, res.output
    assert "agreement" in res.output and not out.exists()
    assert list(tmp_path.iterdir()) == [ck]


def test_int8_export_records_flavour_and_budget(tmp_path, ce_ckpt, data):
    r = run_export(ExportOptions(ckpt=str(ce_ckpt), out=str(tmp_path / "q"), int8=True, calib_size=64,
                                 max_accuracy_drop=100.0), log=lambda s: None, data=data)
    q = r.manifest["int8"]
    assert q["flavour"] == "U8S8" and q["format"] == "QDQ" and q["calib_size"] == 64
    assert q["accuracy"]["split"] == "val" and q["accuracy"]["n"] == len(data.y_val)
    qm = onnx.load(str(r.files["int8"]))
    assert any(n.op_type == "QuantizeLinear" for n in qm.graph.node)
    assert json.loads({p.key: p.value for p in qm.metadata_props}[METADATA_KEY])["int8"]["flavour"] == "U8S8"
    assert make_session(r.files["int8"]).run(None, {names.INPUT_NAME: real_batch(data, 7).numpy()})[0].shape == (7, 10)


def test_int8_budget_gate_passes_and_fails_on_constructed_cases(tmp_path, data):
    torch.manual_seed(0)  # an unseeded init made this flaky (a degenerate model the bad calibration cannot hurt)
    model = build_model("tiny").eval()
    fp32 = tmp_path / "m.onnx"
    onnx.save(export_onnx(model, (3, 32, 32), names.LOGITS_NAME), str(fp32))
    x = real_batch(data, 60).numpy()
    y = make_session(fp32).run(None, {names.INPUT_NAME: x})[0].argmax(1)  # FP32 is 100% on these labels
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    calib = real_batch(load_dataset(SYN), 60).numpy()
    info = quantize_int8(fp32, good, calib, "tensorrt", "minmax", keep_float_layers=True)
    assert info["flavour"] == "S8S8" and len(info["float_nodes"]) == 2
    # calibrated on near-black images: every real activation saturates, accuracy collapses
    quantize_int8(fp32, bad, calib * 1e-3, "cpu", "minmax")
    ok = check_accuracy_budget(make_session(fp32), make_session(good), x, y, max_drop=100 - 0.0)
    assert ok["fp32_top1"] == 100.0
    drop_good = ok["drop_points"]
    passed = check_accuracy_budget(make_session(fp32), make_session(good), x, y, max_drop=drop_good)
    assert passed["drop_points"] == drop_good
    with pytest.raises(GateError, match=r"INT8 accuracy budget exceeded: top-1 .*% \(INT8\) vs 100.00% \(FP32\)"):
        check_accuracy_budget(make_session(fp32), make_session(bad), x, y, max_drop=max(drop_good, 1.0))


def test_cli_error_paths_exit_1_and_write_nothing(tmp_path, ce_ckpt):
    runner = CliRunner()
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    cases = [
        ([str(foreign), "--out", str(tmp_path / "o1")], "not an edgekd checkpoint", tmp_path / "o1"),
        ([str(ce_ckpt), "--out", str(tmp_path / "o2"), "--fold", "exact"], "dual-head", tmp_path / "o2"),
    ]
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    cases.append(([str(ce_ckpt), "--out", str(blocker / "sub")], "cannot write to output directory", None))
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    cases.append(([str(ce_ckpt), "--out", str(full)], "not empty", None))
    cases.append(([str(ce_ckpt), "--out", str(tmp_path / "o3"), "--calib-method", "guess", "--int8"], "calib-method",
                  tmp_path / "o3"))
    for args, msg, out in cases:
        res = runner.invoke(app, ["export", *args])
        assert res.exit_code == 1, (args, res.output)
        lines = [ln for ln in res.output.strip().splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and msg in lines[0] and "Traceback" not in res.output
        if out is not None:
            assert not out.exists()
    assert (full / "keep.txt").read_text() == "mine" and [p.name for p in full.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "foreign.pt", "full"]


def test_tensorrt_format_without_tensorrt_is_a_clean_error(tmp_path, ce_ckpt):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here; this checks the error without it")
    res = CliRunner().invoke(app, ["export", str(ce_ckpt), "--format", "tensorrt", "--out", str(tmp_path / "t")])
    assert res.exit_code == 1 and "tensorrt" in res.output.lower()
    assert not (tmp_path / "t").exists()


@pytest.mark.slow
def test_newer_opset_uses_the_dynamo_exporter(data):
    model = build_model("tiny").eval()
    proto = export_onnx(model, (3, 32, 32), names.LOGITS_NAME, opset=18)
    assert next(o.version for o in proto.opset_import if o.domain == "") == 18
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    check_parity(proto, model, real_batch(data, 7))
    with pytest.raises(EdgekdError, match="opset"):
        export_onnx(model, (3, 32, 32), names.LOGITS_NAME, opset=9)


def test_import_edgekd_export_loads_no_heavy_runtime():
    code = ("import sys, edgekd, edgekd.export, edgekd.surgery; "
            "print(','.join(m for m in ('onnxruntime', 'onnx', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
