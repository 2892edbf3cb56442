#!/usr/bin/env bash
# Verify the torch-free runtime (edgekd.runtime) on aarch64 under qemu-user-static.
#
# Builds (once, cached) an arm64 Debian bookworm root with debootstrap, installs python3 + numpy
# from Debian and the aarch64 onnxruntime and Pillow wheels from PyPI into it, copies in only the
# runtime's files (edgekd/__init__.py, errors.py, names.py, deps.py, io.py, runtime/: no torch, no rest of edgekd),
# exports a trained model and real CIFAR-10 test images on the x86 host, classifies them inside the
# root under emulation (QEMU_CPU=cortex-a72, a Raspberry Pi 4 core) and on the host, and compares
# predictions and scores. With OPENVINO=1 (the default when the host has openvino) the same images also
# run through `edgekd-run --backend openvino` in the root (the aarch64 OpenVINO wheel; correctness only,
# no timing). Writes benchmarks/results/aarch64_qemu.{json,md}; exits 3 on a mismatch.
#
# Needs root, Debian packages and PyPI (apt-get, debootstrap, pip download). Several minutes on a
# first run (debootstrap ~3.5 min), ~1 min afterwards. Usage: sudo scripts/aarch64_verify.sh
#   or `make aarch64-check`. Settings (environment):
#   PYTHON          x86 python with edgekd[train] installed        (default: python3)
#   CKPT            edgekd checkpoint to export (default: first of the known CIFAR-10 runs;
#                   trains a short resnet20 run when none exists)
#   DATA_DIR        CIFAR-10 image folder                           (default: /tmp/edgekd-data/CIFAR-10-images)
#   N_PER_CLASS     test images per class                           (default: 10 -> 100 images)
#   ARM64_ROOT      cached arm64 root                                (default: /tmp/edgekd-arm64-root)
#   WORK_DIR        scratch (model, images, wheels, outputs)         (default: /tmp/edgekd-arm64-work)
#   QEMU_CPU        emulated CPU                                     (default: cortex-a72)
#   DEBIAN_MIRROR   Debian mirror for debootstrap                    (default: from apt sources)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
ARM64_ROOT=${ARM64_ROOT:-/tmp/edgekd-arm64-root}
WORK_DIR=${WORK_DIR:-/tmp/edgekd-arm64-work}
DATA_DIR=${DATA_DIR:-/tmp/edgekd-data/CIFAR-10-images}
N_PER_CLASS=${N_PER_CLASS:-10}
export QEMU_CPU=${QEMU_CPU:-cortex-a72}
RESULTS=${RESULTS:-$REPO/benchmarks/results}
SUITE=bookworm

