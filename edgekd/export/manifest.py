"""Building the export manifest: everything a runtime needs besides the weights
(docs/architecture.md, "Manifest").

Written as `manifest.json` beside the model and embedded in the ONNX `metadata_props` under
`METADATA_KEY` (a JSON string), so a model file alone is self-describing. This module only builds
and embeds it; the one reader is `edgekd.runtime.manifest` (torch-free and onnx-free), which also
defines the key and the format marker written here.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from edgekd.names import INPUT_NAME
from edgekd.runtime.manifest import MANIFEST_FORMAT, METADATA_KEY

MANIFEST_VERSION = 1
LAYOUT = "NCHW"
PREPROCESS = "x = (uint8_image / 255 - mean) / std, RGB (or gray) channels first, float32"
# With `resize` (a run trained with --image-size): the evaluation view comes first (edgekd.runtime.resize.eval_view)
PREPROCESS_VIEW = ("largest centred square resized to resize x resize (bilinear), centred H x W crop, then "
                   + PREPROCESS)


def view_fields(ckpt: dict[str, Any]) -> dict[str, Any]:
    """`resize` (stored side) and `crop_ratio` of a fixed-size run's evaluation view (ckpt["view"], see
    edgekd.data.images.View.to_dict); empty for a native-size run, whose images go in at the model's size."""
    view = ckpt.get("view")
    if not view:
        return {}
    return {"resize": int(view["resize"]), "crop_ratio": float(view["crop_ratio"]), "preprocess": PREPROCESS_VIEW}


def package_versions() -> dict[str, Optional[str]]:
    """Versions of the packages that shaped the artifact (None when not installed)."""
    out: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in ("edgekd", "torch", "onnx", "onnxruntime", "onnxsim", "onnxscript", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def build_manifest(*, ckpt: dict[str, Any], ckpt_sha256: str, output_name: str, opset: int, exporter: str,
                   surgery: dict[str, Any], parity: dict[str, Any], graph: dict[str, Any], simplified: bool,
                   int8: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Assemble the manifest of one exported model from its checkpoint and the export's checks."""
    cfg = ckpt.get("config", {}) or {}
    c, h, w = (int(v) for v in ckpt["input_shape"])
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "model": {"name": ckpt["model_name"], "method": cfg.get("method"), "num_classes": len(ckpt["class_names"]),
                  "params": graph.get("params"), "macs": surgery.get("macs_after")},
        "class_names": list(ckpt["class_names"]),
        "input": {"name": INPUT_NAME, "shape": [None, c, h, w], "layout": LAYOUT, "dtype": "float32",
                  "mean": [float(v) for v in ckpt["mean"]], "std": [float(v) for v in ckpt["std"]],
                  "preprocess": PREPROCESS, **view_fields(ckpt)},
        "output": {"name": output_name, "kind": output_name, "shape": [None, len(ckpt["class_names"])]},
        "fold": {"mode": surgery.get("fold"), "alpha": surgery.get("alpha"), "beta": surgery.get("beta")},
        "source": {"checkpoint": Path(ckpt.get("path", "")).name, "sha256": ckpt_sha256,
                   "data": ckpt.get("data_spec"), "epoch": ckpt.get("epoch"), "val_acc": ckpt.get("val_acc"),
                   "edgekd_version": ckpt.get("edgekd_version")},
        "opset": opset,
        "exporter": exporter,
        "simplified": simplified,
        "versions": package_versions(),
        "surgery": surgery,
        "parity": parity,
        "graph": graph,
        **({"int8": int8} if int8 else {}),
    }


def embed_manifest(model, manifest: dict[str, Any]) -> None:
    """Store the manifest as JSON in the ONNX model's metadata_props (replacing an older one)."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for k, v in keep + [(METADATA_KEY, json.dumps(manifest, sort_keys=False))]:
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.producer_name = "edgekd"
    model.producer_version = manifest.get("versions", {}).get("edgekd") or ""
