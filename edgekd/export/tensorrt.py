"""TensorRT engines: build from ONNX, check provenance, load and run; trtexec command lines.

The only module that imports `tensorrt` (through `edgekd.deps.require`, inside functions), so
`import edgekd.export.tensorrt` works everywhere and the pure parts (options, trtexec command,
provenance checks) are tested on machines without TensorRT.

Supported: TensorRT 8.5 (JetPack 5) through 10.x. The API differences handled explicitly:

- network creation: the EXPLICIT_BATCH flag is required before 10 and deprecated (implied) in 10;
- workspace: `IBuilderConfig.set_memory_pool_limit(WORKSPACE, ...)` (>= 8.4) instead of
  `max_workspace_size` (removed in 10);
- inference: named I/O tensors (`num_io_tensors`, `get_tensor_name`, `set_input_shape`,
  `set_tensor_address`, `execute_async_v3`; >= 8.5) with a fallback to binding indices
  (`set_binding_shape`, `execute_v2`; JetPack 5.0's 8.4, removed in 10).

CUDA memory for inference comes from **cuda-python** (`cuda.bindings.runtime`, or `cuda.cudart`
in cuda-python < 12.6), not torch: the device runtime (`edgekd.runtime`) must run without torch,
and cuda-python is what NVIDIA's own TensorRT Python samples use. `pip install cuda-python`
(the major version matching the device's CUDA: 11 on JetPack 5, 12 on JetPack 6).

An engine only loads in the TensorRT release that built it, on a GPU of the same compute
capability. Every engine therefore gets a provenance sidecar `<engine>.json`, and `TrtEngine`
compares it with the running TensorRT and GPU before deserializing, so a mismatch is a one-line
message saying what differs and how to rebuild, not TensorRT's raw deserialization error.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from edgekd.deps import require
from edgekd.errors import ConfigError, EdgekdError, MissingDependencyError
from edgekd.io import atomic_path, sha256_file
from edgekd.names import INPUT_NAME

PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_FILE = "model.engine"
SIDECAR_FORMAT = "edgekd-tensorrt-engine/1"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
DEFAULT_REBUILD_HINT = (
    "rebuild it on this machine: `edgekd export CKPT --format tensorrt` here, "
    "or `bash build_engine.sh` in the Jetson build kit on the device"
)


# --------------------------------------------------------------------------- options


@dataclass
class TrtBuildOptions:
    """How to build an engine: precision, batch profile, workspace, timing cache, DLA.

    `precision='int8'` means explicit quantization: the ONNX must be the QDQ model (its
    Quantize/DequantizeLinear nodes carry the scales); no calibrator is used.
    """

    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_mb: int = 1024
    timing_cache: Optional[str] = None
    dla_core: Optional[int] = None
    gpu_fallback: bool = True

    def __post_init__(self) -> None:
        validate_build_options(self)


def validate_build_options(opts: TrtBuildOptions) -> None:
    """Raise a one-line ConfigError for options TensorRT would reject later (and slower)."""
    if opts.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {opts.precision!r}")
    batches = (opts.min_batch, opts.opt_batch, opts.max_batch)
    if not all(isinstance(b, int) and not isinstance(b, bool) for b in batches) or not 1 <= batches[0] <= batches[1] <= batches[2]:
        raise ConfigError(f"the batch profile needs 1 <= min_batch <= opt_batch <= max_batch, got {batches[0]}/{batches[1]}/{batches[2]}")
    if not isinstance(opts.workspace_mb, int) or opts.workspace_mb < 1:
        raise ConfigError(f"workspace_mb must be a positive integer (MiB), got {opts.workspace_mb!r}")
    if opts.dla_core is not None:
        if not isinstance(opts.dla_core, int) or opts.dla_core < 0:
            raise ConfigError(f"dla_core must be a DLA core index >= 0, got {opts.dla_core!r}")
        if opts.precision == "fp32":
            raise ConfigError("the DLA runs FP16 or INT8 only: use precision fp16 or int8 with a DLA core")
        # TensorRT's DLA restrictions: no dynamic dimensions, min == opt == max.
        if not batches[0] == batches[1] == batches[2]:
            raise ConfigError(f"the DLA needs a fixed batch (min = opt = max batch), got {batches[0]}/{batches[1]}/{batches[2]}")


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Return `input_shape` as a (C, H, W) tuple of positive ints, or raise ConfigError."""
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
        raise ConfigError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape!r}")
    return tuple(int(d) for d in shape)  # type: ignore[return-value]


