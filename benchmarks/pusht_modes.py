"""Does pairing keep a PushT policy multimodal, and what does it cost? Resumable sweep over recipe x seed.

The question comes from *Immiscible Diffusion Policy* (arXiv 2610.09369, Table I): on PushT, plain
Diffusion Policy turns the T one way in 97.6 ± 1.6% of rollouts, Hungarian pairing after a warm-up keeps
both (65 / 35) at equal score. Each cell trains the sweep model (``model=unet1d_sweep``, batch 256, AdamW
lr 1e-3 cosine, the PushT speed grid's protocol) for ``--epochs`` epochs with ``immiscible-train`` and
evaluates the EMA policy every ``--eval-every`` epochs on the 50 standard test starts *and* on the
symmetric starts (``task.eval.symmetric_rollouts``: block upside down on the goal T's symmetry axis, both
rotation directions exactly equally good; 50 rollouts differing only in their sampling noise), with the
rotation mode of every rollout (``cw`` / ``ccw`` / ``none``, docs/modes.md), sampling with 16 steps (DDIM
for epsilon, Euler for flow). At the end it scores the final checkpoint at 1 / 2 / 4 / 16 steps and, for
epsilon, with DDPM-100 (the paper's setting), standard and symmetric starts.

A warm-up cell starts from its vanilla twin's checkpoint at the warm-up epoch when that exists
(:func:`fork_warmup`: bit-identical, a third of the cell saved).

Rows are ``<objective>[+mirror]/<recipe>``; ``+mirror`` trains on the demos plus their reflections
(``task.mirror=true``). Recipes
(``W`` = ``--warmup`` epochs of independent noise first):

    vanilla               independent noise (the baseline)
    published             linear, standardize=true, start_epoch=W  (the paper's recipe)
    published-nowarmup    the same from epoch 0
    published-f0.5        the published matching on a random half of each batch (f0.25: a quarter)
    published-f0.5-ramp   ... the share grown linearly over W epochs after the start
    c2ot                  condition-aware OT (standardized cost), start_epoch=W
    knn                   knn (k=4), start_epoch=W
    c2ot-f0.5-ramp        ours: condition-aware, half the batch, ramped (keeps p(noise | obs) Gaussian
                          and leaves half of each batch's noise untouched)
    c2ot-nb8              ours: condition-aware pairing within neighbour batches (groups of a window and
                          its 7 nearest by observation from other demos; trainer.neighbour_batches)
    vanilla-nb8           its control: the same neighbour batches from W on, independent noise

A finished cell writes ``cells/<cell>.json``; reruns skip finished cells and resume interrupted ones (and
their finished final evaluations); several workers share the list (one per core, ``OMP_NUM_THREADS=1``).
Order: the pilot (seeds 0-1 of vanilla / published / published-f0.5, both objectives), then priority (a)
(epsilon vanilla + published to 10 seeds), (b) (flow to 5 seeds, mirrored vanilla + ours, with the
neighbour-batch control), (c) the rest, then the extension: seeds 5-7 of the mirrored vanilla, c2ot-nb8 and
its control (``EXTEND``: their paired difference needs more than 5 seeds to be told from zero).

The grid (rows, recipes, protocol constants, cell order) is ``pusht_modes_grid.py``; the statistics, verdicts
and figures are ``pusht_modes_report.py``, its markdown tables ``pusht_modes_tables.py``; this script trains
and evaluates the cells.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/pusht_modes.py &   # one worker per core
    OMP_NUM_THREADS=1 python benchmarks/pusht_modes.py
    python benchmarks/pusht_modes.py --remaining           # which cells are left, in the order they run
    python benchmarks/pusht_modes.py --report-only         # report.{md,json}, modes.png
    python benchmarks/pusht_modes.py --report-only --fill-noise-share   # measure it for older cells first
    python benchmarks/pusht_modes.py --report-only --readme README.md   # and the README's table from it
    python benchmarks/pusht_modes.py --report-only --video flow/vanilla   # one rollout of each mode
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    TRAIN_CMD,
    cell_name,
    claim_cell,
    git_commit,
    machine,
    read_records,
    release_cell,
    replace_block,
    run_cells,
    write_json,
)
from _common import run_cell as _run_cell  # noqa: E402
from pusht_modes_grid import (  # noqa: E402
    EVAL_SAMPLER,
    FINAL,
    NOISE_SHARE_OBS,
    NOISE_SHARE_SAMPLES,
    PILOT,
    PRIORITY,
    SYMMETRIC_ROLLOUTS,
    cell_order,
    parse_row,
    planned_seeds,
    recipe_overrides,
    vanilla_of,
)
from pusht_modes_report import mode_examples, report  # noqa: E402
from pusht_modes_tables import readme_md  # noqa: E402

OUT = RESULTS / "pusht_modes"


def final_evals(run_dir: Path, objective: str, seed: int) -> dict:
    """The final checkpoint at each FINAL setting (standard and symmetric starts); saved as each finishes."""
    from immiscible_policy.cli.eval import evaluate_checkpoint

    out = {}
    for sampler, steps in FINAL[objective]:
        key = f"{sampler}-{steps}"
        path = run_dir / "final" / key / "metrics.json"
        if not path.exists():
            t0 = time.time()
            evaluate_checkpoint(
                {
                    "checkpoint": str(run_dir),
                    "sampler": sampler,
                    "num_inference_steps": steps,
                    "seed": seed,
                    "modes": "symmetric",
                    "symmetric_rollouts": SYMMETRIC_ROLLOUTS,
                    "n_video_episodes": 0,
                    "output_dir": str(path.parent),
                }
            )
            print(f"[sweep]   final {key}: {time.time() - t0:.0f} s", flush=True)
        m = json.loads(path.read_text())
        out[key] = {"standard": slim(m), "symmetric": slim(m["symmetric"])}
    return out


def noise_share_of(run_dir: Path, seed: int) -> dict:
    """How much of the final policy's action comes from its sampling noise rather than its observation
    (:mod:`immiscible_policy.analysis.noise_share`); saved in the run's ``final/`` once measured."""
    from immiscible_policy.analysis.runs import policy_checkpoint_noise_share

    path = run_dir / "final" / "noise_share.json"
    if not path.exists():
        res, _ = policy_checkpoint_noise_share(
            str(run_dir),
            n_obs=NOISE_SHARE_OBS,
            samples=NOISE_SHARE_SAMPLES,
            seed=seed,
            sampler=None,
            num_inference_steps=None,
            device="cpu",
        )
        write_json(path, res)
    res = json.loads(path.read_text())
    return {k: res[k] for k in ("noise_share", "within_obs_std", "between_obs_std", "sampler")}


