"""A recording stand-in for the documented TensorRT / cuda-python API (8.5/8.6, 10.x, 11.x), and
fake `trtexec` / `nvidia-smi` programs plus a `tensorrt` shim module for the Jetson kit's script.

`make_tensorrt` checks the calls edgekd makes and the data flow of `TrtEngine` (device memory is
host memory here, the "engine" runs the ONNX with ONNX Runtime); it says nothing about TensorRT
itself. `install_fakes` puts both modules into `sys.modules` for one test.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekd.export.jetson import inspect_onnx
from edgekd.names import INPUT_NAME, LOGITS_NAME
from tests.fakes.onnx_models import SHAPE

# What TensorRT 11.0 removed from the Python API (NVIDIA's 10.x-to-11.x migration guide); the 11.x
# fake raises AttributeError on each, as the real bindings do.
REMOVED_IN_11 = {
    "BuilderFlag": ("FP16", "INT8", "BF16", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                    "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO"),
    "NetworkDefinitionCreationFlag": ("EXPLICIT_BATCH",),
    "IBuilderConfig": ("int8_calibrator",),
    "Builder": ("platform_has_fast_fp16", "platform_has_fast_int8"),
}


class _Enum:
    """An enum namespace: `members` maps name -> value; a removed member raises like the real module."""

    def __init__(self, owner: str, members: dict, removed: tuple = ()) -> None:
        self._owner, self._removed = owner, removed
        for name, value in members.items():
            setattr(self, name, value)

    def __getattr__(self, name: str):
        if name in self.__dict__.get("_removed", ()):
            raise AttributeError(f"type object '{self._owner}' has no attribute '{name}' (removed in TensorRT 11)")
        raise AttributeError(f"type object '{self.__dict__.get('_owner', '?')}' has no attribute '{name}'")


def _names(*names: str) -> dict:
    return {n: n for n in names}


def make_tensorrt(version: str, onnx_path_box: dict, calls: list, shape: tuple = SHAPE):
    """A `tensorrt` module of `version` (8.5/8.6, 10.x or 11.x) whose builder parses ONNX with `inspect_onnx`
    and whose engines run the ONNX with ONNX Runtime; every call edgekd makes is appended to `calls`.

    Per release, as documented: 8.x networks need EXPLICIT_BATCH and have no STRONGLY_TYPED; 10.x has
    both, and refuses the FP16/INT8 builder flags on a strongly typed network (the build returns None
    and logs an error); 11.x networks are always strongly typed, and the APIs in REMOVED_IN_11 raise
    AttributeError. A release below 8.5 or at 9 is modelled only far enough to be refused."""
    import types

    import onnxruntime as ort

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    release = tuple(int(p) for p in version.split(".")[:2])
    major = release[0]
    removed = REMOVED_IN_11 if major >= 11 else {}

    class ILogger:
        Severity = _Enum("Severity", _names("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"))

        def __init__(self) -> None:
            pass

    trt.ILogger = ILogger
    by_major = {8: {"EXPLICIT_BATCH": 0}, 10: {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}}
    net_flags = by_major.get(major, {"STRONGLY_TYPED": 0})
    trt.NetworkDefinitionCreationFlag = _Enum("NetworkDefinitionCreationFlag", net_flags,
                                              removed.get("NetworkDefinitionCreationFlag", ()))
    builder_flags = ("FP16", "INT8", "GPU_FALLBACK", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
                     "DIRECT_IO", "TF32")
    removed_flags = removed.get("BuilderFlag", ())
    present = _names(*(f for f in builder_flags if f not in removed_flags))
    trt.BuilderFlag = _Enum("BuilderFlag", present, removed_flags)
    trt.LayerType = _Enum("LayerType", _names("QUANTIZE", "DEQUANTIZE", "CONVOLUTION", "CAST"))
    trt.MemoryPoolType = _Enum("MemoryPoolType", _names("WORKSPACE"))
    trt.DeviceType = _Enum("DeviceType", _names("GPU", "DLA"))
    trt.TensorIOMode = _Enum("TensorIOMode", _names("INPUT", "OUTPUT"))
    trt.DataType = _Enum("DataType", _names("FLOAT", "HALF", "INT8"))
    trt.nptype = lambda dt: {"FLOAT": np.float32, "HALF": np.float16}[dt]

    def strongly_typed(flags: int) -> bool:
        return major >= 11 or (major == 10 and bool(flags & (1 << net_flags["STRONGLY_TYPED"])))

    class Network:
        def __init__(self, flags):
            calls.append(("create_network", flags))
            self.flags, self.inputs, self.layers = flags, [], []
            self.strongly_typed = strongly_typed(flags)

        num_inputs = property(lambda self: len(self.inputs))
        num_layers = property(lambda self: len(self.layers))
        get_input = lambda self, i: self.inputs[i]  # noqa: E731
        get_layer = lambda self, i: self.layers[i]  # noqa: E731

    def layer(kind: str, dtype: str):
        out = types.SimpleNamespace(dtype=getattr(trt.DataType, dtype))
        return types.SimpleNamespace(type=getattr(trt.LayerType, kind), num_outputs=1, get_output=lambda i: out)

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.num_errors, self.errors = network, 0, []

        def get_error(self, i):
            return self.errors[i]

        def parse_from_file(self, path):
            if major == 8 and not self.network.flags & (1 << net_flags["EXPLICIT_BATCH"]):
                self.errors, self.num_errors = ["the ONNX parser needs an explicit-batch network"], 1
                return False
            info = inspect_onnx(path)
            onnx_path_box["path"] = path
            for name, dims in info["inputs"].items():
                shape = tuple(-1 if not isinstance(d, int) else d for d in dims)
                self.network.inputs.append(types.SimpleNamespace(name=name, shape=shape))
            dtype = "HALF" if info["fp16_tensors"] else "FLOAT"
            self.network.layers = [layer("QUANTIZE", "FLOAT")] * info["qdq_nodes"] + [layer("CONVOLUTION", dtype)]
            return True

    class Config:
        def __init__(self):
            self.flags = set()

        def set_flag(self, flag):
            self.flags.add(flag)
            calls.append(("set_flag", flag))

        def add_optimization_profile(self, profile):
            calls.append(("profile", profile.shapes))

        def create_timing_cache(self, data):
            calls.append(("create_timing_cache", bytes(data)))
            return types.SimpleNamespace(serialize=lambda: b"TIMING")

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

        def set_memory_pool_limit(self, pool, n):
            calls.append(("set_memory_pool_limit", pool, n))

        def __setattr__(self, key, value):
            if key in removed.get("IBuilderConfig", ()):
                raise AttributeError(f"'IBuilderConfig' object has no attribute '{key}' (removed in TensorRT 11)")
            if key in ("max_workspace_size", "default_device_type", "DLA_core", "int8_calibrator"):
                calls.append((key, value))
            object.__setattr__(self, key, value)

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Builder:
        num_DLA_cores = 2

        def __init__(self, logger):
            self.logger = logger

        create_network = lambda self, flags: Network(flags)  # noqa: E731
        create_builder_config = lambda self: Config()  # noqa: E731
        create_optimization_profile = lambda self: Profile()  # noqa: E731

        def __getattr__(self, name):
            if name in removed.get("Builder", ()):
                raise AttributeError(f"'Builder' object has no attribute '{name}' (removed in TensorRT 11)")
            if name in ("platform_has_fast_fp16", "platform_has_fast_int8"):
                return True
            raise AttributeError(name)

        def build_serialized_network(self, network, config):
            calls.append(("build", sorted(config.flags)))
            calls.append(("typing", "strong" if network.strongly_typed else "weak"))
            weak = {"FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"} & config.flags
            if network.strongly_typed and weak:
                self.logger.log(ILogger.Severity.ERROR, f"BuilderFlag::k{sorted(weak)[0]} is not allowed with a "
                                "strongly typed network")
                return None
            return b"PLAN:" + onnx_path_box["path"].encode()

    class Context:
        def __init__(self, engine):
            self.engine, self.shape, self.addr = engine, None, {}

        def set_input_shape(self, name, shape):
            self.shape = tuple(shape)
            return 1 <= shape[0] <= 8

        def get_tensor_shape(self, name):
            return (self.shape[0], 10)

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def execute_async_v3(self, stream_handle):
            import ctypes

            assert isinstance(stream_handle, int)
            n = int(np.prod(self.shape))
            host = ctypes.cast(self.addr[INPUT_NAME], ctypes.POINTER(ctypes.c_float))
            x = np.ctypeslib.as_array(host, (n,)).reshape(self.shape).copy()
            y = self.engine.sess.run(None, {INPUT_NAME: x})[0].astype(np.float32)
            ctypes.memmove(self.addr[LOGITS_NAME], y.ctypes.data, y.nbytes)
            return True

    class Engine:
        def __init__(self, path):
            self.sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            self.names = [INPUT_NAME, LOGITS_NAME]
            self.shapes = {INPUT_NAME: (-1, *shape), LOGITS_NAME: (-1, 10)}

        create_execution_context = lambda self: Context(self)  # noqa: E731
        num_io_tensors = 2
        get_tensor_name = lambda self, i: self.names[i]  # noqa: E731
        get_tensor_shape = lambda self, n: self.shapes[n]  # noqa: E731
        get_tensor_dtype = lambda self, n: trt.DataType.FLOAT  # noqa: E731  (edgekd exports keep FP32 I/O)
        get_tensor_profile_shape = lambda self, n, p: [(1, *shape), (4, *shape), (8, *shape)]  # noqa: E731

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == INPUT_NAME else trt.TensorIOMode.OUTPUT

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine(data.decode().split("PLAN:", 1)[1])

    trt.Builder, trt.OnnxParser, trt.Runtime, trt.Logger = Builder, OnnxParser, Runtime, ILogger
    return trt


def make_cudart():
    """A cuda-python runtime module whose device memory is numpy host memory (live buffers in `.live`)."""
    import ctypes
    import types

    rt = types.ModuleType("cuda.bindings.runtime")
    rt.cudaError_t = types.SimpleNamespace(cudaSuccess=0)
    rt.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    rt.live = {}
    props = types.SimpleNamespace(name=b"Stub GPU\x00\x00", major=8, minor=7)
    rt.cudaGetDeviceCount = lambda: (0, 1)
    rt.cudaSetDevice = lambda d: (0,)
    rt.cudaGetDeviceProperties = lambda d: (0, props)
    rt.cudaRuntimeGetVersion = lambda: (0, 11040)
    rt.cudaStreamCreate = lambda: (0, 77)
    rt.cudaStreamSynchronize = lambda s: (0,)
    rt.cudaStreamDestroy = lambda s: (0,)

    def malloc(n):
        buf = np.zeros(n, np.uint8)
        rt.live[buf.ctypes.data] = buf
        return 0, buf.ctypes.data

    def free(ptr):
        del rt.live[ptr]
        return (0,)

    def memcpy(dst, src, n, kind, stream):
        assert isinstance(dst, int) and isinstance(src, int) and stream == 77
        assert (dst if kind == 1 else src) in rt.live, "device side must be a cudaMalloc pointer"
        ctypes.memmove(dst, src, n)
        return (0,)

    rt.cudaMalloc, rt.cudaFree, rt.cudaMemcpyAsync = malloc, free, memcpy
    return rt


def install_fakes(monkeypatch: pytest.MonkeyPatch, version: str, shape: tuple = SHAPE) -> tuple[list, object]:
    """Install a fake `tensorrt` of `version` (engines of input `shape`) and a fake cuda-python runtime;
    returns (calls, cudart)."""
    box, calls = {}, []
    trt = make_tensorrt(version, box, calls, shape)
    rt = make_cudart()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
    return calls, rt


# --------------------------------------------------------------------------- fake programs for build_engine.sh

FAKE_TRTEXEC = """#!/usr/bin/env bash
# A trtexec of TensorRT $FAKE_TRT_VERSION (default 8.5.2). Building (--saveEngine): records its arguments in
# $FAKE_ARGS, prints a trtexec-like banner, refuses the flags that release does not have (--stronglyTyped before
# 10, --fp16/--int8/--best from 11) and writes a dummy engine. Running (--loadEngine, the kit's proof): appends
# its arguments to $FAKE_ARGS.load and writes --exportOutput as trtexec does, computed with ONNX Runtime from the
# model of the last build ($FAKE_RUNNER).
VERSION="${FAKE_TRT_VERSION:-8.5.2}"
MAJOR="${VERSION%%.*}"
for a in "$@"; do
  case "$a" in
    --loadEngine=*) printf '%s\\n' "$@" >> "$FAKE_ARGS.load"; exec "$FAKE_PYTHON" "$FAKE_RUNNER" "$@" ;;
  esac
