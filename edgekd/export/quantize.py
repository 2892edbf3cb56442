"""INT8 export: ONNX Runtime static quantization in QDQ form, with an accuracy budget.

Weights are int8, symmetric, per output channel. The activation flavour follows the target
(docs/architecture.md, "INT8 flavour", measured on this project's x86 CPUs):
- `cpu` -> U8S8: uint8 asymmetric activations. ORT's x86 kernels run it ~1.8x faster than FP32.
- `tensorrt` -> S8S8: int8 symmetric activations, the explicit-quantization form TensorRT needs
  (on ORT's CPU kernels it runs slower than FP32, so it is never the CPU default).
Calibration uses images from the training split; the budget compares INT8 top-1 with FP32 top-1
on the validation split and raises GateError (exit 3) when the drop is too large.

A model that emits probabilities (the exact DHO fold: two softmaxes mixed after one GEMM) keeps
that tail in float: quantized, the probabilities would be multiples of one uint8 step (about 70
distinct values on a 10-class model, rows no longer summing to 1, ties in the top-1). The GEMM
itself is quantized; its output is dequantized and the split, softmaxes and mix run in FP32, so
the budget and the parity figures judge real probabilities (`float_tail_nodes`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgekd.deps import require
from edgekd.errors import EdgekdError, GateError

INT8_TARGETS = {"cpu": "U8S8", "tensorrt": "S8S8"}
CALIB_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIB_SIZE = 500
DEFAULT_MAX_ACCURACY_DROP = 1.0


class _BatchReader:
    """ORT CalibrationDataReader over a float32 NCHW array."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int = 32):
        self.input_name, self.x, self.batch, self.i = input_name, x, batch, 0

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        if self.i >= len(self.x):
            return None
        out = {self.input_name: np.ascontiguousarray(self.x[self.i:self.i + self.batch], dtype=np.float32)}
        self.i += self.batch
        return out

    def rewind(self) -> None:
        self.i = 0


def sensitive_nodes(model) -> list[str]:
    """Names of the first Conv and the last Gemm/MatMul: the layers kept in float on request."""
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    gemms = [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    return ([convs[0]] if convs else []) + ([gemms[-1]] if gemms else [])


def float_tail_nodes(model) -> list[str]:
    """Names of every node downstream of the last Gemm/MatMul: a probability model's softmax mix."""
    gemms = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    if not gemms:
        return []
    live, tail = set(gemms[-1].output), []
    for node in model.graph.node:  # ONNX graphs are stored in topological order
        if any(i in live for i in node.input):
            tail.append(node.name)
            live.update(node.output)
    return tail


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calib_x: np.ndarray, target: str = "cpu",
                  method: str = "minmax", keep_float_layers: bool = False,
                  output_kind: str = "logits") -> dict[str, Any]:
    """Quantize an FP32 ONNX model to QDQ INT8 at `out_path`, calibrated on `calib_x` (N, C, H, W).

    `output_kind="probs"` keeps the nodes after the last GEMM in float (see the module docstring).
    Returns what was made: flavour, calibration method and size, excluded nodes, QDQ node count.
    """
    if target not in INT8_TARGETS:
        raise EdgekdError(f"unknown INT8 target {target!r}; choose {' or '.join(INT8_TARGETS)}")
    if method not in CALIB_METHODS:
        raise EdgekdError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIB_METHODS)}")
    if len(calib_x) == 0:
        raise EdgekdError("INT8 calibration needs at least one training image (--calib-size)")
    onnx = require("onnx")
    q = require("onnxruntime.quantization")
    calib = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
             "percentile": q.CalibrationMethod.Percentile}[method]
    flavour = INT8_TARGETS[target]
    act_type = q.QuantType.QUInt8 if flavour == "U8S8" else q.QuantType.QInt8
    with tempfile.TemporaryDirectory(prefix="edgekd-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        with contextlib.redirect_stdout(io.StringIO()), _quiet_ort_logging():
            # shape inference + graph optimisation ORT recommends before quantization
            q.quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        fp32 = onnx.load(str(pre))
        exclude = sensitive_nodes(fp32) if keep_float_layers else []
        tail = float_tail_nodes(fp32) if output_kind == "probs" else []
        exclude += [n for n in tail if n not in exclude]
        input_name = fp32.graph.input[0].name
        extra = {"WeightSymmetric": True, "ActivationSymmetric": flavour == "S8S8"}
        with contextlib.redirect_stdout(io.StringIO()), _quiet_ort_logging():
            q.quantize_static(str(pre), str(out_path), _BatchReader(input_name, calib_x),
                              quant_format=q.QuantFormat.QDQ, per_channel=True, reduce_range=False,
                              activation_type=act_type, weight_type=q.QuantType.QInt8,
                              nodes_to_exclude=exclude, calibrate_method=calib, extra_options=extra)
    int8 = onnx.load(str(out_path))
    n_qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in int8.graph.node)
    if n_qdq == 0:
        raise EdgekdError("INT8 quantization produced no QDQ nodes (nothing quantizable in the graph)")
    return {"format": "QDQ", "flavour": flavour, "target": target,
            "activations": "uint8 asymmetric" if flavour == "U8S8" else "int8 symmetric",
            "weights": "int8 symmetric per-channel", "calib_method": method, "calib_size": int(len(calib_x)),
            "calib_split": "train", "keep_float_layers": bool(keep_float_layers), "float_nodes": exclude,
            "qdq_nodes": int(n_qdq), "output_kind": output_kind,
            "output": ("float: the probability mix after the last GEMM runs in FP32 on dequantized logits"
                       if tail else "dequantized from the last quantized layer")}