def fill_noise_share(out: Path) -> list[str]:
    """Give the finished cells written before the sweep measured the noise share that measurement, from
    their run's final checkpoint (``runs/`` must still hold it); the names of the cells filled."""
    filled = []
    for path in sorted((out / "cells").glob("*.json")):
        cell = json.loads(path.read_text())
        run_dir = out / "runs" / path.stem
        if "noise_share" in cell or not (run_dir / "checkpoints").exists():
            continue
        cell["noise_share"] = noise_share_of(run_dir, cell["seed"])
        write_json(path, cell)
        filled.append(path.stem)
    return filled


def slim(m: dict) -> dict:
    """Score, success and the rotation split of an evaluation's metrics (per-episode lists dropped)."""
    rot = m["modes"]["rotation"]
    return {"mean_score": m["mean_score"], "success_rate": m["success_rate"], **{k: rot[k] for k in rot}}


def start_epoch_of(recipe: str, warmup: int) -> int:
    """The epoch a recipe starts pairing (0 for vanilla: it never pairs, and nothing forks from it)."""
    for o in recipe_overrides(recipe, warmup):
        if o.startswith("assigner.start_epoch="):
            return int(o.split("=", 1)[1])
    return 0


def checkpoint_at(run_dir: Path, epoch: int) -> Path | None:
    """The run's checkpoint saved at the end of ``epoch`` (the last such), or None."""
    found = None
    for ck in sorted((run_dir / "checkpoints").glob("[0-9]*")):
        config = ck / "config.json"
        if config.exists() and json.loads(config.read_text()).get("epoch") == epoch:
            found = ck
    return found