done
printf '%s\\n' "$@" > "$FAKE_ARGS"
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v8502] # trtexec $*"
echo "[I] TensorRT version: $VERSION"
for a in "$@"; do
  case "$a" in
    --stronglyTyped) if [[ "$MAJOR" -lt 10 ]]; then echo "[E] Unknown option: $a"; exit 1; fi ;;
    --fp16|--int8|--best) if [[ "$MAJOR" -ge 11 ]]; then echo "[E] Unknown option: $a"; exit 1; fi ;;
  esac
done
[[ -n "${FAKE_TRTEXEC_FAIL:-}" ]] && { echo "[E] Engine could not be created" ; exit 1; }
for a in "$@"; do
  case "$a" in --saveEngine=*) printf 'engine built from %s' "$FAKE_TAG" > "${a#--saveEngine=}" ;; esac
done
"""

# trtexec --loadEngine ... --exportOutput=FILE, run by the fake above: the "engine" is the ONNX of the last build
# run with ONNX Runtime. FAKE_PROOF_BREAK=negate|nan breaks the outputs, as a bad engine would.
FAKE_RUNNER = """
import json, os, sys
import numpy as np
import onnxruntime as ort

args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
with open(os.environ["FAKE_ARGS"]) as f:
    onnx = [a.split("=", 1)[1] for a in f.read().splitlines() if a.startswith("--onnx=")][0]
