"""The engine proof: a TensorRT engine is published only after it matched ONNX Runtime FP32 on real images.

Where an engine is built (`build_engine` here, the Jetson kit's `build_engine.sh` on the device),
it runs the validation images of the export. Its outputs are compared with ONNX Runtime FP32's
outputs of `model.onnx` on the same images, computed on the export machine:

- every output must be finite;
- max |engine - ORT FP32| <= tolerance x max(1, max |ORT FP32|), for FP32 and FP16 engines. FP32
  gets 1e-2 rather than the ONNX parity's 1e-4 because TensorRT runs FP32 layers in TF32 on Ampere
  and newer GPUs (Orin included) unless told otherwise. FP16 gets 5e-2. INT8 outputs differ by
  whole quantization steps, so the INT8 difference is recorded, not gated;
- top-1 agreement with ORT FP32 >= 99% of the images for FP32 (every row counts);
- for FP16 and INT8, the accuracy budget: engine top-1 on the labels may be at most
  `--max-accuracy-drop` points below ORT FP32's top-1 on the same images.

`compare_outputs` is the one implementation. It uses the standard library only, so that the kit
can embed its source in `build_engine.sh` and run it with the device's bare python3 (JetPack 5:
Python 3.8, no numpy required). The engine's outputs there come from `trtexec --exportOutput`.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import numpy as np

from edgekd.errors import EdgekdError, GateError

# relative max |diff| gate per precision (None: recorded only) and the FP32 top-1 agreement floor
TOLERANCE = {"fp32": 1e-2, "fp16": 5e-2, "int8": None}
MIN_AGREEMENT_FP32 = 99.0
Rows = Sequence[Sequence[float]]  # N images x K class scores


def compare_outputs(got, ref, labels, precision, max_drop, tolerance, min_agreement):
    # type: (Rows, Rows, Sequence[int], str, float, Optional[float], float) -> tuple[dict[str, Any], Optional[str]]
    """Engine outputs `got` vs ORT FP32 outputs `ref` (N rows of class scores) on images with `labels`.

    Returns (figures, failure): `failure` is None when the proof passed, else a one-line reason.
    Standard library only (embedded in the Jetson kit's build script, Python >= 3.8).
    """
    import math

    n = len(ref)
    if n == 0 or len(got) != n or len(labels) != n:
        return {"n": n}, "the proof has %d engine rows, %d reference rows, %d labels" % (len(got), n, len(labels))
    if any(len(g) != len(r) for g, r in zip(got, ref)):
        return {"n": n}, "engine outputs have %d values per image, ONNX Runtime %d" % (len(got[0]), len(ref[0]))
    finite = all(math.isfinite(v) for row in got for v in row)
    scale = max(1.0, max(abs(v) for row in ref for v in row))
    diff = max(abs(a - b) for g, r in zip(got, ref) for a, b in zip(g, r)) if finite else float("inf")

    def top1(row):  # type: (Sequence[float]) -> int
        return max(range(len(row)), key=lambda i: row[i])

    pg, pr = [top1(row) for row in got], [top1(row) for row in ref]
    agreement = 100.0 * sum(a == b for a, b in zip(pg, pr)) / n
    acc_ref = 100.0 * sum(p == y for p, y in zip(pr, labels)) / n
    acc_got = 100.0 * sum(p == y for p, y in zip(pg, labels)) / n
    figures = {"n": n, "precision": precision, "finite": finite, "max_abs_diff": diff, "relative_diff": diff / scale,
               "tolerance": tolerance, "top1_agreement": round(agreement, 4), "reference_top1": round(acc_ref, 4),
               "engine_top1": round(acc_got, 4), "drop_points": round(acc_ref - acc_got, 4),
               "max_accuracy_drop": max_drop}
    if not finite:
        return figures, "the engine's outputs are not finite on %d images" % n
    if tolerance is not None and diff > tolerance * scale:
        return figures, ("max |engine - ONNX Runtime FP32| = %.3g > %.3g (%s tolerance %g x %.3g) on %d images"
                         % (diff, tolerance * scale, precision, tolerance, scale, n))
    if precision == "fp32" and agreement < min_agreement:
        return figures, ("top-1 agreement with ONNX Runtime FP32 %.2f%% < %g%% on %d images"
                         % (agreement, min_agreement, n))
    if precision != "fp32" and acc_ref - acc_got > max_drop:
        return figures, ("accuracy budget exceeded: top-1 %.2f%% (%s engine) vs %.2f%% (ONNX Runtime FP32) on %d "
                         "images, a drop of %.2f points > --max-accuracy-drop %g"
                         % (acc_got, precision, acc_ref, n, acc_ref - acc_got, max_drop))
    return figures, None


def compare_source() -> str:
    """The source of `compare_outputs`, for embedding in the kit's device-side proof."""
    return inspect.getsource(compare_outputs)


def prove_engine(infer, x: np.ndarray, y: np.ndarray, reference: np.ndarray, precision: str,
                 max_drop: float, split: str = "val") -> dict[str, Any]:
    """Run `infer` (an engine's batch inference: (N, C, H, W) float32 -> (N, K)) and prove it.

    `reference` is ONNX Runtime FP32's output on `x`. Returns the figures for the provenance
    record. Raises GateError (exit 3) with the one-line reason when the proof fails.
    """
    if precision not in TOLERANCE:
        raise EdgekdError(f"precision must be one of {', '.join(TOLERANCE)}, got {precision!r}")
    if len(x) == 0:
        raise EdgekdError("the engine proof needs validation images; none were given")
    got = np.asarray(infer(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    figures, failure = compare_outputs(got.reshape(len(got), -1).tolist(), ref.reshape(len(ref), -1).tolist(),
                                       [int(v) for v in y], precision, max_drop, TOLERANCE[precision],
                                       MIN_AGREEMENT_FP32)
    figures["split"] = split
    if failure:
        raise GateError(f"TensorRT engine proof failed: {failure} ({split} split)")
    return figures
