"""The Jetson build kit: what a device needs to build and check its own TensorRT engine.

An engine only runs on the TensorRT release and GPU that built it, so a Jetson's engine is built
on the Jetson. `write_build_kit` works anywhere (no TensorRT, no GPU). It writes the ONNX the
device's TensorRT builds from (`--jetpack`: 5 and 6.0 take model.onnx or model.int8.onnx with
`--fp16`/`--int8`; 6.1/6.2 take model.fp16.onnx or model.int8.onnx with `--stronglyTyped`), the
manifest, the proof set (`edgekd.export.kit_proof`), `SHA256SUMS`, `build_engine.sh` and a README.
`build_engine.sh` checks that the device's TensorRT is the release the kit was written for. It runs
trtexec with `trtexec_command`'s flags, then the engine proof against ONNX Runtime FP32 (exit 3
when it fails, and no engine is left). Last it writes the provenance sidecar that
`edgekd.runtime.engine.TrtEngine` checks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

from edgekd.deps import require
from edgekd.errors import EdgekdError, first_line
from edgekd.export.kit_proof import PROOF_RESULT, render_proof_step, write_proof_set
from edgekd.export.tensorrt import (
    ENGINE_FILE,
    QDQ_OPS,
    ProofImages,
    TrtBuildOptions,
    check_build_inputs,
    check_input_shape,
    make_provenance,
    trtexec_command,
    validate_build_options,
)
from edgekd.io import atomic_path, sha256_file
from edgekd.names import INPUT_NAME, LOGITS_NAME, MANIFEST_FILE
from edgekd.runtime.engine import sidecar_path
from edgekd.runtime.trt_version import JETPACK_TENSORRT, TrtPolicy, policy_for_jetpack

KIT_SCRIPT = "build_engine.sh"
KIT_README = "README.md"
KIT_SUMS = "SHA256SUMS"
KIT_LOG = "build_engine.log"
KIT_TIMING_CACHE = "timing.cache"
KIT_PROOF_LOG = "proof.log"
# where JetPack puts trtexec (it is not on PATH there)
JETPACK_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"


def inspect_onnx(onnx_path: str | os.PathLike) -> dict[str, Any]:
    """Inputs (name -> dims, int or symbolic name), Q/DQ node count, FP16 tensor count (FP16 weights and
    casts to FP16: model.fp16.onnx) and external-data use of an ONNX file."""
    onnx = require("onnx")
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValueError, ...: all mean "not a model"
        raise EdgekdError(f"{onnx_path} is not a readable ONNX model: {type(exc).__name__}") from None
    graph, half = model.graph, onnx.TensorProto.FLOAT16
    weights = {init.name for init in graph.initializer}
    inputs = {}
    for value in graph.input:
        if value.name in weights:  # old exporters list initializers as inputs
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in value.type.tensor_type.shape.dim]
        inputs[value.name] = dims
    return {
        "inputs": inputs,
        "qdq_nodes": sum(node.op_type in QDQ_OPS for node in graph.node),
        "fp16_tensors": sum(init.data_type == half for init in graph.initializer)
        + sum(node.op_type == "Cast" and any(a.name == "to" and a.i == half for a in node.attribute)
              for node in graph.node),
        "external_data": any(init.data_location == onnx.TensorProto.EXTERNAL for init in graph.initializer),
    }


def check_onnx_for_build(info: dict[str, Any], opts: TrtBuildOptions, input_shape: Sequence[int],
                         policy: Optional[TrtPolicy] = None) -> None:
    """Refuse an ONNX model the engine build would fail on, before anything is written."""
    strong = bool(policy and policy.strongly_typed)
    check_build_inputs(info["inputs"], info["qdq_nodes"] > 0, opts, input_shape,
                       has_fp16=info.get("fp16_tensors", 0) > 0, strongly_typed=strong)
    if info["external_data"]:
        raise EdgekdError("the ONNX model keeps its weights in an external data file; "
                          "the kit needs a single-file ONNX")


# The sidecar step runs on the device with nothing but python3 (JetPack 5 ships 3.8): no edgekd
# import, stdlib only. It fills in the machine half of the record that `make_provenance` starts.
_SIDECAR_SNIPPET = r'''
import datetime, hashlib, json, os, platform, re, subprocess, sys

engine, sidecar_out, log_path, build_seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
record = json.loads(BASE_JSON)
# Jetson SoC -> GPU compute capability, for when neither CUDA nor nvidia-smi can say
TEGRA_CC = {"nvidia,tegra234": "8.7", "nvidia,tegra194": "7.2", "nvidia,tegra186": "6.2", "nvidia,tegra210": "5.3"}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run(cmd):
    try:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def tensorrt_version():
    try:
        import tensorrt
        return tensorrt.__version__, "tensorrt"
    except Exception:
        pass
    try:  # trtexec prints "TensorRT version: 8.5.2" near the top of its log
        with open(log_path, errors="replace") as f:
            m = re.search(r"TensorRT version:\s*([0-9][0-9.]*)", f.read())
        if m:
            return m.group(1).rstrip("."), "trtexec-log"
    except OSError:
        pass
    return None, None


def gpu_from_cuda():
    # the same source TrtEngine reads when it checks this record, so names compare exactly
    try:
        try:
            from cuda.bindings import runtime as rt
        except ImportError:
            from cuda import cudart as rt
        ok = rt.cudaError_t.cudaSuccess
        err, dev = rt.cudaGetDevice()
        err2, props = rt.cudaGetDeviceProperties(dev)
        err3, ver = rt.cudaRuntimeGetVersion()
        if err != ok or err2 != ok or err3 != ok:
            return None
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return {"gpu_name": name.rstrip("\x00").strip(), "gpu_source": "cuda",
                "compute_capability": "%d.%d" % (props.major, props.minor),
                "cuda_version": "%d.%d" % (ver // 1000, (ver % 1000) // 10)}
    except Exception:
        return None


def gpu_from_system():
    info = {}
    out = run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"])
    if out and "," in out:
        name, cap = [s.strip() for s in out.splitlines()[0].rsplit(",", 1)]
        cap = cap if re.match(r"^\d+\.\d+$", cap) else None
        info.update(gpu_name=name, gpu_source="nvidia-smi", compute_capability=cap)
    if not info.get("compute_capability") and os.path.exists("/proc/device-tree/compatible"):
        with open("/proc/device-tree/compatible", "rb") as f:
            compatible = [c.decode(errors="replace") for c in f.read().split(b"\0") if c]
        cap = next((TEGRA_CC[c] for c in compatible if c in TEGRA_CC), None)
        with open("/proc/device-tree/model", "rb") as f:
            model = f.read().rstrip(b"\0").decode(errors="replace").strip()
        info.update(gpu_name=model, gpu_source="device-tree", compute_capability=cap)
    info["cuda_version"] = cuda_version_from_system()
    return info


def cuda_version_from_system():
    try:
        with open("/usr/local/cuda/version.json") as f:
            return ".".join(json.load(f)["cuda"]["version"].split(".")[:2])
    except (OSError, ValueError, KeyError):
        pass
    out = run(["nvcc", "--version"]) or ""
    m = re.search(r"release (\d+\.\d+)", out)
    if m:
        return m.group(1)
    m = re.search(r"CUDA Version:\s*(\d+\.\d+)", run(["nvidia-smi"]) or "")
    return m.group(1) if m else None


trt_version, trt_source = tensorrt_version()
gpu = gpu_from_cuda() or gpu_from_system()
onnx_sha = sha256(record["onnx_file"])
record.update(
    tensorrt_version=trt_version, tensorrt_version_source=trt_source,
    cuda_version=gpu.get("cuda_version"), gpu_name=gpu.get("gpu_name"), gpu_source=gpu.get("gpu_source"),
    compute_capability=gpu.get("compute_capability"), platform=platform.machine(),
    onnx_sha256=onnx_sha, engine_file=ENGINE_NAME, engine_sha256=sha256(engine),
    engine_bytes=os.path.getsize(engine), build_seconds=build_seconds,
    built_at=datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
)
record["proof"] = None
if os.path.exists(PROOF_RESULT):  # the figures of the engine proof that just passed
    with open(PROOF_RESULT) as f:
        record["proof"] = json.load(f)
for key in ("tensorrt_version", "compute_capability"):
    if not record[key]:
        sys.stderr.write("warning: could not determine %s; loading this engine with edgekd will refuse it\n" % key)
with open(sidecar_out, "w") as f:
    json.dump(record, f, indent=2)
    f.write("\n")
print("provenance: TensorRT %s, CUDA %s, %s (compute %s)" % (
    record["tensorrt_version"], record["cuda_version"], record["gpu_name"], record["compute_capability"]))
'''


def _kit_options(opts: TrtBuildOptions) -> TrtBuildOptions:
    """The options as the device sees them: the timing cache lives in the kit directory."""
    return dataclasses.replace(opts, timing_cache=KIT_TIMING_CACHE if opts.timing_cache else None)


def _tensorrt_check_step(policy: TrtPolicy, jetpack: str) -> str:
    """Bash: refuse to build when the device's TensorRT major is not the one the kit's flags are for."""
    major = policy.release[0]
    mismatch = (f"error: this kit is for JetPack {jetpack} (TensorRT {policy.version}, {policy.mode}); this device "
                "has TensorRT $DEVICE_TENSORRT: re-export with --jetpack 5 or 6.0 for TensorRT 8.5/8.6, "
                "--jetpack 6 for TensorRT 10.x")
    unknown = (f"warning: cannot tell this device's TensorRT version (no tensorrt module for $PYTHON, no "
               f"libnvinfer-bin package); building with the TensorRT {major}.x flags of this kit")
    return f"""# the trtexec flags below are TensorRT {major}.x's: refuse another major before building
