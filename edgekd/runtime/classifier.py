"""`Classifier`: a model file + its manifest -> class predictions for image files or arrays.

ONNX models run with ONNX Runtime (a session from `edgekd.runtime.session.open_session`) or, with
`backend="openvino"`, with OpenVINO (`edgekd.runtime.openvino.OpenVinoModel`, which also runs
OpenVINO IR `model.xml`); TensorRT engines (`.engine`, `.plan`, `.trt`) through
`edgekd.runtime.engine.TrtEngine`. TensorRT, cuda-python and OpenVINO are imported only when used.
The manifest is checked against the model file (the sha256 the export recorded, the embedded copy's
source checkpoint) and its graph (input shape, class count, output kind) before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from edgekd.errors import EdgekdError, first_line
from edgekd.names import INPUT_NAME, OUTPUT_KINDS
from edgekd.runtime.engine import ENGINE_SUFFIXES, TrtEngine
from edgekd.runtime.manifest import Manifest, ManifestError, find_manifest, verify_model_file
from edgekd.runtime.openvino import DEFAULT_PRECISION_HINT, IR_SUFFIX, OpenVinoModel
from edgekd.runtime.postprocess import Prediction, select_top_k, to_probabilities
from edgekd.runtime.preprocess import ImageError, load_image, normalize_batch
from edgekd.runtime.session import ModelError, model_metadata, open_session

# runtime backends (`edgekd-run --backend`); the default follows the file suffix (`runtime_backend`)
RUNTIME_BACKENDS = ("ort", "openvino", "trt")


def runtime_backend(path: Path, backend: Optional[str] = None) -> str:
    """The backend that runs `path`: as given, else trt for engines, openvino for IR, ort for ONNX."""
    suffix = path.suffix.lower()
    native = "trt" if suffix in ENGINE_SUFFIXES else "openvino" if suffix == IR_SUFFIX else None  # None: ONNX
    if backend is None:
        return native or "ort"
    if backend not in RUNTIME_BACKENDS:
        raise EdgekdError(f"unknown backend {backend!r}; choose {', '.join(RUNTIME_BACKENDS)}")
    allowed = (native,) if native else ("ort", "openvino")
    if backend not in allowed:
        raise EdgekdError(f"{path.name} cannot run on the {backend} backend; use {' or '.join(allowed)}")
    return backend


@dataclass(frozen=True)
class FileResult:
    """The outcome for one image file: a prediction, or the one-line reason it failed."""

    path: Path
    prediction: Optional[Prediction] = None
    error: Optional[str] = None


class _OrtBackend:
    """An ONNX Runtime session on a single-input, single-output classifier."""

    def __init__(self, path: Path, threads: Optional[int], providers: Optional[Sequence[str]]):
        self.session = open_session(path, threads=threads, providers=providers)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ModelError(f"{path}: expected one image input and one output, found {len(inputs)} input(s) "
                             f"and {len(outputs)} output(s)")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.input_type = inputs[0].type
        self.input_dims = list(inputs[0].shape)  # ints or symbolic names / None
        self.output_dims = list(outputs[0].shape)
        self.metadata = model_metadata(self.session)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]


class _EngineBackend:
    """A TensorRT engine through `TrtEngine` (Jetson, CUDA GPUs)."""

    def __init__(self, path: Path):
        try:
            self.engine = TrtEngine(str(path))
        except EdgekdError:
            raise
        except Exception as exc:
            raise ModelError(f"{path} is not a loadable TensorRT engine ({first_line(exc)})") from None
        self.input_name = INPUT_NAME
        self.output_name = str(getattr(self.engine, "output_name", "") or "")
        self.input_type = "tensor(float)"
        # TrtEngine.input_shape is (C, H, W); it chunks batches above the profile's max itself
        self.input_dims = [None] + [int(v) for v in self.engine.input_shape][-3:]
        self.output_dims: list = []
        self.min_batch = int(getattr(self.engine, "min_batch", 1) or 1)
        self.metadata: dict = {}

    def run(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        if n < self.min_batch:  # below the engine profile's minimum: pad with copies, drop after
            x = np.concatenate([x, np.repeat(x[-1:], self.min_batch - n, axis=0)])
        return np.asarray(self.engine.infer(x))[:n]


def check_model_matches(manifest: Manifest, input_dims: list, input_type: str, output_dims: list,
                        output_name: str, model: str, input_name: Optional[str] = None) -> None:
    """Refuse a manifest that does not describe the model's graph (one-line ManifestError)."""
    pairs = (("input", manifest.input_name, input_name), ("output", manifest.output_name, output_name))
    for what, stated, actual in pairs:
        if stated and actual and stated != actual:
            raise ManifestError(f"manifest {manifest.source} does not match {model}: {what} tensor {stated!r} "
                                f"vs the model's {actual!r}")
    if input_type not in ("tensor(float)", ""):
        raise ModelError(f"{model}: input type {input_type} is not supported (float32 models only)")
    if len(input_dims) not in (0, 4):
        raise ManifestError(f"{model}: the model input has rank {len(input_dims)}, an NCHW image batch has rank 4")
    if input_dims:
        graph_chw = input_dims[1:]
        for got, want in zip(graph_chw, manifest.input_shape):
            if isinstance(got, int) and got > 0 and got != want:
                raise ManifestError(f"manifest {manifest.source} does not match {model}: input_shape "
                                    f"{list(manifest.input_shape)} vs the model's input "
                                    f"{[d if isinstance(d, int) else '?' for d in graph_chw]}")
    if len(output_dims) == 2 and isinstance(output_dims[1], int) and output_dims[1] > 0:
        if output_dims[1] != manifest.num_classes:
            raise ManifestError(f"manifest {manifest.source} does not match {model}: {manifest.num_classes} "
                                f"class names vs {output_dims[1]} model outputs")
    elif output_dims and len(output_dims) != 2:
        raise ModelError(f"{model}: the output has rank {len(output_dims)}, a classifier emits (N, classes)")
    if output_name in OUTPUT_KINDS and output_name != manifest.output_kind:
        raise ManifestError(f"manifest {manifest.source} does not match {model}: output_kind "
                            f"{manifest.output_kind!r} but the model's output is named {output_name!r}")