def warm_up_twin(out: Path, row: str, seed: int, args, wait: bool) -> bool:
    """Give a warm-up cell a checkpoint to fork from: train its vanilla twin's run up to the warm-up epoch
    (the twin's own overrides, ``trainer.max_epochs_this_run``) when it has none there; False when another
    worker holds the twin and ``wait`` is off (the caller leaves the cell for a later pass).

    Why: the vanilla cells keep every checkpoint, but ``runs/`` is not committed, so a later sitting finds
    finished vanilla cells without them and every warm-up cell would train its ``warmup`` epochs again (the
    seven epsilon rows of (c) share one warm-up per seed). The twin's run is the same as its cell's, so an
    unfinished twin cell later resumes from it exactly.
    """
    recipe = parse_row(row)[2]
    start = start_epoch_of(recipe, args.warmup)
    if recipe == "vanilla" or start == 0 or (out / "runs" / cell_name(row, seed) / "checkpoints").exists():
        return True
    twin_row = vanilla_of(row)
    twin = out / "runs" / cell_name(twin_row, seed)
    while checkpoint_at(twin, start) is None:
        if claim_cell(twin):
            break
        if not wait:
            print(f"[sweep] {row} seed {seed}: another worker trains its warm-up; left for later", flush=True)
            return False
        time.sleep(20)
    else:
        return True
    try:
        last = twin / "checkpoints" / "last" / "config.json"
        at = json.loads(last.read_text()).get("epoch", 0) if last.exists() else 0
        if at >= start:  # past the warm-up without its checkpoint: nothing to fork from
            return True
        cmd = [
            *TRAIN_CMD,
            *cell_overrides(twin_row, seed, args),
            f"run_dir={twin}",
            "resume=auto",
            f"trainer.max_epochs_this_run={start - at}",
            *args.override,
        ]
        print(f"[sweep] {row} seed {seed}: training its warm-up ({twin_row} to epoch {start})", flush=True)
        subprocess.run(cmd)
    finally:
        release_cell(twin)
    return True


def fork_warmup(out: Path, row: str, seed: int, warmup: int) -> Path | None:
    """Start a warm-up cell from its vanilla twin's checkpoint at the warm-up epoch; returns that checkpoint.

    Why this is exact, not an approximation: before ``start_epoch`` the noising core neither calls the
    strategy nor draws anything extra, so a warm-up run is bit-identical to vanilla (same objective, data,
    seed) up to that epoch (tests/test_pairing_schedule.py), evaluations included; the checkpoint holds the
    optimiser, EMA and RNG states, so resuming from it continues exactly as the cell's own run would. It
    saves ``warmup`` of ``--epochs`` epochs and their evaluations per warm-up cell. Nothing happens when the
    cell has started already, the recipe has no warm-up, or the twin has no checkpoint at that epoch yet.
    """
    recipe = parse_row(row)[2]
    start = start_epoch_of(recipe, warmup)
    run_dir = out / "runs" / cell_name(row, seed)
    if recipe == "vanilla" or start == 0 or (run_dir / "checkpoints").exists():
        return None
    twin = out / "runs" / cell_name(vanilla_of(row), seed)
    found = checkpoint_at(twin, start)
    if found is None:
        return None
    import shutil

    ckpts = run_dir / "checkpoints"
    ckpts.mkdir(parents=True)
    shutil.copytree(found, ckpts / found.name)
    (ckpts / "last").symlink_to(found.name)
    # the twin's records up to the fork (later ones are dropped on resume); its paired_share says 1.0 (vanilla
    # "pairs" every row with the identity), where this recipe paired none of them yet
    records = read_records(twin)
    lines = [json.dumps({**r, "paired_share": 0.0}) for r in records if r.get("epoch", 0) <= start]
    (run_dir / "metrics.jsonl").write_text("".join(f"{x}\n" for x in lines))
    write_json(run_dir / "forked_from.json", {"checkpoint": str(found), "epoch": start})
    print(
        f"[sweep] {row} seed {seed}: forked from {found} (epoch {start}, bit-identical warm-up)", flush=True
    )
    return found


