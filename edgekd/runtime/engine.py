"""TensorRT engines on the device: provenance checks, loading and inference (torch-free).

The engine half of TensorRT support; building engines (options, `trtexec` command lines, the
provenance record a build writes, `build_engine`) is `edgekd.export.tensorrt`, which imports the
shared helpers from here. `tensorrt` and cuda-python are imported inside functions (tensorrt
through `edgekd.deps.require`), so `import edgekd.runtime.engine` works everywhere and the pure
parts (sidecar reading, provenance checks) are tested on machines without TensorRT.

Supported: TensorRT 8.5-8.6 and 10.x-11.x (`edgekd.runtime.trt_version`; another release is
refused in one line before anything is loaded). Inference uses the named I/O tensor API that all
of them have: `num_io_tensors`, `get_tensor_name`, `set_input_shape`, `set_tensor_address`,
`execute_async_v3`. The TensorRT module is typed (`if TYPE_CHECKING: import tensorrt as trt`), so
`scripts/typecheck_tensorrt.sh` checks these calls with mypy against the tensorrt-stubs package.

CUDA memory for inference comes from **cuda-python** (`cuda.bindings.runtime`, or `cuda.cudart`
in cuda-python < 12.6), not torch: the device runtime must run without torch, and cuda-python is
what NVIDIA's own TensorRT Python samples use. `pip install cuda-python` (the major version
matching the device's CUDA: 11 on JetPack 5, 12 on JetPack 6).

An engine only loads in the TensorRT release that built it, on a GPU of the same compute
capability. Every engine therefore has a provenance sidecar `<engine>.json`, and `TrtEngine`
compares it with the running TensorRT and GPU before deserializing, so a mismatch is a one-line
message saying what differs and how to rebuild, not TensorRT's raw deserialization error.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from edgekd.deps import require
from edgekd.errors import EdgekdError, MissingDependencyError, first_line
from edgekd.io import sha256_file
from edgekd.names import INPUT_NAME
from edgekd.runtime.trt_version import installed_policy

if TYPE_CHECKING:
    import tensorrt as trt

# suffixes of serialized engines that edgekd-run and bench treat as TensorRT
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
SIDECAR_FORMAT = "edgekd-tensorrt-engine/1"
DEFAULT_REBUILD_HINT = (
    "rebuild it on this machine: `edgekd export CKPT --format tensorrt` here, "
    "or `bash build_engine.sh` in the Jetson build kit on the device"
)


# --------------------------------------------------------------------------- provenance


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """`model.engine` -> `model.engine.json`."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def release_of(version: Any) -> Optional[tuple[int, ...]]:
    """'8.5.2.2' -> (8, 5, 2): the part of a TensorRT version a serialized engine is tied to."""
    if version is None:
        return None
    parts = []
    for p in str(version).split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) or None


def major_of(version: Any) -> Optional[int]:
    rel = release_of(version)
    return rel[0] if rel else None


