"""Where the Hydra configs live, and a one-line error when they cannot be found."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "IMMISCIBLE_CONFIG_DIR"


def config_dir() -> str:
    """``$IMMISCIBLE_CONFIG_DIR`` or the project's ``configs/`` (editable install / source checkout)."""
    candidates = [os.environ.get(ENV)] if os.environ.get(ENV) else []
    candidates.append(str(Path(__file__).resolve().parents[2] / "configs"))
    for c in candidates:
        if (Path(c) / "train.yaml").is_file():
            return str(Path(c).resolve())
    raise SystemExit(
        f"error: Hydra configs not found (looked in {', '.join(candidates)}); install the project with "
        f"`pip install -e .` from its checkout or set {ENV} to its configs/ folder."
    )
