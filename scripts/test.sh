#!/usr/bin/env bash
# The README's test command: set up (idempotent), then the fast test suite (slow/gpu deselected).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests plugins/immiscible-sinkhorn/tests "$@"
