"""OpenVINO: the one place edgekd compiles a model with OpenVINO (device runtime, bench, export proof).

Torch-free; `openvino` is imported through `edgekd.deps.require` when a model is opened (pip extra
`edgekd[openvino]`). OpenVINO reads edgekd's ONNX files directly, FP32 and the INT8 QDQ form
alike (QuantizeLinear/DequantizeLinear pairs become its own int8 kernels), and its IR
(`model.xml` + `model.bin`, what `edgekd export --format openvino` writes).

The precision hint decides what the CPU plugin computes in: `f32` (bit-close to ONNX Runtime) or
`bf16`, which on CPUs with AVX-512-BF16 or AMX runs convolutions in bfloat16 (measured 2-3x FP32
at batch 32 on the development CPU, docs/architecture.md "OpenVINO"). A bf16 hint changes the
numerics like INT8 does, so bench and export gate it like INT8: parity with the FP32 reference and
the accuracy budget. On a CPU without bf16 the plugin silently computes in f32; `inference_precision`
reports what it really uses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from edgekd.deps import require
from edgekd.errors import EdgekdError, first_line
from edgekd.runtime.session import ModelError

PRECISION_HINTS = ("f32", "bf16")
DEFAULT_PRECISION_HINT = "f32"
IR_SUFFIX = ".xml"  # OpenVINO IR: model.xml (graph) + model.bin (weights) beside it
# what `ov.Core.read_model` accepts from edgekd: ONNX files and IR
OPENVINO_SUFFIXES = (".onnx", IR_SUFFIX)
DEVICE = "CPU"


def openvino_version() -> str:
    """The installed OpenVINO's version string (raises MissingDependencyError when it is absent)."""
    return str(require("openvino").__version__)


def _core() -> Any:
    return require("openvino").Core()


def read_model(path: Union[str, "os.PathLike[str]"]) -> Any:
    """An `openvino.Model` from an ONNX file or IR; a file OpenVINO cannot read is a one-line ModelError."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model not found: {p}")
    if p.suffix.lower() == IR_SUFFIX and not p.with_suffix(".bin").is_file():
        raise ModelError(f"{p}: OpenVINO IR needs its weights file {p.with_suffix('.bin').name} beside it")
    core = _core()
    try:
        return core.read_model(str(p))
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses with multi-line C++ messages
        raise ModelError(f"{p} is not a model OpenVINO can read ({first_line(exc)})") from None


def model_metadata(model: Any) -> dict[str, str]:
    """The ONNX `metadata_props` OpenVINO keeps in the model's runtime info (`framework` section), as strings.

    edgekd's embedded manifest (`edgekd.manifest`) is among them, and `ov.save_model` keeps the
    section in the IR, so an exported `model.xml` carries its manifest like `model.onnx` does.
    """
    if not model.has_rt_info(["framework"]):
        return {}
    section = model.get_rt_info(["framework"]).astype(dict)
    out = {}
    for key, value in section.items():
        try:
            out[str(key)] = value.astype(str) if hasattr(value, "astype") else str(value)
        except Exception:  # a non-string entry (OpenVINO's own): not metadata edgekd reads
            continue
    return out


def _dims(port: Any) -> list:
    """A port's shape as ints, None for dynamic dimensions (ONNX Runtime's convention, for `check_model_matches`)."""
    return [None if d.is_dynamic else int(d.get_length()) for d in port.get_partial_shape()]


class OpenVinoModel:
    """A compiled single-input, single-output classifier on OpenVINO's CPU plugin.

    Args:
        path: an ONNX file (FP32 or INT8 QDQ) or OpenVINO IR (`model.xml`).
        threads: inference threads (None: OpenVINO's choice, one per core).
        precision_hint: `f32` or `bf16` (see the module docstring).
        latency: compile for latency (one stream, the whole batch on all threads), as edgekd runs
            one request at a time; False leaves OpenVINO's default.

    Attributes mirror the ONNX Runtime backend of `Classifier`: `input_name`, `output_name`,
    `input_type`, `input_dims`, `output_dims`, `metadata`, plus `inference_precision` (`f32`,
    `bf16`, ...: what the plugin really computes in) and `settings` (for reports).
    """

    def __init__(self, path: Union[str, "os.PathLike[str]"], *, threads: Optional[int] = None,
                 precision_hint: str = DEFAULT_PRECISION_HINT, latency: bool = True):
        if precision_hint not in PRECISION_HINTS:
            raise EdgekdError(f"unknown OpenVINO precision hint {precision_hint!r}; "
                              f"choose {' or '.join(PRECISION_HINTS)}")
        if threads is not None and threads < 1:
            raise EdgekdError("--threads must be at least 1")
        self.path = Path(path)
        model = read_model(self.path)
        if len(model.inputs) != 1 or len(model.outputs) < 1:
            raise ModelError(f"{self.path}: expected one image input and one output, found {len(model.inputs)} "
                             f"input(s) and {len(model.outputs)} output(s)")
        inp, out = model.inputs[0], model.outputs[0]
        self.input_name = inp.get_any_name() if inp.get_names() else ""
        self.output_name = out.get_any_name() if out.get_names() else ""
        etype = _type_name(inp.get_element_type())
        self.input_type = "tensor(float)" if etype == "f32" else f"tensor({etype})"  # ONNX Runtime's spelling
        self.input_dims = _dims(inp)
        self.output_dims = _dims(out)
        self.metadata = model_metadata(model)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision_hint}
        if latency:
            config["PERFORMANCE_HINT"] = "LATENCY"
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = _core().compile_model(model, DEVICE, config)
        except Exception as exc:
            raise ModelError(f"{self.path}: OpenVINO cannot compile the model for {DEVICE} ({first_line(exc)})") \
                from None
        self._request = self.compiled.create_infer_request()
        self._output = self.compiled.outputs[0]
        self.precision_hint = precision_hint
        self.inference_precision = _type_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.settings = {"precision_hint": precision_hint, "inference_precision": self.inference_precision,
                         "threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS")) or "default",
                         "performance_hint": str(self.compiled.get_property("PERFORMANCE_HINT")),
                         "openvino": openvino_version(), "device": DEVICE}

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Run float32 NCHW `x`; the result is OpenVINO's output buffer (valid until the next call)."""
        try:
            return self._request.infer({0: x}, share_inputs=True, share_outputs=True)[self._output]
        except Exception as exc:
            raise ModelError(f"{self.path}: OpenVINO inference failed ({first_line(exc)})") from None

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run float32 NCHW `x`; returns a fresh (N, classes) array."""
        return np.array(self.infer(np.ascontiguousarray(x, dtype=np.float32)), copy=True)


def _type_name(value: Any) -> str:
    """OpenVINO element type -> its short name (`f32`, `bf16`, ...)."""
    name = getattr(value, "get_type_name", None)
    return str(name()) if callable(name) else str(value)


__all__ = ["OpenVinoModel", "PRECISION_HINTS", "DEFAULT_PRECISION_HINT", "IR_SUFFIX", "OPENVINO_SUFFIXES",
           "model_metadata", "openvino_version", "read_model"]
