"""`edgekd-run MODEL IMAGE|DIR... [--top-k K] [--json] [--batch-size N] [--threads N] [--backend ort|openvino|trt]`.

Also `python -m edgekd.runtime`. argparse only (no typer: the device install has no CLI extras).
Exit codes: 0 every image classified; 1 a user error (`error: ...` on stderr, one line each: bad
model or manifest stops the run, a bad image is reported and the rest still run); 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from edgekd.errors import EdgekdError
from edgekd.runtime.classifier import RUNTIME_BACKENDS
from edgekd.runtime.openvino import DEFAULT_PRECISION_HINT, PRECISION_HINTS
from edgekd.runtime.session import provider_names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgekd-run",
        description="Classify images with an exported edgekd model (model.onnx + manifest.json, OpenVINO IR, or a "
                    "TensorRT engine). Needs only numpy, onnxruntime and Pillow (openvino for --backend openvino).")
    p.add_argument("model", help="model.onnx, OpenVINO IR model.xml, or a TensorRT engine (.engine/.plan/.trt), "
                                 "with manifest.json beside it")
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR",
                   help="image files, or directories searched recursively for .jpg/.jpeg/.png/.bmp/.ppm/.pgm/.webp")
    p.add_argument("--top-k", type=int, default=1, metavar="K", help="classes to report per image (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text lines")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per inference call (default 32)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="ONNX Runtime intra-op threads or OpenVINO inference threads (default: one per core)")
    p.add_argument("--backend", choices=RUNTIME_BACKENDS, default=None,
                   help="ort (ONNX Runtime), openvino (ONNX or OpenVINO IR model.xml; pip install openvino) or trt "
                        "(default from the file: .engine/.plan/.trt -> trt, .xml -> openvino, else ort)")
    p.add_argument("--precision-hint", choices=PRECISION_HINTS, default=DEFAULT_PRECISION_HINT,
                   help="OpenVINO: compute in f32 or bf16 (faster on CPUs with AVX-512-BF16/AMX; not bit-exact) "
                        f"(default {DEFAULT_PRECISION_HINT})"),
    p.add_argument("--providers", default=None, metavar="LIST",
                   help="ONNX Runtime execution providers, comma-separated: cpu, cuda, tensorrt, or full names "
                        "(default cpu; cuda/tensorrt need an onnxruntime-gpu build)")
    p.add_argument("--manifest", default=None, metavar="PATH",
                   help="manifest.json (default: beside the model, else the one embedded in the ONNX model)")
    p.add_argument("--convert", action="store_true",
                   help="convert grayscale images for an RGB model (and colour for a grayscale one) "
                        "instead of refusing them")
    return p


def _expand_inputs(inputs: Sequence[str], errors: list) -> list[Path]:
    """Files as given, directories expanded to their images; missing or empty inputs go to `errors`."""
    from edgekd.runtime.preprocess import list_images

    files: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = list_images(p)
            if not found:
                errors.append((p, f"{p}: no images in this directory"))
            files += found
        elif p.is_file():
            files.append(p)
        else:
            errors.append((p, f"{p}: no such file or directory"))
    return files


def parse_providers(text: Optional[str]) -> Optional[list[str]]:
    """`cuda,cpu` -> ONNX Runtime provider names, in order; None for the default (CPU)."""
    if not text:
        return None
    return provider_names(text.split(",")) or None


def _fail(msg: str) -> None:
    print(f"error: {msg.strip().splitlines()[0] if msg.strip() else 'failed'}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Classify `args.inputs`; returns the exit code."""
    from edgekd.runtime.classifier import Classifier

    if args.top_k < 1 or args.batch_size < 1 or (args.threads is not None and args.threads < 1):
        _fail("--top-k, --batch-size and --threads must be at least 1")
        return 2
    clf = Classifier(args.model, manifest=args.manifest, threads=args.threads,
                     providers=parse_providers(args.providers), backend=args.backend,
                     precision_hint=args.precision_hint)
    errors: list = []
    files = _expand_inputs(args.inputs, errors)
    for _, msg in errors:
        _fail(msg)
    records = []
    n_bad = len(errors)
    for r in clf.classify_files(files, top_k=args.top_k, batch_size=args.batch_size, convert=args.convert):
        if r.error is not None:
            n_bad += 1
            _fail(r.error)
            records.append({"file": str(r.path), "error": r.error})
            continue
        pred = r.prediction
        if args.json:
            records.append({"file": str(r.path), **pred.to_dict()})
        else:
            tops = ", ".join(f"{name} {score:.4f}" for name, _, score in pred.top_k)
            print(f"{r.path}\t{tops}", flush=False)
    if args.json:
        m = clf.manifest
        doc = {"model": str(clf.path), "backend": clf.backend_name, "manifest": m.source,
               "output_kind": m.output_kind,
               "input_shape": list(m.input_shape), "results": records,
               "errors": [{"file": str(p), "error": e} for p, e in errors]}
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    sys.stdout.flush()
    return 1 if n_bad else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point `edgekd-run`; returns (and exits with) the exit code."""
    args = build_parser().parse_args(argv)
    try:
        code = run(args)
    except EdgekdError as exc:
        _fail(str(exc))
        code = 1
    except KeyboardInterrupt:
        _fail("interrupted")
        code = 130
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
