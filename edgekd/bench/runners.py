"""Runners: one interface over an edgekd checkpoint (torch), an ONNX file (ONNX Runtime or OpenVINO),
OpenVINO IR and a TensorRT engine, so latency, accuracy and parity code never looks at the backend.

Every runner takes float32 NCHW numpy input, already normalised, and returns a numpy array of
shape (N, classes) whose meaning is `output_kind` (`logits` or `probs`). For timing, `run` is
split into `prepare` (host work and host-to-device copies: pre-processing, never timed),
`infer` (the timed part; asynchronous on CUDA), `synchronize` (a no-op except on CUDA) and
`fetch` (device-to-host copy). Backends are imported inside the constructors.

ONNX sessions, TensorRT engines and manifests come from the device runtime (`edgekd.runtime`:
`open_session`, `TrtEngine`, `locate_manifest`), so bench measures exactly what a device runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from edgekd.deps import require
from edgekd.errors import EdgekdError, MissingDependencyError
from edgekd.io import sha256_file
from edgekd.names import INPUT_NAME, LOGITS_NAME, MODEL_INT8_ONNX, MODEL_ONNX, OUTPUT_KINDS
from edgekd.runtime.manifest import Manifest, locate_manifest
from edgekd.runtime.openvino import DEFAULT_PRECISION_HINT, IR_SUFFIX, OpenVinoModel
from edgekd.runtime.session import CPU_PROVIDER, CUDA_PROVIDERS, model_metadata, open_session, provider_names

BACKENDS = ("torch", "ort", "trt", "openvino")
# file suffix -> backend when --backend is not given (.xml: OpenVINO IR, `OpenVinoRunner`)
SUFFIX_BACKENDS = {".pt": "torch", ".pth": "torch", ".onnx": "ort", ".engine": "trt", ".plan": "trt",
                   ".xml": "openvino"}


@dataclass
class ModelInfo:
    """What a runner knows about its artifact, for reports and pre-processing."""

    path: str
    format: str  # checkpoint | onnx | engine
    backend: str
    device: str
    input_shape: tuple[int, int, int]  # (C, H, W)
    output_kind: str
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    class_names: Optional[tuple[str, ...]] = None
    fixed_batch: Optional[int] = None  # a static batch dimension, None when dynamic
    precision: str = "fp32"
    settings: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # identity (edgekd.bench.identity): what the artifact is, beyond its file name
    model_name: Optional[str] = None  # the zoo/model name from the checkpoint or manifest
    source_sha256: Optional[str] = None  # sha256 of the checkpoint the artifact was made from
    num_classes: Optional[int] = None
    file: Optional[str] = None  # the file actually loaded (a run directory's checkpoint)
    # evaluation view of a fixed-size run (--image-size): {"image_size", "resize", "crop_ratio"}, from the
    # checkpoint or the manifest; bench loads --data with it (edgekd.bench.accuracy.data_view). None: native size
    view: Optional[dict[str, Any]] = None


class Runner:
    """Base class: `run(x)` = `fetch(infer(prepare(x)))` followed by a synchronisation."""

    info: ModelInfo
    is_cuda: bool = False

    def prepare(self, x: np.ndarray) -> Any:
        return np.ascontiguousarray(x, dtype=np.float32)

    def infer(self, prepared: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for queued device work; a no-op on CPU (no synchronisation outside CUDA)."""

    def fetch(self, out: Any) -> np.ndarray:
        return np.asarray(out)

    def device_events(self) -> Optional[tuple[Any, Any]]:
        """A (start, end) pair of CUDA events for device time, or None off CUDA."""
        return None

    def run(self, x: np.ndarray) -> np.ndarray:
        check_input(x, self.info)
        out = self.infer(self.prepare(x))
        self.synchronize()
        return self.fetch(out)

    def close(self) -> None:
        """Release sessions and device memory."""


def check_input(x: np.ndarray, info: ModelInfo) -> None:
    """Refuse an input whose per-image shape or batch does not fit the model, in one line."""
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(info.input_shape):
        raise EdgekdError(f"{info.path} expects input (N, {', '.join(map(str, info.input_shape))}) "
                          f"but got {tuple(x.shape)}")
    if info.fixed_batch is not None and x.shape[0] != info.fixed_batch:
        raise EdgekdError(f"{info.path} has a static batch of {info.fixed_batch}; got a batch of {x.shape[0]}")


