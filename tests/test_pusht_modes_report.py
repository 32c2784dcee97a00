"""The modes sweep's bookkeeping (benchmarks/pusht_modes.py) on synthetic cells, without training.

Why: the sweep takes many hours and its report is the README's multimodality evidence. A dominant share
read off the row itself instead of each seed's vanilla, a TV distance against the wrong demo split, a recipe
that silently drops its warm-up, or a cell order that runs the secondary rows first would only show after
the sweep. Training and rollouts are not exercised here (that is the sweep).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pusht_modes.py"


@pytest.fixture(scope="module")
def sweep():
    """The sweep script (cells, forks, noise share); it puts benchmarks/ on the path for the two below."""
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("pusht_modes_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def grid(sweep):
    """Rows, recipes and the cell order (benchmarks/pusht_modes_grid.py)."""
    return importlib.import_module("pusht_modes_grid")


@pytest.fixture(scope="module")
def rep(sweep):
    """Statistics, verdicts and the report (benchmarks/pusht_modes_report.py)."""
    return importlib.import_module("pusht_modes_report")


@pytest.fixture(scope="module")
def tables(sweep):
    """The report's markdown tables (benchmarks/pusht_modes_tables.py)."""
    return importlib.import_module("pusht_modes_tables")


def fake_demo() -> dict:
    """The demos' split as demo_split reports it (the real counts: 26 / 23 far from the goal, 13 / 7 near 180°)."""
    return {
        "all": {"n": 206, "cw": 60, "ccw": 70, "none": 76},
        "n": 49,
        "cw": 26,
        "ccw": 23,
        "none": 0,
        "cw_share": 26 / 49,
        "cw_share_ci95": [0.38, 0.67],
        "long_way": {"cw": 3, "ccw": 0},
        "upside_down": {
            "n": 20,
            "cw": 13,
            "ccw": 7,
            "none": 0,
            "cw_share": 0.65,
            "cw_share_ci95": [0.41, 0.85],
            "long_way": {"cw": 2, "ccw": 0},
            "max_deg": 15.0,
        },
        "mirrored_cw_share": 0.5,
        "threshold_deg": 45.0,
        "far_from_goal_deg": 135.0,
    }


def make_cell(row, seed, sym_split, score=0.9, leak=0.0, noise=None):
    cw, ccw, none = sym_split
    point = {
        "epoch": 30,
        "train_min": 15.0,
        "mean_score": score,
        "sym_mean_score": 0.5,
        "sym_success_rate": 0.1,
        "sym_modes_cw": cw,
        "sym_modes_ccw": ccw,
        "sym_modes_none": none,
        "paired_share": 1.0,
        "condition_leak": leak,
    }
    early = {**point, "epoch": 15, "sym_modes_cw": 25, "sym_modes_ccw": 25, "condition_leak": -1.0}
    sample = {"mean_score": score, "success_rate": 0.0, "cw": cw, "ccw": ccw, "none": none}
    return {
        "row": row,
        "seed": seed,
        "curve": [early, point],
        "final": {"ddim-1": {"standard": sample, "symmetric": sample}},
        "machine": {"cpu_model": "test"},
        **({"noise_share": {"noise_share": noise}} if noise is not None else {}),
    }


def write_cells(out: Path, cells: list[dict]) -> SimpleNamespace:
    """Write synthetic cells where the sweep keeps them; the report's arguments for ``out``."""
    (out / "cells").mkdir(exist_ok=True)
    for c in cells:
        name = f"{c['row'].replace('/', '-').replace('+', '_')}-s{c['seed']}.json"
        (out / "cells" / name).write_text(json.dumps(c))
    return SimpleNamespace(
        out=out,
        epochs=30,
        model="m",
        batch_size=256,
        lr=1e-3,
        warmup=10,
        eval_every=5,
        override=[],
        zarr=None,
    )


