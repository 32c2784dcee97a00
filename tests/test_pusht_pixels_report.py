"""benchmarks/pusht_pixels.py's bookkeeping on synthetic cells: which evaluation counts as "within the same
minutes", and the report's per-epoch and same-minutes tables (no training)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pusht_pixels.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("pusht_pixels_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cell(row, minutes_per_epoch, scores):
    curve = [
        {
            "epoch": 5 * (i + 1),
            "step": 460 * (i + 1),
            "train_min": 5 * (i + 1) * minutes_per_epoch,
            "mean_score": v,
            "success_rate": 0.0,
        }
        for i, v in enumerate(scores)
    ]
    return {
        "row": row,
        "seed": 0,
        "curve": curve,
        "min_per_epoch": minutes_per_epoch,
        "machine": {"cpu_model": "test", "date": "d"},
    }


def test_score_at_minutes_takes_the_last_evaluation_within_the_budget(bench):
    c = cell("pixels", 2.0, [0.3, 0.6])  # evaluations at 10 and 20 minutes
    assert bench.score_at_minutes(c, 9.9) is None
    assert bench.score_at_minutes(c, 10.0) == (5, 0.3)
    assert bench.score_at_minutes(c, 19.9) == (5, 0.3)
    assert bench.score_at_minutes(c, 25.0) == (10, 0.6)


def test_report_compares_rows_at_the_same_minutes(bench, tmp_path):
    (tmp_path / "cells").mkdir()
    for c in (cell("pixels", 2.0, [0.3, 0.6]), cell("keypoints", 1.0, [0.4, 0.9])):
        (tmp_path / "cells" / f"{c['row']}-s0.json").write_text(json.dumps(c))
    args = argparse.Namespace(out=tmp_path, epochs=10, eval_every=5, note="quiet")
    payload = bench.report(args)
    (same,) = payload["same_minutes"]
    assert same["pixels_minutes"] == 20.0 and same["keypoints_minutes"] == 10.0
    assert tuple(same["keypoints_at_those_minutes"]) == (10, 0.9)  # keypoints finished within 20 minutes
    assert tuple(same["pixels_at_keypoints_minutes"]) == (5, 0.3)  # pixels' epoch 5 came at 10 minutes
    md = (tmp_path / "report.md").read_text()
    assert (
        "| pixels | 1 | 0.300 | 0.600 | 2.00 | 0 |" in md
        and "| keypoints | 1 | 0.400 | 0.900 | 1.00 | 0 |" in md
    )
    assert "Conditions: quiet" in md and "### Hosts" in md
    # a later --report-only without --note keeps the conditions the cells trained under; a new note wins
    bench.report(argparse.Namespace(out=tmp_path, epochs=10, eval_every=5, note=""))
    assert "Conditions: quiet" in (tmp_path / "report.md").read_text()
    bench.report(argparse.Namespace(out=tmp_path, epochs=10, eval_every=5, note="shared"))
    assert "Conditions: shared" in (tmp_path / "report.md").read_text()