DEVICE_TENSORRT="$("$PYTHON" -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null \\
  || dpkg-query -W -f='${{Version}}' libnvinfer-bin 2>/dev/null || true)"
if [[ -z "$DEVICE_TENSORRT" ]]; then
  echo "{unknown}" >&2
elif [[ "${{DEVICE_TENSORRT%%.*}}" != "{major}" ]]; then
  echo "{mismatch}" >&2
  exit 1
fi
"""


def render_build_script(onnx_name: str, opts: TrtBuildOptions, input_shape: Sequence[int], base: dict[str, Any],
                        policy: TrtPolicy, jetpack: str, proof: Optional[dict[str, Any]] = None) -> str:
    """The text of build_engine.sh: check the kit and the device's TensorRT, run trtexec, prove the
    engine against ONNX Runtime FP32 (`proof`: the kit's proof record; None: unproven, with a
    warning), write the provenance sidecar."""
    import edgekd

    tmp_engine = f".{ENGINE_FILE}.tmp"
    tmp_sidecar = f".{sidecar_path(ENGINE_FILE).name}.tmp"
    args = trtexec_command(onnx_name, tmp_engine, opts, input_shape, policy=policy)[1:]
    trtexec_line = '"$TRTEXEC" ' + " \\\n    ".join(shlex.quote(a) for a in args)
    batches = f"{opts.min_batch}/{opts.opt_batch}/{opts.max_batch}"
    no_trtexec = ("error: trtexec not found: install TensorRT (JetPack: sudo apt install nvidia-jetpack) "
                  "or set TRTEXEC=/path/to/trtexec")
    snippet = (f"BASE_JSON = {json.dumps(json.dumps(base))}\nENGINE_NAME = {json.dumps(ENGINE_FILE)}\n"
               f"PROOF_RESULT = {json.dumps(PROOF_RESULT)}\n" + _SIDECAR_SNIPPET.lstrip("\n"))
    return f"""#!/usr/bin/env bash