def test_recipes_become_the_schedule_overrides(grid):
    assert grid.recipe_overrides("vanilla", 10) == ["assigner=vanilla"]
    assert grid.recipe_overrides("published", 7) == [
        "assigner=linear",
        "assigner.params.standardize=true",
        "assigner.start_epoch=7",
    ]
    assert grid.recipe_overrides("published-f0.25-ramp", 10)[-2:] == [
        "assigner.fraction=0.25",
        "assigner.ramp_epochs=10",
    ]
    assert "assigner.start_epoch=0" in grid.recipe_overrides("published-nowarmup", 10)
    assert grid.recipe_overrides("c2ot-nb8", 10)[-2:] == [
        "assigner.start_epoch=10",
        "trainer.neighbour_batches=8",
    ]
    assert grid.recipe_overrides("vanilla-nb8", 10) == [  # the control: the same batches, independent noise
        "assigner=vanilla",
        "assigner.start_epoch=10",
        "trainer.neighbour_batches=8",
    ]
    assert grid.parse_row("flow+mirror/vanilla") == ("flow", True, "vanilla")
    for bad in (
        "flw/vanilla",
        "flow+flip/vanilla",
        "flow/published-x",
        "flow/vanilla-f0.5",
        "flow/",
        "flow/c2ot-nb1",
        "flow/vanilla-nowarmup",
    ):
        with pytest.raises(SystemExit):
            grid.parse_row(bad)


def test_pilot_first_then_the_paper_rows_to_ten_seeds(grid):
    rows = list(dict.fromkeys(grid.PILOT + [r for g in grid.PRIORITY.values() for r in g]))
    plan = grid.planned_seeds(rows, None)
    order = grid.cell_order(rows, plan)
    assert set(order[:12]) == {(r, s) for s in (0, 1) for r in grid.PILOT}
    # vanilla runs a seed ahead, so a warm-up cell finds its twin's checkpoint to fork from
    assert order[:4] == [
        ("epsilon/vanilla", 0),
        ("flow/vanilla", 0),
        ("epsilon/vanilla", 1),
        ("flow/vanilla", 1),
    ]
    for i, (row, seed) in enumerate(order):
        if not row.endswith("/vanilla"):
            twin = row.split("/")[0] + "/vanilla"
            assert seed not in plan.get(twin, []) or order.index((twin, seed)) < i - 1
    assert plan["epsilon/vanilla"] == list(range(10)) and plan["flow+mirror/vanilla"] == list(range(8))
    assert plan["flow+mirror/c2ot-f0.5-ramp"] == list(range(5)) and plan["flow+mirror/c2ot-nb8"] == list(
        range(8)
    )
    assert len(order) == len(set(order)) == sum(len(v) for v in plan.values())
    a_done = max(i for i, (r, _) in enumerate(order) if r in grid.PRIORITY["a"])
    assert all(r not in grid.PRIORITY["c"] for r, _ in order[12 : a_done + 1])  # after the pilot
    # (b) runs the mirrored rows to 5 seeds; EXTEND's seeds 5-7 come after every other cell
    extra = {(r, s) for r, n in grid.EXTEND.items() for s in range(5, n)}
    assert set(order[-len(extra) :]) == extra and len(extra) == 9


