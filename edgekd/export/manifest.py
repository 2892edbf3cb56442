"""The export manifest (DESIGN.md section 2): everything a runtime needs besides the weights.

Written as `manifest.json` beside the model and embedded in the ONNX `metadata_props` under
the key `edgekd.manifest` (a JSON string), so a model file alone is self-describing. Readers
need neither torch nor onnx: `read_manifest` uses onnxruntime's model metadata.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from edgekd.errors import EdgekdError

MANIFEST_FORMAT = "edgekd-manifest"
MANIFEST_VERSION = 1
METADATA_KEY = "edgekd.manifest"
LAYOUT = "NCHW"
PREPROCESS = "x = (uint8_image / 255 - mean) / std, RGB (or gray) channels first, float32"


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
        "input": {"name": "input", "shape": [None, c, h, w], "layout": LAYOUT, "dtype": "float32",
                  "mean": [float(v) for v in ckpt["mean"]], "std": [float(v) for v in ckpt["std"]],
                  "preprocess": PREPROCESS},
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


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read a manifest from `manifest.json`, an export directory, or an ONNX file's metadata."""
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.json"
    if not p.is_file():
        raise EdgekdError(f"no manifest at {path}")
    if p.suffix == ".onnx":
        from edgekd.deps import require

        ort = require("onnxruntime")
        try:
            sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise EdgekdError(f"{p} is not a readable ONNX model ({str(exc).splitlines()[0][:120]})") from None
        text = sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if text is None:
            raise EdgekdError(f"{p} has no edgekd manifest in its metadata (not exported by edgekd)")
    else:
        text = p.read_text()
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EdgekdError(f"{p}: manifest is not valid JSON ({exc.msg})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise EdgekdError(f"{p} is not an edgekd manifest")
    return manifest
