#!/usr/bin/env bash
# Static check of edgekd's TensorRT API use: mypy against the tensorrt-stubs package (TensorRT 10.13's
# Python API), on the modules that call TensorRT. TensorRT itself cannot run without an NVIDIA GPU, so this is
# what proves, on any machine, that every TensorRT name and signature the code uses exists in 10.x. The 8.5
# and 11.x branches, which the 10.13 stubs cannot describe, are covered by the API fake in tests/fakes/.
#
# Usage: bash scripts/typecheck_tensorrt.sh      environment: PYTHON=.venv/bin/python
# Needs PyPI (or the pip index configured here) for mypy and the stubs on first use; installs nothing but mypy
# into the venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STUBS="tensorrt-stubs==10.13.0.35.1"   # pinned: the patches below are for this file
MYPY="mypy>=1.10"
MODULES=(edgekd/export/tensorrt.py edgekd/runtime/engine.py edgekd/runtime/trt_version.py)

if [[ -z "${PYTHON:-}" ]]; then
  [[ -x .venv/bin/python ]] || make venv
  PYTHON=.venv/bin/python
fi
"$PYTHON" -c "import mypy" 2>/dev/null || "$PYTHON" -m pip install -q "$MYPY"

SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/edgekd-trt-stubs.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT

# The stubs go to a scratch folder, never into the venv: their `tensorrt/` folder of .pyi files would make
# `import tensorrt` succeed there as an empty namespace package, which the tests and `require` would take
# for an installed TensorRT. --no-deps: the package's metadata pulls the real multi-GB TensorRT wheel.
"$PYTHON" -m pip install -q --no-deps --target "$SCRATCH/stubs" "$STUBS"
PYI="$SCRATCH/stubs/tensorrt_bindings/tensorrt.pyi"
[[ -f "$PYI" ]] || { echo "error: $STUBS has no tensorrt_bindings/tensorrt.pyi" >&2; exit 1; }

# The generated stub does not parse, and it shadows a builtin:
# - a parameter named `in` (a Python keyword) in the plugin interfaces -> `in_`;
# - add_scale_nd(..., power: Weights = None, channel_axis: int): a parameter without a default after
#   defaulted ones -> give it `= ...` (TensorRT's binding has a default for it);
# - `bool: DataType` (trt.bool, the DataType alias) at module level makes every `-> bool` in the file
#   mean that alias, so mypy would not check any boolean result -> rename the alias to `bool_`.
sed -i -E \
  -e '/^ *def /s/([(,] *)in: /\1in_: /' \
  -e 's/(def add_scale_nd\(.*power: Weights = None, channel_axis: int)\)/\1 = ...)/' \
  -e 's/^bool: DataType/bool_: DataType/' \
  "$PYI"
for init in "$SCRATCH/stubs/tensorrt/__init__.pyi" "$SCRATCH/stubs/tensorrt_bindings/__init__.pyi"; do
  [[ -f "$init" ]] && sed -i -E 's/^from tensorrt_bindings\.tensorrt import bool$/from tensorrt_bindings.tensorrt import bool_/' "$init"
done
if grep -qE '^ *def .*[(,] *in: |^bool: DataType' "$PYI"; then
  echo "error: the tensorrt-stubs patches did not apply (another stubs version?)" >&2
  exit 1
fi

cat > "$SCRATCH/mypy.ini" <<'EOF'
[mypy]
# only the modules named on the command line report errors; what they import is read for its types
follow_imports = silent
check_untyped_defs = True
warn_unused_ignores = True
warn_redundant_casts = True
no_implicit_optional = True
strict_equality = True
cache_dir = /dev/null

# the generated stubs have errors of their own (undefined names, `...` defaults); they are not ours
[mypy-tensorrt.*,tensorrt_bindings.*,tensorrt_stubs.*]
ignore_errors = True

# imported by the stubs or by the checked modules, without type information here
[mypy-tensorrt_libs.*,cuda.*,onnx.*,onnxruntime.*,onnxconverter_common.*]
ignore_missing_imports = True
EOF

present=()
for m in "${MODULES[@]}"; do [[ -f "$m" ]] && present+=("$m"); done
echo "mypy ($("$PYTHON" -m mypy --version)) with $STUBS on: ${present[*]}"
MYPYPATH="$SCRATCH/stubs" "$PYTHON" -m mypy --config-file "$SCRATCH/mypy.ini" "${present[@]}"