def test_dominant_share_follows_each_seeds_vanilla_and_tv_uses_the_right_demos(
    rep, tables, tmp_path, monkeypatch
):
    demo = fake_demo()
    monkeypatch.setattr(rep, "demo_split", lambda zarr: demo)
    # seed 0's vanilla prefers cw, seed 1's ccw: the recipe's dominant share is read in those directions
    made = [
        make_cell("epsilon/vanilla", 0, (45, 5, 0)),
        make_cell("epsilon/vanilla", 1, (10, 40, 0)),
        make_cell("epsilon/published", 0, (30, 20, 0), score=0.8, leak=0.06, noise=0.3),
        make_cell("epsilon/published", 1, (20, 30, 0), score=0.8, leak=0.04, noise=0.4),
        make_cell("flow+mirror/vanilla", 0, (25, 25, 0)),
    ]
    args = write_cells(tmp_path, made)
    rows = ["epsilon/vanilla", "epsilon/published", "flow+mirror/vanilla"]
    payload = rep.report(rows, {r: [0, 1] for r in rows}, args)
    by = {s["row"]: s for s in payload["summary"]}
    assert by["epsilon/vanilla"]["final"]["dominant_share"]["mean"] == pytest.approx((0.9 + 0.8) / 2)
    assert by["epsilon/published"]["final"]["dominant_share"]["mean"] == pytest.approx(0.6)
    # TV: raw rows against the raw demos' far-from-goal split and their near-upside-down split, mirrored rows
    # against 50/50 for both
    published = by["epsilon/published"]["final"]["per_seed"][0]
    assert published["tv_to_demos"] == pytest.approx(abs(0.6 - 26 / 49))
    assert published["tv_to_demos_upside_down"] == pytest.approx(abs(0.6 - 0.65))
    assert by["flow+mirror/vanilla"]["final"]["tv_to_demos"]["mean"] == pytest.approx(0.0)
    assert by["flow+mirror/vanilla"]["final"]["tv_to_demos_upside_down"]["mean"] == pytest.approx(0.0)
    assert by["flow+mirror/vanilla"]["missing_seeds"] == [1]
    assert by["epsilon/vanilla"]["curve"][0]["dominant_share"]["mean"] == pytest.approx(0.5)  # epoch 15
    # the noise leak column is the final epoch's, not an earlier one's
    assert by["epsilon/published"]["final"]["condition_leak"]["mean"] == pytest.approx(0.05)
    assert by["epsilon/published"]["curve"][0]["condition_leak"]["mean"] == pytest.approx(-1.0)
    assert by["epsilon/published"]["final"]["noise_share"]["mean"] == pytest.approx(0.35)
    assert by["epsilon/vanilla"]["final"]["noise_share"]["n"] == 0  # cells without it: no number, no zero
    # a vanilla row is judged against its demos, seed by seed (45/5 and 10/40 are both more one-sided than
    # 13/7 and 26/23); a mirrored row against the mirrored demos, balanced by construction
    assert by["epsilon/vanilla"]["verdict"] == (
        "more one-sided than its demos: 2 of 2 seeds against those near 180° (13 / 7), 2 of 2 seeds against "
        "those far from the goal (26 / 23); Fisher's exact test, 5%"
    )
    assert by["flow+mirror/vanilla"]["verdict"].startswith(
        "more one-sided than its demos: 0 of 1 seeds against those near 180° (20 / 20), 0 of 1 seeds against "
        "those far from the goal (49 / 49)"
    )
    assert (
        by["epsilon/published"]["verdict"]
        == "not distinguishable from vanilla; score -0.100 (intervals apart)"
    )
    # paired with the same seed's vanilla: each seed's own difference (TV near 180°: 0.05 - 0.25 and
    # 0.25 - 0.45; dominant share in that seed's vanilla direction: 0.6 - 0.9 and 0.6 - 0.8)
    paired = by["epsilon/published"]["paired"]
    assert paired["tv_to_demos_upside_down"]["mean"] == pytest.approx(-0.2)
    assert paired["dominant_share"]["mean"] == pytest.approx(-0.25)
    assert paired["mean_score"]["mean"] == pytest.approx(-0.1) and paired["mean_score"]["n"] == 2
    assert (
        by["epsilon/published"]["paired_verdict"].startswith("split closer to the demos (TV -0.20")
        and "score lower (-0.100" in by["epsilon/published"]["paired_verdict"]
    )
    assert by["epsilon/vanilla"]["paired"] is None and by["epsilon/vanilla"]["paired_verdict"] == ""
    readme = tables.readme_md(payload["summary"], {r: [0, 1] for r in rows}, 30)
    assert readme.startswith("**Measured: 5 of 6 cells (a lead, not a result")
    line = next(x for x in readme.splitlines() if x.startswith("| epsilon/published |"))
    assert line.startswith("| epsilon/published | 2 of 2 | 60.0 ± 0.0 |")
    assert line.endswith("| split closer to the demos (TV -0.20 ± 0.00), score lower (-0.100 ± 0.000) |")
    assert "| more one-sided than the demos near 180° in 2 of 2 seeds |" in readme  # epsilon/vanilla
    assert readme.rstrip().endswith("| more one-sided than the demos near 180° in 0 of 1 seeds |")
    md = (tmp_path / "report.md").read_text()
    assert "| epsilon/published − vanilla | 2 | -25.0 ± " in md
    # vanilla's two seeds disagree (0.9, 0.8): its interval is wide, so no verdict on the modes
    assert "not distinguishable from vanilla; score -0.100 (intervals apart)" in md
    assert "97.6 ± 1.6%" in md and "cw 26 / ccw 23" in md and "cw 13 / ccw 7" in md
    assert "(cw share 65% (41-85%))" in md
    assert "| epsilon/published | 2 | not met (TV up to" in md  # and no goal row for a vanilla
    assert json.loads((tmp_path / "report.json").read_text())["demos"]["cw"] == 26
    assert (tmp_path / "modes.png").stat().st_size > 1000


