#!/usr/bin/env bash
# The README's main job: set up, train a PushT diffusion policy on the human demos with the quickstart
# (1.2M-parameter U-Net, rectified flow, 20 epochs), then evaluate the EMA policy on the 50 standard test seeds.
#   bash scripts/main.sh [PATH/TO/pusht_cchi_v7_replay.zarr] [extra Hydra overrides...]
# Demos: the path given, else $IMMISCIBLE_PUSHT_ZARR, else ../shared/data/pusht/ beside the project, else the
# low-dim copy inside the package (immiscible_policy/data/PUSHT_LOWDIM.md: no download needed); the
# trainer's first line and the run's config.json name which (data=PATH or data=embedded:sha256=...).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ] && [[ "$1" != *=* ]]; then
  if [ "$1" != embedded ] && [ ! -e "$1" ]; then  # `embedded`: the copy in the package, even where a store exists
    echo "error: $1: no such path; pass a pusht_cchi_v7_replay.zarr, or no path to use the default demos." >&2
    exit 2
  fi
  export IMMISCIBLE_PUSHT_ZARR="$1"
  shift
fi
if [ -z "${IMMISCIBLE_PUSHT_ZARR:-}" ] && [ ! -e ../shared/data/pusht/pusht_cchi_v7_replay.zarr ]; then
  echo "note: no PushT zarr found; training on the low-dim demos embedded in the package (the same arrays)."
fi
bash scripts/setup.sh
run="runs/quickstart-$(date +%Y%m%d-%H%M%S)"
start=$(date +%s)
# The quickstart: the sweep model with trainer=quickstart (rectified flow, 20 epochs, lr 1e-3, Euler-16);
# the bigger CPU default is `model=unet1d_cpu trainer=cpu_default` (append them to this command).
.venv/bin/immiscible-train task=pusht assigner=vanilla model=unet1d_sweep trainer=quickstart \
  trainer.epochs=${EPOCHS:-20} run_dir="$run" "$@"
.venv/bin/immiscible-eval checkpoint="$run" output_dir="$run/eval"
wall=$(( $(date +%s) - start ))
.venv/bin/python - "$run" "$wall" <<'PY'
import json, sys
from immiscible_policy.host import host_record
run, wall = sys.argv[1], int(sys.argv[2])
m = json.load(open(f"{run}/eval/metrics.json"))
h = host_record()
flags = ",".join(h["cpu_flags"]) or "none recorded"
print(f"main job: {wall / 60:.1f} min wall (training + evaluations, set-up excluded), EMA policy mean score "
      f"{m['mean_score']:.3f} (success {m['success_rate']:.2f}) on {m['n_episodes']} test starts")
print(f"machine: {h['cpu_model']} ({flags}), {h['cores']} cores, torch {h['torch']}, {h['device']}")
print(f"run: {run}  (metrics.jsonl, curves.png, checkpoints/, eval/metrics.json, eval/rollout.mp4)")
PY