def profile_shapes(opts: TrtBuildOptions, input_shape: Sequence[int]) -> dict[str, Any]:
    """The optimization profile on the input tensor: NCHW shapes for min, opt and max batch."""
    c, h, w = check_input_shape(input_shape)
    return {"input": INPUT_NAME,
            "min": [opts.min_batch, c, h, w],
            "opt": [opts.opt_batch, c, h, w],
            "max": [opts.max_batch, c, h, w]}


def trtexec_command(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, opts: TrtBuildOptions,
                    input_shape: Sequence[int], trtexec: str = "trtexec") -> list[str]:
    """The trtexec argument list that builds the same engine as `build_engine`.

    Flags valid from TensorRT 8.4 through 10.x. `--memPoolSize=workspace:N` has no unit suffix on
    purpose: the value is MiB in every release, while 8.4-8.5 do not parse the `M` suffix that
    10.x accepts. INT8 is `--int8` alone: scales come from the QDQ nodes, no calibration cache.
    """
    prof = profile_shapes(opts, input_shape)
    cmd = [trtexec, f"--onnx={os.fspath(onnx_path)}", f"--saveEngine={os.fspath(engine_path)}"]
    if opts.precision == "fp16":
        cmd.append("--fp16")
    elif opts.precision == "int8":
        cmd.append("--int8")
    for key in ("min", "opt", "max"):
        cmd.append(f"--{key}Shapes={INPUT_NAME}:{'x'.join(str(d) for d in prof[key])}")
    cmd.append(f"--memPoolSize=workspace:{opts.workspace_mb}")
    if opts.timing_cache:
        cmd.append(f"--timingCacheFile={opts.timing_cache}")
    if opts.dla_core is not None:
        cmd.append(f"--useDLACore={opts.dla_core}")
        if opts.gpu_fallback:
            cmd.append("--allowGPUFallback")
    return cmd


# --------------------------------------------------------------------------- provenance


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """`model.engine` -> `model.engine.json`."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def make_provenance(opts: TrtBuildOptions, input_shape: Sequence[int], onnx_name: str, onnx_sha256: str,
                    builder: str, rebuild: str = DEFAULT_REBUILD_HINT) -> dict[str, Any]:
    """The build-side half of a sidecar; the machine half (versions, GPU, hashes, time) is added
    by whoever builds: `build_engine` here, or the kit's `build_engine.sh` on the device."""
    import edgekd

    return {
        "format": SIDECAR_FORMAT,
        "builder": builder,
        "precision": opts.precision,
        "quantization": "explicit (QDQ)" if opts.precision == "int8" else None,
        "profile": profile_shapes(opts, input_shape),
        "workspace_mb": opts.workspace_mb,
        "dla_core": opts.dla_core,
        "gpu_fallback": opts.gpu_fallback if opts.dla_core is not None else None,
        "onnx_file": onnx_name,
        "onnx_sha256": onnx_sha256,
        "edgekd_version": edgekd.__version__,
        "rebuild": rebuild,
    }


def _release(version: Any) -> Optional[tuple[int, ...]]:
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


def _major(version: Any) -> Optional[int]:
    rel = _release(version)
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
        problems.append(f"the sidecar is not an edgekd engine record (format {sidecar.get('format')!r}, expected {SIDECAR_FORMAT!r})")
        return problems

    built_trt, here_trt = sidecar.get("tensorrt_version"), runtime.get("tensorrt_version")
    if not built_trt:
        problems.append("the sidecar does not record the TensorRT version that built the engine")
    elif _release(built_trt) != _release(here_trt):
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

    built_cuda, here_cuda = _major(sidecar.get("cuda_version")), _major(runtime.get("cuda_version"))
    if built_cuda is not None and here_cuda is not None and built_cuda != here_cuda:
        problems.append(f"built with CUDA {sidecar.get('cuda_version')}, this machine has CUDA {runtime.get('cuda_version')}")

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


