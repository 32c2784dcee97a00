#!/usr/bin/env bash
# The image benchmark at paper-like settings on one GPU, in one 10-minute device run (docs/image_benchmark.md).
#
# Flow matching (rectified flow, Euler) on Fashion-MNIST, or CIFAR-10 from a user-supplied tarball:
# torchcfm's CIFAR-10 U-Net shape at 64 base channels (model=ddpm_cifar10 with the overrides in
# image_speedup.py's GPU_OVERRIDES), batch 128, bf16 autocast, lr 2e-4, 4000 steps; rows flow/vanilla,
# flow/knn:k=4 (the paper's), flow/linear, flow+cond/vanilla, flow+cond/c2ot x seeds 0 1, every cell a
# separate process on the same GPU (--workers: they claim cells from one list). Scored by the fast
# classifier metric (CFD) every 1000 steps and, at the end, at 1/2/4/8/16 Euler steps, plus the real
# Inception FID (TF1 resize) on 2000 samples. The whole run is capped (timeout) so it ends inside the
# device's 10 minutes; the report is then written from the cells that finished (missing ones are marked).
# It writes the same report format as the CPU grid, to benchmarks/results/image_speedup_gpu/.
#
# Usage:
#   bash benchmarks/gpu_image_recipe.sh                          # Fashion-MNIST (dataset-fashion-mnist)
#   bash benchmarks/gpu_image_recipe.sh --cifar /data/cifar-10-python.tar.gz
#   bash benchmarks/gpu_image_recipe.sh --smoke                  # the same path, tiny, on the CPU (minutes)
#   bash benchmarks/gpu_image_recipe.sh --seeds 0 1 2 --steps 3000   # any image_speedup.py option
# Environment: PYTHON (default .venv/bin/python, else python), RECIPE_SECONDS (default 540), WORKERS (10).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
SECONDS_CAP=${RECIPE_SECONDS:-540}
WORKERS=${WORKERS:-10}

args=(--gpu --seeds 0 1)
smoke=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cifar) args+=(--task cifar10 --task-path "$2"); shift 2 ;;
    --smoke) smoke=1; args+=(--smoke); shift ;;
    *) args+=("$1"); shift ;;
  esac
done
[ "$smoke" = 1 ] && WORKERS=${SMOKE_WORKERS:-2}

echo "[recipe] $PY benchmarks/image_speedup.py ${args[*]} --workers $WORKERS (cap ${SECONDS_CAP}s)"
# timeout signals the whole process group (the sweep and its workers); finished cells are kept
set +e
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} timeout --signal=TERM --kill-after=20 "$SECONDS_CAP" \
  "$PY" benchmarks/image_speedup.py "${args[@]}" --workers "$WORKERS" --no-report
code=$?
set -e
[ "$code" = 124 ] && echo "[recipe] time cap reached: reporting the cells that finished"
"$PY" benchmarks/image_speedup.py "${args[@]}" --report-only
