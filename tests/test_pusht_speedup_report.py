"""The PushT sweep's bookkeeping (benchmarks/pusht_speedup.py) on synthetic cells, without training.

Why: the sweep takes hours and its report is the README's evidence; a wrong ratio direction, a
threshold read off the mean instead of each seed, or a cell order that runs the secondary rows first
would only show after the sweep. Training and rollouts are not exercised here (that is the sweep).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pusht_speedup.py"


@pytest.fixture(scope="module")
def sweep():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("pusht_speedup_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_cell(row, seed, scores, final=None, s_per_epoch=30.0):
    objective, label = row.split("/")
    curve = [
        {
            "epoch": 5 * (i + 1),
            "train_min": 5 * (i + 1) * s_per_epoch / 60,
            "mean_score": s,
            "success_rate": 0.0,
        }
        for i, s in enumerate(scores)
    ]
    fast = "euler" if objective == "flow" else "ddim"
    return {
        "row": row,
        "objective": objective,
        "assigner": label,
        "seed": seed,
        "curve": curve,
        "final": final or {f"{fast}-16": {"mean_score": scores[-1], "success_rate": 0.0}},
        "condition_leak": 0.0,
        "noise_norm_ratio": 1.0,
        "noise_proj_x0": 0.0,
        "assign_ms": 0.1,
        "machine": {"cpu_model": "test", "date": f"d{seed}"},
    }


def test_rows_name_objective_and_assigner(sweep):
    assert sweep.split_row("flow/c2ot:weight=1") == ("flow", "c2ot:weight=1")
    assert sweep.split_row("knn") == ("epsilon", "knn")
    with pytest.raises(SystemExit, match="objective must be one of"):
        sweep.split_row("diffusion/knn")
    ov = sweep.overrides_for("flow/c2ot:weight=1")
    assert "assigner=c2ot" in ov and "++assigner.params.weight=1" in ov
    assert "trainer.objective=flow" in ov and "trainer.sampler=euler" in ov
    assert "trainer.num_inference_steps=16" in ov
    assert "assigner.name=sinkhorn" in sweep.overrides_for("epsilon/sinkhorn")


def test_question_rows_run_first_for_every_seed(sweep):
    order = sweep.cell_order(["epsilon/knn", "epsilon/vanilla", "flow/c2ot"], [0, 1])
    assert order == [
        ("epsilon/vanilla", 0),
        ("flow/c2ot", 0),
        ("epsilon/vanilla", 1),
        ("flow/c2ot", 1),
        ("epsilon/knn", 0),
        ("epsilon/knn", 1),
    ]


def test_thresholds_and_ratios_are_per_seed_against_same_objective_vanilla(sweep):
    base = {
        0: make_cell("flow/vanilla", 0, [0.5, 0.85, 0.95, 0.95]),  # 0.8 at 10, 0.9 at 15
        1: make_cell("flow/vanilla", 1, [0.4, 0.7, 0.82, 0.91]),  # 0.8 at 15, 0.9 at 20
    }
    got = [
        make_cell("flow/c2ot", 0, [0.9, 0.9, 0.9, 0.9]),  # 0.8 at 5 -> 2x; 0.9 at 5 -> 3x
        make_cell("flow/c2ot", 1, [0.2, 0.3, 0.81, 0.85]),  # 0.8 at 15 -> 1x; 0.9 never
    ]
    s = sweep.summarize_row("flow/c2ot", got, base)
    r8, r9 = s["reach"]["0.8"], s["reach"]["0.9"]
    assert r8["epochs"] == [5, 15] and r8["ratios"] == [2.0, 1.0]
    assert r9["n_reached"] == 1 and r9["ratios"] == [3.0]
    assert r9["per_seed"][1]["epoch"] is None
    assert r8["minutes"] == [pytest.approx(2.5), pytest.approx(7.5)]  # epochs x 30 s
    assert s["final_scores"] == [0.9, 0.85] and s["final_score"] == pytest.approx(0.875)
    # mean curve over seeds at each common evaluation epoch
    assert [p["epoch"] for p in s["curve"]] == [5, 10, 15, 20]
    assert s["curve"][0]["mean_score"] == pytest.approx(0.55)
    assert sweep.reach_text(r9["epochs"], 2).endswith("(1/2 reached)")


def test_ci_is_a_t_interval(sweep):
    assert math.isnan(sweep.ci95([0.5]))
    # n=3, sd=0.1 -> 4.30 * 0.1 / sqrt(3)
    assert sweep.ci95([0.4, 0.5, 0.6]) == pytest.approx(4.30 * 0.1 / math.sqrt(3))


def test_report_marks_missing_cells_and_writes_steps_table(sweep, tmp_path):
    cells = tmp_path / "cells"
    fin = {f"ddim-{k}": {"mean_score": 0.1 * k / 16, "success_rate": 0.0} for k in (1, 2, 4, 8, 16)}
    fin["ddpm-100"] = {"mean_score": 0.9, "success_rate": 0.0}
    for seed in (0, 1):
        c = make_cell("epsilon/vanilla", seed, [0.5, 0.9], final=fin)
        (cells / f"epsilon-vanilla-s{seed}.json").parent.mkdir(exist_ok=True)
        (cells / f"epsilon-vanilla-s{seed}.json").write_text(json.dumps(c))
    args = SimpleNamespace(out=tmp_path, model="unet1d_sweep", epochs=10, eval_every=5, n_episodes=50)
    args.lr, args.batch_size = 1e-3, 256
    args.no_stats, args.override = True, []
    payload = sweep.report(["epsilon/vanilla", "flow/c2ot"], [0, 1, 2], args)
    md = (tmp_path / "report.md").read_text()
    assert "| flow/c2ot | 0/3 (missing [0, 1, 2])" in md
    assert "| epsilon/vanilla | 2/3 (missing [2])" in md
    row = next(s for s in payload["summary"] if s["row"] == "epsilon/vanilla")
    assert row["final_steps"]["ddpm-100"]["mean_score"] == pytest.approx(0.9)
    assert len(payload["hosts"]) == 1  # the date does not split one machine into two hosts
    assert (tmp_path / "curves.png").exists() and (tmp_path / "steps.png").exists()