def _cuda_call(cudart: Any, result: Any, what: str) -> Any:
    """Unpack a cuda-python `(err, value...)` result, raising a one-line error on failure."""
    err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if err != cudart.cudaError_t.cudaSuccess:
        raise EdgekdError(f"CUDA call {what} failed: {getattr(err, 'name', err)}")
    return rest[0] if len(rest) == 1 else rest


def _format_cuda_version(v: int) -> str:
    """cudaRuntimeGetVersion's 12040 -> '12.4'."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def collect_runtime_info(device: int = 0) -> dict[str, Any]:
    """The running TensorRT version and CUDA GPU, as recorded in sidecars. Needs TensorRT and cuda-python."""
    trt = require("tensorrt")
    cudart = import_cudart()
    count = _cuda_call(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if count < 1:
        raise EdgekdError("no CUDA GPU is visible: TensorRT engines need one")
    _cuda_call(cudart, cudart.cudaSetDevice(device), "cudaSetDevice")
    props = _cuda_call(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    runtime_version = _cuda_call(cudart, cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
    return {
        "tensorrt_version": trt.__version__,
        "cuda_version": _format_cuda_version(int(runtime_version)),
        "gpu_name": name.rstrip("\x00").strip(),
        "gpu_source": "cuda",
        "compute_capability": f"{props.major}.{props.minor}",
        "platform": platform.machine(),
    }


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# --------------------------------------------------------------------------- build


def _make_logger(trt: Any) -> Any:
    """A TensorRT logger that prints warnings and keeps the last error for one-line messages."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.last_error = ""

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.last_error = str(msg).strip().splitlines()[0] if str(msg).strip() else ""
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR,
                            trt.ILogger.Severity.WARNING):
                print(f"[TensorRT] {msg}", flush=True)

    return _Logger()


def _network_flags(trt: Any) -> int:
    # Before TensorRT 10 the ONNX parser needs an explicit-batch network; 10 deprecates the flag
    # (every network is explicit-batch) and warns when it is set.
    if (_major(trt.__version__) or 0) >= 10:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def _set_workspace(trt: Any, config: Any, workspace_mb: int) -> None:
    nbytes = int(workspace_mb) << 20
    if hasattr(config, "set_memory_pool_limit"):  # >= 8.4; the only way in 10
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, nbytes)
    else:  # pragma: no cover - TensorRT < 8.4
        config.max_workspace_size = nbytes


def _check_network(trt: Any, network: Any, input_shape: tuple[int, int, int], opts: TrtBuildOptions) -> None:
    """The parsed network has the input this package exports, and INT8 has QDQ to quantize with."""
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if INPUT_NAME not in names:
        raise EdgekdError(f"the ONNX model has inputs {names}, expected one named {INPUT_NAME!r} (edgekd export writes it)")
    dims = tuple(network.get_input(names.index(INPUT_NAME)).shape)
    if len(dims) != 4 or any(d not in (-1, want) for d, want in zip(dims[1:], input_shape)):
        raise EdgekdError(f"the ONNX input {INPUT_NAME!r} has shape {list(dims)}, expected [N, {', '.join(map(str, input_shape))}]")
    if dims[0] != -1 and not opts.min_batch == opts.opt_batch == opts.max_batch == dims[0]:
        raise EdgekdError(f"the ONNX input has a fixed batch of {dims[0]}; re-export with a dynamic batch axis "
                          f"or build with min = opt = max batch = {dims[0]}")
    qdq_types = {trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE}
    has_qdq = any(network.get_layer(i).type in qdq_types for i in range(network.num_layers))
    if opts.precision == "int8" and not has_qdq:
        raise EdgekdError("INT8 engines are built from the QDQ model (explicit quantization, no calibrator): "
                          "pass model.int8.onnx from `edgekd export --int8`")
    if opts.precision != "int8" and has_qdq:
        raise EdgekdError(f"the ONNX model is quantized (QDQ): build it with precision int8, not {opts.precision}")


