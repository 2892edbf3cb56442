"""TensorRT engines and the Jetson build kit.

Runs everywhere: trtexec command generation, build options, provenance checks, the build kit
(including `build_engine.sh` end to end with a fake `trtexec`, `nvidia-smi` and `tensorrt` module),
and the missing-TensorRT errors. Tests marked `tensorrt` build and run real engines; conftest
skips them where TensorRT or a CUDA GPU is missing, printing why.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgekd.errors import ConfigError, EdgekdError, MissingDependencyError
from edgekd.export import tensorrt as trtmod
from edgekd.export.jetson import (
    KIT_LOG,
    KIT_README,
    KIT_SCRIPT,
    KIT_SUMS,
    inspect_onnx,
    write_build_kit,
)
from edgekd.export.tensorrt import (
    ENGINE_FILE,
    SIDECAR_FORMAT,
    TrtBuildOptions,
    check_provenance,
    make_provenance,
    sidecar_path,
    trtexec_command,
    verify_engine,
)
from edgekd.names import INPUT_NAME, LOGITS_NAME, MANIFEST_FILE, MODEL_INT8_ONNX, MODEL_ONNX

SHAPE = (3, 16, 16)
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
BASH = shutil.which("bash")


# --------------------------------------------------------------------------- fixtures


def _export_onnx(path: Path, batch_dynamic: bool = True) -> None:
    import torch

    from edgekd.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny", num_classes=10, in_channels=SHAPE[0]).eval()
    x = torch.randn(2, *SHAPE)
    axes = {INPUT_NAME: {0: "batch"}, LOGITS_NAME: {0: "batch"}} if batch_dynamic else None
    torch.onnx.export(model, (x,), str(path), input_names=[INPUT_NAME], output_names=[LOGITS_NAME],
                      dynamic_axes=axes, opset_version=17, dynamo=False)


def _quantize_qdq(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.batches = iter([{INPUT_NAME: rng.standard_normal((4, *SHAPE)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    # S8S8 symmetric QDQ: the explicit-quantization form TensorRT builds INT8 engines from
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trt-models")
    fp32, int8, static = root / "student.onnx", root / "student.int8.onnx", root / "static.onnx"
    _export_onnx(fp32)
    _export_onnx(static, batch_dynamic=False)
    _quantize_qdq(fp32, int8)
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"input_shape": list(SHAPE), "output_kind": LOGITS_NAME,
                                    "class_names": [str(i) for i in range(10)]}))
    return {"fp32": fp32, "int8": int8, "static": static, "manifest": manifest}


def _runtime(**over) -> dict:
    base = {"tensorrt_version": "8.5.2.2", "cuda_version": "11.4", "gpu_name": "Orin", "gpu_source": "cuda",
            "compute_capability": "8.7"}
    base.update(over)
    return base


def _sidecar(**over) -> dict:
    side = make_provenance(TrtBuildOptions(), SHAPE, MODEL_ONNX, "ab" * 32, builder="tensorrt-python")
    side.update(_runtime(), engine_sha256="cd" * 32)
    side.update(over)
    return side


# --------------------------------------------------------------------------- trtexec command

COMBOS = list(itertools.product(["fp32", "fp16", "int8"], [(1, 8, 32), (4, 4, 4)], [None, 0, 1], [True, False]))


@pytest.mark.parametrize("precision,batches,dla,fallback", COMBOS)
def test_trtexec_command_each_precision_profile_and_dla(precision, batches, dla, fallback):
    lo, opt, hi = batches
    dynamic = len(set(batches)) > 1
    kwargs = dict(precision=precision, min_batch=lo, opt_batch=opt, max_batch=hi, workspace_mb=512,
                  dla_core=dla, gpu_fallback=fallback)
    if dla is not None and (precision == "fp32" or dynamic):
        with pytest.raises(ConfigError, match="DLA"):
            TrtBuildOptions(**kwargs)
        return
    cmd = trtexec_command("kit/model.onnx", "kit/model.engine", TrtBuildOptions(**kwargs), SHAPE)
    assert cmd[:3] == ["trtexec", "--onnx=kit/model.onnx", "--saveEngine=kit/model.engine"]
    assert ("--fp16" in cmd) == (precision == "fp16")
    assert ("--int8" in cmd) == (precision == "int8")
    assert not any(a.startswith(("--calib", "--best", "--workspace=", "--explicitBatch")) for a in cmd)
    c, h, w = SHAPE
    for key, b in zip(("min", "opt", "max"), batches):
        assert f"--{key}Shapes={INPUT_NAME}:{b}x{c}x{h}x{w}" in cmd
    assert "--memPoolSize=workspace:512" in cmd
    assert not any(a.startswith("--timingCacheFile") for a in cmd)
    assert (f"--useDLACore={dla}" in cmd) == (dla is not None)
    assert ("--allowGPUFallback" in cmd) == (dla is not None and fallback)
    assert len(cmd) == len(set(cmd))


def test_trtexec_command_timing_cache_and_program():
    opts = TrtBuildOptions(precision="fp16", timing_cache="/tmp/t.cache", workspace_mb=2048)
    cmd = trtexec_command(Path("a b/m.onnx"), Path("e.plan"), opts, (1, 28, 28), trtexec="/usr/src/tensorrt/bin/trtexec")
    assert cmd[0] == "/usr/src/tensorrt/bin/trtexec"
    assert "--onnx=a b/m.onnx" in cmd  # one argv element: quoting is the caller's (shlex) job
    assert "--timingCacheFile=/tmp/t.cache" in cmd and "--memPoolSize=workspace:2048" in cmd
    assert f"--maxShapes={INPUT_NAME}:32x1x28x28" in cmd


@pytest.mark.parametrize("kwargs,match", [
    (dict(precision="bf16"), "precision"),
    (dict(min_batch=8, opt_batch=4), "min_batch <= opt_batch"),
    (dict(min_batch=0), "min_batch"),
    (dict(opt_batch=64, max_batch=32), "max_batch"),
    (dict(workspace_mb=0), "workspace"),
    (dict(dla_core=-1, min_batch=8, opt_batch=8, max_batch=8), "dla_core"),
    (dict(precision="fp32", dla_core=0, min_batch=8, opt_batch=8, max_batch=8), "FP16 or INT8"),
    (dict(precision="fp16", dla_core=0), "fixed batch"),
])
def test_build_options_refuse_what_tensorrt_would(kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        TrtBuildOptions(**kwargs)
    assert info.value.exit_code == 1 and "\n" not in str(info.value)


def test_bad_input_shape_is_a_config_error():
    with pytest.raises(ConfigError, match=r"\(C, H, W\)"):
        trtexec_command("m.onnx", "m.engine", TrtBuildOptions(), (1, 3, 32, 32))


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
    monkeypatch.setattr(trtmod, "collect_runtime_info", lambda device=0: _runtime(compute_capability="7.2"))
    with pytest.raises(EdgekdError, match="compute capability 8.7"):
        trtmod.TrtEngine(engine)
    # a matching machine gets past the check, then needs TensorRT itself
    monkeypatch.setattr(trtmod, "collect_runtime_info", lambda device=0: _runtime())
    with pytest.raises(MissingDependencyError, match=r"edgekd\[tensorrt\]"):
        trtmod.TrtEngine(engine)


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the error raised where TensorRT is missing")
def test_build_engine_without_tensorrt_names_the_extra(models, tmp_path):
    engine = tmp_path / ENGINE_FILE
    with pytest.raises(MissingDependencyError) as info:
        trtmod.build_engine(models["fp32"], engine, TrtBuildOptions(), SHAPE)
    assert "edgekd[tensorrt]" in str(info.value) and info.value.exit_code == 1
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(EdgekdError, match="not found"):
        trtmod.build_engine(tmp_path / "missing.onnx", engine, TrtBuildOptions(), SHAPE)


# --------------------------------------------------------------------------- build kit


def test_inspect_onnx_sees_input_and_qdq(models):
    fp32, int8, static = (inspect_onnx(models[k]) for k in ("fp32", "int8", "static"))
    assert fp32["qdq_nodes"] == 0 and int8["qdq_nodes"] > 0
    assert fp32["inputs"][INPUT_NAME][1:] == list(SHAPE) and not isinstance(fp32["inputs"][INPUT_NAME][0], int)
    assert static["inputs"][INPUT_NAME] == [2, *SHAPE]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_kit_contents(models, tmp_path, precision):
    src = models["int8" if precision == "int8" else "fp32"]
    opts = TrtBuildOptions(precision=precision, workspace_mb=256, timing_cache=str(tmp_path / "host.cache"))
    kit = write_build_kit(src, models["manifest"], tmp_path / "kit", opts, SHAPE)
    onnx_name = MODEL_INT8_ONNX if precision == "int8" else MODEL_ONNX
    assert sorted(p.name for p in kit.iterdir()) == sorted([onnx_name, MANIFEST_FILE, KIT_SCRIPT, KIT_README, KIT_SUMS])
    assert (kit / onnx_name).read_bytes() == src.read_bytes()
    assert json.loads((kit / MANIFEST_FILE).read_text()) == json.loads(models["manifest"].read_text())
    sums = dict(reversed(line.split("  ")) for line in (kit / KIT_SUMS).read_text().splitlines())
    for name, digest in sums.items():
        assert hashlib.sha256((kit / name).read_bytes()).hexdigest() == digest
    script = (kit / KIT_SCRIPT).read_text()
    assert os.stat(kit / KIT_SCRIPT).st_mode & stat.S_IXUSR
    assert script.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in script
    # the trtexec invocation in the script is exactly trtexec_command's, shell-quoted
    line = script[script.index('"$TRTEXEC" '):script.index('2>&1 | tee')]
    args = shlex.split(line.replace("\\\n", " "))[1:]
    kit_opts = TrtBuildOptions(precision=precision, workspace_mb=256, timing_cache="timing.cache")
    assert args == trtexec_command(onnx_name, f".{ENGINE_FILE}.tmp", kit_opts, SHAPE)[1:]
    readme = (kit / KIT_README).read_text()
    assert f"**{precision}**" in readme and f"bash {KIT_SCRIPT}" in readme and f"edgekd bench {ENGINE_FILE}" in readme
    if BASH:
        subprocess.run([BASH, "-n", str(kit / KIT_SCRIPT)], check=True)


def test_build_kit_dla_flags(models, tmp_path):
    opts = TrtBuildOptions(precision="int8", min_batch=8, opt_batch=8, max_batch=8, dla_core=1, gpu_fallback=True)
    kit = write_build_kit(models["int8"], models["manifest"], tmp_path / "kit", opts, SHAPE)
    script = (kit / KIT_SCRIPT).read_text()
    assert "--useDLACore=1" in script and "--allowGPUFallback" in script and "--int8" in script
    assert "DLA core 1 with GPU fallback" in (kit / KIT_README).read_text()


def test_build_kit_in_the_export_dir_keeps_the_files(models, tmp_path):
    # the export may write model.onnx + manifest.json first and put the kit beside them
    out = tmp_path / "export"
    out.mkdir()
    shutil.copy(models["fp32"], out / MODEL_ONNX)
    shutil.copy(models["manifest"], out / MANIFEST_FILE)
    write_build_kit(out / MODEL_ONNX, out / MANIFEST_FILE, out, TrtBuildOptions(), SHAPE)
    assert (out / MODEL_ONNX).read_bytes() == models["fp32"].read_bytes()
    assert (out / KIT_SCRIPT).is_file()


@pytest.mark.parametrize("case,match", [
    ("int8-from-fp32", "QDQ model"),
    ("fp16-from-qdq", "quantized"),
    ("wrong-shape", "expected \\[N, 3, 32, 32\\]"),
    ("static-batch", "fixed batch of 2"),
    ("not-onnx", "not a readable ONNX"),
    ("bad-manifest", "not valid JSON"),
])
def test_build_kit_refuses_bad_input_and_writes_nothing(models, tmp_path, case, match):
    onnx, manifest, opts, shape = models["fp32"], models["manifest"], TrtBuildOptions(), SHAPE
    if case == "int8-from-fp32":
        opts = TrtBuildOptions(precision="int8")
    elif case == "fp16-from-qdq":
        onnx = models["int8"]
    elif case == "wrong-shape":
        shape = (3, 32, 32)
    elif case == "static-batch":
        onnx = models["static"]
    elif case == "not-onnx":
        onnx = tmp_path / "junk.onnx"
        onnx.write_bytes(b"\x00not a protobuf at all" * 10)
    elif case == "bad-manifest":
        manifest = tmp_path / "manifest.json"
        manifest.write_text("{oops")
    out = tmp_path / "kit"
    with pytest.raises(EdgekdError, match=match):
        write_build_kit(onnx, manifest, out, opts, shape)
    assert not out.exists()


# --------------------------------------------------------------------------- build_engine.sh end to end

FAKE_TRTEXEC = """#!/usr/bin/env bash
# records its arguments, prints a trtexec-like banner, writes a dummy engine to --saveEngine
printf '%s\\n' "$@" > "$FAKE_ARGS"
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v8502] # trtexec $*"
echo "[I] TensorRT version: 8.5.2"
[[ -n "${FAKE_TRTEXEC_FAIL:-}" ]] && { echo "[E] Engine could not be created" ; exit 1; }
for a in "$@"; do
  case "$a" in --saveEngine=*) printf 'engine built from %s' "$FAKE_TAG" > "${a#--saveEngine=}" ;; esac
