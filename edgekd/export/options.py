"""The options of `edgekd export`: one frozen dataclass holding every default, and their validation.

Torch-free (numpy at most), so `edgekd --help` can read the defaults from the dataclass fields
without loading the export stack. The TensorRT builder defaults come from `edgekd.export.tensorrt`
(`TrtBuildOptions` uses the same constants), the INT8 ones from `edgekd.export.quantize`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from edgekd.errors import EdgekdError
from edgekd.export.quantize import CALIB_METHODS, DEFAULT_CALIB_SIZE, DEFAULT_MAX_ACCURACY_DROP, INT8_TARGETS
from edgekd.export.tensorrt import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MIN_BATCH,
    DEFAULT_OPT_BATCH,
    DEFAULT_PRECISION,
    DEFAULT_WORKSPACE_MB,
    PRECISIONS,
)
from edgekd.runtime.trt_version import JETPACK_TENSORRT

FORMATS = ("onnx", "tensorrt", "openvino")  # openvino: IR (model.xml/.bin) beside model.onnx, edgekd.export.openvino
TARGETS = ("cpu", "jetson")
# opset 17: TensorRT 8.5 on JetPack 5 reads nothing newer (docs/architecture.md, "ONNX exporter and opsets")
DEFAULT_OPSET = 17
MIN_OPSET = 13
# parity: |ort - torch| <= PARITY_ATOL * max(1, max |torch|); FP32 ORT vs torch is ~1e-6 relative
PARITY_ATOL = 1e-4

__all__ = ["ExportOptions", "validate_options", "FORMATS", "TARGETS", "PRECISIONS", "INT8_TARGETS", "CALIB_METHODS",
           "DEFAULT_OPSET", "MIN_OPSET", "PARITY_ATOL", "DEFAULT_CALIB_SIZE", "DEFAULT_MAX_ACCURACY_DROP"]


@dataclass(frozen=True)
class ExportOptions:
    """Options of `edgekd export` (docs/architecture.md, "Configuration layers"); see the CLI help for each."""

    ckpt: str
    out: str
    format: str = "onnx"
    fold: Optional[str] = None  # exact | logit | ce | kd; default exact for a dual-head model
    opset: int = DEFAULT_OPSET
    int8: bool = False
    fp16: bool = False  # also write model.fp16.onnx (always written for --precision fp16)
    int8_target: Optional[str] = None  # cpu (U8S8) | tensorrt (S8S8); default from --format/--target
    calib_size: int = DEFAULT_CALIB_SIZE
    calib_method: str = "minmax"
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP
    keep_float_layers: bool = False
    min_agreement: float = 99.0  # logit fold: top-1 agreement with the exact mix, percent
    target: str = "cpu"
    # TensorRT builder settings; their defaults are TrtBuildOptions' (edgekd.export.tensorrt)
    precision: str = DEFAULT_PRECISION
    min_batch: int = DEFAULT_MIN_BATCH
    opt_batch: int = DEFAULT_OPT_BATCH
    max_batch: int = DEFAULT_MAX_BATCH
    workspace_mb: int = DEFAULT_WORKSPACE_MB
    timing_cache: Optional[str] = None
    dla_core: Optional[int] = None
    jetpack: str = "6"  # --target jetson: 5 (TensorRT 8.5), 6.0 (8.6) or 6 (6.1/6.2: 10.3), edgekd.runtime.trt_version
    data: Optional[str] = None  # override the checkpoint's data spec (e.g. the data moved)
    verify_size: int = 256
    parity_atol: float = PARITY_ATOL
    simplify: bool = True
    seed: int = 0



def validate_options(o: ExportOptions) -> None:
    """Reject bad option values before any work is done."""
    checks = [(o.format in FORMATS, f"--format {o.format!r}: choose {', '.join(FORMATS)}"),
              (o.format != "openvino" or o.target == "cpu", "--format openvino runs on CPUs: drop --target jetson"),
              (o.target in TARGETS, f"--target {o.target!r}: choose {' or '.join(TARGETS)}"),
              (o.precision in PRECISIONS, f"--precision {o.precision!r}: choose one of {', '.join(PRECISIONS)}"),
              (o.int8_target is None or o.int8_target in INT8_TARGETS,
               f"--int8-target {o.int8_target!r}: choose {' or '.join(INT8_TARGETS)}"),
              (o.calib_method in CALIB_METHODS,
               f"--calib-method {o.calib_method!r}: choose one of {', '.join(CALIB_METHODS)}"),
              (o.calib_size > 0, "--calib-size must be > 0"),
              (o.max_accuracy_drop >= 0, "--max-accuracy-drop must be >= 0"),
              (0 <= o.min_agreement <= 100, "--min-agreement is a percentage (0..100)"),
              (o.verify_size > 0, "verify_size must be > 0"),
              (str(o.jetpack) in JETPACK_TENSORRT,
               f"--jetpack {o.jetpack!r}: choose 5 (TensorRT 8.5), 6.0 (TensorRT 8.6) or 6 (6.1/6.2, TensorRT 10.3)"),
              (1 <= o.min_batch <= o.opt_batch <= o.max_batch,
               "batch sizes must satisfy 1 <= --min-batch <= --opt-batch <= --max-batch")]
    for ok, msg in checks:
        if not ok:
            raise EdgekdError(msg)