# Build the TensorRT engine of this kit on the device that will run it (written by edgekd {edgekd.__version__}
# for JetPack {jetpack}: TensorRT {policy.version}, {policy.mode}).
# Usage: bash {KIT_SCRIPT}      environment: TRTEXEC=/path/to/trtexec  PYTHON=python3
# Writes {ENGINE_FILE} and its provenance record {sidecar_path(ENGINE_FILE).name} only after the engine proof passed
# (exit 3 when it fails); the trtexec logs go to {KIT_LOG} and {KIT_PROOF_LOG}.
set -euo pipefail
cd "$(dirname "${{BASH_SOURCE[0]}}")"

ENGINE={shlex.quote(ENGINE_FILE)}
TMP_ENGINE={shlex.quote(tmp_engine)}
TMP_SIDECAR={shlex.quote(tmp_sidecar)}
LOG={shlex.quote(KIT_LOG)}
PROOF_LOG={shlex.quote(KIT_PROOF_LOG)}
PROOF_RESULT={shlex.quote(PROOF_RESULT)}
trap 'rm -f "$TMP_ENGINE" "$TMP_SIDECAR" "$PROOF_RESULT" .proof.*.json' EXIT

if [[ -z "${{TRTEXEC:-}}" ]]; then
  if command -v trtexec >/dev/null 2>&1; then
    TRTEXEC=trtexec
  elif [[ -x {JETPACK_TRTEXEC} ]]; then
    TRTEXEC={JETPACK_TRTEXEC}
  else
    echo "{no_trtexec}" >&2
    exit 1
  fi
