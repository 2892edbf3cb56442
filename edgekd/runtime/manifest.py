"""The one manifest reader: class names, input shape, normalisation, output kind of an exported model.

Torch-free and onnx-free. Every part of edgekd that needs a model's manifest reads it here: the
device runtime, bench's runners, ONNX teachers, and tests of the export. The manifest comes from
(first found): an explicit path, `manifest.json` beside the model, or the JSON embedded in the ONNX
model's `metadata_props` under `METADATA_KEY` (read through ONNX Runtime's model metadata, so the
`onnx` package is not needed). `prefer_embedded=True` puts the embedded copy first: it belongs to
that very file (an INT8 model and its FP32 source share one `manifest.json`).

Two forms are accepted: the one `edgekd export` writes (edgekd.export.manifest: `class_names`,
`input: {name, shape [N, C, H, W], layout, mean, std}`, `output: {name, kind}`), and a flat
hand-written form for models exported elsewhere: `class_names`, `input_shape` [C, H, W], `mean`,
`std`, optional `layout` ("NCHW"), `output_kind` ("logits" | "probs"), `resize` and `crop_ratio`.
The schema, with units, is in docs/architecture.md, "Manifest".

`resize` S (a run trained with `--image-size`): an image file is not resized to H x W; its largest
centred square is resized to S x S and the centred H x W crop is what the model sees
(edgekd.runtime.resize.eval_view), as training evaluated it. Without `resize` the file is resized to
H x W, as training's native-size reader did.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from edgekd.errors import EdgekdError, first_line
from edgekd.io import sha256_file
from edgekd.names import MANIFEST_FILE, OUTPUT_KINDS

# Key of the manifest JSON in ONNX metadata_props and the format marker of the export form; the
# exporter (edgekd.export.manifest) writes what is defined here.
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
    resize: Optional[int] = None  # stored square side of the evaluation view (H x W crop of it); None: plain resize
    crop_ratio: Optional[float] = None  # H / resize as the run configured it (informative)

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
    flat.update({k: inp[k] for k in ("resize", "crop_ratio") if inp.get(k) is not None})
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
    resize, crop_ratio = _view(data, shape, source)
    known = {"class_names", "input_shape", "mean", "std", "output_kind", "layout", "input_name", "output_name",
             "resize", "crop_ratio"}
    extra = {k: v for k, v in data.items() if k not in known}
    return Manifest(tuple(names), (shape[0], shape[1], shape[2]), stats["mean"], stats["std"], kind, layout,
                    names_["input_name"], names_["output_name"], source, extra, resize, crop_ratio)


def _view(data: dict, shape: list, source: str) -> tuple[Optional[int], Optional[float]]:
    """The evaluation view (`resize`, `crop_ratio`): a square input cropped from a resize x resize square."""
    resize, ratio = data.get("resize"), data.get("crop_ratio")
    if resize is None:
        return None, None
    if not isinstance(resize, int) or isinstance(resize, bool) or shape[1] != shape[2] or resize < shape[1]:
        raise ManifestError(f"{source}: resize must be an integer >= the side of a square input "
                            f"{shape[1:]}, got {resize!r}")
    if ratio is not None and (not isinstance(ratio, (int, float)) or isinstance(ratio, bool)
                              or not 0.0 < float(ratio) <= 1.0):
        raise ManifestError(f"{source}: crop_ratio must be a number in (0, 1], got {ratio!r}")
    return resize, None if ratio is None else float(ratio)


def _decode(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{source} is not valid JSON ({exc})") from None


def _read_text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {p}: {first_line(exc)}") from None


def read_manifest_file(path: str | Path) -> Manifest:
    """Read and validate a `manifest.json`."""
    p = Path(path)
    return parse_manifest(_decode(_read_text(p), str(p)), str(p))


def embedded_manifest(metadata: Optional[Mapping[str, str]], source: str = "model") -> Optional[dict]:
    """The manifest embedded in a model's custom metadata (`metadata_props`), decoded; None when absent."""
    if not metadata or METADATA_KEY not in metadata:
        return None
    data = _decode(metadata[METADATA_KEY], f"{source}: embedded manifest")
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: the embedded manifest is not a JSON object")
    return data


