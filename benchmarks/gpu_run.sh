#!/usr/bin/env bash
# The CUDA runs of the method benchmarks, as run on the lent H100 (one GPU, 16 CPU cores).
#
#   benchmarks/gpu_run.sh selfkd EPOCHS   # CE / PS-KD / LSSKD / KD(resnet32x4), resnet20, full CIFAR-10 train split, 3 seeds
#   [TEACHER_EPOCHS=N] benchmarks/gpu_run.sh dho EPOCHS      # CE-only / single-head KD / DHO at 10% and 1% labels, resnet20, 3 seeds
#
# These small models are kernel-launch bound on a big GPU (one process uses a fraction of it),
# so every seed (and, for DHO, every labeled fraction) runs in its own process at the same
# time; each process interleaves the methods, so each throughput ratio compares methods under
# the same load. The teacher is trained first by edgekd itself (CE on all labels) into
# $TEACHER and reused when it is already there. Results: benchmarks/results/{selfkd,dho}_cuda.*;
# partial results are written after every run, so a run cut short still leaves its figures.
# Needs EDGEKD_CIFAR_ARCHIVE (the CIFAR-10 JPEG archive) when ../shared/data is not beside the repo.
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:?selfkd or dho}
epochs=${2:-15}
teacher_epochs=${TEACHER_EPOCHS:-$epochs}
TEACHER=${TEACHER:-/tmp/edgekd-teacher/resnet32x4.pt}
LOGS=${LOGS:-/tmp/edgekd-gpu-logs}
mkdir -p "$LOGS"
common=(--device cuda --threads 2 --batch-size 128 --lr 0.1)

if [ "$what" = selfkd ]; then
  S=(--model resnet20 --epochs "$epochs" --train-per-class 4500 --val-per-class 500 --test-per-class 1000 "${common[@]}")
  if [ ! -f "$TEACHER" ]; then
    python3 benchmarks/selfkd.py "${S[@]}" --teacher-model resnet32x4 --teacher-epochs "$teacher_epochs" \
      --teacher-only "$TEACHER" >"$LOGS/teacher.log" 2>&1 &
    tpid=$!
  else
    tpid=
  fi
  pids=()
  for s in 0 1 2; do
    python3 benchmarks/selfkd.py "${S[@]}" --seeds $s --methods ce,pskd,lsskd --tag cuda_s$s >"$LOGS/s$s.log" 2>&1 &
    pids+=($!)
  done
  [ -n "$tpid" ] && wait "$tpid"
  for s in 0 1 2; do
    python3 benchmarks/selfkd.py "${S[@]}" --seeds $s --methods kd --teacher "$TEACHER" --tag cuda_kd$s >"$LOGS/kd$s.log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"
  tags=$(ls benchmarks/results/selfkd_cuda_s?.json benchmarks/results/selfkd_cuda_kd?.json 2>/dev/null \
         | sed 's#.*/selfkd_\(.*\)\.json#\1#' | paste -sd, -)
  python3 benchmarks/selfkd.py --merge "$tags" --tag cuda
elif [ "$what" = dho ]; then
  D=(--student resnet20 --epochs "$epochs" --pool-per-class 4500 --val-per-class 500 --test-per-class 1000
     --teacher "$TEACHER" --teacher-model resnet32x4 --teacher-epochs "$teacher_epochs" "${common[@]}")
  if [ ! -f "$TEACHER" ]; then
    python3 benchmarks/dho.py "${D[@]}" --teacher-only "$TEACHER" >"$LOGS/dho_teacher.log" 2>&1 || exit 1
  fi
  pids=()
  for f in 0.1 0.01; do
    for s in 0 1 2; do
      rounds=0
      [ "$f" = 0.1 ] && [ $s = 0 ] && rounds=${TIMING_ROUNDS:-2}  # one process also times cached vs online teacher epochs
      python3 benchmarks/dho.py "${D[@]}" --fractions $f --seeds $s --timing-rounds $rounds --timing-steps 100 \
        --tag cuda_${f}_s$s >"$LOGS/dho_${f}_s$s.log" 2>&1 &
      pids+=($!)
    done
  done
  wait "${pids[@]}"
  tags=$(ls benchmarks/results/dho_cuda_*_s?.json 2>/dev/null | sed 's#.*/dho_\(.*\)\.json#\1#' | paste -sd, -)
  python3 benchmarks/dho.py --merge "$tags" --tag cuda
else
  echo "usage: $0 selfkd|dho [EPOCHS]" >&2
  exit 2
fi
