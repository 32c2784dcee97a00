"""Make ``immiscible_envs`` importable from a plain checkout (before ``pip install -e .`` wires it)."""

import sys
from pathlib import Path

try:
    import immiscible_envs  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "envs"))