done
"""

FAKE_NVIDIA_SMI = """#!/usr/bin/env bash
if [[ $# -eq 0 ]]; then echo "| NVIDIA-SMI 540.3.0   Driver Version: 540.3.0   CUDA Version: 12.2 |"; exit 0; fi
echo "NVIDIA Jetson Fake GPU, 8.7"
"""


def _fake_env(tmp_path: Path, with_tensorrt: bool = True) -> dict[str, str]:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("trtexec", FAKE_TRTEXEC), ("nvidia-smi", FAKE_NVIDIA_SMI)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_ARGS=str(tmp_path / "args.txt"),
               FAKE_TAG="kit-test")
    env.pop("TRTEXEC", None)
    env.pop("PYTHONPATH", None)
    if with_tensorrt:
        shim = tmp_path / "shim" / "tensorrt"
        shim.mkdir(parents=True, exist_ok=True)
        (shim / "__init__.py").write_text('__version__ = "8.5.2.2"\n')
        env["PYTHONPATH"] = str(shim.parent)
    return env


def _run_kit(kit: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([BASH, str(kit / KIT_SCRIPT)], env=env, cwd=str(kit.parent), capture_output=True,
                          text=True, timeout=60)


def _system_cuda_version_known() -> bool:
    return Path("/usr/local/cuda/version.json").exists() or shutil.which("nvcc") is not None


needs_bash = pytest.mark.skipif(BASH is None or shutil.which("sha256sum") is None, reason="needs bash and sha256sum")


@needs_bash
def test_build_script_end_to_end_with_fake_trtexec(models, tmp_path):
    opts = TrtBuildOptions(precision="fp16", min_batch=1, opt_batch=4, max_batch=16, workspace_mb=300,
                           timing_cache="ignored/host/path.cache")
    kit = write_build_kit(models["fp32"], models["manifest"], tmp_path / "my kit", opts, SHAPE)
    env = _fake_env(tmp_path)
    res = _run_kit(kit, env)
    assert res.returncode == 0, res.stderr + res.stdout
    # trtexec got exactly the generated flags, writing to a temporary name first
    recorded = Path(env["FAKE_ARGS"]).read_text().splitlines()
    kit_opts = TrtBuildOptions(precision="fp16", min_batch=1, opt_batch=4, max_batch=16, workspace_mb=300,
                               timing_cache="timing.cache")
    assert recorded == trtexec_command(MODEL_ONNX, f".{ENGINE_FILE}.tmp", kit_opts, SHAPE)[1:]
    engine = kit / ENGINE_FILE
    assert engine.read_bytes() == b"engine built from kit-test"
    assert "TensorRT version: 8.5.2" in (kit / KIT_LOG).read_text()
    assert not list(kit.glob(".*.tmp"))
    side = json.loads(sidecar_path(engine).read_text())
    assert side["format"] == SIDECAR_FORMAT and side["builder"] == "trtexec"
    assert side["tensorrt_version"] == "8.5.2.2" and side["tensorrt_version_source"] == "tensorrt"
    assert side["gpu_name"] == "NVIDIA Jetson Fake GPU" and side["gpu_source"] == "nvidia-smi"
    assert side["compute_capability"] == "8.7"
    if not _system_cuda_version_known():
        assert side["cuda_version"] == "12.2"
    assert side["precision"] == "fp16" and side["profile"] == trtmod.profile_shapes(kit_opts, SHAPE)
    assert side["onnx_sha256"] == hashlib.sha256(models["fp32"].read_bytes()).hexdigest()
    assert side["engine_sha256"] == hashlib.sha256(engine.read_bytes()).hexdigest()
    assert side["edgekd_version"] and side["built_at"] and side["build_seconds"] >= 0
    # the record is what TrtEngine checks: accepted on the same machine, refused elsewhere
    here = dict(tensorrt_version="8.5.2.2", cuda_version=side["cuda_version"], gpu_name="NVIDIA Jetson Fake GPU",
                gpu_source="nvidia-smi", compute_capability="8.7")
    assert verify_engine(engine, runtime=here)["precision"] == "fp16"
    with pytest.raises(EdgekdError, match=f"bash {KIT_SCRIPT}"):
        verify_engine(engine, runtime=dict(here, tensorrt_version="10.3.0"))


@needs_bash
def test_build_script_reads_tensorrt_version_from_the_log_without_python_tensorrt(models, tmp_path):
    kit = write_build_kit(models["int8"], models["manifest"], tmp_path / "kit", TrtBuildOptions(precision="int8"), SHAPE)
    env = _fake_env(tmp_path, with_tensorrt=False)
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("a real tensorrt module is importable by python3 here")
    res = _run_kit(kit, env)
    assert res.returncode == 0, res.stderr
    side = json.loads(sidecar_path(kit / ENGINE_FILE).read_text())
    assert side["tensorrt_version"] == "8.5.2" and side["tensorrt_version_source"] == "trtexec-log"
    assert side["precision"] == "int8" and side["onnx_file"] == MODEL_INT8_ONNX
    assert "--int8" in Path(env["FAKE_ARGS"]).read_text().splitlines()


@needs_bash
def test_build_script_failures_leave_no_engine(models, tmp_path):
    kit = write_build_kit(models["fp32"], models["manifest"], tmp_path / "kit", TrtBuildOptions(), SHAPE)
    env = _fake_env(tmp_path)
    res = _run_kit(kit, dict(env, FAKE_TRTEXEC_FAIL="1"))
    assert res.returncode != 0
    assert not (kit / ENGINE_FILE).exists() and not sidecar_path(kit / ENGINE_FILE).exists()
    assert not list(kit.glob(".*.tmp"))
    # a model changed after the kit was written is caught before trtexec runs
    Path(env["FAKE_ARGS"]).unlink()
    with open(kit / MODEL_ONNX, "ab") as f:
        f.write(b"\0")
    res = _run_kit(kit, env)
    assert res.returncode != 0 and not Path(env["FAKE_ARGS"]).exists()
    assert not (kit / ENGINE_FILE).exists()
    # no trtexec anywhere: a clear message
    bare = dict(env, PATH="/usr/bin:/bin")
    (kit / MODEL_ONNX).write_bytes(models["fp32"].read_bytes())
    if not Path("/usr/src/tensorrt/bin/trtexec").exists() and shutil.which("trtexec", path=bare["PATH"]) is None:
        res = _run_kit(kit, bare)
        assert res.returncode == 1 and "trtexec not found" in res.stderr


# --------------------------------------------------------------------------- CLI


def _has_export_command() -> bool:
    from edgekd.cli import app

    return any((c.name or (c.callback.__name__ if c.callback else "")) == "export" for c in app.registered_commands)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _has_export_command():
        pytest.skip("`edgekd export` is not wired yet (written with the ONNX export issue)")
    from edgekd.config import build_config
    from edgekd.train.loop import train

    out = tmp_path_factory.mktemp("trt-run")
    cfg = build_config(overrides=dict(model="tiny", epochs=1, out=str(out / "run"), progress=False,
                                      data="synthetic:n_train=200,n_test=64", max_steps_per_epoch=2))
    return Path(train(cfg, log=lambda *a, **k: None).out_dir) / "best.pt"


def _invoke(args: list[str]):
    from typer.testing import CliRunner

    from edgekd.cli import app

    res = CliRunner().invoke(app, args)
    return res, res.output + (res.stderr if res.stderr_bytes is not None else "")


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the error raised where TensorRT is missing")
def test_export_format_tensorrt_without_tensorrt_exits_1_naming_the_extra(checkpoint, tmp_path):
    res, out = _invoke(["export", str(checkpoint), "--format", "tensorrt", "--out", str(tmp_path / "out")])
    assert res.exit_code == 1, out
    assert "edgekd[tensorrt]" in out and "Traceback" not in out
    assert not (tmp_path / "out" / ENGINE_FILE).exists()


@needs_bash
def test_export_target_jetson_kit_builds_with_fake_trtexec(checkpoint, tmp_path):
    out = tmp_path / "kit"
    res, text = _invoke(["export", str(checkpoint), "--target", "jetson", "--precision", "int8",
                         "--max-accuracy-drop", "100", "--min-batch", "1", "--opt-batch", "4", "--max-batch", "16",
                         "--out", str(out)])
    assert res.exit_code == 0, text
    for name in (MODEL_INT8_ONNX, MANIFEST_FILE, KIT_SCRIPT, KIT_README, KIT_SUMS):
        assert (out / name).is_file(), name
    env = _fake_env(tmp_path)
    run = _run_kit(out, env)
    assert run.returncode == 0, run.stderr + run.stdout  # SHA256SUMS still valid after the export finished
    args = Path(env["FAKE_ARGS"]).read_text().splitlines()
    assert f"--onnx={MODEL_INT8_ONNX}" in args and "--int8" in args and f"--maxShapes={INPUT_NAME}:16x3x32x32" in args
    side = json.loads(sidecar_path(out / ENGINE_FILE).read_text())
    assert side["onnx_sha256"] == hashlib.sha256((out / MODEL_INT8_ONNX).read_bytes()).hexdigest()
    assert inspect_onnx(out / MODEL_INT8_ONNX)["qdq_nodes"] > 0


# --------------------------------------------------------------------------- our calls, against a stub
# A recording stand-in for the documented TensorRT / cuda-python API (8.4 bindings, 8.5, 10.x). It
# checks the calls edgekd makes and the data flow of TrtEngine (device memory is host memory here,
# the "engine" runs the ONNX with ONNX Runtime); it says nothing about TensorRT itself.


class _Enum:
    def __init__(self, *names: str) -> None:
        for n in names:
            setattr(self, n, n)


def _make_trt_stub(version: str, onnx_path_box: dict, calls: list):
    import types

    import onnxruntime as ort

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    major_minor = tuple(int(p) for p in version.split(".")[:2])
    tensor_api = major_minor >= (8, 5)

    class ILogger:
        Severity = _Enum("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")

        def __init__(self) -> None:
            pass

    trt.ILogger = ILogger
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.LayerType = _Enum("QUANTIZE", "DEQUANTIZE", "CONVOLUTION")
    trt.BuilderFlag = _Enum("FP16", "INT8", "GPU_FALLBACK")
    trt.MemoryPoolType = _Enum("WORKSPACE")
    trt.DeviceType = _Enum("GPU", "DLA")
    trt.TensorIOMode = _Enum("INPUT", "OUTPUT")
    trt.DataType = _Enum("FLOAT")
    trt.nptype = lambda dt: np.float32

    class Network:
        def __init__(self, flags):
            calls.append(("create_network", flags))
            self.inputs, self.layers = [], []

        num_inputs = property(lambda self: len(self.inputs))
        num_layers = property(lambda self: len(self.layers))
        get_input = lambda self, i: self.inputs[i]  # noqa: E731
        get_layer = lambda self, i: self.layers[i]  # noqa: E731

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path):
            info = inspect_onnx(path)
            onnx_path_box["path"] = path
            for name, dims in info["inputs"].items():
                self.network.inputs.append(types.SimpleNamespace(name=name, shape=tuple(-1 if not isinstance(d, int) else d for d in dims)))
            self.network.layers = [types.SimpleNamespace(type=trt.LayerType.QUANTIZE)] * info["qdq_nodes"] + \
                [types.SimpleNamespace(type=trt.LayerType.CONVOLUTION)]
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

        def __setattr__(self, key, value):
            if key in ("max_workspace_size", "default_device_type", "DLA_core"):
                calls.append((key, value))
            object.__setattr__(self, key, value)

    if major_minor >= (8, 4):
        Config.set_memory_pool_limit = lambda self, pool, n: calls.append(("set_memory_pool_limit", pool, n))

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Builder:
        num_DLA_cores = 2

        def __init__(self, logger):
            pass

        create_network = lambda self, flags: Network(flags)  # noqa: E731
        create_builder_config = lambda self: Config()  # noqa: E731
        create_optimization_profile = lambda self: Profile()  # noqa: E731

        def build_serialized_network(self, network, config):
            calls.append(("build", sorted(config.flags)))
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

        def _run(self, in_ptr, out_ptr):
            import ctypes

            n = int(np.prod(self.shape))
            x = np.ctypeslib.as_array(ctypes.cast(in_ptr, ctypes.POINTER(ctypes.c_float)), (n,)).reshape(self.shape).copy()
            y = self.engine.sess.run(None, {INPUT_NAME: x})[0].astype(np.float32)
            ctypes.memmove(out_ptr, y.ctypes.data, y.nbytes)
            return True

        def execute_async_v3(self, stream_handle):
            assert isinstance(stream_handle, int)
            return self._run(self.addr[INPUT_NAME], self.addr[LOGITS_NAME])

        # TensorRT 8.4: binding indices
        def set_binding_shape(self, idx, shape):
            return self.set_input_shape(INPUT_NAME, shape)

        def get_binding_shape(self, idx):
            return self.get_tensor_shape(None)

        def execute_v2(self, bindings):
            return self._run(bindings[0], bindings[1])

    class Engine:
        def __init__(self, path):
            self.sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            self.names = [INPUT_NAME, LOGITS_NAME]
            self.shapes = {INPUT_NAME: (-1, *SHAPE), LOGITS_NAME: (-1, 10)}

        create_execution_context = lambda self: Context(self)  # noqa: E731

    if tensor_api:
        Engine.num_io_tensors = 2
        Engine.get_tensor_name = lambda self, i: self.names[i]
        Engine.get_tensor_mode = lambda self, n: trt.TensorIOMode.INPUT if n == INPUT_NAME else trt.TensorIOMode.OUTPUT
        Engine.get_tensor_shape = lambda self, n: self.shapes[n]
        Engine.get_tensor_dtype = lambda self, n: trt.DataType.FLOAT
        Engine.get_tensor_profile_shape = lambda self, n, p: [(1, *SHAPE), (4, *SHAPE), (8, *SHAPE)]
    else:
        Engine.num_bindings = 2
        Engine.get_binding_name = lambda self, i: self.names[i]
        Engine.binding_is_input = lambda self, i: i == 0
        Engine.get_binding_shape = lambda self, i: self.shapes[self.names[i]]
        Engine.get_binding_dtype = lambda self, i: trt.DataType.FLOAT

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine(data.decode().split("PLAN:", 1)[1])

    trt.Builder, trt.OnnxParser, trt.Runtime, trt.Logger = Builder, OnnxParser, Runtime, ILogger
    return trt


def _make_cudart_stub():
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


@pytest.fixture
def stub_trt(monkeypatch):
    import sys as _sys

    def install(version: str):
        box, calls = {}, []
        trt = _make_trt_stub(version, box, calls)
        rt = _make_cudart_stub()
        monkeypatch.setitem(_sys.modules, "tensorrt", trt)
        monkeypatch.setitem(_sys.modules, "cuda.bindings.runtime", rt)
        return calls, rt

    return install


@pytest.mark.parametrize("version", ["8.4.1.5", "8.5.2.2", "10.3.0"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_and_run_against_the_api_stub(models, tmp_path, stub_trt, version, precision):
    calls, rt = stub_trt(version)
    onnx = models["int8" if precision == "int8" else "fp32"]
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"OLD")
    opts = TrtBuildOptions(precision=precision, min_batch=1, opt_batch=4, max_batch=8, workspace_mb=64,
                           timing_cache=str(cache))
    engine = tmp_path / ENGINE_FILE
    side = trtmod.build_engine(onnx, engine, opts, SHAPE)
    # version branches: explicit-batch flag before 10; memory pool API from 8.4 on
    assert ("create_network", 0 if version.startswith("10") else 1) in calls
    assert ("set_memory_pool_limit", "WORKSPACE", 64 << 20) in calls
    assert ("create_timing_cache", b"OLD") in calls and cache.read_bytes() == b"TIMING"
    flags = {"fp32": [], "fp16": ["FP16"], "int8": ["INT8"]}[precision]
    assert ("build", flags) in calls  # INT8 alone: explicit quantization, no calibrator
    assert ("profile", {INPUT_NAME: ((1, *SHAPE), (4, *SHAPE), (8, *SHAPE))}) in calls
    assert side["tensorrt_version"] == version and side["compute_capability"] == "8.7" and side["cuda_version"] == "11.4"
    assert side["gpu_name"] == "Stub GPU" and side["engine_sha256"] == hashlib.sha256(engine.read_bytes()).hexdigest()
    assert json.loads(sidecar_path(engine).read_text()) == side
    x = np.random.default_rng(2).standard_normal((19, *SHAPE)).astype(np.float32)  # 8 + 8 + 3
    with trtmod.TrtEngine(engine) as eng:
        assert eng.input_shape == SHAPE and eng.output_name == LOGITS_NAME and (eng.min_batch, eng.max_batch) == (1, 8)
        np.testing.assert_allclose(eng.infer(x), _ort_outputs(onnx, x), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(eng.infer(x[:1]), _ort_outputs(onnx, x[:1]), rtol=1e-5, atol=1e-5)
        with pytest.raises(EdgekdError, match="input must be"):
            eng.infer(x[:, :1])
    assert rt.live == {}  # close() freed the device buffers


def test_stub_build_dla_and_refusals(models, tmp_path, stub_trt):
    calls, _ = stub_trt("8.5.2.2")
    opts = TrtBuildOptions(precision="fp16", min_batch=4, opt_batch=4, max_batch=4, dla_core=1)
    trtmod.build_engine(models["fp32"], tmp_path / "dla.engine", opts, SHAPE)
    assert ("default_device_type", "DLA") in calls and ("DLA_core", 1) in calls
    assert ("build", ["FP16", "GPU_FALLBACK"]) in calls
    with pytest.raises(EdgekdError, match="2 DLA core"):
        trtmod.build_engine(models["fp32"], tmp_path / "x.engine", TrtBuildOptions(
            precision="fp16", min_batch=4, opt_batch=4, max_batch=4, dla_core=2), SHAPE)
    with pytest.raises(EdgekdError, match="QDQ model"):
        trtmod.build_engine(models["fp32"], tmp_path / "x.engine", TrtBuildOptions(precision="int8"), SHAPE)
    with pytest.raises(EdgekdError, match="quantized"):
        trtmod.build_engine(models["int8"], tmp_path / "x.engine", TrtBuildOptions(precision="fp16"), SHAPE)
    with pytest.raises(EdgekdError, match="fixed batch of 2"):
        trtmod.build_engine(models["static"], tmp_path / "x.engine", TrtBuildOptions(), SHAPE)
    assert not (tmp_path / "x.engine").exists()
    # an engine from another TensorRT is refused before deserialization
    side = json.loads(sidecar_path(tmp_path / "dla.engine").read_text())
    sidecar_path(tmp_path / "dla.engine").write_text(json.dumps(dict(side, tensorrt_version="10.3.0")))
    with pytest.raises(EdgekdError, match="built with TensorRT 10.3.0, this machine runs TensorRT 8.5.2.2"):
        trtmod.TrtEngine(tmp_path / "dla.engine")


# --------------------------------------------------------------------------- real TensorRT


def _ort_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {INPUT_NAME: x})[0]


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_real_engine_builds_loads_and_matches_onnxruntime(models, tmp_path, precision):
    pytest.importorskip("cuda", reason="needs cuda-python for TensorRT inference memory")
    onnx = models["int8" if precision == "int8" else "fp32"]
    cache = tmp_path / "timing.cache"
    opts = TrtBuildOptions(precision=precision, min_batch=1, opt_batch=4, max_batch=8, workspace_mb=256,
                           timing_cache=str(cache))
    engine = tmp_path / ENGINE_FILE
    side = trtmod.build_engine(onnx, engine, opts, SHAPE)
    assert engine.is_file() and cache.is_file()
    assert json.loads(sidecar_path(engine).read_text()) == side
    assert side["onnx_sha256"] == hashlib.sha256(onnx.read_bytes()).hexdigest()
    assert check_provenance(side, trtmod.collect_runtime_info()) == []
    x = np.random.default_rng(1).standard_normal((11, *SHAPE)).astype(np.float32)  # > max batch: chunked
    ref = _ort_outputs(onnx, x)
    with trtmod.TrtEngine(engine) as eng:
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
        trtmod.TrtEngine(engine)


def test_module_imports_stay_light():
    code = textwrap.dedent("""
        import sys
        import edgekd.export.tensorrt, edgekd.export.jetson
        heavy = [m for m in ("tensorrt", "onnxruntime", "torch", "onnx") if m in sys.modules]
        assert not heavy, heavy
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