class Classifier:
    """Classify images with an exported model and its manifest.

    Args:
        model: `model.onnx` (ONNX Runtime) or a TensorRT engine (`.engine`/`.plan`/`.trt`).
        manifest: manifest path; default `manifest.json` beside the model, else the one embedded in it.
        threads: ONNX Runtime intra-op threads, or OpenVINO inference threads (default: one per core).
        providers: ONNX Runtime execution providers (default CPU).
        backend: `ort`, `openvino` or `trt`; default from the suffix (`runtime_backend`).
        precision_hint: OpenVINO only: `f32` or `bf16` (faster on CPUs with AVX-512-BF16/AMX, not bit-exact).
    """

    def __init__(self, model: Union[str, Path], manifest: Optional[Union[str, Path]] = None,
                 threads: Optional[int] = None, providers: Optional[Sequence[str]] = None,
                 backend: Optional[str] = None, precision_hint: str = DEFAULT_PRECISION_HINT):
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"model not found: {path}")
        kind = runtime_backend(path, backend)
        if providers and kind != "ort":
            raise EdgekdError(f"--providers are ONNX Runtime's; the {kind} backend does not take them")
        if kind == "trt":
            self.backend: Union[_OrtBackend, _EngineBackend, OpenVinoModel] = _EngineBackend(path)
        elif kind == "openvino":
            self.backend = OpenVinoModel(path, threads=threads, precision_hint=precision_hint)
        else:
            self.backend = _OrtBackend(path, threads, providers)
        self.backend_name = kind
        self.path = path
        self.manifest = find_manifest(path, manifest, self.backend.metadata)
        verify_model_file(self.manifest, path, self.backend.metadata)  # a manifest of another export: refused
        b = self.backend
        check_model_matches(self.manifest, b.input_dims, b.input_type, b.output_dims, b.output_name, str(path),
                            None if isinstance(b, _EngineBackend) else b.input_name)
        first = b.input_dims[0] if b.input_dims else None
        self.fixed_batch: Optional[int] = first if isinstance(first, int) and first > 0 else None

    def predict_tensor(self, x: np.ndarray) -> np.ndarray:
        """Normalised float32 (N, C, H, W) -> (N, K) probabilities, in chunks the model accepts."""
        n = x.shape[0]
        if self.fixed_batch is None or n == self.fixed_batch:
            out = self.backend.run(x)
        else:  # a static-batch model: run full chunks, padding the last one with copies
            fb, outs = self.fixed_batch, []
            for i in range(0, n, fb):
                chunk = x[i:i + fb]
                pad = fb - chunk.shape[0]
                if pad:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
                outs.append(self.backend.run(chunk)[: fb - pad])
            out = np.concatenate(outs)
        out = np.asarray(out)
        if out.ndim != 2 or out.shape != (n, self.manifest.num_classes):
            raise ModelError(f"{self.path}: output shape {tuple(out.shape)}, "
                             f"expected ({n}, {self.manifest.num_classes})")
        return to_probabilities(out, self.manifest.output_kind)

    def classify_arrays(self, images: np.ndarray, top_k: int = 5) -> list[Prediction]:
        """uint8 (N, H, W, C) images already at the model's size (for a `resize` manifest: already the
        evaluation view, edgekd.runtime.resize.eval_view) -> top-k predictions."""
        m = self.manifest
        x = np.asarray(images)
        if x.ndim == 3 and m.channels == 1:
            x = x[..., None]
        if x.ndim == 4 and x.shape[1:3] != m.size:
            raise ImageError(f"images are {x.shape[1]}x{x.shape[2]}, the model expects {m.size[0]}x{m.size[1]} "
                             f"(resize them, or classify the files)")
        return select_top_k(self.predict_tensor(normalize_batch(x, m.mean, m.std)), m.class_names, top_k)

    def classify_files(self, paths: Iterable[Union[str, Path]], top_k: int = 5, batch_size: int = 32,
                       convert: bool = False) -> Iterator[FileResult]:
        """Classify image files in batches; a bad file yields a FileResult with `error` and the rest go on."""
        m = self.manifest
        batch_size = max(1, int(batch_size))
        pending: list[tuple[Path, Optional[np.ndarray], Optional[str]]] = []

        def flush() -> Iterator[FileResult]:
            good = [(p, a) for p, a, _ in pending if a is not None]
            preds = iter(self.classify_arrays(np.stack([a for _, a in good]), top_k) if good else [])
            for p, a, err in pending:
                yield FileResult(p, next(preds)) if a is not None else FileResult(p, error=err)
            pending.clear()

        for p in paths:
            p = Path(p)
            try:
                pending.append((p, load_image(p, m.channels, m.size, convert, m.resize), None))
            except ImageError as exc:
                pending.append((p, None, str(exc)))
            if sum(a is not None for _, a, _ in pending) >= batch_size:
                yield from flush()
        if pending:
            yield from flush()