fi
PYTHON="${{PYTHON:-python3}}"

echo "checking the kit files against {KIT_SUMS}"
sha256sum --check --quiet {KIT_SUMS}
{_tensorrt_check_step(policy, jetpack)}
echo "building $ENGINE with $TRTEXEC ({opts.precision}, batch {batches}); log: $LOG"
START=$SECONDS
{trtexec_line} \\
    2>&1 | tee "$LOG"
BUILD_SECONDS=$((SECONDS - START))
if [[ ! -s "$TMP_ENGINE" ]]; then
  echo "error: trtexec wrote no engine; see $LOG" >&2
  exit 1
fi

{render_proof_step(proof, input_shape, opts.dla_core)}
"$PYTHON" - "$TMP_ENGINE" "$TMP_SIDECAR" "$LOG" "$BUILD_SECONDS" <<'EDGEKD_PY'
{snippet}EDGEKD_PY

# the record first, then the engine: an engine is never left beside a record of another build
mv -f "$TMP_SIDECAR" "$ENGINE.json"
mv -f "$TMP_ENGINE" "$ENGINE"
echo "wrote $ENGINE and $ENGINE.json in $BUILD_SECONDS s"
"""


def _device_lines(opts: TrtBuildOptions, input_shape: Sequence[int]) -> str:
    """The trtexec line of each JetPack, for the README's table (this kit holds the files of one of them)."""
    rows = []
    for jp, label in (("5", "JetPack 5.1.x (TensorRT 8.5)"), ("6.0", "JetPack 6.0 (TensorRT 8.6)"),
                      ("6", "JetPack 6.1/6.2 (TensorRT 10.3)")):
        pol = policy_for_jetpack(jp)
        cmd = trtexec_command(pol.onnx_file(opts.precision), ENGINE_FILE, opts, input_shape, policy=pol)
        line = " ".join(cmd[:2] + pol.trtexec_precision_args(opts.precision))
        rows.append(f"| {label} | `--jetpack {jp}` | `{line}` ... |")
    return "\n".join(rows)