def infer_backend(path: str | Path) -> str:
    """The default backend for a model file: .pt -> torch, .onnx -> ort, .engine/.plan -> trt."""
    p = Path(path)
    if p.is_dir():
        return "torch"  # a run directory holds best.pt / last.pt
    backend = SUFFIX_BACKENDS.get(p.suffix.lower())
    if backend is None:
        raise EdgekdError(f"cannot tell the backend of {p.name} from its suffix; pass --backend "
                          f"{'|'.join(BACKENDS)}")
    return backend


def build_runner(path: str | Path, backend: Optional[str] = None, device: str = "cpu",
                 providers: Optional[Sequence[str]] = None, threads: Optional[int] = None,
                 allow_spinning: bool = True, torch_mode: str = "eager", precision_hint: str = "f32") -> Runner:
    """Build the runner for one artifact; every failure is a one-line EdgekdError.

    `precision_hint` (f32 | bf16) is OpenVINO's (edgekd.runtime.openvino); other backends ignore it.
    """
    backend = backend or infer_backend(path)
    if backend not in BACKENDS:
        raise EdgekdError(f"unknown backend {backend!r}; use {', '.join(BACKENDS)}")
    if device not in ("cpu", "cuda"):
        raise EdgekdError(f"unknown device {device!r}; use cpu or cuda")
    if not Path(path).exists():
        raise EdgekdError(f"model not found: {path}")
    if backend == "torch":
        return TorchRunner(path, device=device, threads=threads, mode=torch_mode)
    if backend == "ort":
        return OrtRunner(path, device=device, providers=providers, threads=threads, allow_spinning=allow_spinning)
    if backend == "openvino":
        return OpenVinoRunner(path, device=device, threads=threads, precision_hint=precision_hint)
    return TrtRunner(path, device=device)


# ---------------------------------------------------------------------------------------------
# torch


