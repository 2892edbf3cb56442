"""Building TensorRT engines from ONNX: build options, trtexec command lines, provenance records.

Loading and running engines, and checking an engine's provenance against the machine, belong to
the device runtime (`edgekd.runtime.engine`, torch-free); this module builds what it loads and
imports the shared TensorRT/CUDA helpers from there. `tensorrt` is imported through
`edgekd.deps.require` inside functions, so `import edgekd.export.tensorrt` works everywhere and
the pure parts (options, trtexec command, build-input rules) are tested without TensorRT.

Supported: TensorRT 8.5-8.6 and 10.x-11.x. The version, never a probe for attributes, picks the
path (`edgekd.runtime.trt_version`, which also says why 9.x and 8.4 are refused):

- 8.5/8.6 (JetPack 5.1, 6.0): an EXPLICIT_BATCH network; precision from the builder flags
  FP16/INT8, built from model.onnx (FP16) or the QDQ model.int8.onnx (INT8, no calibrator);
- 10.x (JetPack 6.1/6.2): a STRONGLY_TYPED network; precision from the network's types, built from
  model.fp16.onnx (FP16) or model.int8.onnx (INT8); no precision flags;
- 11.x: every network is strongly typed (no creation flag); the weak-typing API is gone.
- workspace: `IBuilderConfig.set_memory_pool_limit(WORKSPACE, ...)` on every supported release.

The TensorRT module is typed (`if TYPE_CHECKING: import tensorrt as trt`), so mypy with the
tensorrt-stubs package checks every call here against the 10.x API
(`scripts/typecheck_tensorrt.sh`). The fake in tests/fakes/tensorrt.py models 8.5, 10.x and 11.x,
and fails on the APIs 11.x removed.

Every engine gets a provenance sidecar `<engine>.json` (`make_provenance` plus the building
machine's versions and hashes), which `edgekd.runtime.engine.TrtEngine` checks before loading.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np

from edgekd.deps import require
from edgekd.errors import ConfigError, EdgekdError
from edgekd.io import atomic_path, sha256_file
from edgekd.names import INPUT_NAME, MODEL_ENGINE, MODEL_FP16_ONNX
from edgekd.runtime.engine import (
    DEFAULT_REBUILD_HINT,
    SIDECAR_FORMAT,
    TrtEngine,
    collect_runtime_info,
    make_logger,
    sidecar_path,
)
from edgekd.runtime.trt_version import TrtPolicy, installed_policy

if TYPE_CHECKING:
    import tensorrt as trt

PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_FILE = MODEL_ENGINE
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")

# The defaults of `edgekd export`'s TensorRT options (ExportOptions takes them from here).
DEFAULT_PRECISION = "fp32"
DEFAULT_MIN_BATCH, DEFAULT_OPT_BATCH, DEFAULT_MAX_BATCH = 1, 8, 64
DEFAULT_WORKSPACE_MB = 1024

__all__ = ["PRECISIONS", "ENGINE_FILE", "QDQ_OPS", "TrtBuildOptions", "validate_build_options", "check_input_shape",
           "check_build_inputs", "profile_shapes", "trtexec_command", "make_provenance", "build_engine",
           "ProofImages", "installed_tensorrt"]


# --------------------------------------------------------------------------- options


@dataclass
class TrtBuildOptions:
    """How to build an engine: precision, batch profile, workspace, timing cache, DLA.

    `precision='int8'` means explicit quantization: the ONNX must be the QDQ model (its
    Quantize/DequantizeLinear nodes carry the scales); no calibrator is used.
    """

    precision: str = DEFAULT_PRECISION
    min_batch: int = DEFAULT_MIN_BATCH
    opt_batch: int = DEFAULT_OPT_BATCH
    max_batch: int = DEFAULT_MAX_BATCH
    workspace_mb: int = DEFAULT_WORKSPACE_MB
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
    shown = "/".join(map(str, batches))
    ints = all(isinstance(b, int) and not isinstance(b, bool) for b in batches)
    if not ints or not 1 <= batches[0] <= batches[1] <= batches[2]:
        raise ConfigError(f"the batch profile needs 1 <= min_batch <= opt_batch <= max_batch, got {shown}")
    if not isinstance(opts.workspace_mb, int) or opts.workspace_mb < 1:
        raise ConfigError(f"workspace_mb must be a positive integer (MiB), got {opts.workspace_mb!r}")
    if opts.dla_core is not None:
        if not isinstance(opts.dla_core, int) or opts.dla_core < 0:
            raise ConfigError(f"dla_core must be a DLA core index >= 0, got {opts.dla_core!r}")
        if opts.precision == "fp32":
            raise ConfigError("the DLA runs FP16 or INT8 only: use precision fp16 or int8 with a DLA core")
        # TensorRT's DLA restrictions: no dynamic dimensions, min == opt == max.
        if not batches[0] == batches[1] == batches[2]:
            raise ConfigError(f"the DLA needs a fixed batch (min = opt = max batch), got {shown}")


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Return `input_shape` as a (C, H, W) tuple of positive ints, or raise ConfigError."""
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
        raise ConfigError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape!r}")
    return tuple(int(d) for d in shape)  # type: ignore[return-value]