def check_provenance(sidecar: dict[str, Any], runtime: dict[str, Any]) -> list[str]:
    """Compare an engine's sidecar with the running machine; return what differs (empty = ok).

    `runtime` has the keys `collect_runtime_info` returns (tensorrt_version, cuda_version,
    gpu_name, gpu_source, compute_capability) and optionally `engine_sha256` of the file on disk.
    Hard requirements (TensorRT's own): the same TensorRT release (major.minor.patch) and the same
    compute capability. Also refused: another CUDA major version, another GPU model (compared
    only when both names come from the same source: CUDA says 'Orin' where the device tree says
    'NVIDIA Jetson AGX Orin'), and an engine file that is not the one the sidecar describes.
    """
    problems: list[str] = []
    if sidecar.get("format") != SIDECAR_FORMAT:
        problems.append(f"the sidecar is not an edgekd engine record (format {sidecar.get('format')!r}, "
                        f"expected {SIDECAR_FORMAT!r})")
        return problems

    built_trt, here_trt = sidecar.get("tensorrt_version"), runtime.get("tensorrt_version")
    if not built_trt:
        problems.append("the sidecar does not record the TensorRT version that built the engine")
    elif release_of(built_trt) != release_of(here_trt):
        problems.append(f"built with TensorRT {built_trt}, this machine runs TensorRT {here_trt} "
                        "(an engine only loads in the TensorRT release that built it)")

    built_cc, here_cc = sidecar.get("compute_capability"), runtime.get("compute_capability")
    if not built_cc:
        problems.append("the sidecar does not record the GPU compute capability the engine was built for")
    elif str(built_cc) != str(here_cc):
        problems.append(f"built for compute capability {built_cc} ({sidecar.get('gpu_name') or 'unknown GPU'}), "
                        f"this GPU is {here_cc} ({runtime.get('gpu_name') or 'unknown GPU'})")

    built_name, here_name = sidecar.get("gpu_name"), runtime.get("gpu_name")
    same_source = sidecar.get("gpu_source") and sidecar.get("gpu_source") == runtime.get("gpu_source")
    if same_source and built_name and here_name and built_name != here_name and str(built_cc) == str(here_cc):
        problems.append(f"built on GPU {built_name!r}, this GPU is {here_name!r}")

    built_cuda, here_cuda = major_of(sidecar.get("cuda_version")), major_of(runtime.get("cuda_version"))
    if built_cuda is not None and here_cuda is not None and built_cuda != here_cuda:
        problems.append(f"built with CUDA {sidecar.get('cuda_version')}, "
                        f"this machine has CUDA {runtime.get('cuda_version')}")

    built_sha, here_sha = sidecar.get("engine_sha256"), runtime.get("engine_sha256")
    if built_sha and here_sha and built_sha != here_sha:
        problems.append("the engine file is not the one its sidecar describes (sha256 differs)")
    return problems