class TorchRunner(Runner):
    """An edgekd checkpoint: the inference output of the rebuilt `TrainingModel`.

    `mode`: `eager`, `compile` (torch.compile) or `cudagraph` (CUDA graph replay per batch size,
    CUDA only; the input is copied into a static buffer during `prepare`).
    """

    def __init__(self, path: str | Path, device: str = "cpu", threads: Optional[int] = None, mode: str = "eager"):
        torch = require("torch")
        from edgekd.train.checkpoint import load_checkpoint, rebuild_training_model

        if mode not in ("eager", "compile", "cudagraph"):
            raise EdgekdError(f"unknown torch mode {mode!r}; use eager, compile or cudagraph")
        if device == "cuda" and not torch.cuda.is_available():
            raise MissingDependencyError("--device cuda: torch has no CUDA device here (CPU build or no GPU)")
        if mode == "cudagraph" and device != "cuda":
            raise EdgekdError("torch mode cudagraph needs --device cuda")
        if threads:
            torch.set_num_threads(int(threads))
        self._torch = torch
        self.device = torch.device(device)
        ckpt = load_checkpoint(path)
        self.model = rebuild_training_model(ckpt, self.device)
        self.forward = torch.compile(self.model) if mode == "compile" else self.model
        self.mode = mode
        self.is_cuda = self.device.type == "cuda"
        self._graphs: dict[tuple, tuple] = {}
        self.info = ModelInfo(
            path=str(path), format="checkpoint", backend="torch", device=device,
            input_shape=tuple(int(v) for v in ckpt["input_shape"]),
            output_kind=ckpt.get("output_kind") or self.model.output_kind,
            mean=tuple(ckpt["mean"]), std=tuple(ckpt["std"]), class_names=tuple(ckpt["class_names"]),
            settings={"threads": torch.get_num_threads(), "mode": mode, "torch": torch.__version__},
            model_name=ckpt.get("model_name"), source_sha256=sha256_file(ckpt["path"]), view=ckpt.get("view"),
            num_classes=len(ckpt["class_names"]), file=str(ckpt["path"]),
        )

    def prepare(self, x: np.ndarray) -> Any:
        t = self._torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device, non_blocking=True)
        if self.mode != "cudagraph":
            return t
        key = tuple(t.shape)
        if key not in self._graphs:
            self._graphs[key] = self._capture(t)
        static_in, _, _ = self._graphs[key]
        static_in.copy_(t)
        return key

    def _capture(self, example):
        """Capture one CUDA graph for this input shape (after side-stream warm-up, as torch documents)."""
        torch = self._torch
        static_in = example.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(3):
                self.model(static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            static_out = self.model(static_in)
        return static_in, graph, static_out

    def infer(self, prepared: Any) -> Any:
        if self.mode == "cudagraph":
            _, graph, static_out = self._graphs[prepared]
            graph.replay()
            return static_out
        with self._torch.inference_mode():
            return self.forward(prepared)

    def synchronize(self) -> None:
        if self.is_cuda:
            self._torch.cuda.synchronize(self.device)

    def fetch(self, out: Any) -> np.ndarray:
        return out.detach().float().cpu().numpy()

    def device_events(self):
        if not self.is_cuda:
            return None
        return (self._torch.cuda.Event(enable_timing=True), self._torch.cuda.Event(enable_timing=True))


# ---------------------------------------------------------------------------------------------
# ONNX Runtime


def manifest_fields(manifest: Optional[Manifest]) -> dict[str, Any]:
    """mean, std, class names, output kind, model name and source checkpoint sha256 of a model's
    manifest; None (output kind: logits) when the model has no manifest, so accuracy falls back to
    the data's statistics with a note and the identity holds only what the file itself shows."""
    if manifest is None:
        return {"mean": None, "std": None, "class_names": None, "output_kind": LOGITS_NAME, "model_name": None,
                "source_sha256": None, "view": None}
    extra = manifest.extra or {}
    model, source = extra.get("model"), extra.get("source")
    return {"mean": manifest.mean, "std": manifest.std, "class_names": manifest.class_names,
            "output_kind": manifest.output_kind,
            "model_name": model.get("name") if isinstance(model, dict) else extra.get("model_name"),
            "source_sha256": source.get("sha256") if isinstance(source, dict) else None,
            "view": None if manifest.resize is None else {
                "image_size": manifest.size[0], "resize": manifest.resize,
                "crop_ratio": manifest.crop_ratio or manifest.size[0] / manifest.resize}}


def _static_dim(shape: Sequence[Any], axis: int) -> Optional[int]:
    """A fixed dimension of an ONNX Runtime shape, None when symbolic or absent."""
    v = shape[axis] if len(shape) > axis else None
    return int(v) if isinstance(v, int) and v > 0 else None


def manifest_precision(path: str | Path, manifest: Optional[Manifest]) -> str:
    """`int8` for a quantized artifact (file name, manifest or QDQ nodes), else `fp32`."""
    p = Path(path)
    if p.name == MODEL_INT8_ONNX or "int8" in p.stem.lower():
        return "int8"
    extra = (manifest.extra if manifest is not None else None) or {}
    for key in ("precision", "dtype", "quantization"):
        if "int8" in str(extra.get(key, "")).lower():
            return "int8"
    try:  # the graph itself: QDQ models hold QuantizeLinear nodes
        import onnx

        graph = onnx.load(str(p), load_external_data=False).graph
        if any(n.op_type in ("QuantizeLinear", "QLinearConv", "ConvInteger") for n in graph.node):
            return "int8"
    except Exception:  # onnx missing or unreadable: the session decides whether the file is valid
        pass
    return "fp32"


def int8_source(path: str | Path) -> Optional[Path]:
    """The FP32 ONNX an INT8 artifact was quantized from: `model.onnx` beside it."""
    cand = Path(path).with_name(MODEL_ONNX)
    return cand if cand.is_file() and cand.resolve() != Path(path).resolve() else None


def resolve_providers(providers: Optional[Sequence[str]], device: str) -> list[str]:
    """--providers names (cpu, cuda, tensorrt or full ORT names) -> an ORT provider list with the CPU
    provider last as the fallback for nodes a GPU provider does not take; by --device when not given.
    `open_session` refuses a provider that this onnxruntime build lacks (install onnxruntime-gpu)."""
    names = provider_names(providers) or (["CUDAExecutionProvider"] if device == "cuda" else [])
    return names + ([CPU_PROVIDER] if CPU_PROVIDER not in names else [])


class OrtRunner(Runner):
    """An ONNX file on ONNX Runtime.

    `allow_spinning=False` stops intra-op threads from busy-waiting after each run; when several
    runners alternate in one process, spinning threads starve the others
    (docs/architecture.md, "ONNX Runtime thread spinning").
    On CUDA, inputs and outputs are bound on the device (io_binding), so `infer` times the model
    and not the copies.
    """

    def __init__(self, path: str | Path, device: str = "cpu", providers: Optional[Sequence[str]] = None,
                 threads: Optional[int] = None, allow_spinning: bool = True):
        ort = require("onnxruntime")
        self._ort = ort
        chosen = resolve_providers(providers, device)
        self.session = open_session(path, threads=threads, spinning=allow_spinning, providers=chosen)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise EdgekdError(f"{path} has {len(inputs)} inputs; edgekd runners take one image input")
        inp = inputs[0]
        shape = list(inp.shape)
        if len(shape) != 4 or not all(isinstance(v, int) for v in shape[1:]):
            raise EdgekdError(f"{path}: input {inp.name} has shape {shape}; expected (N, C, H, W) with fixed C, H, W")
        self.input_name = inp.name
        self.output_name = outputs[0].name
        # the embedded manifest first: it belongs to this very file (an INT8 model and its FP32
        # source share one manifest.json)
        manifest = locate_manifest(path, metadata=model_metadata(self.session), prefer_embedded=True)
        fields = manifest_fields(manifest)
        kind = self.output_name if self.output_name in OUTPUT_KINDS else fields["output_kind"]
        used = self.session.get_providers()
        warnings = []
        if used[0] != chosen[0]:
            warnings.append(f"asked for {chosen[0]} but ONNX Runtime runs on {used[0]}")
        self.is_cuda = used[0] in CUDA_PROVIDERS
        self.info = ModelInfo(
            path=str(path), format="onnx", backend="ort", device="cuda" if self.is_cuda else "cpu",
            input_shape=tuple(int(v) for v in shape[1:]), output_kind=kind if kind in OUTPUT_KINDS else LOGITS_NAME,
            mean=fields["mean"], std=fields["std"], class_names=fields["class_names"],
            fixed_batch=shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None,
            precision=manifest_precision(path, manifest),
            settings={"providers": used, "threads": threads or "default", "allow_spinning": allow_spinning,
                      "onnxruntime": ort.__version__, "input_name": inp.name, "output_name": self.output_name},
            warnings=warnings, model_name=fields["model_name"], source_sha256=fields["source_sha256"],
            view=fields["view"],
            num_classes=(len(fields["class_names"]) if fields["class_names"] else _static_dim(outputs[0].shape, 1)),
            file=str(path),
        )
        if inp.name != INPUT_NAME:
            self.info.warnings.append(f"input is named {inp.name!r}, not {INPUT_NAME!r} (not an edgekd export)")
        self._binding = self.session.io_binding() if self.is_cuda else None

    def prepare(self, x: np.ndarray) -> Any:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not self.is_cuda:
            return x
        return self._ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)

    def infer(self, prepared: Any) -> Any:
        if not self.is_cuda:
            return self.session.run([self.output_name], {self.input_name: prepared})[0]
        self._binding.bind_ortvalue_input(self.input_name, prepared)
        self._binding.bind_output(self.output_name, "cuda")
        self.session.run_with_iobinding(self._binding)
        return self._binding.get_outputs()[0]

    def fetch(self, out: Any) -> np.ndarray:
        return out.numpy() if self.is_cuda else np.asarray(out)

    def close(self) -> None:
        self._binding = None
        self.session = None


