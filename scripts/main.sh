#!/usr/bin/env bash
# The README's main job: set up, train a PushT diffusion policy on the human demos with the CPU default
# (small budget), then evaluate the EMA policy on the 50 standard test seeds.
#   bash scripts/main.sh [PATH/TO/pusht_cchi_v7_replay.zarr] [extra Hydra overrides...]
# Demos are looked up in $IMMISCIBLE_PUSHT_ZARR, then ../shared/data/pusht/ beside the project.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ] && [[ "$1" != *=* ]]; then export IMMISCIBLE_PUSHT_ZARR="$1"; shift; fi
zarr=${IMMISCIBLE_PUSHT_ZARR:-../shared/data/pusht/pusht_cchi_v7_replay.zarr}
if [ ! -d "$zarr" ]; then
  echo "error: PushT demos not found at $zarr; download pusht_cchi_v7_replay.zarr (Diffusion Policy project) and pass its path as the first argument." >&2
  exit 2
fi
export IMMISCIBLE_PUSHT_ZARR="$zarr"
bash scripts/setup.sh
run="runs/quickstart-$(date +%Y%m%d-%H%M%S)"
.venv/bin/immiscible-train task=pusht assigner=vanilla trainer.epochs=${EPOCHS:-30} trainer.eval_every_epochs=10 \
  run_dir="$run" "$@"
.venv/bin/immiscible-eval checkpoint="$run" output_dir="$run/eval"
echo "run: $run  (metrics.jsonl, curves.png, checkpoints/, eval/metrics.json, eval/rollout.gif)"
