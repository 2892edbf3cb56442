"""What a bench report entry measured: the artifact, the data and the environment, and the rule for
comparing two entries (docs/gates.md, "Bench").

Every export is called `model.onnx`, so a file name says nothing about the model. A report entry
carries three records, and `--baseline` compares them before any figure:

- `identity`: sha256 of the file, sha256 of the source checkpoint, model name, input shape,
  class count and a hash of the class names, precision and output kind. A different model
  (name, input shape, classes, precision, output kind; or, with no manifest naming the model,
  different bytes) is refused (EdgekdError, exit 1): its latency is not a regression of anything.
  Different bytes of the same named model are a new build of it and are gated.
- `data`: the data spec, split, image count and a content hash of the evaluated split (pixels and
  labels). Top-1 measured on different images is refused, whatever the spec string says.
- `environment`: CPU model, cores, threads, backend and its version, device and providers, and the
  measurement mode (interleaved, ONNX Runtime spinning, torch mode). A difference is a warning:
  the figures are still compared, and the report says why they may move.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from edgekd.bench.runners import ModelInfo

# identity fields whose difference means "a different model" (refused)
MODEL_FIELDS = ("model", "input_shape", "num_classes", "classes_sha256", "precision", "output_kind")
# environment fields whose difference is a warning
ENVIRONMENT_FIELDS = ("cpu_model", "cpu_count", "threads", "backend", "backend_version", "device", "providers",
                      "interleaved", "ort_allow_spinning", "torch_mode", "gpu")
BACKEND_PACKAGES = {"ort": "onnxruntime", "torch": "torch", "trt": "tensorrt", "openvino": "openvino"}


def classes_sha256(class_names: Optional[Sequence[str]]) -> Optional[str]:
    """sha256 of the class names as a JSON list (order matters: it is the output order)."""
    if not class_names:
        return None
    return hashlib.sha256(json.dumps(list(class_names)).encode()).hexdigest()


def artifact_identity(info: ModelInfo, sha256: Optional[str]) -> dict[str, Any]:
    """The identity record of one benchmarked artifact (`sha256`: of the file benchmarked)."""
    return {"sha256": sha256, "source_sha256": info.source_sha256, "model": info.model_name,
            "input_shape": [int(v) for v in info.input_shape], "num_classes": info.num_classes,
            "classes_sha256": classes_sha256(info.class_names), "precision": info.precision,
            "output_kind": info.output_kind}


def split_sha256(x_u8: np.ndarray, y: np.ndarray, chunk: int = 256) -> str:
    """Content hash of an evaluated split: shape, dtype and bytes of the images, then the labels.

    The images are read `chunk` rows at a time (an on-disk store split, edgekd.data.images.ImageRows, never
    sits in memory whole); the bytes hashed are those of the whole C-ordered array all the same.
    """
    h = hashlib.sha256()
    labels = np.asarray(y, dtype=np.int64)
    for arr, step in ((x_u8, chunk), (labels, max(1, len(labels)))):
        shape = tuple(int(v) for v in arr.shape)
        h.update(f"{np.dtype(arr.dtype).str}{shape}".encode())
        for i in range(0, shape[0], step):
            h.update(np.ascontiguousarray(arr[i:i + step]).data)  # a numpy array's own buffer is not copied
    return h.hexdigest()


def data_identity(spec: str, split: str, x_u8: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The data record of an accuracy measurement."""
    return {"spec": spec, "split": split, "n": int(len(y)), "sha256": split_sha256(x_u8, y)}


def entry_environment(fingerprint: Mapping[str, Any], info: ModelInfo, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The environment record of one entry: machine, threads, backend version and measurement mode."""
    package = BACKEND_PACKAGES.get(info.backend)
    version = info.settings.get(package) if package else None
    if version is None and package:
        version = (fingerprint.get("packages") or {}).get(package)
    return {"cpu_model": fingerprint.get("cpu_model"),
            "cpu_count": fingerprint.get("cpu_affinity") or fingerprint.get("cpu_count"),
            "threads": settings.get("threads"), "backend": info.backend, "backend_version": version,
            "device": info.device, "providers": list(info.settings.get("providers") or []),
            "interleaved": settings.get("interleaved"), "ort_allow_spinning": settings.get("ort_allow_spinning"),
            "torch_mode": settings.get("torch_mode"), "gpu": fingerprint.get("gpu")}


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a sha256
    return "unknown" if value is None else str(value)


def model_differences(base: Mapping[str, Any], cur: Mapping[str, Any]) -> list[str]:
    """Why two identity records are different models ([] when they are the same model).

    A missing model name on either side cannot prove sameness from names: then the file bytes must
    match (a raw ONNX file without a manifest is only "the same model" as an identical file).
    """
    out = [f"{k} {_short(base.get(k))} vs {_short(cur.get(k))}" for k in MODEL_FIELDS if base.get(k) != cur.get(k)]
    if not out and (base.get("model") is None or cur.get("model") is None) and base.get("sha256") != cur.get("sha256"):
        out.append(f"sha256 {_short(base.get('sha256'))} vs {_short(cur.get('sha256'))} and no manifest names the "
                   f"model")
    return out


def build_note(base: Mapping[str, Any], cur: Mapping[str, Any]) -> Optional[str]:
    """A note when the same model is a different build (other bytes or another source checkpoint)."""
    parts = [f"{k} {_short(base.get(k))} -> {_short(cur.get(k))}" for k in ("sha256", "source_sha256")
             if base.get(k) != cur.get(k)]
    return f"a different build of {cur.get('model') or 'the model'} ({', '.join(parts)})" if parts else None


def data_differences(base: Optional[Mapping[str, Any]], cur: Optional[Mapping[str, Any]]) -> list[str]:
    """Why two data records are different data ([] when the evaluated images and labels are the same;
    a missing record proves nothing, so it is a difference too)."""
    if not base or not cur:
        return [f"{'baseline' if not base else 'this run'} has no data identity for its top-1"]
    if base.get("sha256") == cur.get("sha256") and base.get("sha256") is not None:
        return []
    return [f"{base.get('spec')} {base.get('split')} (n={base.get('n')}, sha256 {_short(base.get('sha256'))}) vs "
            f"{cur.get('spec')} {cur.get('split')} (n={cur.get('n')}, sha256 {_short(cur.get('sha256'))})"]


def environment_differences(base: Optional[Mapping[str, Any]], cur: Optional[Mapping[str, Any]]) -> list[str]:
    """The environment fields that differ, as 'field A vs B' strings."""
    base, cur = base or {}, cur or {}
    return [f"{k} {_short(base.get(k))} vs {_short(cur.get(k))}" for k in ENVIRONMENT_FIELDS
            if k in base and k in cur and base.get(k) != cur.get(k)]


__all__ = ["MODEL_FIELDS", "ENVIRONMENT_FIELDS", "artifact_identity", "data_identity", "entry_environment",
           "split_sha256", "classes_sha256", "model_differences", "data_differences", "environment_differences",
           "build_note"]