def _load_timing_cache(config: Any, path: Optional[str]) -> Any:
    """Attach a timing cache (read from `path` when it exists) so rebuilds skip kernel timing."""
    data = Path(path).read_bytes() if path and Path(path).is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        # a cache from another GPU or TensorRT release: start a fresh one instead of failing
        print(f"[edgekd] timing cache {path} does not match this GPU/TensorRT; starting a new one", flush=True)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, opts: TrtBuildOptions,
                 input_shape: tuple[int, int, int]) -> dict[str, Any]:
    """Build a TensorRT engine from ONNX with the TensorRT Python API; return its provenance.

    Writes `engine_path` and the sidecar `<engine_path>.json` atomically (and the timing cache
    when `opts.timing_cache` is set). Raises MissingDependencyError (exit 1, naming the extra)
    where TensorRT or cuda-python is missing, EdgekdError on a model TensorRT cannot build.
    """
    validate_build_options(opts)
    shape = check_input_shape(input_shape)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise EdgekdError(f"ONNX model not found: {onnx_path}")
    trt = require("tensorrt")
    machine = collect_runtime_info()  # also proves a CUDA GPU is there before TensorRT tries

    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    if builder is None:
        raise EdgekdError(f"TensorRT could not create a builder: {logger.last_error or 'no usable CUDA GPU'}")
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EdgekdError(f"TensorRT could not parse {onnx_path.name}: {(errors[0] if errors else logger.last_error).strip()}")
    _check_network(trt, network, shape, opts)

    config = builder.create_builder_config()
    _set_workspace(trt, config, opts.workspace_mb)
    if opts.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif opts.precision == "int8":
        # explicit quantization: the Q/DQ layers carry the scales; no int8_calibrator is set
        config.set_flag(trt.BuilderFlag.INT8)
    prof = profile_shapes(opts, shape)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, prof["min"], prof["opt"], prof["max"])
    config.add_optimization_profile(profile)
    if opts.dla_core is not None:
        n_dla = builder.num_DLA_cores
        if opts.dla_core >= n_dla:
            raise EdgekdError(f"DLA core {opts.dla_core} requested, this device has {n_dla} DLA core(s)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = opts.dla_core
        if opts.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    cache = _load_timing_cache(config, opts.timing_cache)

    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if plan is None:
        raise EdgekdError(f"TensorRT failed to build the engine: {logger.last_error or 'see the TensorRT log above'}")
    data = bytes(memoryview(plan))

    sidecar = make_provenance(opts, shape, onnx_path.name, sha256_file(onnx_path), builder="tensorrt-python")
    sidecar.update({k: machine[k] for k in ("tensorrt_version", "cuda_version", "gpu_name", "gpu_source",
                                            "compute_capability", "platform")})
    sidecar.update(engine_file=engine_path.name, engine_sha256=hashlib.sha256(data).hexdigest(),
                   engine_bytes=len(data), built_at=_utc_now(), build_seconds=round(seconds, 3))
    # Both files land together or not at all: the sidecar is renamed first, so a crash between
    # the two renames leaves an engine whose sha256 no sidecar vouches for, which loading refuses.
    with atomic_path(engine_path) as tmp_engine, atomic_path(sidecar_path(engine_path)) as tmp_sidecar:
        tmp_engine.write_bytes(data)
        tmp_sidecar.write_text(json.dumps(sidecar, indent=2) + "\n")
    if opts.timing_cache:
        with atomic_path(opts.timing_cache) as tmp_cache:
            tmp_cache.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    del cache
    return sidecar


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
        raise EdgekdError(f"cannot read the engine sidecar {path}: {exc}") from None
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
        self._stream = None
        self.sidecar = verify_engine(self.path) if verify else (read_sidecar(self.path) if sidecar_path(self.path).is_file() else {})
        trt = require("tensorrt")
        self._trt = trt
        self._cudart = cudart = import_cudart()
        self._logger = _make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise EdgekdError(f"TensorRT could not deserialize {self.path.name}: {self._logger.last_error or 'corrupt or incompatible engine'}; "
                              f"{self.sidecar.get('rebuild') or DEFAULT_REBUILD_HINT}")
        self._context = self._engine.create_execution_context()
        self._tensor_api = hasattr(self._engine, "num_io_tensors")  # >= 8.5
        self._discover_io()
        self._stream = _cuda_call(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        n = self.max_batch
        self._d_input = self._malloc(n * int(np.prod(self.input_shape)) * self._in_dtype.itemsize)
        self._d_output = self._malloc(n * int(np.prod(self._out_tail)) * self._out_dtype.itemsize)

    # -- introspection ---------------------------------------------------------------

    def _discover_io(self) -> None:
        trt, eng = self._trt, self._engine
        if self._tensor_api:
            names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
            inputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            shape_of, dtype_of = eng.get_tensor_shape, eng.get_tensor_dtype
        else:  # pragma: no cover - TensorRT 8.4 (JetPack 5.0)
            names = [eng.get_binding_name(i) for i in range(eng.num_bindings)]
            inputs = [n for i, n in enumerate(names) if eng.binding_is_input(i)]
            shape_of = lambda n: eng.get_binding_shape(names.index(n))  # noqa: E731
            dtype_of = lambda n: eng.get_binding_dtype(names.index(n))  # noqa: E731
        outputs = [n for n in names if n not in inputs]
        if inputs != [INPUT_NAME] or len(outputs) != 1:
            raise EdgekdError(f"{self.path.name} has inputs {inputs} and outputs {outputs}; expected one input "
                              f"{INPUT_NAME!r} and one output (an edgekd export)")
        self._names = names
        self._output_name = outputs[0]
        in_dims, out_dims = tuple(shape_of(INPUT_NAME)), tuple(shape_of(outputs[0]))
        self._input_shape = tuple(int(d) for d in in_dims[1:])
        self._out_tail = tuple(int(d) for d in out_dims[1:])
        self._in_dtype = np.dtype(trt.nptype(dtype_of(INPUT_NAME)))
        self._out_dtype = np.dtype(trt.nptype(dtype_of(outputs[0])))
        self._min_batch, self._max_batch = self._profile_batches(in_dims)

    def _profile_batches(self, in_dims: tuple[int, ...]) -> tuple[int, int]:
        if in_dims[0] != -1:
            return int(in_dims[0]), int(in_dims[0])
        try:
            lo, _, hi = self._engine.get_tensor_profile_shape(INPUT_NAME, 0)  # >= 8.5
            return int(lo[0]), int(hi[0])
        except (AttributeError, TypeError):
            prof = self.sidecar.get("profile") or {}
            if not prof:
                raise EdgekdError(f"cannot read the batch profile of {self.path.name} (no sidecar profile)") from None
            return int(prof["min"][0]), int(prof["max"][0])

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
        ptr = int(_cuda_call(self._cudart, self._cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))
        self._buffers.append(ptr)
        return ptr

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Run a float NCHW batch; return the output as a numpy array (N, ...)."""
        x = np.asarray(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise EdgekdError(f"input must be (N, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        if x.shape[0] < self._min_batch:
            raise EdgekdError(f"batch {x.shape[0]} is below the engine's minimum batch {self._min_batch}; rebuild with a smaller --min-batch")
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
        if self._tensor_api:
            if not ctx.set_input_shape(INPUT_NAME, tuple(x.shape)):
                raise EdgekdError(f"the engine rejected input shape {tuple(x.shape)} (profile batch {self._min_batch}..{self._max_batch})")
            out_shape = tuple(ctx.get_tensor_shape(self._output_name))
        else:  # pragma: no cover - TensorRT 8.4
            in_idx, out_idx = self._names.index(INPUT_NAME), self._names.index(self._output_name)
            if not ctx.set_binding_shape(in_idx, tuple(x.shape)):
                raise EdgekdError(f"the engine rejected input shape {tuple(x.shape)}")
            out_shape = tuple(ctx.get_binding_shape(out_idx))
        out = np.empty(out_shape, dtype=self._out_dtype)
        stream = self._stream
        _cuda_call(cudart, cudart.cudaMemcpyAsync(self._d_input, x.ctypes.data, x.nbytes, h2d, stream), "cudaMemcpyAsync")
        if self._tensor_api:
            ctx.set_tensor_address(INPUT_NAME, self._d_input)
            ctx.set_tensor_address(self._output_name, self._d_output)
            ok = ctx.execute_async_v3(int(stream))
        else:  # pragma: no cover - TensorRT 8.4
            bindings = [0] * len(self._names)
            bindings[in_idx], bindings[out_idx] = self._d_input, self._d_output
            _cuda_call(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
            ok = ctx.execute_v2(bindings)
        if not ok:
            raise EdgekdError(f"TensorRT inference failed: {self._logger.last_error or 'enqueue returned false'}")
        _cuda_call(cudart, cudart.cudaMemcpyAsync(out.ctypes.data, self._d_output, out.nbytes, d2h, stream), "cudaMemcpyAsync")
        _cuda_call(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
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