@contextlib.contextmanager
def _quiet_ort_logging():
    """ORT's quantization tooling logs at INFO through `logging`; keep the CLI output to ours."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(level)


def run_session(session, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Run a one-input one-output session over `x` in chunks of `batch` (here, not in export.onnx,
    which imports torch and this module's constants)."""
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: np.ascontiguousarray(x[i:i + batch], dtype=np.float32)})[0]
            for i in range(0, len(x), batch)]
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def top1(session, x: np.ndarray, y: np.ndarray, batch: int = 256) -> tuple[float, np.ndarray, int, int]:
    """Top-1 (percent) of a session on (x, y), its predictions, how many rows are exact top-2 ties,
    and how many rows hold a non-finite output.

    A tie is decided by argmax's first index, not by the model: counted so a quantized output
    (whose values fall on a grid) cannot pass the budget on ties unnoticed.
    """
    out = run_session(session, x, batch)
    pred = out.argmax(1)
    top2 = np.sort(out, axis=1)[:, -2:] if out.ndim == 2 and out.shape[1] > 1 else None
    ties = int((top2[:, 1] == top2[:, 0]).sum()) if top2 is not None else 0
    nonfinite = int((~np.isfinite(out.reshape(len(out), -1))).any(1).sum()) if len(out) else 0
    return 100.0 * float((pred == y).mean()), pred, ties, nonfinite


def check_accuracy_budget(fp32_session, int8_session, x: np.ndarray, y: np.ndarray, max_drop: float,
                          split: str = "val") -> dict[str, Any]:
    """INT8 top-1 vs FP32 top-1 on (x, y); GateError (exit 3) when it drops more than `max_drop` points
    or when either model's outputs are not finite. The outputs are compared in the model's own
    space: logits, or float probabilities for a `probs` model (its mix is kept in float)."""
    if len(x) == 0:
        raise EdgekdError("the INT8 accuracy budget needs labelled validation images; the split is empty")
    acc32, p32, _, bad32 = top1(fp32_session, x, y)
    acc8, p8, ties, bad8 = top1(int8_session, x, y)
    if bad32 or bad8:
        raise GateError(f"INT8 accuracy budget failed: outputs are not finite on {max(bad32, bad8)} of {len(x)} "
                        f"{split} images (INT8 {bad8}, FP32 {bad32})")
    drop = acc32 - acc8
    out = {"split": split, "n": int(len(x)), "fp32_top1": round(acc32, 4), "int8_top1": round(acc8, 4),
           "drop_points": round(drop, 4), "max_accuracy_drop": max_drop,
           "top1_agreement": round(100.0 * float((p32 == p8).mean()), 4), "int8_top2_ties": ties}
    # judged on the drop as reported (4 decimals): a budget set to a reported drop passes it (2 of 60 images
    # is 3.3333... points, reported 3.3333)
    if out["drop_points"] > max_drop:
        raise GateError(f"INT8 accuracy budget exceeded: top-1 {acc8:.2f}% (INT8) vs {acc32:.2f}% (FP32) on {len(x)} "
                        f"{split} images, a drop of {drop:.2f} points > --max-accuracy-drop {max_drop}")
    return out
