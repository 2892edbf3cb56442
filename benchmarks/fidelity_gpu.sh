#!/usr/bin/env bash
# Issue 18's GPU budget on one GPU (written for the lent H100/H200 machine; not yet run on one):
# a one-epoch probe of every run first (teacher included, into fidelity_cuda-probe.*), which prints
# the full run's estimated wall time and stops here (exit 5) when that is over MAX_MINUTES; then the
# full run, the 15 units (protocol x seed) as parallel processes on the one GPU, the teacher trained
# once and reused. Results: benchmarks/results/fidelity_cuda.{json,md}, rewritten after every unit.
#
#   EDGEKD_CIFAR_ARCHIVE=PATH/cifar10-jpg.tar.gz benchmarks/fidelity_gpu.sh
#
# Needs EDGEKD_CIFAR_ARCHIVE when ../shared/data is not beside the repository (the device machine
# gets the working tree only: carry a copy of the archive).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-15}
THREADS=${THREADS:-16}
MAX_MINUTES=${MAX_MINUTES:-8}
PY=${PYTHON:-python3}
"$PY" benchmarks/fidelity.py --budget gpu --device cuda --jobs "$JOBS" --threads "$THREADS" --probe \
  --max-minutes "$MAX_MINUTES"
"$PY" benchmarks/fidelity.py --budget gpu --device cuda --jobs "$JOBS" --threads "$THREADS"