# ---------------------------------------------------------------------------------------------
# OpenVINO


class OpenVinoRunner(Runner):
    """An ONNX file (FP32 or INT8 QDQ) or OpenVINO IR on OpenVINO's CPU plugin (edgekd.runtime.openvino).

    The model is compiled by the device runtime's `OpenVinoModel`, so bench times what
    `edgekd-run --backend openvino` runs. The precision hint is part of what is measured: under
    `bf16` (on CPUs with AVX-512-BF16/AMX) an FP32 file's precision is `bf16`, held to the
    reduced-precision accuracy budget against its f32 run (edgekd.bench.recommend).
    `infer` returns OpenVINO's output buffer; `fetch` copies it.
    """

    def __init__(self, path: str | Path, device: str = "cpu", threads: Optional[int] = None,
                 precision_hint: str = DEFAULT_PRECISION_HINT):
        if device != "cpu":
            raise EdgekdError("the OpenVINO backend runs on --device cpu (its GPU plugin is not supported here)")
        self.model = OpenVinoModel(path, threads=threads, precision_hint=precision_hint)
        m = self.model
        dims = m.input_dims
        if len(dims) != 4 or not all(isinstance(v, int) for v in dims[1:]):
            raise EdgekdError(f"{path}: input {m.input_name} has shape {dims}; "
                              f"expected (N, C, H, W) with fixed C, H, W")
        # the embedded manifest first: it belongs to this very file (an INT8 model shares manifest.json)
        manifest = locate_manifest(path, metadata=m.metadata, prefer_embedded=True)
        fields = manifest_fields(manifest)
        kind = m.output_name if m.output_name in OUTPUT_KINDS else fields["output_kind"]
        precision = manifest_precision(path, manifest)
        if precision == "fp32" and m.inference_precision == "bf16":
            precision = "bf16"  # FP32 weights computed in bfloat16: reduced precision, budget-gated
        self.info = ModelInfo(
            path=str(path), format="openvino-ir" if Path(path).suffix.lower() == IR_SUFFIX else "onnx",
            backend="openvino", device="cpu", input_shape=tuple(int(v) for v in dims[1:]),
            output_kind=kind if kind in OUTPUT_KINDS else LOGITS_NAME, mean=fields["mean"], std=fields["std"],
            class_names=fields["class_names"],
            fixed_batch=dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None,
            precision=precision, settings={**m.settings, "input_name": m.input_name, "output_name": m.output_name},
            model_name=fields["model_name"], source_sha256=fields["source_sha256"], view=fields["view"],
            num_classes=(len(fields["class_names"]) if fields["class_names"] else
                         (m.output_dims[1] if len(m.output_dims) == 2 and m.output_dims[1] else None)),
            file=str(path),
        )
        if m.precision_hint == "bf16" and m.inference_precision != "bf16":
            self.info.warnings.append(f"bf16 precision hint: this CPU has no bf16 support; OpenVINO computes in "
                                      f"{m.inference_precision}")
        if m.input_name and m.input_name != INPUT_NAME:
            self.info.warnings.append(f"input is named {m.input_name!r}, not {INPUT_NAME!r} (not an edgekd export)")

    def infer(self, prepared: Any) -> Any:
        return self.model.infer(prepared)

    def fetch(self, out: Any) -> np.ndarray:
        return np.array(out, copy=True)  # the request reuses its output buffer on the next call

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------
# TensorRT


