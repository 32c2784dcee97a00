"""The image benchmark's bookkeeping (benchmarks/image_speedup.py) on synthetic cells, without training.

Why: the grid takes hours and its report is the evidence for "faster / slower / not distinguishable"; a
threshold read the wrong way round (CFD is lower-is-better), a ratio inverted, a baseline taken from the
other objective or conditioning, or a power number off by the t factor would only show after the grid.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "image_speedup.py"


@pytest.fixture(scope="module")
def sweep():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("image_speedup_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_cell(row, seed, cfds, fid=50.0, steps_final=None):
    curve = [{"step": 500 * (i + 1), "train_min": 4.0 * (i + 1), "cfd": v} for i, v in enumerate(cfds)]
    final = steps_final or {str(k): cfds[-1] * (1 + 1 / k) for k in (1, 2, 4, 8, 16)}
    return {
        "row": row,
        "seed": seed,
        "curve": curve,
        "final": final,
        "final_fid": {"fid": fid},
        "machine": {"cpu_model": "test", "date": f"d{seed}"},
    }


def test_rows_parse_and_map_to_overrides(sweep):
    assert sweep.split_row("flow+cond/c2ot:weight=1") == ("flow", True, "c2ot:weight=1")
    assert sweep.split_row("epsilon/knn:k=4") == ("epsilon", False, "knn:k=4")
    with pytest.raises(SystemExit, match="objective one of"):
        sweep.split_row("flow+labels/c2ot")
    ov = sweep.row_overrides("flow+cond/c2ot", 16)
    assert "assigner=c2ot" in ov and "task.class_conditional=true" in ov
    assert "trainer.sampler=euler" in ov and "trainer.num_inference_steps=16" in ov
    assert sum(o.startswith("trainer.num_inference_steps") for o in ov) == 1
    ov = sweep.row_overrides("epsilon/knn:k=4", 8)
    assert "trainer.sampler=ddim" in ov and "++assigner.params.k=4" in ov
    assert "task.class_conditional=true" not in ov
    assert sweep.vanilla_of("flow+cond/c2ot") == "flow+cond/vanilla"
    assert sweep.vanilla_of("epsilon/linear") == "epsilon/vanilla"
    assert sweep.cell_name("flow+cond/knn:k=4", 2) == "flow_cond-knn_k4-s2"


def test_vanilla_rows_run_first(sweep):
    order = sweep.cell_order(["flow/scale", "flow/knn:k=4", "flow/vanilla"], [0, 1])
    assert order[:2] == [("flow/vanilla", 0), ("flow/vanilla", 1)]
    assert order[2:4] == [("flow/knn:k=4", 0), ("flow/knn:k=4", 1)]  # a question row before the rest


def test_steps_to_vanilla_final_and_verdicts(sweep):
    seeds = [0, 1, 2]
    cells = {}
    for s in seeds:
        cells[("flow/vanilla", s)] = make_cell("flow/vanilla", s, [30, 20, [14.0, 15.0, 16.3][s]], fid=60 + s)
        cells[("flow/linear", s)] = make_cell("flow/linear", s, [20, 14, 10 + 0.1 * s], fid=40 + s)
        cells[("flow/knn:k=4", s)] = make_cell("flow/knn:k=4", s, [31, 21, [14.0, 16.2, 15.4][s]], fid=61)
        # a conditional row is compared with the conditional vanilla, which is much worse here
        cells[("flow+cond/vanilla", s)] = make_cell("flow+cond/vanilla", s, [40, 35, 30 + 0.1 * s])
    cells[("flow+cond/c2ot", 0)] = make_cell("flow+cond/c2ot", 0, [33, 29, 25])
    rows = ["flow/vanilla", "flow/linear", "flow/knn:k=4", "flow+cond/vanilla", "flow+cond/c2ot"]
    summary = {s["row"]: s for s in sweep.build_summary(rows, seeds, cells)}
    van, lin, knn = summary["flow/vanilla"], summary["flow/linear"], summary["flow/knn:k=4"]
    assert van["final_cfd"] == pytest.approx(15.1)
    assert van["reach"]["target"] == pytest.approx(15.1)
    # vanilla reaches its own mean final CFD (15.1) only at step 1500 and only for seeds 0 and 1
    assert van["reach"]["steps"] == [1500, 1500]
    # linear is below 15.1 at its second evaluation: 1000 steps, vanilla/this = 1500/1000 per seed
    assert lin["reach"]["steps"] == [1000, 1000, 1000] and lin["reach"]["ratios"] == [1.5, 1.5]
    assert lin["verdict"] == "faster" and van["verdict"] == "baseline"
    assert knn["verdict"] == "not distinguishable"
    assert summary["flow+cond/c2ot"]["reach"]["target"] == pytest.approx(30.1)
    assert summary["flow+cond/c2ot"]["reach"]["steps"] == [1000]
    assert summary["flow+cond/c2ot"]["verdict"] == "too few seeds"
    assert lin["final_fid"] == pytest.approx(41.0) and lin["final_steps"]["1"]["cfd"] == pytest.approx(20.2)
    worse = {("flow/vanilla", s): cells[("flow/vanilla", s)] for s in seeds}
    worse.update({("flow/bad", s): make_cell("flow/bad", s, [40, 30, 25 + 0.1 * s]) for s in seeds})
    bad = {s["row"]: s for s in sweep.build_summary(["flow/vanilla", "flow/bad"], seeds, worse)}
    assert bad["flow/bad"]["verdict"] == "slower" and bad["flow/bad"]["reach"]["steps"] == []


def test_power_uses_the_t_interval_of_the_planned_seeds(sweep):
    p = sweep.power([10.0, 11.0, 12.0], n=3)
    assert p["sd"] == pytest.approx(1.0)
    assert p["ci95_half"] == pytest.approx(4.30 / math.sqrt(3))
    assert p["detectable_pct"] == pytest.approx(100 * 4.30 / math.sqrt(3) / 11)
    assert p["disjoint_pct"] == pytest.approx(2 * p["detectable_pct"]) and not p["meets_15pct"]
    assert sweep.power([100.0, 101.0, 100.5], n=3)["meets_15pct"]
    # CV 4%: 3 seeds put a 15% difference outside both intervals (9.9%) though the intervals still
    # overlap (19.9%): the criterion is the first
    p = sweep.power([96.0, 100.0, 104.0], n=3)
    assert (
        p["detectable_pct"] == pytest.approx(9.93, abs=0.01) and p["disjoint_pct"] > 15 and p["meets_15pct"]
    )
    # CV 8% (the flow rows): 3 seeds detect only ~20%, 5 seeds ~10%
    spread = [92.0, 100.0, 108.0]
    assert not sweep.power(spread, n=3)["meets_15pct"] and sweep.power(spread, n=5)["meets_15pct"]
    assert sweep.power(spread, n=5)["ci95_half"] == pytest.approx(2.78 * 8 / math.sqrt(5))


def test_cpu_seed_plan_five_unconditional_three_conditional(sweep, tmp_path):
    args = sweep.parse(
        ["--out", str(tmp_path), "--rows", "flow/vanilla", "flow+cond/c2ot", "flow+cond/vanilla"]
    )
    assert args.seeds == {
        "flow/vanilla": [0, 1, 2, 3, 4],
        "flow+cond/c2ot": [0, 1, 2],
        "flow+cond/vanilla": [0, 1, 2],
    }
    order = sweep.cell_order(args.rows, args.seeds)
    assert len(order) == 11 and ("flow+cond/c2ot", 3) not in order and ("flow/vanilla", 4) in order
    assert order[:5] == [("flow/vanilla", 0), ("flow+cond/vanilla", 0), ("flow/vanilla", 1), *order[3:5]]
    assert sweep.parse(["--rows", "flow+cond/c2ot", "--seeds", "7"]).seeds == [7]
    assert sweep.parse(["--gpu"]).seeds == [0, 1, 2]
    cells = {(r, s): make_cell(r, s, [20, 10 + s]) for r, s in order if s < 3}
    summary = {s["row"]: s for s in sweep.build_summary(args.rows, args.seeds, cells)}
    assert sweep.seeds_text(summary["flow+cond/c2ot"]) == "3/3"
    assert sweep.seeds_text(summary["flow/vanilla"]) == "3/5 (missing [3, 4])"
    # each row's baseline is taken on the row's own seeds
    assert summary["flow+cond/c2ot"]["reach"]["per_seed"].keys() == {0, 1, 2}


def test_report_writes_tables_power_and_plots(sweep, tmp_path):
    rows = ["--rows", "flow/vanilla", "flow/linear", "--seeds", "0", "1", "2", "--report-only"]
    args = sweep.parse(["--out", str(tmp_path), *rows])
    for s in (0, 1, 2):
        for row, base in (("flow/vanilla", 15), ("flow/linear", 10)):
            cell = make_cell(row, s, [base + 10, base + 0.2 * s], fid=base * 4 + s)
            (tmp_path / "cells").mkdir(exist_ok=True)
            (tmp_path / "cells" / f"{sweep.cell_name(row, s)}.json").write_text(json.dumps(cell))
    (tmp_path / "cells" / "old.json").write_text(json.dumps({"label": "vanilla", "seed": 0, "curve": []}))
    payload = sweep.report(args.rows, args.seeds, args)
    md = (tmp_path / "report.md").read_text()
    assert "| flow/linear | 3/3 | 10.20 ± 0.50 |" in md and "faster" in md
    assert "Power: seed-to-seed spread" in md and "flow/vanilla" in payload["power"]
    assert payload["rank_correlation"] == {"n": 6, "spearman": pytest.approx(1.0)}
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "steps.png").stat().st_size > 0
    assert json.loads((tmp_path / "report.json").read_text())["hosts"] == [{"cpu_model": "test"}]


def test_smoke_and_gpu_presets(sweep):
    smoke = sweep.parse(["--smoke", "--gpu"])
    assert smoke.model == "unet2d_tiny" and smoke.steps == 8 and smoke.max_images == 512
    assert not any("cuda" in o or "bf16" in o or o.startswith("model.") for o in smoke.preset_overrides)
    gpu = sweep.parse(["--gpu"])
    assert gpu.batch == 128 and "trainer.mixed_precision=bf16" in gpu.preset_overrides
    assert gpu.out.name == "image_speedup_gpu" and gpu.rows == sweep.GPU_ROWS
    power = sweep.parse(["--power"])
    assert power.rows == ["flow/vanilla", "flow+cond/vanilla", "epsilon/vanilla"]
    settings = sweep.settings(sweep.parse([]))
    assert "trainer.fid.only_at_end=true" in settings and "trainer.cfd.enabled=true" in settings
    assert "trainer.final_steps=[1,2,4,8,16]" in settings and "trainer.fid.n_samples=2000" in settings


@pytest.mark.slow  # trains 6 tiny cells + Inception FID through the real CLI: minutes on a CPU
def test_gpu_recipe_smoke_runs_on_cpu(tmp_path):
    """The GPU recipe's --smoke path end to end on the CPU: cells, final steps, report files."""
    import os
    import subprocess

    from immiscible_policy.image.data import default_fashion_mnist_dir

    if not (default_fashion_mnist_dir() / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST (dataset-fashion-mnist) not installed")
    script = SCRIPT.parent / "gpu_image_recipe.sh"
    env = {**os.environ, "PYTHON": sys.executable, "IMMISCIBLE_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        ["bash", str(script), "--smoke", "--out", str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    done = {s["row"]: s for s in report["summary"] if s.get("n_seeds")}
    assert set(done) == {"flow/vanilla", "flow/linear", "flow+cond/c2ot"}
    assert all(
        s["n_seeds"] == 2 and set(s["final_steps"]) == {"1", "2", "4", "8", "16"} for s in done.values()
    )
    assert report["rank_correlation"]["n"] == 6  # --gpu scores every seed by Inception FID
    assert (tmp_path / "out" / "curves.png").is_file() and (tmp_path / "out" / "steps.png").is_file()


def test_smoke_sweep_trains_two_cells_and_writes_the_report(tmp_path):
    """``image_speedup.py --smoke`` for real (two tiny cells through ``immiscible-train``, no Inception FID):
    cells with CFD curves and the final 1..16-step scores, a rerun skips them, and the report files."""
    import os
    import subprocess

    from immiscible_policy.image.data import default_fashion_mnist_dir

    if not (default_fashion_mnist_dir() / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST (dataset-fashion-mnist) not installed")
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--rows", "flow/vanilla", "flow+cond/c2ot", "--seeds", "0"]
    cmd += ["--fid-seeds", "1", "--out", str(out)]  # Inception FID only for seed 1, which is not run
    env = {**os.environ, "IMMISCIBLE_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cells = sorted(p.name for p in (out / "cells").glob("*.json"))
    assert cells == ["flow-vanilla-s0.json", "flow_cond-c2ot-s0.json"]
    for name in cells:
        cell = json.loads((out / "cells" / name).read_text())
        assert [p["step"] for p in cell["curve"]] == [4, 8] and all(p["cfd"] > 0 for p in cell["curve"])
        assert set(cell["final"]) == {"1", "2", "4", "8", "16"}
        assert cell["machine"]["cpu_model"] and cell["overrides"]
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "starting" not in again.stdout  # finished cells are not retrained
    report = json.loads((out / "report.json").read_text())
    assert {s["row"] for s in report["summary"] if s.get("n_seeds")} == {"flow/vanilla", "flow+cond/c2ot"}
    assert (out / "report.md").read_text().count("flow+cond/c2ot") >= 2
