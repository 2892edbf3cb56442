"""The model manifest as the runtime reads it: class names, input shape, normalisation, output kind.

Torch-free and onnx-free. The manifest comes from (first found): an explicit path, `manifest.json`
beside the model, or the JSON embedded in the ONNX model's `metadata_props` (read through
ONNX Runtime's model metadata, so the `onnx` package is not needed).

Two forms are accepted: the one `edgekd export` writes (edgekd.export.manifest: `class_names`,
`input: {name, shape [N, C, H, W], layout, mean, std}`, `output: {name, kind}`), and a flat
hand-written form for models exported elsewhere: `class_names`, `input_shape` [C, H, W], `mean`,
`std`, optional `layout` ("NCHW") and `output_kind` ("logits" | "probs").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from edgekd.errors import EdgekdError
from edgekd.names import MANIFEST_FILE, OUTPUT_KINDS

# Key of the manifest JSON in ONNX metadata_props and the format marker. They must equal
# edgekd.export.manifest's constants (a test checks it); repeated here because the runtime must
# not import the export stack (it imports torch-era modules and is absent on a device copy).
METADATA_KEY = "edgekd.manifest"
MANIFEST_FORMAT = "edgekd-manifest"

SUPPORTED_LAYOUTS = ("NCHW",)


class ManifestError(EdgekdError):
    """A manifest is missing, unreadable, or does not describe the model it sits beside."""


@dataclass(frozen=True)
class Manifest:
    """What the runtime needs from `manifest.json` (other keys are kept in `extra`)."""

    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    output_kind: str = "logits"
    layout: str = "NCHW"
    input_name: Optional[str] = None  # graph tensor names when the manifest states them
    output_name: Optional[str] = None
    source: str = ""  # where it was read from, for messages
    extra: Optional[Mapping[str, Any]] = None

    @property
    def channels(self) -> int:
        return self.input_shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return self.input_shape[1], self.input_shape[2]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _flatten_export_form(data: dict, source: str) -> dict:
    """The `edgekd export` form (nested `input`/`output`) -> the flat keys validated below."""
    if data.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
        raise ManifestError(f"{source}: not an edgekd manifest (format {data.get('format')!r})")
    inp, out = data["input"], data.get("output") or {}
    if not isinstance(out, dict):
        raise ManifestError(f"{source}: 'output' must be an object")
    shape = inp.get("shape")
    if isinstance(shape, list) and len(shape) == 4:
        shape = shape[1:]  # drop the (dynamic) batch axis
    flat = {k: v for k, v in data.items() if k not in ("input", "output")}
    flat.update({"input_shape": shape, "mean": inp.get("mean"), "std": inp.get("std"),
                 "layout": inp.get("layout", "NCHW"), "output_kind": out.get("kind", out.get("name", "logits")),
                 "input_name": inp.get("name"), "output_name": out.get("name")})
    return flat


def parse_manifest(data: Any, source: str = "manifest") -> Manifest:
    """Validate a decoded manifest dict; any problem is a one-line ManifestError naming `source`."""
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: a manifest must be a JSON object, got {type(data).__name__}")
    if isinstance(data.get("input"), dict):
        data = _flatten_export_form(data, source)
    missing = [k for k in ("class_names", "input_shape", "mean", "std") if k not in data]
    if missing:
        raise ManifestError(f"{source}: manifest lacks {', '.join(missing)}")
    names = data["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ManifestError(f"{source}: class_names must be a non-empty list of strings")
    shape = data["input_shape"]
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
        raise ManifestError(f"{source}: input_shape must be [C, H, W] with positive integers, got {shape!r}")
    c = shape[0]
    if c not in (1, 3):
        raise ManifestError(f"{source}: input_shape has {c} channels; the runtime handles 1 (grayscale) or 3 (RGB)")
    stats = {}
    for key in ("mean", "std"):
        v = data[key]
        if (not isinstance(v, list) or len(v) != c
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
            raise ManifestError(f"{source}: {key} must be a list of {c} numbers (one per channel), got {v!r}")
        stats[key] = tuple(float(x) for x in v)
    if min(stats["std"]) <= 0:
        raise ManifestError(f"{source}: std must be positive, got {list(stats['std'])}")
    kind = data.get("output_kind", "logits")
    if kind not in OUTPUT_KINDS:
        raise ManifestError(f"{source}: output_kind must be one of {', '.join(OUTPUT_KINDS)}, got {kind!r}")
    layout = data.get("layout", "NCHW")
    if layout not in SUPPORTED_LAYOUTS:
        raise ManifestError(f"{source}: layout {layout!r} is not supported (use {', '.join(SUPPORTED_LAYOUTS)})")
    names_ = {k: data.get(k) for k in ("input_name", "output_name")}
    for k, v in names_.items():
        if v is not None and not isinstance(v, str):
            raise ManifestError(f"{source}: {k.replace('_', ' ')} must be a string, got {v!r}")
    known = {"class_names", "input_shape", "mean", "std", "output_kind", "layout", "input_name", "output_name"}
    extra = {k: v for k, v in data.items() if k not in known}
    return Manifest(tuple(names), (shape[0], shape[1], shape[2]), stats["mean"], stats["std"], kind, layout,
                    names_["input_name"], names_["output_name"], source, extra)


def read_manifest_file(path: str | Path) -> Manifest:
    """Read and validate a `manifest.json`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {p}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{p} is not valid JSON ({exc})") from None
    return parse_manifest(data, str(p))


def find_manifest(model_path: str | Path, explicit: Optional[str | Path] = None,
                  metadata: Optional[Mapping[str, str]] = None) -> Manifest:
    """The manifest for a model: `explicit`, else `manifest.json` beside it, else embedded metadata.

    Args:
        model_path: the ONNX model or TensorRT engine.
        explicit: a manifest path given by the user.
        metadata: the model's custom metadata (ONNX `metadata_props`), when already loaded.
    """
    if explicit is not None:
        return read_manifest_file(explicit)
    beside = Path(model_path).with_name(MANIFEST_FILE)
    if beside.is_file():
        return read_manifest_file(beside)
    if metadata and METADATA_KEY in metadata:
        source = f"{model_path} (metadata {METADATA_KEY})"
        try:
            data = json.loads(metadata[METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{source}: embedded manifest is not valid JSON ({exc})") from None
        return parse_manifest(data, source)
    raise ManifestError(f"no manifest for {model_path}: expected {beside} or a manifest embedded in the model "
                        f"(pass --manifest PATH)")