def check_build_inputs(inputs: Mapping[str, Sequence[Any]], has_qdq: bool, opts: TrtBuildOptions,
                       input_shape: Sequence[int], *, has_fp16: bool = False, strongly_typed: bool = False) -> None:
    """Refuse an ONNX model the engine build would fail on, in one line; the rules shared by
    `build_engine` (on TensorRT's parsed network) and the Jetson build kit (on the ONNX file).

    Args:
        inputs: graph input name -> dims; an int is a fixed size, anything else (None, -1, a
            symbolic name) a dynamic one.
        has_qdq: whether the graph holds Quantize/DequantizeLinear nodes.
        opts: the build options.
        input_shape: the model's (C, H, W).
        has_fp16: whether the graph computes in FP16 (FP16 weights or casts to FP16).
        strongly_typed: whether the build takes precision from the graph's types (TensorRT >= 10),
            so an FP16 engine needs the FP16 model.
    """
    shape = check_input_shape(input_shape)
    if INPUT_NAME not in inputs:
        raise EdgekdError(f"the ONNX model has inputs {list(inputs)}, expected one named {INPUT_NAME!r} "
                          f"(edgekd export writes it)")
    dims = [d if isinstance(d, int) and d >= 0 else None for d in inputs[INPUT_NAME]]
    shown = [d if d is not None else "N" for d in dims]
    if len(dims) != 4 or any(d is not None and d != want for d, want in zip(dims[1:], shape)):
        raise EdgekdError(f"the ONNX input {INPUT_NAME!r} has shape {shown}, "
                          f"expected [N, {', '.join(map(str, shape))}]")
    if dims[0] is not None and not opts.min_batch == opts.opt_batch == opts.max_batch == dims[0]:
        raise EdgekdError(f"the ONNX input has a fixed batch of {dims[0]}: re-export with a dynamic batch axis "
                          f"or build with min = opt = max batch = {dims[0]}")
    if opts.precision == "int8" and not has_qdq:
        raise EdgekdError("INT8 engines are built from the QDQ model (explicit quantization, no calibrator): "
                          "pass model.int8.onnx from `edgekd export --int8`")
    if opts.precision != "int8" and has_qdq:
        raise EdgekdError(f"the ONNX model is quantized (QDQ): build it with precision int8, not {opts.precision}")
    if opts.precision == "fp32" and has_fp16:
        raise EdgekdError("the ONNX model computes in FP16: build it with precision fp16, "
                          "or build FP32 from model.onnx")
    if opts.precision == "fp16" and strongly_typed and not has_fp16:
        raise EdgekdError(f"a strongly typed FP16 engine (TensorRT 10.x/11.x) is built from the FP16 model: pass "
                          f"{MODEL_FP16_ONNX} from `edgekd export --precision fp16` (this one is FP32)")


def profile_shapes(opts: TrtBuildOptions, input_shape: Sequence[int]) -> dict[str, Any]:
    """The optimization profile on the input tensor: NCHW shapes for min, opt and max batch."""
    c, h, w = check_input_shape(input_shape)
    return {"input": INPUT_NAME,
            "min": [opts.min_batch, c, h, w],
            "opt": [opts.opt_batch, c, h, w],
            "max": [opts.max_batch, c, h, w]}


