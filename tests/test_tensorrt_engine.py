"""Loading and running TensorRT engines (edgekd.runtime.engine): provenance checks, `TrtEngine`
against the fake TensorRT / cuda-python API of tests/fakes (8.5, 10.x, 11.x), and, where TensorRT
and a CUDA GPU exist (marker `tensorrt`; conftest skips it elsewhere, printing why), real engines.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from edgekd.errors import EdgekdError, MissingDependencyError
from edgekd.export import tensorrt as trtmod
from edgekd.export.tensorrt import ENGINE_FILE, TrtBuildOptions, make_provenance
from edgekd.names import INPUT_NAME, LOGITS_NAME, MODEL_FP16_ONNX, MODEL_INT8_ONNX, MODEL_ONNX
from edgekd.runtime import engine as engmod
from edgekd.runtime.engine import SIDECAR_FORMAT, check_provenance, sidecar_path, verify_engine
from edgekd.runtime.trt_version import UnsupportedTensorRTError, policy_for
from tests.fakes.onnx_models import SHAPE, make_models
from tests.fakes.tensorrt import install_fakes

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_models(tmp_path_factory.mktemp("trt-models"))


@pytest.fixture
def stub_trt(monkeypatch):
    return lambda version: install_fakes(monkeypatch, version)


def _runtime(**over) -> dict:
    base = {"tensorrt_version": "8.5.2.2", "cuda_version": "11.4", "gpu_name": "Orin", "gpu_source": "cuda",
            "compute_capability": "8.7"}
    base.update(over)
    return base


def _sidecar(**over) -> dict:
    side = make_provenance(TrtBuildOptions(), SHAPE, MODEL_ONNX, "ab" * 32, builder="tensorrt-python",
                           policy=policy_for("8.5.2.2"))
    side.update(_runtime(), engine_sha256="cd" * 32)
    side.update(over)
    return side


# --------------------------------------------------------------------------- provenance


def test_provenance_accepts_a_match_and_ignores_the_build_number():
    assert check_provenance(_sidecar(), _runtime()) == []
    assert check_provenance(_sidecar(), _runtime(engine_sha256="cd" * 32)) == []
    # engines are tied to major.minor.patch; the 4th field is a packaging build number
    assert check_provenance(_sidecar(tensorrt_version="8.5.2.2"), _runtime(tensorrt_version="8.5.2.1")) == []
    # another CUDA minor of the same major is fine
    assert check_provenance(_sidecar(cuda_version="12.2"), _runtime(cuda_version="12.6")) == []
    # GPU names from different sources are not comparable ('Orin' vs the board name): compute capability decides
    side = _sidecar(gpu_name="NVIDIA Jetson AGX Orin Developer Kit", gpu_source="device-tree")
    assert check_provenance(side, _runtime()) == []


@pytest.mark.parametrize("side,run,words", [
    (dict(tensorrt_version="8.5.2.2"), dict(tensorrt_version="8.6.1"), ["TensorRT 8.5.2.2", "TensorRT 8.6.1"]),
    (dict(tensorrt_version="8.5.2.2"), dict(tensorrt_version="10.3.0"), ["TensorRT 8.5.2.2", "10.3.0"]),
    (dict(compute_capability="8.7"), dict(compute_capability="7.2", gpu_name="Xavier"), ["8.7", "7.2", "Xavier"]),
    (dict(gpu_name="NVIDIA A10"), dict(gpu_name="NVIDIA A40", compute_capability="8.7"), ["A10", "A40"]),
    (dict(cuda_version="11.4"), dict(cuda_version="12.2"), ["CUDA 11.4", "CUDA 12.2"]),
    (dict(engine_sha256="cd" * 32), dict(engine_sha256="ef" * 32), ["sha256"]),
    (dict(tensorrt_version=None), {}, ["does not record the TensorRT version"]),
    (dict(compute_capability=None), {}, ["does not record the GPU compute capability"]),
    (dict(format="something-else/1"), {}, ["not an edgekd engine record"]),
])
def test_provenance_refuses_each_kind_of_mismatch(side, run, words):
    problems = check_provenance(_sidecar(**side), _runtime(**run))
    assert len(problems) == 1, problems
    for w in words:
        assert w in problems[0]


def test_provenance_reports_every_difference():
    problems = check_provenance(_sidecar(), _runtime(tensorrt_version="10.0.1", compute_capability="9.0",
                                                     cuda_version="12.4", engine_sha256="00" * 32))
    assert len(problems) == 4


def _write_engine(tmp_path: Path, payload: bytes = b"serialized-engine", **side) -> Path:
    engine = tmp_path / ENGINE_FILE
    engine.write_bytes(payload)
    sidecar = _sidecar(engine_sha256=hashlib.sha256(payload).hexdigest(), **side)
    sidecar_path(engine).write_text(json.dumps(sidecar))
    return engine


def test_verify_engine_refuses_with_what_differs_and_how_to_rebuild(tmp_path):
    engine = _write_engine(tmp_path)
    assert verify_engine(engine, runtime=_runtime())["format"] == SIDECAR_FORMAT
    with pytest.raises(EdgekdError) as info:
        verify_engine(engine, runtime=_runtime(tensorrt_version="10.3.0", compute_capability="8.6"))
    msg = str(info.value)
    assert "TensorRT 8.5.2.2" in msg and "10.3.0" in msg and "8.6" in msg and "rebuild" in msg and "\n" not in msg
    # an engine swapped under its sidecar
    engine.write_bytes(b"another engine")
    with pytest.raises(EdgekdError, match="sha256"):
        verify_engine(engine, runtime=_runtime())


def test_verify_engine_without_sidecar_or_engine(tmp_path):
    engine = tmp_path / ENGINE_FILE
    with pytest.raises(EdgekdError, match="not found"):
        verify_engine(engine, runtime=_runtime())
    engine.write_bytes(b"x")
    with pytest.raises(EdgekdError, match="no provenance sidecar"):
        verify_engine(engine, runtime=_runtime())
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(EdgekdError, match="cannot read"):
        verify_engine(engine, runtime=_runtime())


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the error raised where TensorRT is missing")
def test_trt_engine_checks_provenance_before_importing_tensorrt(tmp_path, monkeypatch):
    engine = _write_engine(tmp_path)
    monkeypatch.setattr(engmod, "collect_runtime_info", lambda device=0: _runtime(compute_capability="7.2"))
    with pytest.raises(EdgekdError, match="compute capability 8.7"):
        engmod.TrtEngine(engine)
    # a matching machine gets past the check, then needs TensorRT itself
    monkeypatch.setattr(engmod, "collect_runtime_info", lambda device=0: _runtime())
    with pytest.raises(MissingDependencyError, match=r"edgekd\[tensorrt\]"):
        engmod.TrtEngine(engine)


# --------------------------------------------------------------------------- build and run, fake TensorRT API


# per release: the network creation flags (8.x: 1 << EXPLICIT_BATCH(0); 10.x: 1 << STRONGLY_TYPED(1); 11.x: none),
# how the network is typed, and the builder flags of each precision
BRANCHES = {
    "8.5.2.2": (1, "weak", {"fp32": [], "fp16": ["FP16"], "int8": ["INT8"]}),
    "10.3.0": (2, "strong", {"fp32": [], "fp16": [], "int8": []}),
    "11.4.0.106": (0, "strong", {"fp32": [], "fp16": [], "int8": []}),
}
MODEL_KEY = {MODEL_ONNX: "fp32", MODEL_FP16_ONNX: "fp16", MODEL_INT8_ONNX: "int8"}


def onnx_for(models: dict, version: str, precision: str) -> Path:
    """The model a build of `precision` takes on `version` (model.fp16.onnx for strongly typed FP16)."""
    return models[MODEL_KEY[policy_for(version).onnx_file(precision)]]


@pytest.mark.parametrize("version", list(BRANCHES))
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_and_run_against_the_api_stub(models, tmp_path, stub_trt, version, precision):
    calls, rt = stub_trt(version)
    onnx = onnx_for(models, version, precision)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"OLD")
    opts = TrtBuildOptions(precision=precision, min_batch=1, opt_batch=4, max_batch=8, workspace_mb=64,
                           timing_cache=str(cache))
    engine = tmp_path / ENGINE_FILE
    side = trtmod.build_engine(onnx, engine, opts, SHAPE)
    # version branches: network flags, strong or weak typing, precision flags only on 8.x
    network_flags, typing, builder_flags = BRANCHES[version]
    assert ("create_network", network_flags) in calls and ("typing", typing) in calls
    assert ("set_memory_pool_limit", "WORKSPACE", 64 << 20) in calls
    assert ("create_timing_cache", b"OLD") in calls and cache.read_bytes() == b"TIMING"
    assert ("build", builder_flags[precision]) in calls  # INT8 alone on 8.x: explicit quantization, no calibrator
    assert not any(c[0] == "int8_calibrator" for c in calls)
    assert ("profile", {INPUT_NAME: ((1, *SHAPE), (4, *SHAPE), (8, *SHAPE))}) in calls
    assert side["tensorrt_version"] == version and side["compute_capability"] == "8.7"
    assert side["cuda_version"] == "11.4"
    assert side["gpu_name"] == "Stub GPU" and side["engine_sha256"] == hashlib.sha256(engine.read_bytes()).hexdigest()
    assert side["precision_mode"] == ("strongly-typed" if typing == "strong" else "builder-flags")
    assert side["builder_flags"] == builder_flags[precision] and side["onnx_file"] == onnx.name
    assert side["proof"] is None and side["dla_core"] is None
    assert json.loads(sidecar_path(engine).read_text()) == side
    x = np.random.default_rng(2).standard_normal((19, *SHAPE)).astype(np.float32)  # 8 + 8 + 3
    with engmod.TrtEngine(engine) as eng:
        assert eng.input_shape == SHAPE and eng.output_name == LOGITS_NAME and (eng.min_batch, eng.max_batch) == (1, 8)
        np.testing.assert_allclose(eng.infer(x), _ort_outputs(onnx, x), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(eng.infer(x[:1]), _ort_outputs(onnx, x[:1]), rtol=1e-5, atol=1e-5)
        with pytest.raises(EdgekdError, match="input must be"):
            eng.infer(x[:, :1])
    assert rt.live == {}  # close() freed the device buffers


@pytest.mark.parametrize("version", ["8.4.1.5", "9.2.0.5", "12.0.0"])
def test_unsupported_releases_are_refused_before_building_or_loading(models, tmp_path, stub_trt, version):
    calls, _ = stub_trt(version)
    with pytest.raises(UnsupportedTensorRTError, match=f"TensorRT {version} is not supported") as info:
        trtmod.build_engine(models["fp32"], tmp_path / ENGINE_FILE, TrtBuildOptions(), SHAPE)
    assert "8.5-8.6" in str(info.value) and "10.x-11.x" in str(info.value) and "\n" not in str(info.value)
    assert calls == [] and not (tmp_path / ENGINE_FILE).exists()
    engine = _write_engine(tmp_path, tensorrt_version=version)
    with pytest.raises(UnsupportedTensorRTError, match=version):
        engmod.TrtEngine(engine)


# --------------------------------------------------------------------------- real TensorRT


def _ort_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {INPUT_NAME: x})[0]


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_real_engine_builds_loads_and_matches_onnxruntime(models, tmp_path, precision):
    pytest.importorskip("cuda", reason="needs cuda-python for TensorRT inference memory")
    onnx = onnx_for(models, trtmod.installed_tensorrt().version, precision)
    cache = tmp_path / "timing.cache"
    opts = TrtBuildOptions(precision=precision, min_batch=1, opt_batch=4, max_batch=8, workspace_mb=256,
                           timing_cache=str(cache))
    engine = tmp_path / ENGINE_FILE
    side = trtmod.build_engine(onnx, engine, opts, SHAPE)
    assert engine.is_file() and cache.is_file()
    assert json.loads(sidecar_path(engine).read_text()) == side
    assert side["onnx_sha256"] == hashlib.sha256(onnx.read_bytes()).hexdigest()
    assert check_provenance(side, engmod.collect_runtime_info()) == []
    x = np.random.default_rng(1).standard_normal((11, *SHAPE)).astype(np.float32)  # > max batch: chunked
    ref = _ort_outputs(onnx, x)
    with engmod.TrtEngine(engine) as eng:
        assert eng.input_shape == SHAPE and eng.output_name == LOGITS_NAME
        out = eng.infer(x)
        assert out.shape == ref.shape
        tol = {"fp32": 1e-3, "fp16": 5e-2, "int8": 0.25}[precision]
        assert np.abs(out - ref).max() <= tol * max(1.0, np.abs(ref).max())
        assert (out.argmax(1) == ref.argmax(1)).mean() >= (1.0 if precision == "fp32" else 0.8)
        with pytest.raises(EdgekdError, match="input must be"):
            eng.infer(x[:, :, :8])


@pytest.mark.tensorrt
def test_real_engine_refuses_a_foreign_sidecar(models, tmp_path):
    pytest.importorskip("cuda", reason="needs cuda-python for TensorRT inference memory")
    engine = tmp_path / ENGINE_FILE
    trtmod.build_engine(models["fp32"], engine, TrtBuildOptions(precision="fp32", max_batch=4, opt_batch=2), SHAPE)
    side = json.loads(sidecar_path(engine).read_text())
    side["tensorrt_version"] = "7.2.3.4"
    sidecar_path(engine).write_text(json.dumps(side))
    with pytest.raises(EdgekdError, match="TensorRT 7.2.3.4"):
        engmod.TrtEngine(engine)


