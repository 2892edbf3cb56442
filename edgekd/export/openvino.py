"""`edgekd export --format openvino`: OpenVINO IR (`model.xml` + `model.bin`) from the verified ONNX, proven.

The IR is converted from the already verified `model.onnx` (and `model.int8.onnx` with `--int8`:
OpenVINO keeps its QDQ pairs as int8 FakeQuantize), written without FP16 weight compression so the
FP32 IR computes what the ONNX file does. The proof is the ONNX one, run through OpenVINO
(`edgekd.runtime.openvino.OpenVinoModel`, the runner the device and bench use):

- parity: the FP32 IR (f32 hint) against the torch deploy module on the verification images
  (`edgekd.export.onnx.parity_figures`: same tolerance and agreement rules, GateError exit 3);
- accuracy budget: every IR's top-1 on the validation split against the torch deploy module's,
  at most `--max-accuracy-drop` points lower (the INT8 IR's budget is the INT8 ONNX's);
- the bf16 precision hint (what a user may run the FP32 IR with on AVX-512-BF16/AMX CPUs) is
  measured against the same budget and reported; it is a runtime choice, so it warns, not fails.

The IR keeps the ONNX file's metadata (OpenVINO's `framework` runtime info), so `model.xml`
carries the embedded manifest as `model.onnx` does; `manifest.json` beside it is the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from edgekd.deps import require
from edgekd.errors import GateError
from edgekd.export.onnx import PARITY_MIN_AGREEMENT, parity_figures
from edgekd.runtime.openvino import OpenVinoModel, openvino_version, read_model

MODEL_XML = "model.xml"
MODEL_INT8_XML = "model.int8.xml"


def write_ir(onnx_path: Path, xml_path: Path) -> list[Path]:
    """Convert an ONNX file to OpenVINO IR at `xml_path` (weights in the `.bin` beside it); returns both paths."""
    ov = require("openvino")
    ov.save_model(read_model(onnx_path), str(xml_path), compress_to_fp16=False)
    return [xml_path, xml_path.with_suffix(".bin")]


def predict(model: OpenVinoModel, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Outputs (N, K) of an OpenVINO model over float32 NCHW `x`, in chunks."""
    outs = [model.run(x[i:i + batch]) for i in range(0, len(x), batch)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def accuracy_budget(got: np.ndarray, want: np.ndarray, y: np.ndarray, max_drop: float, what: str,
                    split: str) -> dict[str, Any]:
    """Top-1 of `got` vs the FP32 reference `want` on labels `y`: the drop in points, and whether it is in budget."""
    bad = int((~np.isfinite(got.reshape(len(got), -1))).any(1).sum()) if len(got) else 0
    if bad:
        raise GateError(f"{what} accuracy budget failed: outputs are not finite on {bad} of {len(got)} {split} images")
    acc = 100.0 * float((got.argmax(1) == y).mean())
    ref = 100.0 * float((want.argmax(1) == y).mean())
    drop = ref - acc
    return {"split": split, "n": int(len(y)), "fp32_top1": round(ref, 4), "top1": round(acc, 4),
            "drop_points": round(drop, 4), "max_accuracy_drop": max_drop, "within_budget": drop <= max_drop,
            "top1_agreement": round(100.0 * float((got.argmax(1) == want.argmax(1)).mean()), 4)}


def _gate(figures: dict[str, Any], what: str) -> dict[str, Any]:
    if not figures["within_budget"]:
        raise GateError(f"{what} accuracy budget exceeded: top-1 {figures['top1']:.2f}% vs "
                        f"{figures['fp32_top1']:.2f}% "
                        f"(FP32) on {figures['n']} {figures['split']} images, a drop of {figures['drop_points']:.2f} "
                        f"points > --max-accuracy-drop {figures['max_accuracy_drop']}")
    return figures


def export_openvino(files: dict[str, Path], stage: Path, deploy: nn.Module, x: torch.Tensor,
                    val: tuple[torch.Tensor, torch.Tensor, str], max_drop: float, parity_atol: float,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write and prove the IR of `files["onnx"]` (and of `files["int8"]` when present); adds them to `files`.

    Args:
        files: the export's files so far (`onnx`, optional `int8`); gains `openvino`, `openvino_bin`
            and, with INT8, `openvino_int8`, `openvino_int8_bin`.
        stage: the staging directory the files are written to.
        deploy: the torch deploy module (the FP32 reference).
        x: the normalised verification images (N, C, H, W).
        val: (images, labels, split name) of the validation split, for the accuracy budget.
        max_drop: the budget in top-1 points (`--max-accuracy-drop`).
        parity_atol: the parity tolerance (`ExportOptions.parity_atol`).

    Returns:
        The manifest's `openvino` record: files, version, parity and accuracy figures.
    """
    xv, yv, split = val
    with torch.no_grad():
        want = deploy.eval()(x).numpy()
        want_val = deploy(xv).numpy()
    y = yv.numpy()
    files["openvino"], files["openvino_bin"] = write_ir(files["onnx"], stage / MODEL_XML)
    fp32 = OpenVinoModel(files["openvino"], precision_hint="f32")
    parity = parity_figures(predict(fp32, x.numpy()), want, parity_atol, PARITY_MIN_AGREEMENT,
                            "OpenVINO IR parity", ("OpenVINO", "torch"))
    record: dict[str, Any] = {"ir": MODEL_XML, "weights": files["openvino_bin"].name, "source": files["onnx"].name,
                              "openvino": openvino_version(), "compress_to_fp16": False, "parity": parity,
                              "accuracy": _gate(accuracy_budget(predict(fp32, xv.numpy()), want_val, y, max_drop,
                                                                "OpenVINO IR", split), "OpenVINO IR")}
    log(f"openvino: IR {MODEL_XML} (OpenVINO {record['openvino'].split('-')[0]}); parity max |diff| "
        f"{parity['max_abs_diff']:.2e}, top-1 agreement {parity['top1_agreement']:.1f}% on {parity['batch']} images; "
        f"top-1 {record['accuracy']['top1']:.2f}% on {len(y)} {split} images")
    record["bf16_hint"] = _bf16_figures(files["openvino"], xv, want_val, y, max_drop, split, log)
    if "int8" in files:
        files["openvino_int8"], files["openvino_int8_bin"] = write_ir(files["int8"], stage / MODEL_INT8_XML)
        int8 = OpenVinoModel(files["openvino_int8"], precision_hint="f32")
        budget = _gate(accuracy_budget(predict(int8, xv.numpy()), want_val, y, max_drop, "OpenVINO INT8 IR", split),
                       "OpenVINO INT8 IR")
        record["int8"] = {"ir": MODEL_INT8_XML, "source": files["int8"].name, "accuracy": budget}
        log(f"openvino: INT8 IR {MODEL_INT8_XML}; top-1 {budget['top1']:.2f}% vs FP32 {budget['fp32_top1']:.2f}% "
            f"(drop {budget['drop_points']:.2f} <= {max_drop})")
    return record


def _bf16_figures(xml: Path, xv: torch.Tensor, want_val: np.ndarray, y: np.ndarray, max_drop: float, split: str,
                  log: Callable[[str], None]) -> Optional[dict[str, Any]]:
    """The FP32 IR under the bf16 hint against the budget (a warning outside it); None on a CPU without bf16."""
    model = OpenVinoModel(xml, precision_hint="bf16")
    if model.inference_precision != "bf16":
        return None  # the CPU has no bf16: OpenVINO computes in f32, nothing new to measure
    figures = accuracy_budget(predict(model, xv.numpy()), want_val, y, max_drop, "OpenVINO bf16 hint", split)
    if not figures["within_budget"]:
        log(f"warning: the IR under the bf16 precision hint drops {figures['drop_points']:.2f} top-1 points "
            f"(> {max_drop}); run it with the f32 hint")
    return figures


__all__ = ["MODEL_XML", "MODEL_INT8_XML", "write_ir", "export_openvino", "accuracy_budget", "predict"]