def render_kit_readme(onnx_name: str, opts: TrtBuildOptions, input_shape: Sequence[int], policy: TrtPolicy,
                      jetpack: str, proof_images: int = 0) -> str:
    """The device README: what is in the kit, which device it is for, and the commands to run on the Jetson."""
    cmd = " ".join(shlex.quote(a) for a in trtexec_command(onnx_name, ENGINE_FILE, opts, input_shape, policy=policy))
    bench_note = "latency on this device (edgekd[train] + JetPack's TensorRT python bindings)"
    c, h, w = check_input_shape(input_shape)
    dla = (f"DLA core {opts.dla_core}" + (" with GPU fallback" if opts.gpu_fallback else ", no GPU fallback")
           if opts.dla_core is not None else "GPU only")
    quant = " (QDQ: explicit quantization, no calibration)" if opts.precision == "int8" else ""
    typing = ("strongly typed: the precision is in the model's types" if policy.strongly_typed
              else "builder flags: TensorRT picks the precision per layer")
    proof = (f"runs the engine on {proof_images} validation images (`proof/`) and compares it with ONNX Runtime FP32 "
             "(exit 3 when it does not match; no engine is written)" if proof_images
             else "has no proof set in this kit: the engine is not checked (re-export with `edgekd export` for one)")
    proof_row = (f"| `proof/` | {proof_images} validation images (raw float32 batches) and ONNX Runtime FP32's "
                 "outputs on them (`reference.json`) |\n" if proof_images else "")
    return f"""# edgekd build kit for Jetson: JetPack {jetpack} (TensorRT {policy.version})

Build the TensorRT engine **on the device that will run it**: an engine only loads in the
TensorRT release and on the GPU (compute capability) that built it.

| file | what |
|---|---|
| `{onnx_name}` | the model, input `{INPUT_NAME}` of shape N x {c} x {h} x {w} (FP32 in and out) |
| `{MANIFEST_FILE}` | class names, pre-processing (mean/std, layout), output kind |
| `{KIT_SCRIPT}` | runs `trtexec`, proves the engine, then writes the provenance record `{ENGINE_FILE}.json` |
| `{KIT_SUMS}` | sha256 of the model and the proof set, checked before every build |
{proof_row}
Build settings: precision **{opts.precision}**{quant} ({typing}); batch profile min {opts.min_batch} /
opt {opts.opt_batch} / max {opts.max_batch}; workspace {opts.workspace_mb} MiB; {dla}.

## Which device

This kit is for **JetPack {jetpack}**. `{KIT_SCRIPT}` refuses a device whose TensorRT major version differs.
For another JetPack, export again with the `--jetpack` of its row (each row's kit holds its own model file):

| device | export with | trtexec line |
|---|---|---|
{_device_lines(opts, input_shape)}

## On the device

```bash
sha256sum --check {KIT_SUMS}      # after copying the kit over
bash {KIT_SCRIPT}                 # writes {ENGINE_FILE} + {ENGINE_FILE}.json, logs in {KIT_LOG}, {KIT_PROOF_LOG}
edgekd bench {ENGINE_FILE} --device cuda   # {bench_note}
```

`{KIT_SCRIPT}` finds `trtexec` on PATH or at `{JETPACK_TRTEXEC}` (JetPack's place); set
`TRTEXEC=...` to use another one, `PYTHON=...` for another interpreter. The trtexec command it runs:

```bash
{cmd}
```

(it writes to a temporary name). It then {proof}. The record `{ENGINE_FILE}.json` holds the TensorRT
and CUDA versions, GPU and compute capability, DLA core, precision and precision mode, profile, the
proof figures and the sha256 of the ONNX and the engine; `edgekd` refuses to load the engine on a
machine where these differ and tells you to re-run `{KIT_SCRIPT}` there.

Record the power mode with every benchmark: `sudo nvpmodel -q`, `sudo jetson_clocks --show`.
More in `deploy/jetson/README.md` of the edgekd repository.
"""


def _write_kit_file(path: Path, text: str, mode: int = 0o644) -> None:
    # atomic_path's temp file is 0600; a kit is copied between machines and users
    with atomic_path(path) as tmp:
        tmp.write_text(text)
        tmp.chmod(mode)


def _copy_atomic(src: Path, dst: Path) -> None:
    if dst.exists() and src.resolve() == dst.resolve():
        return  # the export wrote it there already
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
        tmp.chmod(0o644)