#: what a cell keeps of each evaluation epoch's record: scores, the paired share, and the pairing's training
#: diagnostics (``condition_leak``: held-out R^2 of the paired noise regressed on the observation, the
#: prior a sampler drawing N(0, I) never meets; ``pair_l2``, ``noise_proj_x0``), beside every ``modes_`` /
#: ``sym_`` key
CURVE_KEYS = (
    "epoch",
    "step",
    "train_min",
    "train_loss",
    "mean_score",
    "success_rate",
    "paired_share",
    "condition_leak",
    "pair_l2",
    "noise_proj_x0",
)


def cell_overrides(row: str, seed: int, args) -> list[str]:
    """The ``immiscible-train`` overrides of a cell (its run directory and resume aside)."""
    objective, mirror, recipe = parse_row(row)
    sampler, steps = EVAL_SAMPLER[objective]
    overrides = [
        "task=pusht",
        f"model={args.model}",
        *recipe_overrides(recipe, args.warmup),
        f"trainer.objective={objective}",
        f"trainer.sampler={sampler}",
        f"trainer.num_inference_steps={steps}",
        f"trainer.seed={seed}",
        f"trainer.lr={args.lr}",
        f"trainer.batch_size={args.batch_size}",
        f"trainer.epochs={args.epochs}",
        f"trainer.eval_every_epochs={args.eval_every}",
        f"trainer.checkpoint_every_epochs={args.eval_every}",
        f"task.eval.symmetric_rollouts={SYMMETRIC_ROLLOUTS}",
        "task.eval.n_video_episodes=0",
        "trainer.progress=false",
    ] + (["task.mirror=true"] if mirror else [])
    if recipe == "vanilla":  # keep every checkpoint: the warm-up cells fork from the one at --warmup
        overrides.append("trainer.keep_last=null")
    return overrides


def run_cell(row: str, seed: int, args, wait: bool = False) -> dict | None:
    """The cell's JSON: finished, or trained now (None when another worker has it or its warm-up, or training
    failed). ``wait``: wait for another worker's warm-up of this cell instead of leaving the cell."""
    objective, mirror, recipe = parse_row(row)
    sampler, steps = EVAL_SAMPLER[objective]
    done = args.out / "cells" / f"{cell_name(row, seed)}.json"
    if done.exists():
        return json.loads(done.read_text())
    run_dir = args.out / "runs" / cell_name(row, seed)
    if not claim_cell(run_dir):  # before the fork: two workers must not fork into one directory
        print(f"[sweep] {row} seed {seed} is being run by another worker; skipping it here", flush=True)
        return None
    if not warm_up_twin(args.out, row, seed, args, wait):
        release_cell(run_dir)
        return None
    overrides = cell_overrides(row, seed, args)
    forked = fork_warmup(args.out, row, seed, args.warmup)
    if forked is not None or (run_dir / "forked_from.json").exists():
        overrides.append("resume_force=true")  # the twin's checkpoint records assigner=vanilla

    def build(run_dir: Path, records: list[dict], wall_min: float, cmd_overrides: list[str]) -> dict:
        evals = [r for r in records if "mean_score" in r]
        curve = []
        for r in evals:
            point = {k: r[k] for k in CURVE_KEYS if k in r}
            point.update({k: v for k, v in r.items() if k.startswith(("modes_", "sym_"))})
            curve.append(point)
        return {
            "row": row,
            "objective": objective,
            "mirror": mirror,
            "recipe": recipe,
            "seed": seed,
            "epochs": args.epochs,
            "warmup": args.warmup,
            "model": args.model,
            "eval_sampler": f"{sampler}-{steps}",
            "curve": curve,
            "final": final_evals(run_dir, objective, seed),
            "noise_share": noise_share_of(run_dir, seed),
            "forked_from": (
                json.loads((run_dir / "forked_from.json").read_text())
                if (run_dir / "forked_from.json").exists()
                else None
            ),
            "cell_wall_min": wall_min,
            "machine": machine(),
            "git_commit": git_commit(),
            "overrides": cmd_overrides,
        }

    return _run_cell(args.out, row, seed, overrides, args.override, build)