def test_paired_verdict_names_a_difference_only_when_its_interval_excludes_zero(rep):
    def row(tv, tv_ci, score, score_ci, n=5):
        agg = lambda m, c: {"mean": m, "ci95": c, "n": n}  # noqa: E731
        return {"paired": {"tv_to_demos_upside_down": agg(tv, tv_ci), "mean_score": agg(score, score_ci)}}

    assert rep.paired_verdict(row(-0.07, 0.08, -0.009, 0.042)) == (
        "split not distinguishable (TV -0.07 ± 0.08), score not distinguishable (-0.009 ± 0.042)"
    )
    assert rep.paired_verdict(row(0.1, 0.05, 0.02, 0.01)).startswith("split further from the demos")
    assert "score higher" in rep.paired_verdict(row(0.1, 0.05, 0.02, 0.01))
    assert rep.paired_verdict(row(0.1, float("nan"), 0.0, float("nan"), n=1)) == "too few seeds"
    assert rep.paired_verdict({"paired": None}) == ""
    broken = {**row(-0.06, 0.09, -0.83, 0.02), "final": {"none_share": {"mean": 0.64, "ci95": 0.1, "n": 5}}}
    assert rep.paired_verdict(broken).startswith("turns the T in only 36% of symmetric rollouts; split not")


def test_verdict_needs_disjoint_intervals(rep):
    def row(name, share, ci, score=0.9, score_ci=0.01, none=0.0):
        agg = lambda m, c: {"mean": m, "ci95": c, "n": 5}  # noqa: E731
        final = {
            "dominant_share": agg(share, ci),
            "mean_score": agg(score, score_ci),
            "none_share": agg(none, 0),
        }
        return {"row": name, "final": final}

    van = row("epsilon/vanilla", 0.95, 0.03)
    assert rep.verdict(row("epsilon/x", 0.6, 0.1, 0.89), van).startswith(
        "keeps both modes better than vanilla"
    )
    assert rep.verdict(row("epsilon/x", 0.9, 0.1), van).startswith("not distinguishable from vanilla")
    assert (
        rep.verdict(row("epsilon/x", 0.99, 0.005, 0.5), van)
        == "more collapsed than vanilla; score -0.400 (intervals apart)"
    )
    assert rep.verdict(van, van) == ""
    # a balanced split of a policy that mostly stops turning the T is not two kept modes: the verdict says so
    # first (at NO_TURN = 20% and above it; not below)
    broken = rep.verdict(row("epsilon/x", 0.55, 0.05, 0.12, none=0.63), van)
    assert broken == (
        "turns the T in only 37% of symmetric rollouts; among those, keeps both modes better than vanilla; "
        "score -0.780 (intervals apart)"
    )
    assert rep.verdict(row("epsilon/x", 0.55, 0.05, none=0.2), van).startswith("keeps both modes")


