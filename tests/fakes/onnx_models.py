"""Tiny real ONNX models that the TensorRT tests build from: FP32, FP16 (FP32 I/O), static batch, QDQ INT8."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgekd.names import INPUT_NAME, LOGITS_NAME

SHAPE = (3, 16, 16)


def _export_onnx(path: Path, batch_dynamic: bool = True) -> None:
    import torch

    from edgekd.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny", num_classes=10, in_channels=SHAPE[0]).eval()
    x = torch.randn(2, *SHAPE)
    axes = {INPUT_NAME: {0: "batch"}, LOGITS_NAME: {0: "batch"}} if batch_dynamic else None
    torch.onnx.export(model, (x,), str(path), input_names=[INPUT_NAME], output_names=[LOGITS_NAME],
                      dynamic_axes=axes, opset_version=17, dynamo=False)


def _quantize_qdq(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.batches = iter([{INPUT_NAME: rng.standard_normal((4, *SHAPE)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    # S8S8 symmetric QDQ: the explicit-quantization form TensorRT builds INT8 engines from
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})


def make_models(root: Path) -> dict[str, Path]:
    """FP32 (dynamic batch), FP16, static-batch and QDQ INT8 copies of one tiny model, and a manifest, in `root`."""
    from edgekd.export.fp16 import convert_fp16

    fp32, int8, static = root / "student.onnx", root / "student.int8.onnx", root / "static.onnx"
    fp16 = root / "student.fp16.onnx"
    _export_onnx(fp32)
    _export_onnx(static, batch_dynamic=False)
    _quantize_qdq(fp32, int8)
    convert_fp16(fp32, fp16)
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"input_shape": list(SHAPE), "output_kind": LOGITS_NAME,
                                    "class_names": [str(i) for i in range(10)]}))
    return {"fp32": fp32, "fp16": fp16, "int8": int8, "static": static, "manifest": manifest}