def read_manifest_data(path: str | Path) -> dict:
    """The full export record (not only what the runtime uses) from `manifest.json`, an export
    directory, or the metadata of an ONNX file; refused unless it is an edgekd manifest."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_FILE
    if not p.is_file():
        raise ManifestError(f"no manifest at {path}")
    if p.suffix.lower() == ".onnx":
        from edgekd.runtime.session import model_metadata, open_session

        data = embedded_manifest(model_metadata(open_session(p)), str(p))
        if data is None:
            raise ManifestError(f"{p} has no edgekd manifest in its metadata (not exported by edgekd)")
    else:
        data = _decode(_read_text(p), str(p))
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{p} is not an edgekd manifest")
    return data


def locate_manifest(model_path: str | Path, explicit: Optional[str | Path] = None,
                    metadata: Optional[Mapping[str, str]] = None, *, prefer_embedded: bool = False
                    ) -> Optional[Manifest]:
    """The manifest of a model, or None when it has none; a manifest that is found but invalid raises.

    Args:
        model_path: the ONNX model or TensorRT engine.
        explicit: a manifest path given by the user (always wins).
        metadata: the model's custom metadata (ONNX `metadata_props`), when already loaded.
        prefer_embedded: read the embedded manifest before `manifest.json` beside the model.
    """
    if explicit is not None:
        return read_manifest_file(explicit)
    source = f"{model_path} (metadata {METADATA_KEY})"

    def from_metadata() -> Optional[Manifest]:
        data = embedded_manifest(metadata, source)
        return None if data is None else parse_manifest(data, source)

    beside = Path(model_path).with_name(MANIFEST_FILE)
    if prefer_embedded and (found := from_metadata()) is not None:
        return found
    if beside.is_file():
        return read_manifest_file(beside)
    return None if prefer_embedded else from_metadata()


# Files whose manifest sha256 is not checked: an engine is rebuilt per device (from the kit, or by hand)
# from the ONNX the manifest lists, and its own provenance record (edgekd.runtime.engine) names that ONNX.
UNCHECKED_SUFFIXES = (".engine", ".plan", ".trt")


def verify_model_file(manifest: Manifest, model_path: str | Path,
                      metadata: Optional[Mapping[str, str]] = None) -> None:
    """Refuse a manifest that belongs to another export than the model file (one-line ManifestError).

    `edgekd export` records the sha256 of every file it writes in manifest.json's `files` (by file
    name; an OpenVINO IR's weights `.bin` too), and the checkpoint it exported in `source.sha256`,
    which the manifest embedded in the model repeats. So: (1) a file listed by name must have that
    sha256 (one read of the file, once per load); (2) the embedded manifest, when there is one, must
    name the same source checkpoint. A hand-written manifest (no `files`, no `source`) is not checked.
    """
    path = Path(model_path)
    extra = manifest.extra or {}
    files = extra.get("files")
    listed = [path] + ([path.with_suffix(".bin")] if path.suffix.lower() == ".xml" else [])
    if isinstance(files, Mapping) and path.suffix.lower() not in UNCHECKED_SUFFIXES:
        for p in listed:
            want = files.get(p.name)
            if not isinstance(want, str):
                continue
            try:
                got = sha256_file(p)
            except OSError as exc:
                raise ManifestError(f"cannot read {p} to check it against {manifest.source}: "
                                    f"{first_line(exc)}") from None
            if got != want:
                raise ManifestError(f"manifest {manifest.source} belongs to another export: it records sha256 "
                                    f"{want[:12]}... for {p.name}, the file has {got[:12]}...")
    embedded = embedded_manifest(metadata, str(path))
    ours, theirs = extra.get("source"), (embedded or {}).get("source")
    if isinstance(ours, Mapping) and isinstance(theirs, Mapping) and ours.get("sha256") and theirs.get("sha256") \
            and ours["sha256"] != theirs["sha256"]:
        raise ManifestError(f"manifest {manifest.source} belongs to another export: its source checkpoint sha256 "
                            f"{str(ours['sha256'])[:12]}... differs from the one embedded in {path.name} "
                            f"({str(theirs['sha256'])[:12]}...)")


def find_manifest(model_path: str | Path, explicit: Optional[str | Path] = None,
                  metadata: Optional[Mapping[str, str]] = None, *, prefer_embedded: bool = False) -> Manifest:
    """Like `locate_manifest` (explicit, beside, embedded), but a model without a manifest is an error."""
    found = locate_manifest(model_path, explicit, metadata, prefer_embedded=prefer_embedded)
    if found is None:
        beside = Path(model_path).with_name(MANIFEST_FILE)
        raise ManifestError(f"no manifest for {model_path}: expected {beside} or a manifest embedded in the model "
                            f"(pass --manifest PATH)")
    return found