class TrtRunner(Runner):
    """A serialized TensorRT engine through the runtime's `TrtEngine` (which checks the engine's
    provenance sidecar against the running TensorRT and GPU); its manifest is `manifest.json` beside it."""

    is_cuda = True

    def __init__(self, path: str | Path, device: str = "cuda"):
        from edgekd.runtime.engine import TrtEngine

        if device != "cuda":
            raise EdgekdError("TensorRT engines run on CUDA only; use --device cuda")
        self.engine = TrtEngine(str(path))
        shape = tuple(int(v) for v in self.engine.input_shape)
        chw = shape[1:] if len(shape) == 4 else shape
        fields = manifest_fields(locate_manifest(path))
        out_name = str(getattr(self.engine, "output_name", fields["output_kind"]))
        lo, hi = getattr(self.engine, "min_batch", None), getattr(self.engine, "max_batch", None)
        sidecar = getattr(self.engine, "sidecar", None) or {}
        self.info = ModelInfo(
            path=str(path), format="engine", backend="trt", device="cuda", input_shape=tuple(chw),
            output_kind=out_name if out_name in OUTPUT_KINDS else fields["output_kind"],
            mean=fields["mean"], std=fields["std"], class_names=fields["class_names"],
            fixed_batch=lo if lo is not None and lo == hi else None,
            precision=str(sidecar.get("precision", "unknown")),
            settings={"engine": str(path), "min_batch": lo, "max_batch": hi},
            model_name=fields["model_name"], source_sha256=fields["source_sha256"], view=fields["view"],
            num_classes=len(fields["class_names"]) if fields["class_names"] else None, file=str(path),
        )

    def infer(self, prepared: Any) -> Any:
        # TrtEngine.infer copies in and out itself and returns after the stream finished
        return self.engine.infer(prepared)


__all__ = ["BACKENDS", "ModelInfo", "Runner", "TorchRunner", "OrtRunner", "OpenVinoRunner", "TrtRunner",
           "build_runner",
           "infer_backend", "manifest_fields", "manifest_precision", "int8_source", "check_input"]