name, path = args["loadInputs"].split(":", 1)
shape = [int(d) for d in args["shapes"].split(":", 1)[1].split("x")]
x = np.fromfile(path, dtype="<f4").reshape(shape)
sess = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
y = sess.run(None, {name: x})[0].astype(np.float64)
brk = os.environ.get("FAKE_PROOF_BREAK")
if brk == "negate":
    y = -y
elif brk == "nan":
    y[0, 0] = float("nan")
values = ", ".join("%g" % v for v in y.ravel())  # nan prints as nan, as trtexec's C++ stream does
with open(args["exportOutput"], "w") as f:
    f.write('[\\n  { "name" : "%s"\\n  , "dimensions" : "%s"\\n  , "values" : [ %s ]\\n  }\\n]\\n'
            % (sess.get_outputs()[0].name, "x".join(map(str, y.shape)), values))
print("[I] TensorRT version: " + os.environ.get("FAKE_TRT_VERSION", "8.5.2"))
"""

FAKE_NVIDIA_SMI = """#!/usr/bin/env bash
if [[ $# -eq 0 ]]; then echo "| NVIDIA-SMI 540.3.0   Driver Version: 540.3.0   CUDA Version: 12.2 |"; exit 0; fi
echo "NVIDIA Jetson Fake GPU, 8.7"
"""


def fake_toolchain_env(tmp_path: Path, with_tensorrt: bool = True, version: str = "8.5.2.2") -> dict[str, str]:
    """PATH with the fake trtexec and nvidia-smi of TensorRT `version`, and (`with_tensorrt`) a `tensorrt`
    module of that version for the kit's python3."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("trtexec", FAKE_TRTEXEC), ("nvidia-smi", FAKE_NVIDIA_SMI)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    runner = bin_dir / "fake_trtexec_run.py"
    runner.write_text(FAKE_RUNNER)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_ARGS=str(tmp_path / "args.txt"),
               FAKE_TAG="kit-test", FAKE_TRT_VERSION=".".join(version.split(".")[:3]), FAKE_PYTHON=sys.executable,
               FAKE_RUNNER=str(runner))
    env.pop("TRTEXEC", None)
    env.pop("PYTHONPATH", None)
    if with_tensorrt:
        shim = tmp_path / "shim" / "tensorrt"
        shim.mkdir(parents=True, exist_ok=True)
        (shim / "__init__.py").write_text(f'__version__ = "{version}"\n')
        env["PYTHONPATH"] = str(shim.parent)
    return env
