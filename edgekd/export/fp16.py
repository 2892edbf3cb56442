"""FP16 export: a half-precision ONNX model with FP32 inputs and outputs, checked on real images.

`model.fp16.onnx` is the model a strongly typed TensorRT build (TensorRT 10.x, and the only way
on 11.x, which removed `BuilderFlag.FP16` and `trtexec --fp16`) takes for an FP16 engine: the
precision lives in the network's types, not in a builder flag. It is also a first-class artifact
without TensorRT (half the weight bytes; ONNX Runtime's CUDA and DirectML providers run it).

The converter is onnxconverter-common's `convert_float_to_float16(keep_io_types=True)`, not
NVIDIA ModelOpt's ONNX AutoCast. Both are maintained and both keep the I/O in FP32. onnxconverter-
common is pure Python and needs only onnx, numpy and protobuf, which the `train` extra already
has. `nvidia-modelopt[onnx]` (the extra AutoCast lives in) pins another onnx and brings
onnxruntime-gpu, which replaces the CPU onnxruntime of the base install, plus cupy-cuda12x. On a
CPU export machine that trade is not worth it. AutoCast's extra feature is keeping nodes in FP32
based on measured activation ranges. A small classifier does not need that: the accuracy budget
below catches a model whose values overflow FP16, and the drop it records is the evidence.

The check mirrors INT8's (`edgekd.export.quantize.check_accuracy_budget`): ONNX Runtime on CPU
runs the FP32 and the FP16 model on the validation split. The FP16 top-1 may drop at most
`--max-accuracy-drop` points, and the logit parity figures (max |diff|, top-1 agreement) go in
the manifest. ORT's CPU provider runs FP16 graphs by inserting casts where it has no FP16
kernel. Its figures therefore measure the FP16 weights and the FP16 rounding of the values
between layers, which is what the conversion changed. They do not measure a GPU's FP16 kernels:
that is what the engine proof does on the device.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.deps import require
from edgekd.errors import EdgekdError, GateError, first_line

# Initializers below this magnitude become this value instead of flushing to zero, and values
# beyond the finite FP16 range are clipped to it. These are the converter's defaults, stated here
# so the manifest records what was done.
MIN_POSITIVE = 1e-7
MAX_FINITE = 1e4
_ONNX_FLOAT16 = 10  # onnx.TensorProto.FLOAT16


def convert_fp16(fp32_path: str | Path, out_path: str | Path) -> dict[str, Any]:
    """Write an FP16 copy of the FP32 ONNX model at `out_path`, with inputs and outputs in FP32.

    The model's metadata (the embedded manifest) is carried over. Returns what was made: the
    converter, how many initializers are FP16 and how many Cast nodes guard the FP32 I/O.
    """
    onnx = require("onnx")
    float16 = require("onnxconverter_common.float16")
    model = onnx.load(str(fp32_path))
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("always")
        try:
            half = float16.convert_float_to_float16(model, min_positive_val=MIN_POSITIVE, max_finite_val=MAX_FINITE,
                                                    keep_io_types=True)
        except Exception as exc:  # the converter raises ValueError, AssertionError, ...: one line
            raise EdgekdError(f"FP16 conversion of {Path(fp32_path).name} failed: {first_line(exc)}") from None
    try:
        onnx.checker.check_model(half)
    except Exception as exc:
        raise EdgekdError(f"the FP16 model does not pass the ONNX checker: {first_line(exc)}") from None
    io_types = {v.type.tensor_type.elem_type for v in (*half.graph.input, *half.graph.output)}
    if io_types != {onnx.TensorProto.FLOAT}:
        raise EdgekdError("the FP16 model's inputs/outputs are not all FP32 (keep_io_types failed)")
    n_half = sum(init.data_type == _ONNX_FLOAT16 for init in half.graph.initializer)
    if n_half == 0:
        raise EdgekdError("FP16 conversion produced no FP16 weights (nothing to convert in the graph)")
    onnx.save(half, str(out_path))
    # the converter warns "the float32 number X will be truncated to Y" per clipped tensor end
    truncated = sum("truncated" in str(w.message) for w in caught)
    return {"converter": "onnxconverter-common float16.convert_float_to_float16", "keep_io_types": True,
            "io_dtype": "float32", "fp16_initializers": int(n_half),
            "casts": sum(n.op_type == "Cast" for n in half.graph.node), "min_positive_val": MIN_POSITIVE,
            "max_finite_val": MAX_FINITE, "truncated_values": int(truncated)}


def check_fp16_budget(fp32_session, fp16_session, x: np.ndarray, y: np.ndarray, max_drop: float,
                      split: str = "val", batch: int = 256) -> dict[str, Any]:
    """FP16 vs FP32 on (x, y): top-1 drop, logit parity; GateError (exit 3) when the drop exceeds `max_drop`.

    `x` is (N, C, H, W) float32, `y` (N,) int labels. Parity is measured on the raw outputs:
    `max_abs_diff` and `relative_diff` (divided by max |FP32 output|, at least 1).
    """
    from edgekd.export.onnx import run_session

    if len(x) == 0:
        raise EdgekdError("the FP16 accuracy budget needs labelled validation images; the split is empty")
    out32, out16 = run_session(fp32_session, x, batch), run_session(fp16_session, x, batch)
    if not np.isfinite(out16).all():
        raise GateError(f"FP16 outputs are not finite on {len(x)} {split} images (values overflow FP16); "
                        "export FP32 or INT8 instead")
    p32, p16 = out32.argmax(1), out16.argmax(1)
    acc32, acc16 = 100.0 * float((p32 == y).mean()), 100.0 * float((p16 == y).mean())
    diff = float(np.abs(out32 - out16).max())
    scale = max(1.0, float(np.abs(out32).max()))
    drop = acc32 - acc16
    out = {"split": split, "n": int(len(x)), "fp32_top1": round(acc32, 4), "fp16_top1": round(acc16, 4),
           "drop_points": round(drop, 4), "max_accuracy_drop": max_drop,
           "top1_agreement": round(100.0 * float((p32 == p16).mean()), 4),
           "max_abs_diff": diff, "relative_diff": diff / scale}
    # judged on the drop as reported (4 decimals): a budget set to a reported drop passes it (2 of 60 images
    # is 3.3333... points, reported 3.3333)
    if out["drop_points"] > max_drop:
        raise GateError(f"FP16 accuracy budget exceeded: top-1 {acc16:.2f}% (FP16) vs {acc32:.2f}% (FP32) on {len(x)} "
                        f"{split} images, a drop of {drop:.2f} points > --max-accuracy-drop {max_drop}")
    return out