def import_cudart() -> Any:
    """cuda-python's runtime API module (`cuda.bindings.runtime`, or `cuda.cudart` before 12.6)."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise MissingDependencyError(
        "cuda-python is not installed (TensorRT inference allocates CUDA memory through it); "
        "install edgekd[tensorrt] or `pip install cuda-python` with the major version of your CUDA")


def cuda_call(cudart: Any, result: Any, what: str) -> Any:
    """Unpack a cuda-python `(err, value...)` result, raising a one-line error on failure."""
    err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if err != cudart.cudaError_t.cudaSuccess:
        raise EdgekdError(f"CUDA call {what} failed: {getattr(err, 'name', err)}")
    return rest[0] if len(rest) == 1 else rest


def format_cuda_version(v: int) -> str:
    """cudaRuntimeGetVersion's 12040 -> '12.4'."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def collect_runtime_info(device: int = 0) -> dict[str, Any]:
    """The running TensorRT version and CUDA GPU, as recorded in sidecars. Needs TensorRT and cuda-python."""
    trt = require("tensorrt")
    installed_policy(trt)  # a release outside the supported ones (or a stubs-only package) is one line
    cudart = import_cudart()
    count = cuda_call(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if count < 1:
        raise EdgekdError("no CUDA GPU is visible: TensorRT engines need one")
    cuda_call(cudart, cudart.cudaSetDevice(device), "cudaSetDevice")
    props = cuda_call(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    runtime_version = cuda_call(cudart, cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
    return {
        "tensorrt_version": trt.__version__,
        "cuda_version": format_cuda_version(int(runtime_version)),
        "gpu_name": name.rstrip("\x00").strip(),
        "gpu_source": "cuda",
        "compute_capability": f"{props.major}.{props.minor}",
        "platform": platform.machine(),
    }


def make_logger() -> Any:
    """A TensorRT logger that prints warnings and keeps the last error (`.last_error`) for one-line messages."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = require("tensorrt")

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.last_error = ""

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.last_error = str(msg).strip().splitlines()[0] if str(msg).strip() else ""
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR,
                            trt.ILogger.Severity.WARNING):
                print(f"[TensorRT] {msg}", flush=True)

    return _Logger()


# --------------------------------------------------------------------------- load and run


def read_sidecar(engine_path: str | os.PathLike) -> dict[str, Any]:
    """Read `<engine>.json`, or raise a one-line error saying how to get one."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise EdgekdError(f"{Path(engine_path).name} has no provenance sidecar {path.name}, so it cannot be checked "
                          f"against this machine; {DEFAULT_REBUILD_HINT}")
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EdgekdError(f"cannot read the engine sidecar {path}: {first_line(exc)}") from None
    if not isinstance(sidecar, dict):
        raise EdgekdError(f"the engine sidecar {path} is not a JSON object")
    return sidecar


def verify_engine(engine_path: str | os.PathLike, runtime: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Check an engine's sidecar against this machine (or `runtime`); return the sidecar or raise."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise EdgekdError(f"TensorRT engine not found: {engine_path}")
    sidecar = read_sidecar(engine_path)
    runtime = dict(runtime if runtime is not None else collect_runtime_info())
    runtime.setdefault("engine_sha256", sha256_file(engine_path))
    problems = check_provenance(sidecar, runtime)
    if problems:
        raise EdgekdError(f"refusing to load {engine_path.name}: {'; '.join(problems)}; "
                          f"{sidecar.get('rebuild') or DEFAULT_REBUILD_HINT}")
    return sidecar


class TrtEngine:
    """A deserialized TensorRT engine with one input (`input`, NCHW) and one output.

    `TrtEngine(path)` first checks the sidecar against the running TensorRT and GPU (see
    `check_provenance`) and refuses a mismatch; `verify=False` skips that (for engines built
    elsewhere by hand). Device buffers are sized for the profile's max batch once; larger
    batches are run in chunks. Use as a context manager or call `close()` to free GPU memory.
    """

    def __init__(self, engine_path: str | os.PathLike, verify: bool = True) -> None:
        self.path = Path(engine_path)
        self._buffers: list[int] = []
        self._stream: Any = None  # a cuda-python cudaStream_t once created
        if verify:
            self.sidecar = verify_engine(self.path)
        else:  # the sidecar still gives the rebuild hint and the profile, when there is one
            self.sidecar = read_sidecar(self.path) if sidecar_path(self.path).is_file() else {}
        if TYPE_CHECKING:
            import tensorrt as trt
        else:
            trt = require("tensorrt")
        self.policy = installed_policy(trt)
        self._cudart = cudart = import_cudart()
        self._logger = make_logger()
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            reason = self._logger.last_error or "corrupt or incompatible engine"
            raise EdgekdError(f"TensorRT could not deserialize {self.path.name}: {reason}; "
                              f"{self.sidecar.get('rebuild') or DEFAULT_REBUILD_HINT}")
        self._engine: trt.ICudaEngine = engine
        self._context: trt.IExecutionContext = engine.create_execution_context()
        self._discover_io()
        self._stream = cuda_call(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        n = self.max_batch
        self._d_input = self._malloc(n * int(np.prod(self.input_shape)) * self._in_dtype.itemsize)
        self._d_output = self._malloc(n * int(np.prod(self._out_tail)) * self._out_dtype.itemsize)

    # -- introspection ---------------------------------------------------------------

    def _discover_io(self) -> None:
        if TYPE_CHECKING:
            import tensorrt as trt
        else:
            trt = require("tensorrt")
        eng = self._engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        inputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]

        def shape_of(name: str) -> tuple[int, ...]:
            dims = eng.get_tensor_shape(name)  # Dims: len + index
            return tuple(int(dims[k]) for k in range(len(dims)))

        outputs = [n for n in names if n not in inputs]
        if inputs != [INPUT_NAME] or len(outputs) != 1:
            raise EdgekdError(f"{self.path.name} has inputs {inputs} and outputs {outputs}; expected one input "
                              f"{INPUT_NAME!r} and one output (an edgekd export)")
        self._output_name = outputs[0]
        in_dims, out_dims = shape_of(INPUT_NAME), shape_of(outputs[0])
        self._input_shape = in_dims[1:]
        self._out_tail = out_dims[1:]
        # FP32 for every edgekd export: the FP16 model keeps FP32 I/O (keep_io_types), QDQ INT8 too
        self._in_dtype = np.dtype(trt.nptype(eng.get_tensor_dtype(INPUT_NAME)))
        self._out_dtype = np.dtype(trt.nptype(eng.get_tensor_dtype(outputs[0])))
        self._min_batch, self._max_batch = self._profile_batches(in_dims)

    def _profile_batches(self, in_dims: tuple[int, ...]) -> tuple[int, int]:
        if in_dims[0] != -1:
            return int(in_dims[0]), int(in_dims[0])
        lo, _, hi = self._engine.get_tensor_profile_shape(INPUT_NAME, 0)  # (min, opt, max) of profile 0
        return int(lo[0]), int(hi[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one input image."""
        return self._input_shape

    @property
    def output_name(self) -> str:
        """The engine's output tensor name (`logits` or `probs`)."""
        return self._output_name

    @property
    def min_batch(self) -> int:
        return self._min_batch

    @property
    def max_batch(self) -> int:
        return self._max_batch

    # -- inference -------------------------------------------------------------------

    def _malloc(self, nbytes: int) -> int:
        ptr = int(cuda_call(self._cudart, self._cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))
        self._buffers.append(ptr)
        return ptr

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Run a float NCHW batch; return the output as a numpy array (N, ...)."""
        x = np.asarray(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise EdgekdError(f"input must be (N, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        if x.shape[0] < self._min_batch:
            raise EdgekdError(f"batch {x.shape[0]} is below the engine's minimum batch {self._min_batch}; "
                              f"rebuild with a smaller --min-batch")
        x = np.ascontiguousarray(x, dtype=self._in_dtype)
        chunks = [x[i:i + self._max_batch] for i in range(0, x.shape[0], self._max_batch)]
        if len(chunks) > 1 and chunks[-1].shape[0] < self._min_batch:
            # keep every chunk inside the profile: overlap the tail with the previous chunk
            tail = x[-self._max_batch:]
            outs = [self._run(c) for c in chunks[:-1]]
            last = self._run(np.ascontiguousarray(tail))[-chunks[-1].shape[0]:]
            return np.concatenate(outs + [last])
        outs = [self._run(np.ascontiguousarray(c)) for c in chunks]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def _run(self, x: np.ndarray) -> np.ndarray:
        cudart, ctx = self._cudart, self._context
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        if not ctx.set_input_shape(INPUT_NAME, tuple(x.shape)):
            raise EdgekdError(f"the engine rejected input shape {tuple(x.shape)} "
                              f"(profile batch {self._min_batch}..{self._max_batch})")
        dims = ctx.get_tensor_shape(self._output_name)
        out = np.empty(tuple(int(dims[k]) for k in range(len(dims))), dtype=self._out_dtype)
        stream = self._stream
        cuda_call(cudart, cudart.cudaMemcpyAsync(self._d_input, x.ctypes.data, x.nbytes, h2d, stream),
                  "cudaMemcpyAsync")
        ctx.set_tensor_address(INPUT_NAME, self._d_input)
        ctx.set_tensor_address(self._output_name, self._d_output)
        ok = ctx.execute_async_v3(int(stream))
        if not ok:
            raise EdgekdError(f"TensorRT inference failed: {self._logger.last_error or 'enqueue returned false'}")
        cuda_call(cudart, cudart.cudaMemcpyAsync(out.ctypes.data, self._d_output, out.nbytes, d2h, stream),
                  "cudaMemcpyAsync")
        cuda_call(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return out

    # -- lifetime --------------------------------------------------------------------

    def close(self) -> None:
        """Free the device buffers and the CUDA stream (the engine objects go with them)."""
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for attr in ("_context", "_engine", "_runtime"):  # TensorRT objects before their memory
            if hasattr(self, attr):
                delattr(self, attr)
        for ptr in self._buffers:
            cudart.cudaFree(ptr)
        self._buffers = []
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __enter__(self) -> "TrtEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; close() is the reliable way
        try:
            self.close()
        except Exception:
            pass