def remaining_text(out: Path, order: list[tuple[str, int]]) -> str:
    """The cells of ``order`` without a finished cell file under ``out/cells``, one line: the count, then
    each row's missing seeds in the order the sweep runs them ('epsilon/c2ot seeds 1-4; ...')."""
    left: dict[str, list[int]] = {}
    for row, seed in order:
        if not (out / "cells" / f"{cell_name(row, seed)}.json").is_file():
            left.setdefault(row, []).append(seed)
    if not left:
        return f"Remaining cells (0): all {len(order)} finished."

    def seeds(s: list[int]) -> str:
        contiguous = s == list(range(s[0], s[-1] + 1))
        return f"seed {s[0]}" if len(s) == 1 else f"seeds {s[0]}-{s[-1]}" if contiguous else f"seeds {s}"

    n = sum(len(v) for v in left.values())
    return f"Remaining cells ({n} of {len(order)}): " + "; ".join(f"{r} {seeds(v)}" for r, v in left.items())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--rows", nargs="+", default=list(dict.fromkeys(PILOT + [r for g in PRIORITY.values() for r in g]))
    )
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 for every row (default: the plan)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10, help="start_epoch of the warm-up recipes")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--model", default="unet1d_sweep")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--max-minutes", type=float, default=None, help="start no new cell after this many minutes"
    )
    p.add_argument("--report-only", action="store_true")
    p.add_argument(
        "--remaining",
        action="store_true",
        help="list the cells not yet finished, in the order they run, and exit",
    )
    p.add_argument(
        "--fill-noise-share",
        action="store_true",
        help="first give finished cells without a noise share one, from their run's final checkpoint",
    )
    p.add_argument(
        "--video",
        metavar="ROW",
        default=None,
        help="with --report-only: one rollout of each mode of ROW's seed-0 cell",
    )
    p.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="fill this file's <!-- pusht_modes:begin/end --> block with the report's table (README.md)",
    )
    p.add_argument("--zarr", default=None, help="the PushT demos (default: the task's lookup)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("override", nargs="*", help="extra Hydra overrides for every cell")
    args = p.parse_args(argv)
    for row in args.rows:
        parse_row(row)
    plan = planned_seeds(args.rows, args.seeds)
    if args.remaining:
        print(remaining_text(args.out, cell_order(args.rows, plan)))
        return 0
    if args.fill_noise_share:
        print(f"[sweep] noise share filled in: {fill_noise_share(args.out) or 'none'}", flush=True)
    if not args.report_only:
        order, start = cell_order(args.rows, plan), time.time()
        run_cells(order, lambda row, seed: run_cell(row, seed, args), args.max_minutes, start)
        # second pass: the cells left while another worker trained their warm-up, waiting for it now
        run_cells(order, lambda row, seed: run_cell(row, seed, args, wait=True), args.max_minutes, start)
    payload = report(args.rows, plan, args)
    if args.readme is not None:
        replace_block(args.readme, "pusht_modes", readme_md(payload["summary"], plan, args.epochs))
    if args.video:
        run_dir = args.out / "runs" / cell_name(args.video, 0)
        name = cell_name(args.video, 0)
        out = mode_examples(run_dir, args.out / "video" / f"{name}.mp4", seed=0)
        write_json(args.out / "video" / f"{name}.json", out)
        print(f"[video] {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