def write_build_kit(onnx_path: str | os.PathLike, manifest_path: str | os.PathLike, out_dir: str | os.PathLike,
                    opts: TrtBuildOptions, input_shape: tuple[int, int, int], *, jetpack: str,
                    proof: Optional[ProofImages] = None, output_name: str = LOGITS_NAME) -> Path:
    """Write the Jetson build kit for `jetpack` ('5', '6.0', '6'; see `policy_for_jetpack`) into `out_dir`.

    `onnx_path` is the model that JetPack's TensorRT builds `opts.precision` from
    (`policy_for_jetpack(jetpack).onnx_file(precision)`: model.onnx, model.fp16.onnx or the QDQ
    model.int8.onnx); it is copied under that name. `proof` adds the proof set that
    `build_engine.sh` checks the engine with. Every input is checked before anything is written;
    every file is written atomically. Returns `out_dir`.
    """
    validate_build_options(opts)
    policy = policy_for_jetpack(jetpack)
    shape = check_input_shape(input_shape)
    onnx_path, manifest_path, out_dir = Path(onnx_path), Path(manifest_path), Path(out_dir)
    for path, what in ((onnx_path, "ONNX model"), (manifest_path, "manifest")):
        if not path.is_file():
            raise EdgekdError(f"{what} not found: {path}")
    try:
        json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise EdgekdError(f"the manifest {manifest_path} is not valid JSON: {first_line(exc)}") from None
    check_onnx_for_build(inspect_onnx(onnx_path), opts, shape, policy)

    kit_opts = _kit_options(opts)
    onnx_name = policy.onnx_file(opts.precision)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _copy_atomic(onnx_path, out_dir / onnx_name)
        _copy_atomic(manifest_path, out_dir / MANIFEST_FILE)
        onnx_sha = sha256_file(out_dir / onnx_name)
        record = _write_proof(out_dir, proof, opts, output_name)
        # the model and the proof set: what the engine is built and checked from, while the export may
        # still update manifest.json (file list, kit entry) after the kit is written
        sums = [(onnx_sha, onnx_name)] + [(sha256_file(out_dir / f), f) for f in _proof_files(record)]
        _write_kit_file(out_dir / KIT_SUMS, "".join(f"{digest}  {name}\n" for digest, name in sums))
        rebuild = f"rebuild it on this device: `bash {KIT_SCRIPT}` in the build kit"
        base = make_provenance(kit_opts, shape, onnx_name, onnx_sha, builder="trtexec", rebuild=rebuild, policy=policy)
        base.update(jetpack=jetpack, kit_tensorrt=JETPACK_TENSORRT[str(jetpack)],
                    trtexec_args=trtexec_command(onnx_name, ENGINE_FILE, kit_opts, shape, policy=policy)[1:])
        script = render_build_script(onnx_name, kit_opts, shape, base, policy, str(jetpack), record)
        _write_kit_file(out_dir / KIT_SCRIPT, script, 0o755)
        n_proof = len(record["labels"]) if record else 0
        _write_kit_file(out_dir / KIT_README, render_kit_readme(onnx_name, kit_opts, shape, policy, str(jetpack),
                                                                n_proof))
    except OSError as exc:
        raise EdgekdError(f"cannot write the build kit to {out_dir}: {exc.strerror or exc}") from None
    return out_dir


def _write_proof(out_dir: Path, proof: Optional[ProofImages], opts: TrtBuildOptions,
                 output_name: str) -> Optional[dict[str, Any]]:
    """Write the kit's proof set (None without images); return its reference record."""
    if proof is None:
        return None
    files = write_proof_set(out_dir, proof.x, proof.y, proof.reference, opts.precision, proof.max_accuracy_drop,
                            opts.min_batch, opts.max_batch, output_name, proof.split)
    record: dict[str, Any] = json.loads(files[-1].read_text())
    return record


def _proof_files(record: Optional[dict[str, Any]]) -> list[str]:
    from edgekd.export.kit_proof import PROOF_REFERENCE

    return [] if record is None else [*(c["file"] for c in record["chunks"]), PROOF_REFERENCE]
