"""The one ONNX Runtime session factory: threads, spinning, providers, and a one-line error.

Every ONNX Runtime session in edgekd is opened here: the device runtime (`Classifier`), the
export's verification (parity, INT8 budget), bench's `OrtRunner`, and ONNX teachers. Torch-free;
`onnxruntime` is imported through `edgekd.deps.require` when a session is opened.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

from edgekd.deps import require
from edgekd.errors import EdgekdError, MissingDependencyError, first_line

CPU_PROVIDER = "CPUExecutionProvider"
# short names accepted by `--providers` (edgekd-run, edgekd bench) -> ONNX Runtime provider names
PROVIDER_NAMES = {
    "cpu": CPU_PROVIDER,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
# providers that run on a CUDA GPU (their inputs can be bound on the device)
CUDA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")

ModelSource = Union[str, "os.PathLike[str]", bytes, Any]  # a path, serialized bytes, or an onnx.ModelProto


class ModelError(EdgekdError):
    """A model file is missing, not a loadable model, or not a single-input classifier."""


def provider_names(names: Optional[Sequence[str]]) -> list[str]:
    """`["cuda", "cpu"]` -> ONNX Runtime provider names, in order (unknown names pass through unchanged)."""
    return [PROVIDER_NAMES.get(n.strip().lower(), n.strip()) for n in names or () if n.strip()]


def available_providers() -> list[str]:
    """The execution providers of the installed onnxruntime build."""
    return list(require("onnxruntime").get_available_providers())


def _describe(model: ModelSource) -> str:
    if isinstance(model, (bytes, bytearray)) or hasattr(model, "SerializeToString"):
        return "the in-memory ONNX model"
    return os.fspath(model)


def open_session(model: ModelSource, *, threads: Optional[int] = None, spinning: Optional[bool] = None,
                 providers: Optional[Sequence[str]] = None) -> Any:
    """Open an `onnxruntime.InferenceSession`.

    Args:
        model: a path, the serialized model bytes, or an `onnx.ModelProto` (serialized here; the
            `onnx` package itself is not imported).
        threads: intra-op threads (None: one per core, ORT's choice); inter-op threads are then 1,
            since edgekd models run sequentially.
        spinning: whether idle intra-/inter-op threads busy-wait for the next run (None: ORT's
            default, which spins). False when ORT alternates with torch or another session in one
            process: spinning threads starve the others
            (docs/architecture.md, "ONNX Runtime thread spinning").
        providers: execution providers in priority order, full names or the short names of
            `PROVIDER_NAMES` (default CPU only).

    Raises:
        MissingDependencyError: onnxruntime is missing, or a provider is not in this build (exit 1).
        ModelError: the file or bytes are not a loadable ONNX model (one line, exit 1).
    """
    ort = require("onnxruntime")
    wanted = provider_names(providers) or [CPU_PROVIDER]
    have = ort.get_available_providers()
    missing = [p for p in wanted if p not in have]
    if missing:
        raise MissingDependencyError(f"ONNX Runtime provider(s) {', '.join(missing)} not available in this "
                                     f"onnxruntime build (available: {', '.join(have)}); install onnxruntime-gpu "
                                     f"for CUDA/TensorRT")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors are reported by edgekd, in one line
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if spinning is not None:
        flag = "1" if spinning else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", flag)
        opts.add_session_config_entry("session.inter_op.allow_spinning", flag)
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else model
    if not isinstance(src, (bytes, bytearray)):
        src = os.fspath(src)
    try:
        return ort.InferenceSession(src, sess_options=opts, providers=wanted)
    except Exception as exc:  # InvalidProtobuf, InvalidGraph, NoSuchFile, Fail: all mean "not a usable model"
        raise ModelError(f"{_describe(model)} is not a loadable ONNX model ({first_line(exc)})") from None


def model_metadata(session: Any) -> dict[str, str]:
    """The custom metadata (ONNX `metadata_props`) of an open session's model."""
    return dict(session.get_modelmeta().custom_metadata_map or {})