def trtexec_command(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, opts: TrtBuildOptions,
                    input_shape: Sequence[int], trtexec: str = "trtexec", *, policy: TrtPolicy) -> list[str]:
    """The trtexec argument list that builds the same engine as `build_engine`, on `policy`'s release.

    Precision: `--fp16`/`--int8` on 8.5/8.6 (INT8 alone: scales come from the QDQ nodes, no
    calibration cache); `--stronglyTyped` on 10.x; nothing on 11.x, where strong typing is always
    on and the precision flags are gone. `onnx_path` must be the file `policy.onnx_file` names.
    `--memPoolSize=workspace:N` has no unit suffix on purpose: the value is MiB in every release,
    while 8.5 does not parse the `M` suffix that 10.x accepts.
    """
    prof = profile_shapes(opts, input_shape)
    cmd = [trtexec, f"--onnx={os.fspath(onnx_path)}", f"--saveEngine={os.fspath(engine_path)}"]
    cmd += policy.trtexec_precision_args(opts.precision)
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


def make_provenance(opts: TrtBuildOptions, input_shape: Sequence[int], onnx_name: str, onnx_sha256: str,
                    builder: str, rebuild: str = DEFAULT_REBUILD_HINT, *, policy: TrtPolicy) -> dict[str, Any]:
    """The build-side half of a sidecar; the machine half (versions, GPU, hashes, time) is added
    by whoever builds: `build_engine` here, or the kit's `build_engine.sh` on the device.

    `precision_mode` says how the precision was asked for: `strongly-typed` (the network's types,
    TensorRT >= 10) or `builder-flags` (8.5/8.6), with the flags that were set."""
    import edgekd

    return {
        "format": SIDECAR_FORMAT,
        "builder": builder,
        "precision": opts.precision,
        "precision_mode": policy.mode,
        "network_flags": list(policy.network_flags),
        "builder_flags": list(policy.builder_flags(opts.precision)),
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


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# --------------------------------------------------------------------------- build


@dataclass(frozen=True)
class ProofImages:
    """What the engine proof runs: validation images `x` (N, C, H, W float32, normalised), labels `y`
    (N,), ONNX Runtime FP32's outputs `reference` (N, K) of model.onnx on `x`, and the budget."""

    x: np.ndarray
    y: np.ndarray
    reference: np.ndarray
    max_accuracy_drop: float
    split: str = "val"


def installed_tensorrt() -> TrtPolicy:
    """The build policy of the importable TensorRT (MissingDependencyError without one,
    UnsupportedTensorRTError for a release outside the supported ones)."""
    return installed_policy(require("tensorrt"))


def _network(builder: trt.Builder, policy: TrtPolicy) -> trt.INetworkDefinition:
    """A network created with the policy's flags: EXPLICIT_BATCH (8.5/8.6), STRONGLY_TYPED (10.x), none (11.x)."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = require("tensorrt")
    flag_of = {"EXPLICIT_BATCH": lambda: trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH,
               "STRONGLY_TYPED": lambda: trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED}
    return builder.create_network(sum(1 << int(flag_of[name]()) for name in policy.network_flags))


def _check_network(network: trt.INetworkDefinition, input_shape: tuple[int, int, int], opts: TrtBuildOptions,
                   policy: TrtPolicy) -> None:
    """The parsed network has the input this package exports, INT8 has QDQ, FP16 types where needed."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = require("tensorrt")
    shapes = {network.get_input(i).name: network.get_input(i).shape for i in range(network.num_inputs)}
    inputs = {name: [int(dims[k]) for k in range(len(dims))] for name, dims in shapes.items()}  # Dims: len + index
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    has_qdq = any(layer.type in (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE) for layer in layers)
    outputs = [layer.get_output(j) for layer in layers for j in range(layer.num_outputs)]
    has_fp16 = any(t.dtype == trt.DataType.HALF for t in outputs)
    check_build_inputs(inputs, has_qdq, opts, input_shape, has_fp16=has_fp16, strongly_typed=policy.strongly_typed)


def _configure(builder: trt.Builder, opts: TrtBuildOptions, shape: tuple[int, int, int],
               policy: TrtPolicy) -> trt.IBuilderConfig:
    """The builder config: workspace, precision flags (8.5/8.6 only), the batch profile, DLA."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = require("tensorrt")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_mb) << 20)
    # 8.5/8.6 only: FP16 lets TensorRT pick FP16 kernels; INT8 lets it run the Q/DQ layers in INT8
    # (explicit quantization, no int8_calibrator). Strongly typed releases take both from the types.
    flag_of = {"FP16": lambda: trt.BuilderFlag.FP16, "INT8": lambda: trt.BuilderFlag.INT8}
    for name in policy.builder_flags(opts.precision):
        config.set_flag(flag_of[name]())
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
    return config


def _load_timing_cache(config: trt.IBuilderConfig, path: Optional[str]) -> trt.ITimingCache:
    """Attach a timing cache (read from `path` when it exists) so rebuilds skip kernel timing."""
    data = Path(path).read_bytes() if path and Path(path).is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        # a cache from another GPU or TensorRT release: start a fresh one instead of failing
        print(f"[edgekd] timing cache {path} does not match this GPU/TensorRT; starting a new one", flush=True)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


def _serialize(onnx_path: Path, opts: TrtBuildOptions, shape: tuple[int, int, int],
               policy: TrtPolicy) -> tuple[bytes, bytes, float]:
    """Parse, check and build: (the serialized engine, the updated timing cache, build seconds)."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = require("tensorrt")
    logger = make_logger()
    builder = trt.Builder(logger)
    if builder is None:
        raise EdgekdError(f"TensorRT could not create a builder: {logger.last_error or 'no usable CUDA GPU'}")
    network = _network(builder, policy)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        first = (errors[0] if errors else logger.last_error).strip()
        raise EdgekdError(f"TensorRT could not parse {onnx_path.name}: {first}")
    _check_network(network, shape, opts, policy)
    config = _configure(builder, opts, shape, policy)
    cache = _load_timing_cache(config, opts.timing_cache)  # referenced until serialized: the config holds it
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if plan is None:
        raise EdgekdError(f"TensorRT failed to build the engine: {logger.last_error or 'see the TensorRT log above'}")
    timing = bytes(memoryview(config.get_timing_cache().serialize())) if opts.timing_cache else b""
    del cache
    return bytes(memoryview(plan)), timing, seconds


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, opts: TrtBuildOptions,
                 input_shape: tuple[int, int, int], proof: Optional[ProofImages] = None) -> dict[str, Any]:
    """Build a TensorRT engine from ONNX with the TensorRT Python API; return its provenance.

    The installed release picks the path (`edgekd.runtime.trt_version`): give it the ONNX file that
    `installed_tensorrt().onnx_file(precision)` names. With `proof`, the engine is run on the proof
    images before it is written, and published only when it matches ONNX Runtime FP32 (see
    `edgekd.export.engine_proof`); the figures go into the provenance record.

    Writes `engine_path` and the sidecar `<engine_path>.json` atomically (and the timing cache
    when `opts.timing_cache` is set). Raises MissingDependencyError (exit 1, naming the extra)
    where TensorRT or cuda-python is missing, UnsupportedTensorRTError (exit 1) for a release
    outside 8.5-8.6/10.x-11.x, EdgekdError on a model TensorRT cannot build, GateError (exit 3)
    when the proof fails.
    """
    from edgekd.export.engine_proof import prove_engine

    validate_build_options(opts)
    shape = check_input_shape(input_shape)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise EdgekdError(f"ONNX model not found: {onnx_path}")
    policy = installed_tensorrt()
    machine = collect_runtime_info()  # also proves a CUDA GPU is there before TensorRT tries
    data, timing, seconds = _serialize(onnx_path, opts, shape, policy)

    sidecar = make_provenance(opts, shape, onnx_path.name, sha256_file(onnx_path), builder="tensorrt-python",
                              policy=policy)
    sidecar.update({k: machine[k] for k in ("tensorrt_version", "cuda_version", "gpu_name", "gpu_source",
                                            "compute_capability", "platform")})
    sidecar.update(engine_file=engine_path.name, engine_sha256=hashlib.sha256(data).hexdigest(),
                   engine_bytes=len(data), built_at=_utc_now(), build_seconds=round(seconds, 3), proof=None)
    # Both files land together or not at all: the sidecar is renamed first, so a crash between
    # the two renames leaves an engine whose sha256 no sidecar vouches for, which loading refuses.
    # A failed proof (GateError) leaves neither.
    with atomic_path(engine_path) as tmp_engine, atomic_path(sidecar_path(engine_path)) as tmp_sidecar:
        tmp_engine.write_bytes(data)
        if proof is not None:
            with TrtEngine(tmp_engine, verify=False) as engine:
                sidecar["proof"] = prove_engine(engine.infer, proof.x, proof.y, proof.reference, opts.precision,
                                                proof.max_accuracy_drop, proof.split)
        tmp_sidecar.write_text(json.dumps(sidecar, indent=2) + "\n")
    if opts.timing_cache:
        with atomic_path(opts.timing_cache) as tmp_cache:
            tmp_cache.write_bytes(timing)
    return sidecar
