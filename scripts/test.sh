#!/usr/bin/env bash
# The README's test command body: fast test suite (slow/gpu tests are deselected in pyproject).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q -p no:cacheprovider tests plugins/immiscible-sinkhorn/tests "$@"
