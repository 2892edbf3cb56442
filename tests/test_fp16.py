"""FP16 export: conversion with FP32 I/O, the accuracy budget and parity figures on ONNX Runtime CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekd.errors import EdgekdError, GateError
from edgekd.export.fp16 import check_fp16_budget, convert_fp16
from edgekd.export.onnx import make_session, run_session
from edgekd.names import INPUT_NAME, LOGITS_NAME

SHAPE = (3, 16, 16)


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import onnx
    import torch

    from edgekd.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny", num_classes=10, in_channels=SHAPE[0]).eval()
    path = tmp_path_factory.mktemp("fp16") / "model.onnx"
    torch.onnx.export(model, (torch.randn(2, *SHAPE),), str(path), input_names=[INPUT_NAME],
                      output_names=[LOGITS_NAME], dynamic_axes={INPUT_NAME: {0: "batch"}, LOGITS_NAME: {0: "batch"}},
                      opset_version=17, dynamo=False)
    proto = onnx.load(str(path))
    proto.metadata_props.add(key="edgekd.manifest", value='{"format": "edgekd-manifest"}')
    onnx.save(proto, str(path))
    return path


def _images(n: int = 64) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, *SHAPE)).astype(np.float32)


def test_convert_keeps_fp32_io_and_metadata(fp32_onnx, tmp_path):
    import onnx

    out = tmp_path / "model.fp16.onnx"
    info = convert_fp16(fp32_onnx, out)
    half = onnx.load(str(out))
    io_types = [v.type.tensor_type.elem_type for v in (*half.graph.input, *half.graph.output)]
    assert io_types == [onnx.TensorProto.FLOAT] * 2
    weights = [i for i in half.graph.initializer if len(i.dims) > 1]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    assert info["fp16_initializers"] > 0 and info["casts"] >= 2 and info["keep_io_types"] is True
    assert {p.key: p.value for p in half.metadata_props}["edgekd.manifest"] == '{"format": "edgekd-manifest"}'
    assert out.stat().st_size < 0.6 * fp32_onnx.stat().st_size  # half the weight bytes
    # ORT on CPU runs it, with FP32 in and out, close to the FP32 model
    x = _images(8)
    got, want = run_session(make_session(out), x), run_session(make_session(fp32_onnx), x)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-2 * max(1.0, np.abs(want).max())


def test_budget_records_parity_and_passes_within_the_drop(fp32_onnx, tmp_path):
    out = tmp_path / "model.fp16.onnx"
    convert_fp16(fp32_onnx, out)
    x = _images()
    y = run_session(make_session(fp32_onnx), x).argmax(1)  # labels = FP32 predictions: FP32 top-1 is 100%
    res = check_fp16_budget(make_session(fp32_onnx), make_session(out), x, y, max_drop=1.0)
    assert res["fp32_top1"] == 100.0 and res["n"] == len(x) and res["split"] == "val"
    assert res["drop_points"] == round(100.0 - res["fp16_top1"], 4) <= 1.0
    assert res["top1_agreement"] == res["fp16_top1"]
    assert 0.0 <= res["max_abs_diff"] and 0.0 <= res["relative_diff"] <= res["max_abs_diff"]


class _Session:
    """A stand-in ORT session returning fixed logits (one input, one output)."""

    def __init__(self, logits: np.ndarray) -> None:
        self.logits = logits

    def get_inputs(self):
        return [type("I", (), {"name": INPUT_NAME})()]

    def run(self, _outputs, feeds):
        n = len(feeds[INPUT_NAME])
        return [self.logits[:n]]


def test_budget_fails_with_exit_3_when_fp16_drops_too_much():
    y = np.arange(10) % 3
    good = np.eye(3, dtype=np.float32)[y]
    bad = good.copy()
    bad[:2] = np.eye(3, dtype=np.float32)[(y[:2] + 1) % 3]  # two of ten wrong: a 20-point drop
    x = np.zeros((10, *SHAPE), np.float32)
    msg = r"FP16 accuracy budget exceeded.*20\.00 points > --max-accuracy-drop 5"
    with pytest.raises(GateError, match=msg) as info:
        check_fp16_budget(_Session(good), _Session(bad), x, y, max_drop=5.0)
    assert info.value.exit_code == 3 and "\n" not in str(info.value)
    assert check_fp16_budget(_Session(good), _Session(bad), x, y, max_drop=25.0)["drop_points"] == 20.0
    overflow = good.copy()
    overflow[0, 0] = np.inf
    with pytest.raises(GateError, match="not finite"):
        check_fp16_budget(_Session(good), _Session(overflow), x, y, max_drop=100.0)
    with pytest.raises(EdgekdError, match="empty"):
        check_fp16_budget(_Session(good), _Session(good), x[:0], y[:0], max_drop=1.0)


def test_convert_refuses_an_fp16_model_in_one_line(fp32_onnx, tmp_path):
    once = tmp_path / "once.onnx"
    convert_fp16(fp32_onnx, once)
    with pytest.raises(EdgekdError, match="FP16 conversion of once.onnx failed") as info:
        convert_fp16(once, tmp_path / "twice.onnx")
    assert "\n" not in str(info.value) and not (tmp_path / "twice.onnx").exists()
