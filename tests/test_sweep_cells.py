"""The sweeps' cell runner (benchmarks/_common.py) with a stand-in trainer: what a cell records as its cost.

Why: the sweeps run for days across sittings, so most cells are resumed at least once, and the docs size
every protocol from the cells' ``cell_wall_min``. A resumed cell that recorded only its last invocation's
minutes (as it once did: 10 minutes for a 45-minute cell) would silently understate that cost, and a cell
forked from its vanilla twin must not count the twin's warm-up as its own work.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

#: a stand-in for immiscible-train: appends one record per "epoch" with this invocation's wall_min
FAKE_TRAIN = """
import json, sys
run_dir = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("run_dir="))
with open(run_dir + "/metrics.jsonl", "a") as f:
    for epoch, wall in ((9, 1.0), (10, 2.5)):
        f.write(json.dumps({"epoch": epoch, "wall_min": wall}) + "\\n")
"""


@pytest.fixture()
def common(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    mod = importlib.import_module("_common")
    monkeypatch.setattr(mod, "TRAIN_CMD", [sys.executable, "-c", FAKE_TRAIN, "--"])
    return mod


def build(run_dir, records, wall_min, overrides):
    return {"cell_wall_min": wall_min, "n_records": len(records)}


def write_records(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_fresh_cell_counts_one_invocation(common, tmp_path):
    cell = common.run_cell(tmp_path, "flow/vanilla", 0, [], [], build)
    assert cell["train_invocations"] == 1
    assert cell["cell_wall_min"] < 1.0  # this invocation's own wall time, nothing earlier
    assert json.loads((tmp_path / "cells" / "flow-vanilla-s0.json").read_text()) == cell


def test_a_resumed_cell_adds_each_earlier_invocations_minutes(common, tmp_path):
    # two interrupted invocations: 0 -> 12.0 min (epochs 1-3), then 0 -> 7.5 min (epochs 4-5)
    earlier = [{"epoch": e, "wall_min": w} for e, w in ((1, 4.0), (2, 8.0), (3, 12.0), (4, 3.0), (5, 7.5))]
    write_records(tmp_path / "runs" / "flow-vanilla-s0" / "metrics.jsonl", earlier)
    assert common.earlier_invocations(tmp_path / "runs" / "flow-vanilla-s0") == [12.0, 7.5]
    cell = common.run_cell(tmp_path, "flow/vanilla", 0, [], [], build)
    assert cell["train_invocations"] == 3
    assert 19.5 <= cell["cell_wall_min"] < 20.5


def test_a_forked_cell_does_not_count_its_twins_warmup(common, tmp_path):
    run_dir = tmp_path / "runs" / "flow-published-s0"
    twin = [{"epoch": e, "wall_min": 3.0 * e} for e in range(1, 11)]  # the twin's 30 minutes, epochs 1-10
    write_records(run_dir / "metrics.jsonl", twin)
    (run_dir / "forked_from.json").write_text(json.dumps({"checkpoint": "x", "epoch": 10}))
    assert common.earlier_invocations(run_dir) == []
    cell = common.run_cell(tmp_path, "flow/published", 0, [], [], build)
    assert cell["train_invocations"] == 1 and cell["cell_wall_min"] < 1.0


def test_a_finished_cell_is_returned_untouched(common, tmp_path):
    done = tmp_path / "cells" / "flow-vanilla-s0.json"
    done.parent.mkdir(parents=True)
    done.write_text(json.dumps({"cell_wall_min": 33.0}))
    assert common.run_cell(tmp_path, "flow/vanilla", 0, [], [], build) == {"cell_wall_min": 33.0}
    assert not (tmp_path / "runs").exists()


def test_a_written_cell_releases_its_claim_and_a_live_claim_is_respected(common, tmp_path):
    """Once its cell is written a worker lets go of the run (a worker waiting on its warm-up sees it free);
    a claim of another live process is never taken or removed."""
    import subprocess

    common.run_cell(tmp_path, "flow/vanilla", 0, [], [], build)
    run_dir = tmp_path / "runs" / "flow-vanilla-s0"
    assert not (run_dir / ".owner").exists()
    held = subprocess.Popen(["sleep", "30"])
    try:
        other = tmp_path / "runs" / "flow-vanilla-s1"
        other.mkdir(parents=True)
        (other / ".owner").write_text(str(held.pid))
        assert not common.claim_cell(other)
        assert common.run_cell(tmp_path, "flow/vanilla", 1, [], [], build) is None
        common.release_cell(other)  # not ours: left alone
        assert (other / ".owner").read_text() == str(held.pid)
    finally:
        held.kill()
        held.wait()
    assert common.claim_cell(other)  # a dead owner's claim is taken over
    assert (other / ".owner").read_text() == str(os.getpid())


def test_a_readme_block_is_replaced_between_its_markers_and_nothing_else(common, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nprose before\n<!-- t:begin -->\nold table\n<!-- t:end -->\nprose after\n")
    common.replace_block(readme, "t", "| a |\n|---|\n| 1 |\n")
    assert readme.read_text() == (
        "# Title\n\nprose before\n<!-- t:begin -->\n| a |\n|---|\n| 1 |\n<!-- t:end -->\nprose after\n"
    )
    common.replace_block(readme, "t", "| a |\n|---|\n| 1 |")  # idempotent
    assert readme.read_text().count("| 1 |") == 1
    before = readme.read_text()
    with pytest.raises(SystemExit, match="no '<!-- other:begin -->' ... '<!-- other:end -->' block"):
        common.replace_block(readme, "other", "x")
    assert readme.read_text() == before
    with pytest.raises(SystemExit, match="cannot read"):
        common.replace_block(tmp_path / "missing.md", "t", "x")