def test_headline_is_the_final_checkpoint_at_the_papers_sampler(rep):
    cell = make_cell("epsilon/vanilla", 0, (40, 10, 0))
    cell["final"]["ddpm-100"] = {
        "standard": {"mean_score": 0.7, "success_rate": 0.0},
        "symmetric": {"mean_score": 0.4, "success_rate": 0.0, "cw": 5, "ccw": 45, "none": 0},
    }
    assert rep.headline(cell)["mean_score"] == 0.7 and rep.vanilla_direction(cell) == "ccw"
    del cell["final"]["ddpm-100"]
    assert rep.headline(cell) is cell["curve"][-1] and rep.vanilla_direction(cell) == "cw"


def test_a_warmup_cell_forked_from_its_vanilla_twin_equals_training_it(sweep, grid, tmp_path):
    """The sweep starts warm-up cells from vanilla's checkpoint at the warm-up epoch: exactly the same run."""
    from hydra import compose, initialize_config_dir
    from safetensors.torch import load_file

    from immiscible_policy.cli._hydra import config_dir
    from immiscible_policy.policy.train import train_policy

    def cfg_of(*overrides):
        with initialize_config_dir(config_dir(), version_base="1.3"):
            return compose("train", overrides=list(overrides))

    tiny = [
        "model=unet1d_sweep",
        "trainer.objective=flow",
        "trainer.sampler=euler",
        "trainer.batch_size=32",
        "trainer.max_steps_per_epoch=2",
        "trainer.warmup_steps=1",
        "trainer.epochs=2",
        "trainer.eval_every_epochs=0",
        "trainer.eval_at_end=false",
        "trainer.checkpoint_every_epochs=1",
        "trainer.progress=false",
        "task.max_train_episodes=5",
    ]
    recipe = grid.recipe_overrides("published", 1)
    twin = tmp_path / "runs" / sweep.cell_name("flow/vanilla", 0)
    train_policy(cfg_of(*tiny, "assigner=vanilla", f"run_dir={twin}"), twin)
    assert sweep.fork_warmup(tmp_path, "flow/vanilla", 0, warmup=1) is None  # vanilla never forks
    scratch = tmp_path / "scratch"
    train_policy(cfg_of(*tiny, *recipe, f"run_dir={scratch}"), scratch)
    forked = tmp_path / "runs" / sweep.cell_name("flow/published", 0)
    assert sweep.fork_warmup(tmp_path, "flow/published", 0, warmup=1).name == "00000002"
    train_policy(cfg_of(*tiny, *recipe, f"run_dir={forked}", "resume=true", "resume_force=true"), forked)
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(scratch / "checkpoints" / "last" / name)
        b = load_file(forked / "checkpoints" / "last" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    recs = [json.loads(x) for x in (forked / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(x) for x in (scratch / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in recs] == [r["train_loss"] for r in want]
    assert [r["paired_share"] for r in recs] == [0.0, 1.0]


def test_demo_share_interval_is_exact(rep):
    """Clopper-Pearson: the tail probabilities at the bounds are 2.5% each (checked by the binomial sums)."""
    from scipy.stats import binom

    lo, hi = rep.clopper_pearson(13, 7)
    assert binom.sf(12, 20, lo) == pytest.approx(0.025, abs=1e-9)  # P(X >= 13 | lo)
    assert binom.cdf(13, 20, hi) == pytest.approx(0.025, abs=1e-9)  # P(X <= 13 | hi)
    assert rep.clopper_pearson(0, 5)[0] == 0.0 and rep.clopper_pearson(5, 0)[1] == 1.0
    assert rep.clopper_pearson(0, 0) == [0.0, 1.0]


def test_goal_needs_the_tv_interval_under_ten_points_and_the_score_within_two(rep):
    def row(name, tv, ci, score):
        agg = lambda m, c: {"mean": m, "ci95": c, "n": 5}  # noqa: E731
        return {"row": name, "final": {"tv_to_demos": agg(tv, ci), "mean_score": agg(score, 0.01)}}

    van = row("epsilon/vanilla", 0.3, 0.05, 0.95)
    assert rep.goal_check(row("epsilon/x", 0.05, 0.04, 0.94), van, "tv_to_demos") == "met"
    assert rep.goal_check(row("epsilon/x", 0.05, 0.06, 0.94), van, "tv_to_demos") == "not met (TV up to 0.11)"
    assert rep.goal_check(row("epsilon/x", 0.05, 0.04, 0.92), van, "tv_to_demos") == "not met (score -0.030)"
    assert rep.goal_check(van, van, "tv_to_demos") == ""  # vanilla is the reference, not a candidate
    assert rep.goal_check({"row": "epsilon/x", "n_seeds": 0}, van, "tv_to_demos") == ""  # no seed yet
    one = row("epsilon/x", 0.05, float("nan"), 0.95)
    one["final"]["tv_to_demos"]["n"] = 1
    assert rep.goal_check(one, van, "tv_to_demos") == "too few seeds"


def test_fill_noise_share_measures_only_cells_without_it_whose_run_is_kept(sweep, tmp_path, monkeypatch):
    measured = []

    def fake(run_dir, seed):
        measured.append((run_dir.name, seed))
        return {"noise_share": 0.1 * seed}

    monkeypatch.setattr(sweep, "noise_share_of", fake)
    (tmp_path / "cells").mkdir()
    for c, kept in (
        (make_cell("epsilon/vanilla", 1, (1, 1, 0)), True),
        (make_cell("epsilon/vanilla", 2, (1, 1, 0)), False),
    ):
        name = f"epsilon-vanilla-s{c['seed']}"
        (tmp_path / "cells" / f"{name}.json").write_text(json.dumps(c))
        if kept:
            (tmp_path / "runs" / name / "checkpoints").mkdir(parents=True)
    done = make_cell("epsilon/vanilla", 3, (1, 1, 0), noise=0.5)
    (tmp_path / "cells" / "epsilon-vanilla-s3.json").write_text(json.dumps(done))
    (tmp_path / "runs" / "epsilon-vanilla-s3" / "checkpoints").mkdir(parents=True)
    assert sweep.fill_noise_share(tmp_path) == ["epsilon-vanilla-s1"]
    assert measured == [("epsilon-vanilla-s1", 1)]
    cell = json.loads((tmp_path / "cells" / "epsilon-vanilla-s1.json").read_text())
    assert (
        cell["noise_share"] == {"noise_share": 0.1}
        and cell["curve"] == make_cell("epsilon/vanilla", 1, (1, 1, 0))["curve"]
    )
    assert "noise_share" not in json.loads((tmp_path / "cells" / "epsilon-vanilla-s2.json").read_text())


def test_a_missing_warmup_is_trained_once_on_the_twin_and_a_held_one_is_left_for_later(sweep, tmp_path):
    """A later sitting has the finished vanilla cells but not their runs: the first warm-up cell of a seed
    trains the twin's run to the warm-up epoch (and no further), the others fork from it; while another
    worker holds the twin, a cell is left for the second pass instead of training the warm-up again."""
    import os
    import subprocess
    import time

    tiny = [
        "trainer.batch_size=32",
        "trainer.max_steps_per_epoch=2",
        "trainer.warmup_steps=1",
        "trainer.eval_every_epochs=0",
        "trainer.eval_at_end=false",
        "task.max_train_episodes=5",
    ]
    args = SimpleNamespace(
        out=tmp_path, model="unet1d_sweep", warmup=1, epochs=3, eval_every=1, lr=1e-3, batch_size=32
    )
    args.override = tiny
    twin = tmp_path / "runs" / sweep.cell_name("flow/vanilla", 0)
    held = subprocess.Popen(["sleep", "60"])  # a live process other than this one holds the twin
    try:
        twin.mkdir(parents=True)
        (twin / ".owner").write_text(str(held.pid))
        assert sweep.warm_up_twin(tmp_path, "flow/published", 0, args, wait=False) is False
        assert not (twin / "checkpoints").exists()
        (twin / ".owner").write_text(str(os.getpid() + 10**6))  # its worker died: a stale claim is taken
        t0 = time.time()
        assert sweep.warm_up_twin(tmp_path, "flow/published", 0, args, wait=False) is True
        assert time.time() - t0 < 300
    finally:
        held.kill()
    last = json.loads((twin / "checkpoints" / "last" / "config.json").read_text())
    assert last["epoch"] == 1 and sweep.checkpoint_at(twin, 1) is not None  # to the warm-up, no further
    assert not (twin / ".owner").exists()  # released: the next worker need not wait
    assert sweep.fork_warmup(tmp_path, "flow/published", 0, warmup=1) is not None
    # a second recipe of the same seed finds the warm-up and trains nothing
    before = (twin / "metrics.jsonl").read_text()
    assert sweep.warm_up_twin(tmp_path, "flow/knn", 0, args, wait=False) is True
    assert (twin / "metrics.jsonl").read_text() == before
    # vanilla and no-warm-up recipes never need one
    assert sweep.warm_up_twin(tmp_path, "epsilon/published-nowarmup", 0, args, wait=False) is True
    assert not (tmp_path / "runs" / sweep.cell_name("epsilon/vanilla", 0)).exists()


def test_a_recipe_on_neighbour_batches_is_also_paired_with_its_control(
    rep, tables, grid, tmp_path, monkeypatch
):
    """c2ot-nb8 changes two things (the batches and the pairing): its control, vanilla-nb8 (the same batches,
    independent noise), is the reference that isolates the pairing, seed by seed."""
    assert grid.control_of("flow+mirror/c2ot-nb8") == "flow+mirror/vanilla-nb8"
    assert grid.control_of("flow+mirror/vanilla-nb8") is None and grid.control_of("flow/published") is None
    monkeypatch.setattr(rep, "demo_split", lambda zarr: fake_demo())
    splits = {  # seed 0, seed 1 (cw, ccw, none)
        "flow+mirror/vanilla": ((40, 10, 0), (10, 40, 0)),
        "flow+mirror/vanilla-nb8": ((35, 15, 0), (15, 35, 0)),
        "flow+mirror/c2ot-nb8": ((30, 20, 0), (20, 30, 0)),
    }
    made = [
        make_cell(row, seed, split) for row, per_seed in splits.items() for seed, split in enumerate(per_seed)
    ]
    args = write_cells(tmp_path, made)
    rows = list(splits)
    by = {s["row"]: s for s in rep.report(rows, {r: [0, 1] for r in rows}, args)["summary"]}
    nb8 = by["flow+mirror/c2ot-nb8"]
    # mirrored: TV = |cw share - 0.5|; 0.1 for the recipe, 0.2 for the control, 0.3 for vanilla, both seeds
    assert nb8["paired"]["tv_to_demos_upside_down"]["mean"] == pytest.approx(-0.2)
    assert nb8["paired_control"]["tv_to_demos_upside_down"]["mean"] == pytest.approx(-0.1)
    assert nb8["control"] == "flow+mirror/vanilla-nb8"
    assert nb8["control_verdict"].startswith("split closer to the demos (TV -0.10 ± 0.00)")
    assert by["flow+mirror/vanilla-nb8"]["paired_control"] is None
    line = next(
        x for x in tables.readme_md(list(by.values()), {}, 30).splitlines() if "| flow+mirror/c2ot-nb8 |" in x
    )
    assert "; against its control vanilla-nb8: split closer to the demos (TV -0.10" in line
    md = (tmp_path / "report.md").read_text()
    assert (
        "| flow+mirror/c2ot-nb8 − vanilla-nb8 | 2 |" in md and "| flow+mirror/c2ot-nb8 − vanilla | 2 |" in md
    )


def test_remaining_lists_the_unfinished_cells_per_row_in_run_order(sweep, tmp_path):
    order = [("a/vanilla", 0), ("a/vanilla", 1), ("a/x", 0), ("a/vanilla", 2), ("a/x", 1), ("a/x", 3)]
    order += [("a/y", 1), ("a/y", 2)]
    (tmp_path / "cells").mkdir()
    for row, seed in [("a/vanilla", 0), ("a/vanilla", 1), ("a/x", 1)]:
        (tmp_path / "cells" / f"{sweep.cell_name(row, seed)}.json").write_text("{}")
    assert sweep.remaining_text(tmp_path, order) == (
        "Remaining cells (5 of 8): a/x seeds [0, 3]; a/vanilla seed 2; a/y seeds 1-2"
    )
    for row, seed in order:
        (tmp_path / "cells" / f"{sweep.cell_name(row, seed)}.json").write_text("{}")
    assert sweep.remaining_text(tmp_path, order) == "Remaining cells (0): all 8 finished."


def test_a_recipe_is_judged_against_vanillas_sampler_setting_nearest_in_score(
    rep, tables, tmp_path, monkeypatch
):
    """Fewer sampling steps make vanilla more balanced at a lower score: a recipe is compared, seed by seed,
    with its vanilla at the setting whose mean score is nearest its own; chosen by score alone (ddim-16 is
    the most balanced vanilla setting here, yet ddim-4 is nearer in score)."""
    monkeypatch.setattr(rep, "demo_split", lambda zarr: fake_demo())

    def cell(row, seed, finals):
        c = make_cell(row, seed, finals["ddpm-100"][0], score=finals["ddpm-100"][1])

        def sample(split, score):
            return {"mean_score": score, "success_rate": 0.0, **dict(zip(("cw", "ccw", "none"), split))}

        c["final"] = {k: {"standard": sample(*v), "symmetric": sample(*v)} for k, v in finals.items()}
        return c

    vanilla = {"ddpm-100": ((45, 5, 0), 0.95), "ddim-16": ((25, 25, 0), 0.90), "ddim-4": ((35, 15, 0), 0.80)}
    made = [cell("epsilon/vanilla", s, vanilla) for s in (0, 1)]
    made += [cell("epsilon/published", 0, {"ddpm-100": ((30, 20, 0), 0.82)})]
    made += [cell("epsilon/published", 1, {"ddpm-100": ((28, 22, 0), 0.84)})]
    rows = ["epsilon/vanilla", "epsilon/published"]
    payload = rep.report(rows, {r: [0, 1] for r in rows}, write_cells(tmp_path, made))
    by = {s["row"]: s for s in payload["summary"]}
    dial = by["epsilon/published"]["dial"]
    assert dial["vanilla_setting"] == "ddim-4"
    assert dial["dominant_share"]["mean"] == pytest.approx(((0.6 - 0.7) + (0.56 - 0.7)) / 2)
    assert dial["mean_score"]["mean"] == pytest.approx(0.03) and dial["mean_score"]["n"] == 2
    assert dial["tv_to_demos_upside_down"]["mean"] == pytest.approx(((0.05 - 0.05) + (0.09 - 0.05)) / 2)
    assert by["epsilon/published"]["dial_verdict"].startswith("split not distinguishable (TV 0.02 ± ")
    assert by["epsilon/vanilla"]["dial"] is None and by["epsilon/vanilla"]["dial_verdict"] == ""
    same = {**by["epsilon/published"], "dial": {**dial, "vanilla_setting": "ddpm-100"}}
    assert "nearest in score" not in tables.readme_verdict(same)  # the paired verdict says it already
    assert tables.readme_verdict(by["epsilon/published"]).endswith(
        "; against vanilla at ddim-4 (nearest in score): split not distinguishable (TV 0.02 ± 0.25), "
        "score not distinguishable (0.030 ± 0.127)"
    )
    md = (tmp_path / "report.md").read_text()
    assert "| epsilon/published | 58.0 ± " in md and "| ddim-4: 70.0 ± 0.0 / 0.80 ± 0.00 | 2 |" in md
    assert (tmp_path / "frontier.png").stat().st_size > 1000
