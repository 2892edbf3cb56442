"""Runners: one interface over an edgekd checkpoint (torch), an ONNX file (ONNX Runtime) and a
TensorRT engine, so latency, accuracy and parity code never looks at the backend.

Every runner takes float32 NCHW numpy input, already normalised, and returns a numpy array of
shape (N, classes) whose meaning is `output_kind` (`logits` or `probs`). For timing, `run` is
split into `prepare` (host work and host-to-device copies: pre-processing, never timed),
`infer` (the timed part; asynchronous on CUDA), `synchronize` (a no-op except on CUDA) and
`fetch` (device-to-host copy). Backends are imported inside the constructors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from edgekd.deps import require
from edgekd.errors import EdgekdError, MissingDependencyError
from edgekd.names import INPUT_NAME, LOGITS_NAME, MANIFEST_FILE, MODEL_INT8_ONNX, MODEL_ONNX, OUTPUT_KINDS

BACKENDS = ("torch", "ort", "trt")
# file suffix -> backend when --backend is not given
SUFFIX_BACKENDS = {".pt": "torch", ".pth": "torch", ".onnx": "ort", ".engine": "trt", ".plan": "trt"}
# short provider names accepted by --providers -> ONNX Runtime provider lists (fallbacks after)
PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}


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
        raise EdgekdError(f"cannot tell the backend of {p.name} from its suffix; pass --backend torch|ort|trt")
    return backend


def build_runner(path: str | Path, backend: Optional[str] = None, device: str = "cpu",
                 providers: Optional[Sequence[str]] = None, threads: Optional[int] = None,
                 allow_spinning: bool = True, torch_mode: str = "eager") -> Runner:
    """Build the runner for one artifact; every failure is a one-line EdgekdError."""
    backend = backend or infer_backend(path)
    if backend not in BACKENDS:
        raise EdgekdError(f"unknown backend {backend!r}; use torch, ort or trt")
    if device not in ("cpu", "cuda"):
        raise EdgekdError(f"unknown device {device!r}; use cpu or cuda")
    if not Path(path).exists():
        raise EdgekdError(f"model not found: {path}")
    if backend == "torch":
        return TorchRunner(path, device=device, threads=threads, mode=torch_mode)
    if backend == "ort":
        return OrtRunner(path, device=device, providers=providers, threads=threads, allow_spinning=allow_spinning)
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


def read_onnx_manifest(path: str | Path, custom_metadata: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """The export manifest of a model: embedded in its ONNX metadata_props, else `manifest.json` beside it.

    The embedded copy wins because it belongs to this very file (an INT8 model and its FP32
    source share one `manifest.json`). metadata_props may hold the whole manifest as JSON under
    one key (edgekd writes `edgekd.manifest`), or one key per field.
    """
    flat: dict[str, Any] = {}
    for key, value in (custom_metadata or {}).items():
        try:
            parsed = json.loads(value)
        except (TypeError, ValueError):
            parsed = value
        if isinstance(parsed, dict) and ("mean" in parsed or "input" in parsed or "format" in parsed):
            return parsed
        flat[key] = parsed
    if "mean" in flat or "output_kind" in flat:
        return flat
    side = Path(path).with_name(MANIFEST_FILE)
    if side.is_file():
        try:
            data = json.loads(side.read_text())
            if isinstance(data, dict):
                return data
        except (OSError, ValueError):
            pass  # an unreadable sidecar is as good as none: the data's statistics are used, with a note
    return flat


def manifest_fields(manifest: dict[str, Any]) -> dict[str, Any]:
    """mean, std, class names and output kind from an edgekd manifest (nested `input`/`output`
    sections) or from flat keys; None where absent."""
    inp = manifest.get("input") if isinstance(manifest.get("input"), dict) else {}
    out = manifest.get("output") if isinstance(manifest.get("output"), dict) else {}
    kind = out.get("kind") or manifest.get("output_kind") or LOGITS_NAME
    return {
        "mean": _tuple_or_none(inp.get("mean", manifest.get("mean"))),
        "std": _tuple_or_none(inp.get("std", manifest.get("std"))),
        "class_names": _tuple_or_none(manifest.get("class_names")),
        "output_kind": kind if kind in OUTPUT_KINDS else LOGITS_NAME,
    }


def manifest_precision(path: str | Path, manifest: dict[str, Any]) -> str:
    """`int8` for a quantized artifact (file name, manifest or QDQ nodes), else `fp32`."""
    p = Path(path)
    if p.name == MODEL_INT8_ONNX or "int8" in p.stem.lower():
        return "int8"
    for key in ("precision", "dtype", "quantization"):
        if "int8" in str(manifest.get(key, "")).lower():
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


def resolve_providers(providers: Optional[Sequence[str]], device: str, available: Sequence[str]) -> list[str]:
    """Map --providers names (cpu, cuda, tensorrt or full ORT names) to an ORT provider list."""
    if not providers:
        names = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    else:
        names = []
        for p in providers:
            full = PROVIDER_NAMES.get(p.strip().lower(), p.strip())
            if full not in available:
                raise MissingDependencyError(
                    f"ONNX Runtime provider {full} is not available here (available: {', '.join(available)}); "
                    "install onnxruntime-gpu for CUDA/TensorRT")
            names.append(full)
        if "CPUExecutionProvider" not in names:
            names.append("CPUExecutionProvider")  # fallback for nodes a GPU provider does not take
    if names[0] not in available:
        raise MissingDependencyError(f"ONNX Runtime provider {names[0]} is not available here "
                                     f"(available: {', '.join(available)}); install onnxruntime-gpu for CUDA")
    return names


class OrtRunner(Runner):
    """An ONNX file on ONNX Runtime.

    `allow_spinning=False` stops intra-op threads from busy-waiting after each run; when several
    runners alternate in one process, spinning threads starve the others (DESIGN.md section 6).
    On CUDA, inputs and outputs are bound on the device (io_binding), so `infer` times the model
    and not the copies.
    """

    def __init__(self, path: str | Path, device: str = "cpu", providers: Optional[Sequence[str]] = None,
                 threads: Optional[int] = None, allow_spinning: bool = True):
        ort = require("onnxruntime")
        self._ort = ort
        chosen = resolve_providers(providers, device, ort.get_available_providers())
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if allow_spinning else "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=chosen)
        except Exception as exc:  # ORT raises its own types (InvalidProtobuf, Fail, ...)
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EdgekdError(f"{path} is not a loadable ONNX model ({msg[:160]})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise EdgekdError(f"{path} has {len(inputs)} inputs; edgekd runners take one image input")
        inp = inputs[0]
        shape = list(inp.shape)
        if len(shape) != 4 or not all(isinstance(v, int) for v in shape[1:]):
            raise EdgekdError(f"{path}: input {inp.name} has shape {shape}; expected (N, C, H, W) with fixed C, H, W")
        self.input_name = inp.name
        self.output_name = outputs[0].name
        manifest = read_onnx_manifest(path, self.session.get_modelmeta().custom_metadata_map)
        fields = manifest_fields(manifest)
        kind = self.output_name if self.output_name in OUTPUT_KINDS else fields["output_kind"]
        used = self.session.get_providers()
        warnings = []
        if used[0] != chosen[0]:
            warnings.append(f"asked for {chosen[0]} but ONNX Runtime runs on {used[0]}")
        self.is_cuda = used[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        self.info = ModelInfo(
            path=str(path), format="onnx", backend="ort", device="cuda" if self.is_cuda else "cpu",
            input_shape=tuple(int(v) for v in shape[1:]), output_kind=kind if kind in OUTPUT_KINDS else LOGITS_NAME,
            mean=fields["mean"], std=fields["std"], class_names=fields["class_names"],
            fixed_batch=shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None,
            precision=manifest_precision(path, manifest),
            settings={"providers": used, "threads": threads or "default", "allow_spinning": allow_spinning,
                      "onnxruntime": ort.__version__, "input_name": inp.name, "output_name": self.output_name},
            warnings=warnings,
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


def _tuple_or_none(value) -> Optional[tuple]:
    return tuple(value) if isinstance(value, (list, tuple)) else None


# ---------------------------------------------------------------------------------------------
# TensorRT


class TrtRunner(Runner):
    """A serialized TensorRT engine through `edgekd.export.tensorrt.TrtEngine` (which checks
    the engine's provenance sidecar against the running TensorRT and GPU)."""

    is_cuda = True

    def __init__(self, path: str | Path, device: str = "cuda"):
        if device != "cuda":
            raise EdgekdError("TensorRT engines run on CUDA only; use --device cuda")
        try:
            from edgekd.export.tensorrt import TrtEngine
        except ImportError as exc:
            raise MissingDependencyError(
                f"the TensorRT backend is not available ({exc}); install edgekd[tensorrt] on a machine with "
                "TensorRT and a CUDA GPU") from None
        self.engine = TrtEngine(str(path))
        shape = tuple(int(v) for v in self.engine.input_shape)
        chw = shape[1:] if len(shape) == 4 else shape
        fields = manifest_fields(read_onnx_manifest(path))
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
        )

    def infer(self, prepared: Any) -> Any:
        # TrtEngine.infer copies in and out itself and returns after the stream finished
        return self.engine.infer(prepared)


__all__ = ["BACKENDS", "ModelInfo", "Runner", "TorchRunner", "OrtRunner", "TrtRunner", "build_runner",
           "infer_backend", "read_onnx_manifest", "manifest_precision", "int8_source", "check_input"]
