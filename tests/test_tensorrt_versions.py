"""TensorRT 8.5, 10.x and 11.x against the fake API: each release's build path, the API it lacks, and the
engine proof before an engine is published (edgekd.export.tensorrt.build_engine).

The fake (tests/fakes/tensorrt.py) models the documented differences: 8.x has no STRONGLY_TYPED network
flag and needs EXPLICIT_BATCH; 10.x refuses the weak-typing FP16/INT8 flags on a strongly typed network;
11.x removed BuilderFlag.FP16/INT8, OBEY/PREFER_PRECISION_CONSTRAINTS, int8_calibrator and EXPLICIT_BATCH.
Each "removed API" test forces the wrong path and shows the fake failing, so a regression that used such
an API on a release without it would fail here, not on a user's machine.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgekd.errors import EdgekdError, GateError
from edgekd.export import tensorrt as trtmod
from edgekd.export.jetson import KIT_README, KIT_SCRIPT, KIT_SUMS, write_build_kit
from edgekd.export.kit_proof import PROOF_REFERENCE
from edgekd.export.tensorrt import ENGINE_FILE, ProofImages, TrtBuildOptions
from edgekd.names import INPUT_NAME, MODEL_FP16_ONNX, MODEL_INT8_ONNX, MODEL_ONNX
from edgekd.runtime.engine import sidecar_path
from edgekd.runtime.trt_version import FLAGS, TrtPolicy, policy_for
from tests.fakes.onnx_models import SHAPE, make_models
from tests.fakes.tensorrt import fake_toolchain_env, install_fakes

MODEL_KEY = {MODEL_ONNX: "fp32", MODEL_FP16_ONNX: "fp16", MODEL_INT8_ONNX: "int8"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_models(tmp_path_factory.mktemp("trt-versions"))


def _force(monkeypatch, policy: TrtPolicy) -> None:
    monkeypatch.setattr(trtmod, "installed_tensorrt", lambda: policy)


# --------------------------------------------------------------------------- the API each release lacks


def test_11x_removed_apis_fail_in_the_fake(monkeypatch, models, tmp_path):
    calls, _ = install_fakes(monkeypatch, "11.4.0.106")
    import tensorrt as trt

    for name in ("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"):
        with pytest.raises(AttributeError, match=f"{name}.*removed in TensorRT 11"):
            getattr(trt.BuilderFlag, name)
    with pytest.raises(AttributeError, match="EXPLICIT_BATCH.*removed in TensorRT 11"):
        _ = trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH
    builder = trt.Builder(trt.Logger())
    config = builder.create_builder_config()
    with pytest.raises(AttributeError, match="int8_calibrator.*removed in TensorRT 11"):
        config.int8_calibrator = None
    with pytest.raises(AttributeError, match="platform_has_fast_fp16.*removed in TensorRT 11"):
        _ = builder.platform_has_fast_fp16
    # the 8.x path (EXPLICIT_BATCH network, FP16 flag) on 11.x: the first removed name it touches fails
    _force(monkeypatch, policy_for("8.6.1"))
    with pytest.raises(AttributeError, match="EXPLICIT_BATCH.*removed in TensorRT 11"):
        trtmod.build_engine(models["fp32"], tmp_path / ENGINE_FILE, TrtBuildOptions(precision="fp16"), SHAPE)
    # and even with a network it accepts, the FP16 flag itself is gone
    _force(monkeypatch, TrtPolicy("11.4.0", (11, 4), FLAGS, ()))
    with pytest.raises(AttributeError, match="FP16.*removed in TensorRT 11"):
        trtmod.build_engine(models["fp32"], tmp_path / ENGINE_FILE, TrtBuildOptions(precision="fp16"), SHAPE)
    assert not (tmp_path / ENGINE_FILE).exists()


def test_10x_refuses_weak_flags_on_a_strongly_typed_network(monkeypatch, models, tmp_path):
    calls, _ = install_fakes(monkeypatch, "10.3.0")
    _force(monkeypatch, TrtPolicy("10.3.0", (10, 3), FLAGS, ("STRONGLY_TYPED",)))  # strong network + FP16 flag
    with pytest.raises(EdgekdError, match="failed to build the engine: BuilderFlag::kFP16 is not allowed"):
        trtmod.build_engine(models["fp16"], tmp_path / ENGINE_FILE, TrtBuildOptions(precision="fp16"), SHAPE)
    assert ("typing", "strong") in calls and not (tmp_path / ENGINE_FILE).exists()


def test_8x_has_no_strong_typing_and_needs_explicit_batch(monkeypatch, models, tmp_path):
    install_fakes(monkeypatch, "8.5.2.2")
    _force(monkeypatch, policy_for("10.3.0"))
    with pytest.raises(AttributeError, match="STRONGLY_TYPED"):
        trtmod.build_engine(models["fp16"], tmp_path / ENGINE_FILE, TrtBuildOptions(precision="fp16"), SHAPE)
    _force(monkeypatch, policy_for("11.0.0"))  # no creation flag at all: 8.x's ONNX parser refuses
    with pytest.raises(EdgekdError, match="could not parse .*explicit-batch"):
        trtmod.build_engine(models["fp32"], tmp_path / ENGINE_FILE, TrtBuildOptions(), SHAPE)


@pytest.mark.parametrize("version", ["10.3.0", "11.4.0.106"])
def test_strongly_typed_fp16_needs_the_fp16_model(monkeypatch, models, tmp_path, version):
    install_fakes(monkeypatch, version)
    with pytest.raises(EdgekdError, match=f"built from the FP16 model: pass {MODEL_FP16_ONNX}"):
        trtmod.build_engine(models["fp32"], tmp_path / ENGINE_FILE, TrtBuildOptions(precision="fp16"), SHAPE)
    with pytest.raises(EdgekdError, match="computes in FP16: build it with precision fp16"):
        trtmod.build_engine(models["fp16"], tmp_path / ENGINE_FILE, TrtBuildOptions(precision="fp32"), SHAPE)
    assert not (tmp_path / ENGINE_FILE).exists()


def test_dla_on_the_strongly_typed_path(monkeypatch, models, tmp_path):
    calls, _ = install_fakes(monkeypatch, "10.3.0")
    opts = TrtBuildOptions(precision="fp16", min_batch=4, opt_batch=4, max_batch=4, dla_core=1)
    side = trtmod.build_engine(models["fp16"], tmp_path / ENGINE_FILE, opts, SHAPE)
    assert ("default_device_type", "DLA") in calls and ("DLA_core", 1) in calls
    assert ("build", ["GPU_FALLBACK"]) in calls  # the only flag: precision comes from the types
    assert side["dla_core"] == 1 and side["precision_mode"] == "strongly-typed" and side["network_flags"] == [
        "STRONGLY_TYPED"]


# --------------------------------------------------------------------------- the engine proof


def _proof(models: dict, n: int = 24, wrong: bool = False) -> ProofImages:
    """Labels = ORT FP32's top-1 (so its top-1 is 100%); `wrong`: a reference the engine cannot match
    (negated outputs, labelled by their own top-1), as a broken build would not match the real one."""
    import onnxruntime as ort

    x = np.random.default_rng(5).standard_normal((n, *SHAPE)).astype(np.float32)
    ref = ort.InferenceSession(str(models["fp32"]), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x})[0]
    ref = -ref if wrong else ref
    return ProofImages(x=x, y=ref.argmax(1), reference=ref, max_accuracy_drop=1.0)


@pytest.mark.parametrize("version", ["8.5.2.2", "10.3.0", "11.4.0.106"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_is_published_only_after_its_proof(monkeypatch, models, tmp_path, version, precision):
    install_fakes(monkeypatch, version)
    onnx = models[MODEL_KEY[policy_for(version).onnx_file(precision)]]
    opts = TrtBuildOptions(precision=precision, min_batch=1, opt_batch=4, max_batch=8)
    engine = tmp_path / ENGINE_FILE
    proof = _proof(models)
    if precision == "int8":  # the tiny random model's INT8 top-1 on random inputs is not the subject here
        proof = ProofImages(proof.x, proof.y, proof.reference, max_accuracy_drop=100.0)
    side = trtmod.build_engine(onnx, engine, opts, SHAPE, proof=proof)
    figs = side["proof"]
    assert figs["n"] == 24 and figs["finite"] and figs["precision"] == precision and figs["split"] == "val"
    assert json.loads(sidecar_path(engine).read_text())["proof"] == figs
    # a reference the engine does not match: exit 3, nothing written
    engine.unlink()
    sidecar_path(engine).unlink()
    with pytest.raises(GateError, match="TensorRT engine proof failed") as info:
        trtmod.build_engine(onnx, engine, opts, SHAPE, proof=_proof(models, wrong=True))
    assert info.value.exit_code == 3 and "\n" not in str(info.value)
    assert not engine.exists() and not sidecar_path(engine).exists()
    assert not list(tmp_path.glob(".*.tmp"))


# --------------------------------------------------------------------------- the Jetson kit per JetPack

BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(BASH is None or shutil.which("sha256sum") is None, reason="needs bash and sha256sum")
# --jetpack -> (the TensorRT the fake device runs, the ONNX key, the trtexec precision flags per precision)
KITS = {
    "5": ("8.5.2.2", {"fp16": ["--fp16"], "int8": ["--int8"]}),
    "6.0": ("8.6.2", {"fp16": ["--fp16"], "int8": ["--int8"]}),
    "6": ("10.3.0", {"fp16": ["--stronglyTyped"], "int8": ["--stronglyTyped"]}),
}


def _kit(models: dict, tmp_path: Path, jetpack: str, precision: str, proof: bool = True) -> Path:
    onnx = models[MODEL_KEY[policy_for(KITS[jetpack][0]).onnx_file(precision)]]
    opts = TrtBuildOptions(precision=precision, min_batch=1, opt_batch=4, max_batch=8)
    images = _proof(models) if proof else None
    if images is not None and precision == "int8":
        images = ProofImages(images.x, images.y, images.reference, max_accuracy_drop=100.0)
    return write_build_kit(onnx, models["manifest"], tmp_path / "kit", opts, SHAPE, jetpack=jetpack, proof=images)


def _run(kit: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([BASH, str(kit / KIT_SCRIPT)], env=env, cwd=str(kit.parent), capture_output=True,
                          text=True, timeout=120)


@needs_bash
@pytest.mark.parametrize("jetpack", list(KITS))
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_kit_per_jetpack_builds_proves_and_records(models, tmp_path, jetpack, precision):
    version, flags = KITS[jetpack]
    kit = _kit(models, tmp_path, jetpack, precision)
    onnx_name = policy_for(version).onnx_file(precision)
    assert (kit / onnx_name).is_file() and (kit / PROOF_REFERENCE).is_file()
    assert {MODEL_ONNX, MODEL_FP16_ONNX, MODEL_INT8_ONNX} & {p.name for p in kit.iterdir()} == {onnx_name}
    sums = (kit / KIT_SUMS).read_text()
    assert onnx_name in sums and PROOF_REFERENCE in sums and "proof/input.0.bin" in sums
    readme = (kit / KIT_README).read_text()
    assert f"JetPack {jetpack}" in readme and "`--jetpack 5`" in readme and "--stronglyTyped" in readme
    env = fake_toolchain_env(tmp_path, version=version)
    res = _run(kit, env)
    assert res.returncode == 0, res.stderr + res.stdout
    args = Path(env["FAKE_ARGS"]).read_text().splitlines()
    assert f"--onnx={onnx_name}" in args and [a for a in args if a in ("--fp16", "--int8", "--stronglyTyped")] == \
        flags[precision]
    loads = Path(env["FAKE_ARGS"] + ".load").read_text().splitlines()
    assert f"--loadEngine=.{ENGINE_FILE}.tmp" in loads and "--iterations=1" in loads
    side = json.loads(sidecar_path(kit / ENGINE_FILE).read_text())
    assert side["jetpack"] == jetpack and side["precision"] == precision and side["onnx_file"] == onnx_name
    assert side["precision_mode"] == policy_for(version).mode and side["tensorrt_version"] == version
    assert side["proof"]["n"] == 24 and side["proof"]["finite"] and "engine proof passed" in res.stdout
    assert not list(kit.glob(".proof*")) and not list(kit.glob(".*.tmp"))


@needs_bash
@pytest.mark.parametrize("breakage,match", [("negate", "accuracy budget exceeded|max \\|engine"),
                                            ("nan", "not finite")])
def test_kit_proof_failure_exits_3_and_leaves_no_engine(models, tmp_path, breakage, match):
    kit = _kit(models, tmp_path, "6", "fp16")
    env = dict(fake_toolchain_env(tmp_path, version="10.3.0"), FAKE_PROOF_BREAK=breakage)
    res = _run(kit, env)
    assert res.returncode == 3, res.stderr + res.stdout
    assert re.search(f"engine proof failed: .*({match})", res.stderr), res.stderr
    assert not (kit / ENGINE_FILE).exists() and not sidecar_path(kit / ENGINE_FILE).exists()
    assert not list(kit.glob(".*.tmp")) and not list(kit.glob(".proof*"))


@needs_bash
@pytest.mark.parametrize("jetpack,device", [("6", "8.5.2.2"), ("5", "10.3.0"), ("5", "11.4.0.106")])
def test_kit_refuses_a_device_with_another_tensorrt(models, tmp_path, jetpack, device):
    kit = _kit(models, tmp_path, jetpack, "fp16", proof=False)
    env = fake_toolchain_env(tmp_path, version=device)
    res = _run(kit, env)
    assert res.returncode == 1 and f"this kit is for JetPack {jetpack}" in res.stderr, res.stderr
    assert f"this device has TensorRT {device}" in res.stderr and not Path(env["FAKE_ARGS"]).exists()


@needs_bash
def test_11x_trtexec_refuses_the_weak_flags(models, tmp_path):
    # a JetPack 5 kit where the device's version cannot be told beforehand: TensorRT 11's trtexec has no --fp16
    kit = _kit(models, tmp_path, "5", "fp16", proof=False)
    env = fake_toolchain_env(tmp_path, with_tensorrt=False, version="11.4.0.106")
    if shutil.which("dpkg-query") and subprocess.run(["dpkg-query", "-W", "libnvinfer-bin"],
                                                     capture_output=True).returncode == 0:
        pytest.skip("a real TensorRT package is installed here")
    res = _run(kit, env)
    assert res.returncode != 0 and "Unknown option: --fp16" in res.stdout + res.stderr
    assert "cannot tell this device's TensorRT version" in res.stderr
    assert not (kit / ENGINE_FILE).exists()


@needs_bash
def test_kit_without_a_proof_set_says_so(models, tmp_path):
    kit = _kit(models, tmp_path, "5", "int8", proof=False)
    res = _run(kit, fake_toolchain_env(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "has no proof set" in res.stderr
    assert json.loads(sidecar_path(kit / ENGINE_FILE).read_text())["proof"] is None


# --------------------------------------------------------------------------- real TensorRT (marker; skipped here)


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_real_engine_takes_its_release_path_and_is_proven(models, tmp_path, precision):
    pytest.importorskip("cuda", reason="needs cuda-python for TensorRT inference memory")
    policy = trtmod.installed_tensorrt()
    onnx = models[MODEL_KEY[policy.onnx_file(precision)]]
    proof = _proof(models)
    proof = ProofImages(proof.x, proof.y, proof.reference, max_accuracy_drop=100.0 if precision == "int8" else 5.0)
    opts = TrtBuildOptions(precision=precision, min_batch=1, opt_batch=4, max_batch=8, workspace_mb=256)
    side = trtmod.build_engine(onnx, tmp_path / ENGINE_FILE, opts, SHAPE, proof=proof)
    assert side["precision_mode"] == policy.mode and side["onnx_file"] == onnx.name
    assert side["proof"]["n"] == 24 and side["proof"]["finite"]
