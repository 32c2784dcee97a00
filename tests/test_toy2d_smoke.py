"""The 8-Gaussians -> moons benchmark (benchmarks/toy2d.py) runs end to end and writes a sane report.

Why: the benchmark is only run by hand (~30 min), so a broken assigner call or report field would go
unnoticed until then; ``--smoke`` exercises every method through the same code path in seconds.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "toy2d.py"
METHODS = {"FM", "OT", "OT-l2", "knn", "knn-8g", "C2OT"}


def test_toy2d_smoke_writes_report(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert {r["method"] for r in report["rows"]} == METHODS
    for row in report["rows"]:
        for key in ("w2_euler1", "w2_adaptive", "nfe"):
            assert math.isfinite(row[key]["mean"]) and row[key]["mean"] >= 0, (row["method"], key)
    assert report["host"]["threads"] >= 1
    assert math.isfinite(report["floor"]["mean"])
    c2ot = next(r for r in report["rows"] if r["method"] == "C2OT")
    assert c2ot["paper"]["euler1"]["mean"] > 0  # the paper's cls number is attached to the row
    assert (tmp_path / "report.md").read_text().startswith("# 8 Gaussians")
    assert (tmp_path / "flows.png").stat().st_size > 0