log() { echo "[aarch64] $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, binfmt_misc): run with sudo"
[ "$(uname -m)" = x86_64 ] || log "host is $(uname -m), not x86_64: the comparison is then host-vs-emulated on $(uname -m)"

# ---- 1. host packages and the binfmt handler ---------------------------------------------
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
[ -e /usr/lib/binfmt.d/qemu-aarch64.conf ] || need+=(qemu-user-static)
command -v update-binfmts >/dev/null || need+=(binfmt-support)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
fi
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  # The F flag opens the interpreter now, so it also works inside the chroot without a copy.
  cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
fi
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "binfmt handler qemu-aarch64 is not enabled"

# ---- 2. the arm64 root (cached) ----------------------------------------------------------
if [ ! -e "$ARM64_ROOT/.edgekd-debootstrap-done" ]; then
  if [ -z "${DEBIAN_MIRROR:-}" ]; then
    DEBIAN_MIRROR=$(grep -hoE '^URIs: *[^ ]+/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}' || true)
    DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
  fi
  log "debootstrap arm64 $SUITE from $DEBIAN_MIRROR into $ARM64_ROOT (a few minutes)"
  rm -rf "$ARM64_ROOT.partial"
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-numpy,python3-pip \
    "$SUITE" "$ARM64_ROOT.partial" "$DEBIAN_MIRROR" > "$WORK_DIR.debootstrap.log" 2>&1 \
    || { tail -20 "$WORK_DIR.debootstrap.log" >&2; die "debootstrap failed (log: $WORK_DIR.debootstrap.log)"; }
  rm -rf "$ARM64_ROOT"
  mv "$ARM64_ROOT.partial" "$ARM64_ROOT"
  touch "$ARM64_ROOT/.edgekd-debootstrap-done"
fi
in_root() { chroot "$ARM64_ROOT" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root QEMU_CPU="$QEMU_CPU" "$@"; }
[ "$(in_root uname -m)" = aarch64 ] || die "the root does not run as aarch64"
[ "${ROOT_ONLY:-0}" = 1 ] && { log "root ready: $ARM64_ROOT"; exit 0; }

# ---- 3. aarch64 wheels: the same onnxruntime and Pillow versions as the host -------------
mkdir -p "$WORK_DIR/wheels"
ORT_VERSION=$("$PYTHON" -c 'import onnxruntime; print(onnxruntime.__version__)')
PIL_VERSION=$("$PYTHON" -c 'import PIL; print(PIL.__version__)')
ROOT_PY=$(in_root python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
OV_VERSION=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("openvino"))' 2>/dev/null || true)
OPENVINO=${OPENVINO:-$([ -n "$OV_VERSION" ] && echo 1 || echo 0)}
[ "$OPENVINO" = 1 ] && [ -z "$OV_VERSION" ] && die "OPENVINO=1 but the host python has no openvino (pip install openvino)"
OV_WHEELS=()
[ "$OPENVINO" = 1 ] && OV_WHEELS=("openvino==$OV_VERSION" openvino-telemetry)
stamp="ort=$ORT_VERSION pillow=$PIL_VERSION py=$ROOT_PY openvino=${OPENVINO}:$OV_VERSION"
if [ "$(cat "$ARM64_ROOT/.edgekd-wheels" 2>/dev/null)" != "$stamp" ]; then
  log "downloading aarch64 wheels: onnxruntime==$ORT_VERSION pillow==$PIL_VERSION (cp${ROOT_PY/./})"
  rm -f "$WORK_DIR"/wheels/*.whl
  # OpenVINO's aarch64 wheels are manylinux_2_35 (glibc 2.35+: bookworm's 2.36 takes them)
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
    --platform manylinux_2_35_aarch64 --platform any \
    --python-version "$ROOT_PY" -d "$WORK_DIR/wheels" "onnxruntime==$ORT_VERSION" "pillow==$PIL_VERSION" \
    ${OV_WHEELS[@]+"${OV_WHEELS[@]}"}
  rm -rf "$ARM64_ROOT/tmp/wheels" && cp -r "$WORK_DIR/wheels" "$ARM64_ROOT/tmp/wheels"
  log "installing the wheels in the root (emulated pip, ~1 min)"
  in_root sh -c 'python3 -m pip install -q --no-deps --break-system-packages --no-index /tmp/wheels/*.whl'
  echo "$stamp" > "$ARM64_ROOT/.edgekd-wheels"
fi

# ---- 4. only the runtime's files go into the root -----------------------------------------
rm -rf "$ARM64_ROOT/opt/edgekd" && mkdir -p "$ARM64_ROOT/opt/edgekd/edgekd/runtime"
cp "$REPO"/edgekd/{__init__,errors,names,deps,io}.py "$ARM64_ROOT/opt/edgekd/edgekd/"
cp "$REPO"/edgekd/runtime/*.py "$ARM64_ROOT/opt/edgekd/edgekd/runtime/"

# ---- 5. x86: export a model, pick real images, classify them on the host ------------------
mkdir -p "$WORK_DIR" && rm -rf "$WORK_DIR/case" && mkdir -p "$WORK_DIR/case"
log "x86: exporting the model and classifying $((N_PER_CLASS * 10)) real CIFAR-10 test images"
"$PYTHON" "$REPO/scripts/aarch64_case.py" prepare --ckpt "${CKPT:-}" --data "$DATA_DIR" \
  --n-per-class "$N_PER_CLASS" --out "$WORK_DIR/case"
rm -rf "$ARM64_ROOT/opt/case" && cp -r "$WORK_DIR/case" "$ARM64_ROOT/opt/case"

# ---- 6. aarch64: the same command under emulation -----------------------------------------
log "aarch64 (qemu, QEMU_CPU=$QEMU_CPU): classifying"
in_root python3 -c 'import platform, sys, numpy, onnxruntime, PIL, json, importlib.util as u, importlib.metadata as m; print(json.dumps({"machine": platform.machine(), "python": sys.version.split()[0], "numpy": numpy.__version__, "onnxruntime": onnxruntime.__version__, "pillow": PIL.__version__, "torch_importable": u.find_spec("torch") is not None, "openvino": m.version("openvino") if u.find_spec("openvino") else None}))' > "$WORK_DIR/case/arm_env.json"
start=$(date +%s%N)
in_root env PYTHONPATH=/opt/edgekd python3 -m edgekd.runtime /opt/case/model.onnx /opt/case/images \
  --json --top-k 10 --batch-size 32 > "$WORK_DIR/case/arm_pred.json"
end=$(date +%s%N)
echo "{\"wall_ms\": $(( (end - start) / 1000000 ))}" > "$WORK_DIR/case/arm_time.json"
rm -f "$WORK_DIR/case/arm_pred_openvino.json"
if [ "$OPENVINO" = 1 ]; then  # the same images through OpenVINO's aarch64 CPU plugin: correctness only
  log "aarch64 (qemu): classifying with --backend openvino"
  in_root env PYTHONPATH=/opt/edgekd python3 -m edgekd.runtime /opt/case/model.onnx /opt/case/images \
    --json --top-k 10 --batch-size 32 --backend openvino > "$WORK_DIR/case/arm_pred_openvino.json"
fi

# ---- 7. compare and record ------------------------------------------------------------------
"$PYTHON" "$REPO/scripts/aarch64_case.py" compare --case "$WORK_DIR/case" --results "$RESULTS"
