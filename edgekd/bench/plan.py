"""What one `edgekd bench` run measures: (model file, backend, precision hint) entries, side by side.

`--backend` and `--precision-hint` take comma-separated lists, so one run can hold the same ONNX
file on ONNX Runtime and on OpenVINO at f32 and bf16, interleaved like any other models:

    edgekd bench model.onnx model.int8.onnx --backend ort,openvino --precision-hint f32,bf16 --data ...

Every model is measured on each listed backend that can run its file (ONNX: ort and openvino; IR
`.xml`: openvino; checkpoints: torch; engines: trt), and every OpenVINO entry at each hint. An
INT8 artifact's FP32 source (`model.onnx` / `model.xml` beside it) is added on the same backend
and hint when missing, for the INT8 speed check and the accuracy budget. Entry names are the
paths as given, tagged `[backend hint]` when the backend is not the file's default or the hint is
not f32, so a baseline report of the same command matches entry by entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from edgekd.bench.runners import BACKENDS, infer_backend, int8_source, manifest_precision
from edgekd.errors import EdgekdError
from edgekd.runtime.openvino import DEFAULT_PRECISION_HINT, IR_SUFFIX, PRECISION_HINTS

# backends that can run a file, by the file's default backend (`infer_backend`)
RUNNABLE = {"torch": ("torch",), "ort": ("ort", "openvino"), "trt": ("trt",), "openvino": ("openvino",)}


@dataclass(frozen=True)
class Entry:
    """One thing to measure: a model file on a backend, at an OpenVINO precision hint."""

    path: str
    backend: str
    precision_hint: str = DEFAULT_PRECISION_HINT  # OpenVINO only; f32 elsewhere

    @property
    def name(self) -> str:
        """The report name: the path, tagged when not measured the file's default way."""
        tags = [self.backend] if self.backend != _native(self.path) else []
        if self.precision_hint != DEFAULT_PRECISION_HINT:
            tags.append(self.precision_hint)
        return f"{self.path} [{' '.join(tags)}]" if tags else self.path


def parse_list(text: Optional[str | Sequence[str]], allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """'ort,openvino' -> ('ort', 'openvino'); () for None; a name outside `allowed` is a one-line EdgekdError."""
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(v.strip().lower() for v in items if v.strip()))
    bad = [n for n in names if n not in allowed] or ([] if names else [str(text)])
    if bad:
        raise EdgekdError(f"unknown {what} {bad[0]!r} in --{what.replace(' ', '-')} {text!r}; choose from "
                          f"{', '.join(allowed)} (comma-separated)")
    return names


def parse_backends(text: Optional[str]) -> tuple[str, ...]:
    return parse_list(text, BACKENDS, "backend")


def parse_hints(text: Optional[str]) -> tuple[str, ...]:
    return parse_list(text, PRECISION_HINTS, "precision hint") or (DEFAULT_PRECISION_HINT,)


def _native(path: str) -> Optional[str]:
    """The file's default backend, None for a suffix edgekd does not know."""
    try:
        return infer_backend(path)
    except EdgekdError:
        return None


def entries_for(path: str, backends: Sequence[str], hints: Sequence[str]) -> list[Entry]:
    """Every (backend, hint) entry of one model file; EdgekdError when no listed backend runs it.

    A file with an unknown suffix runs on the backends given as they are (`--backend ort` on a
    `.bin` ONNX file); without `--backend` it is refused in one line.
    """
    native = _native(path)
    if native is None:
        if not backends:
            infer_backend(path)  # raises: cannot tell the backend from the suffix
        return [Entry(path, b, h) for b in backends for h in (hints if b == "openvino" else (DEFAULT_PRECISION_HINT,))]
    chosen = [b for b in backends if b in RUNNABLE[native]] if backends else [native]
    if not chosen:
        raise EdgekdError(f"{Path(path).name} cannot run on --backend {','.join(backends)}; "
                          f"it runs on {' or '.join(RUNNABLE[native])}")
    return [Entry(path, b, h) for b in chosen for h in (hints if b == "openvino" else (DEFAULT_PRECISION_HINT,))]


def fp32_reference(entry: Entry) -> Optional[Entry]:
    """The FP32 entry a reduced-precision entry is checked against (speed and accuracy budget), or None.

    INT8 (ONNX Runtime or OpenVINO): its source file (`model.onnx` / `model.xml` beside it) on the
    same backend at f32. An FP32 file under OpenVINO's bf16 hint: the same file at f32.
    """
    if entry.backend not in ("ort", "openvino"):
        return None
    p = Path(entry.path)
    if manifest_precision(entry.path, None) == "int8":
        src = int8_source(entry.path)
        if p.suffix.lower() == IR_SUFFIX:
            ir = p.with_name("model.xml")
            src = ir if ir.is_file() and ir.resolve() != p.resolve() else None
        return Entry(str(src), entry.backend, DEFAULT_PRECISION_HINT) if src is not None else None
    if entry.precision_hint != DEFAULT_PRECISION_HINT:
        return Entry(entry.path, entry.backend, DEFAULT_PRECISION_HINT)
    return None


def plan_entries(models: Sequence[str], backend: Optional[str], precision_hint: Optional[str],
                 add_int8_source: bool = True) -> tuple[list[Entry], dict[str, str]]:
    """The entries of a bench run and {entry name: why it was added} for the FP32 references added."""
    backends, hints = parse_backends(backend), parse_hints(precision_hint)
    entries = [e for m in models for e in entries_for(m, backends, hints)]
    added: dict[str, str] = {}
    if add_int8_source:
        for e in list(entries):
            ref = fp32_reference(e)
            if ref is not None and index_of(entries, ref) is None:
                entries.append(ref)
                why = ("FP32 source of {}, benchmarked beside it to check the INT8 speed-up and accuracy"
                       if ref.path != e.path else "f32 run of {}, benchmarked beside it for the bf16 accuracy budget")
                added[ref.name] = why.format(e.name)
    return entries, added


def index_of(entries: Sequence[Entry], entry: Entry) -> Optional[int]:
    """Position of `entry` in `entries` (same file, backend and hint), or None."""
    target = Path(entry.path).resolve()
    return next((i for i, o in enumerate(entries) if Path(o.path).resolve() == target
                 and o.backend == entry.backend and o.precision_hint == entry.precision_hint), None)


def reference_of(entries: Sequence[Entry], i: int, precisions: Sequence[str]) -> Optional[int]:
    """Index of the FP32 entry that entry `i` is held against in the accuracy budget, or None.

    `fp32_reference` on the same backend when measured, else the same file with FP32 numerics on
    any backend (ONNX Runtime's FP32 run of `model.onnx` is the same FP32 model); None for FP32 entries.
    """
    ref = fp32_reference(entries[i]) if precisions[i] in ("int8", "bf16") else None
    if ref is None:
        return None
    j = index_of(entries, ref)
    if j is not None and precisions[j] == "fp32":
        return j
    target = Path(ref.path).resolve()
    return next((k for k, o in enumerate(entries) if precisions[k] == "fp32" and Path(o.path).resolve() == target),
                None)


__all__ = ["Entry", "RUNNABLE", "parse_backends", "parse_hints", "parse_list", "entries_for", "fp32_reference",
           "plan_entries", "index_of", "reference_of"]
