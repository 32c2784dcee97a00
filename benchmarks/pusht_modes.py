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

A finished cell writes ``cells/<cell>.json``; reruns skip finished cells and resume interrupted ones (and
their finished final evaluations); several workers share the list (one per core, ``OMP_NUM_THREADS=1``).
Order: the pilot (seeds 0-1 of vanilla / published / published-f0.5, both objectives), then priority (a)
(epsilon vanilla + published to 10 seeds), (b) (flow to 5 seeds, mirrored vanilla + ours), (c) the rest.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/pusht_modes.py &   # one worker per core
    OMP_NUM_THREADS=1 python benchmarks/pusht_modes.py
    python benchmarks/pusht_modes.py --report-only         # report.{md,json}, modes.png
    python benchmarks/pusht_modes.py --report-only --fill-noise-share   # measure it for older cells first
    python benchmarks/pusht_modes.py --report-only --video flow/vanilla   # one rollout of each mode
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    cell_name,
    ci95,
    ci_text,
    git_commit,
    hosts,
    hosts_md,
    load_cells,
    machine,
    markdown_table,
    plot_mean_ci,
    read_records,
    run_cells,
    summarize_rows,
    write_json,
    write_report,
)
from _common import run_cell as _run_cell  # noqa: E402

OUT = RESULTS / "pusht_modes"
#: the periodic training evaluations' sampler per objective: 16 steps (DDIM for epsilon, Euler for flow).
#: Why not the paper's DDPM-100 there: 100 + 100 rollouts at 100 steps each cost ~6x a 16-step evaluation,
#: and the epoch curves are the trend; the final checkpoint is scored with DDPM-100 too (FINAL).
EVAL_SAMPLER = {"epsilon": ("ddim", 16), "flow": ("euler", 16)}
#: the final checkpoint's scoring (standard and symmetric starts) per objective: (sampler, steps)
FINAL_STEPS = (1, 2, 4, 16)
FINAL = {
    "epsilon": [("ddim", k) for k in FINAL_STEPS] + [("ddpm", 100)],
    "flow": [("euler", k) for k in FINAL_STEPS],
}
SYMMETRIC_ROLLOUTS = 50

PILOT = [f"{o}/{r}" for r in ("vanilla", "published", "published-f0.5") for o in ("epsilon", "flow")]
PRIORITY = {
    "a": {"epsilon/vanilla": 10, "epsilon/published": 10},
    "b": {
        "flow/vanilla": 5,
        "flow/published": 5,
        "flow+mirror/vanilla": 5,
        "flow+mirror/c2ot-f0.5-ramp": 5,
    },
    "c": {
        "epsilon/published-f0.25": 5,
        "epsilon/published-f0.5": 5,
        "epsilon/published-f0.25-ramp": 5,
        "epsilon/published-f0.5-ramp": 5,
        "epsilon/published-nowarmup": 5,
        "epsilon/c2ot": 5,
        "epsilon/knn": 5,
        "epsilon/c2ot-f0.5-ramp": 5,
    },
}

#: Immiscible Diffusion Policy, Table I, PushT (10 seeds x 50 rollouts; their counts: a share is of the
#: rollouts that turned, ordered by each seed's Diffusion Policy frequency)
PAPER = [
    {"row": "Diffusion Policy (paper)", "dominant": "97.6 ± 1.6%", "score": "95.16 ± 0.30"},
    {"row": "Immiscible DP, Hungarian + warm-up (paper)", "dominant": "65 / 35", "score": "95.39 ± 0.10"},
    {"row": "expert demos (paper)", "dominant": "43.1 / 56.9", "score": "-"},
]


def parse_row(row: str) -> tuple[str, bool, str]:
    """'flow+mirror/published-f0.5' -> ('flow', True, 'published-f0.5'); one-line exit on a bad row."""
    head, _, recipe = row.partition("/")
    objective, _, extra = head.partition("+")
    if objective not in EVAL_SAMPLER or extra not in ("", "mirror") or not recipe:
        raise SystemExit(f"row {row!r}: use <epsilon|flow>[+mirror]/<recipe>, e.g. flow+mirror/vanilla.")
    recipe_overrides(recipe, 10)  # the recipe must parse
    return objective, extra == "mirror", recipe


def vanilla_of(row: str) -> str:
    """The row a recipe is judged against: vanilla with the same objective and data ('flow+mirror/x' ->
    'flow+mirror/vanilla'); a vanilla row is its own."""
    return row.split("/")[0] + "/vanilla"


def recipe_overrides(recipe: str, warmup: int) -> list[str]:
    """Hydra overrides of a recipe name (module docstring); ``-f<share>`` and ``-ramp`` suffixes."""
    base, *mods = recipe.split("-")
    fraction, ramp, start = None, False, warmup
    for m in mods:
        if m == "ramp":
            ramp = True
        elif m == "nowarmup":
            start = 0
        elif m.startswith("f") and m[1:].replace(".", "", 1).isdigit():
            fraction = float(m[1:])
        else:
            raise SystemExit(f"recipe {recipe!r}: unknown part {m!r} (use -f<share>, -ramp, -nowarmup).")
    if base == "vanilla":
        if mods:
            raise SystemExit(f"recipe {recipe!r}: vanilla takes no options.")
        return ["assigner=vanilla"]
    groups = {
        "published": ["assigner=linear", "assigner.params.standardize=true"],
        "c2ot": ["assigner=c2ot", "assigner.params.standardize=true"],
        "knn": ["assigner=knn", "++assigner.params.k=4"],
    }
    if base not in groups:
        raise SystemExit(f"recipe {recipe!r}: unknown base {base!r}; use vanilla, {', '.join(groups)}.")
    out = [*groups[base], f"assigner.start_epoch={start}"]
    if fraction is not None:
        out.append(f"assigner.fraction={fraction}")
    if ramp:
        out.append(f"assigner.ramp_epochs={warmup}")
    return out


def planned_seeds(rows: list[str], seeds: int | None) -> dict[str, list[int]]:
    """Seeds per row: the priority table's count (5 for a row it does not name), or ``--seeds N`` for all."""
    table = {r: n for group in PRIORITY.values() for r, n in group.items()}
    return {r: list(range(seeds if seeds is not None else table.get(r, 5))) for r in rows}


def cell_order(rows: list[str], plan: dict[str, list[int]]) -> list[tuple[str, int]]:
    """The pilot (seeds 0-1 of PILOT), then (a), (b), (c) seed-major within each, then any other row.

    Within a group the vanilla cells run one seed ahead of the others (vanilla s0, vanilla s1, the rest of
    s0, vanilla s2, the rest of s1, ...), so that with two workers a warm-up cell finds its vanilla twin's
    checkpoint to fork from (:func:`fork_warmup`) instead of training the same warm-up again.
    """
    order: list[tuple[str, int]] = []
    groups = [[r for r in PILOT if r in rows]] + [[r for r in g if r in rows] for g in PRIORITY.values()]
    groups.append([r for r in rows if not any(r in g for g in groups)])

    def add(cells: list[tuple[str, int]]) -> None:
        order.extend(c for c in cells if c not in order)

    for i, group in enumerate(groups):
        seeds = [0, 1] if i == 0 else sorted({s for r in group for s in plan[r]})
        vanillas = {s: [(r, s) for r in group if r.endswith("/vanilla") and s in plan[r]] for s in seeds}
        rest = {s: [(r, s) for r in group if not r.endswith("/vanilla") and s in plan[r]] for s in seeds}
        for k, s in enumerate(seeds):
            add(vanillas[s] if k else vanillas[s] + (vanillas[seeds[1]] if len(seeds) > 1 else []))
            if k + 1 < len(seeds):
                add(vanillas[seeds[k + 1]])
            add(rest[s])
    for r in rows:
        add([(r, s) for s in plan[r]])
    return order


# ------------------------------------------------------------------------------------------------ cells


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


#: the noise-share measurement of a final checkpoint: observations (evenly spaced validation windows) and
#: samples per observation, with the checkpoint's own sampler (the per-epoch one: DDIM-16 / Euler-16)
NOISE_SHARE_OBS, NOISE_SHARE_SAMPLES = 64, 16


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
    found = None
    for ck in sorted((twin / "checkpoints").glob("[0-9]*")):
        config = ck / "config.json"
        if config.exists() and json.loads(config.read_text()).get("epoch") == start:
            found = ck
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


def run_cell(row: str, seed: int, args) -> dict | None:
    """The cell's JSON: finished, or trained now (None when another worker has it or training failed)."""
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
    forked = fork_warmup(args.out, row, seed, args.warmup)
    if forked is not None or (args.out / "runs" / cell_name(row, seed) / "forked_from.json").exists():
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


# ------------------------------------------------------------------------------------------------ report


def split_of(point: dict, prefix: str) -> tuple[int, int, int]:
    """(cw, ccw, none) counts of an evaluation point (record keys ``<prefix>cw`` ...)."""
    return tuple(int(point.get(f"{prefix}{k}") or 0) for k in ("cw", "ccw", "none"))


def share_of(cw: int, ccw: int, direction: str) -> float:
    """The share of ``direction`` among the rollouts that turned (NaN when none turned)."""
    n = cw + ccw
    return float("nan") if n == 0 else (cw if direction == "cw" else ccw) / n


def entropy_bits(p: float) -> float:
    if not 0.0 < p < 1.0:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


#: the final checkpoint's headline setting per objective: the paper's DDPM-100 for epsilon, Euler-16 for flow
HEADLINE = {"epsilon": "ddpm-100", "flow": "euler-16"}


def headline(cell: dict) -> dict:
    """The final checkpoint at its objective's HEADLINE setting, as an evaluation point (``mean_score``,
    ``sym_mean_score``, ``sym_success_rate``, ``sym_modes_cw`` ...); the last training evaluation for a cell
    without it (synthetic or older cells)."""
    final = cell.get("final", {}).get(
        HEADLINE.get(cell.get("objective") or cell["row"].split("/")[0].split("+")[0], "")
    )
    if final is None:
        return cell["curve"][-1]
    sym = final["symmetric"]
    return {
        "mean_score": final["standard"]["mean_score"],
        "sym_mean_score": sym["mean_score"],
        "sym_success_rate": sym["success_rate"],
        **{f"sym_modes_{k}": sym[k] for k in ("cw", "ccw", "none")},
    }


def vanilla_direction(cell: dict | None) -> str | None:
    """The direction a seed's vanilla policy prefers at the symmetric starts (its final checkpoint)."""
    if cell is None:
        return None
    cw, ccw, _ = split_of(headline(cell), "sym_modes_")
    return "cw" if cw >= ccw else "ccw"


def mode_stats(cw: int, ccw: int, none: int, direction: str, demo_cw: tuple[float, float]) -> dict:
    """One symmetric-start evaluation: the share of ``direction``, TV to the demos (``demo_cw``: the cw share
    of the demos started far from the goal, and of those started near upside down), entropy, none share."""
    p_cw = share_of(cw, ccw, "cw")
    return {
        "dominant_share": share_of(cw, ccw, direction),
        "tv_to_demos": abs(p_cw - demo_cw[0]) if not math.isnan(p_cw) else float("nan"),
        "tv_to_demos_upside_down": abs(p_cw - demo_cw[1]) if not math.isnan(p_cw) else float("nan"),
        "entropy_bits": entropy_bits(p_cw) if not math.isnan(p_cw) else 0.0,
        "none_share": none / max(cw + ccw + none, 1),
    }


def finite(values: list[float]) -> list[float]:
    return [v for v in values if v is not None and not math.isnan(v)]


def summarize_row(row: str, got: list[dict], base: dict[int, dict], demo: dict) -> dict:
    """Per row: the final symmetric-start mode statistics and scores (mean and 95% CI over seeds, the
    dominant direction of each seed taken from that seed's vanilla of the same objective and data), the
    same per evaluation epoch, and the final checkpoint at each sampling step count."""
    if parse_row(row)[1]:  # mirrored demos: every split is 50 / 50 by construction
        demo_cw = (demo["mirrored_cw_share"], demo["mirrored_cw_share"])
    else:
        demo_cw = (demo["cw_share"], demo["upside_down"]["cw_share"])

    def per_seed(point: dict, cell: dict, prefix: str = "sym_modes_") -> dict:
        direction = vanilla_direction(base.get(cell["seed"])) or vanilla_direction(cell)
        return mode_stats(*split_of(point, prefix), direction, demo_cw)

    def agg(values: list[float]) -> dict:
        v = finite(values)
        return {"mean": float(np.mean(v)) if v else float("nan"), "ci95": ci95(v), "n": len(v)}

    finals = [per_seed(headline(c), c) for c in got]
    epochs = sorted(set.intersection(*[{p["epoch"] for p in c["curve"]} for c in got]))
    curve = []
    for e in epochs:
        pts = [(next(p for p in c["curve"] if p["epoch"] == e), c) for c in got]
        stats = [per_seed(p, c) for p, c in pts]
        curve.append(
            {
                "epoch": e,
                "dominant_share": agg([s["dominant_share"] for s in stats]),
                "tv_to_demos": agg([s["tv_to_demos"] for s in stats]),
                "mean_score": agg([p["mean_score"] for p, _ in pts]),
                "sym_mean_score": agg([p.get("sym_mean_score") for p, _ in pts]),
                "paired_share": float(np.mean([p.get("paired_share", 1.0) for p, _ in pts])),
                "condition_leak": agg([p.get("condition_leak", float("nan")) for p, _ in pts]),
            }
        )
    steps = {}
    for key in dict.fromkeys(k for c in got for k in c["final"]):
        cells = [c for c in got if key in c["final"]]
        sym = [c["final"][key]["symmetric"] for c in cells]
        stats = [
            mode_stats(s["cw"], s["ccw"], s["none"], vanilla_direction(base.get(c["seed"])) or "cw", demo_cw)
            for s, c in zip(sym, cells)
        ]
        steps[key] = {
            "score": agg([c["final"][key]["standard"]["mean_score"] for c in cells]),
            "sym_score": agg([s["mean_score"] for s in sym]),
            "dominant_share": agg([s["dominant_share"] for s in stats]),
            "tv_to_demos": agg([s["tv_to_demos"] for s in stats]),
        }
    last = [headline(c) for c in got]
    return {
        "row": row,
        "label": row,
        "n_seeds": len(got),
        "final": {
            "dominant_share": agg([f["dominant_share"] for f in finals]),
            "tv_to_demos": agg([f["tv_to_demos"] for f in finals]),
            "tv_to_demos_upside_down": agg([f["tv_to_demos_upside_down"] for f in finals]),
            "entropy_bits": agg([f["entropy_bits"] for f in finals]),
            "none_share": agg([f["none_share"] for f in finals]),
            "mean_score": agg([p["mean_score"] for p in last]),
            "sym_mean_score": agg([p.get("sym_mean_score") for p in last]),
            "sym_success": agg([p.get("sym_success_rate") for p in last]),
            "condition_leak": agg([c["curve"][-1].get("condition_leak", float("nan")) for c in got]),
            "noise_share": agg([c.get("noise_share", {}).get("noise_share", float("nan")) for c in got]),
            "per_seed": [
                {"seed": c["seed"], **f, "split": split_of(headline(c), "sym_modes_")}
                for c, f in zip(got, finals)
            ],
        },
        "curve": curve,
        "final_steps": steps,
        "s_per_epoch": 60
        * float(np.median([c["curve"][-1]["train_min"] / c["curve"][-1]["epoch"] for c in got])),
    }


def pct(a: dict) -> str:
    return (
        "-" if not a["n"] else ci_text(100 * a["mean"], None if math.isnan(a["ci95"]) else 100 * a["ci95"], 1)
    )


def share_ci(split: dict) -> str:
    """'65% (41-85%)': a demo split's cw share and its exact interval."""
    lo, hi = split["cw_share_ci95"]
    return f"{100 * split['cw_share']:.0f}% ({100 * lo:.0f}-{100 * hi:.0f}%)"


def num(a: dict, digits: int = 3) -> str:
    return "-" if not a["n"] else ci_text(a["mean"], a["ci95"], digits)


#: above this mean share of symmetric rollouts that do not turn the T, a verdict says how few turn before
#: it speaks of modes (a broken policy's split is not two kept modes)
NO_TURN = 0.2


def verdict(s: dict, van: dict | None) -> str:
    """Keeps both modes / collapses / not distinguishable vs its vanilla, from the symmetric-start
    dominant share's interval (led by how few rollouts turn the T when more than ``NO_TURN`` do not);
    plus the standard-start score it costs (interval overlap)."""
    f = s["final"]
    d = f["dominant_share"]
    if not d["n"] or van is None or not van["final"]["dominant_share"]["n"] or s["row"] == van["row"]:
        return ""
    v = van["final"]["dominant_share"]
    if d["n"] < 2 or v["n"] < 2:
        return "too few seeds"
    lo, hi = d["mean"] - d["ci95"], d["mean"] + d["ci95"]
    vlo, vhi = v["mean"] - v["ci95"], v["mean"] + v["ci95"]
    modes = (
        "keeps both modes better than vanilla"
        if hi < vlo
        else "more collapsed than vanilla"
        if lo > vhi
        else "not distinguishable from vanilla"
    )
    none = f["none_share"]["mean"]
    if none > NO_TURN:  # a split of the few rollouts that still turn is not two kept modes
        modes = f"turns the T in only {1 - none:.0%} of symmetric rollouts; among those, {modes}"
    sc, vs = f["mean_score"], van["final"]["mean_score"]
    cost = sc["mean"] - vs["mean"]
    apart = abs(cost) > sc["ci95"] + vs["ci95"]
    return f"{modes}; score {cost:+.3f}" + (" (intervals apart)" if apart else " (overlapping)")


def against_demos(s: dict, demo: dict) -> str:
    """A vanilla row's verdict: in how many seeds its symmetric-start split is more one-sided than the demos'
    (Fisher's exact test at 5% of the seed's cw / ccw against the demos', both finite samples; "more
    one-sided": further from 50 / 50), against the demos near 180° and those far from the goal. Mirrored
    rows compare with the mirrored demos (each split doubled and balanced)."""
    from scipy.stats import fisher_exact

    per_seed = s.get("final", {}).get("per_seed", [])
    if not per_seed:
        return ""
    mirrored = parse_row(s["row"])[1]
    parts = []
    for name, d in (("near 180°", demo["upside_down"]), ("far from the goal", demo)):
        ref = (d["cw"] + d["ccw"],) * 2 if mirrored else (d["cw"], d["ccw"])
        ref_dev = abs(ref[0] / sum(ref) - 0.5)
        k = sum(
            cw + ccw > 0
            and fisher_exact([[cw, ccw], list(ref)])[1] < 0.05
            and abs(cw / (cw + ccw) - 0.5) > ref_dev
            for cw, ccw, _ in (p["split"] for p in per_seed)
        )
        parts.append(f"{k} of {len(per_seed)} seeds against those {name} ({ref[0]} / {ref[1]})")
    return "more one-sided than its demos: " + ", ".join(parts) + "; Fisher's exact test, 5%"


#: the issue's goal: a split within 10 points of the demos' (the TV interval's upper end) at a standard-start
#: score no more than 0.02 below vanilla's (mean difference)
GOAL_TV, GOAL_SCORE = 0.10, 0.02


def goal_check(s: dict, van: dict | None, key: str) -> str:
    """'met' / 'not met (why)' for the goal against the demo split ``key`` (``tv_to_demos`` or
    ``tv_to_demos_upside_down``); empty for vanilla rows and rows without seeds, 'too few seeds' below 2."""
    f = s.get("final")  # absent while a row has no finished seed
    if (
        f is None
        or not f[key]["n"]
        or van is None
        or s["row"] == van["row"]
        or not van["final"]["mean_score"]["n"]
    ):
        return ""
    if f[key]["n"] < 2:
        return "too few seeds"
    tv_hi = min(f[key]["mean"] + f[key]["ci95"], 1.0)  # a t-interval of two seeds can pass 1; TV cannot
    cost = van["final"]["mean_score"]["mean"] - f["mean_score"]["mean"]
    why = ([f"TV up to {tv_hi:.2f}"] if tv_hi > GOAL_TV else []) + (
        [f"score {-cost:+.3f}"] if cost > GOAL_SCORE else []
    )
    return "met" if not why else f"not met ({', '.join(why)})"


def report(rows: list[str], plan: dict[str, list[int]], args) -> dict:
    cells = load_cells(args.out)
    demo = demo_split(args.zarr)
    summary = summarize_rows(
        rows,
        plan,
        cells,
        vanilla_of,
        lambda row, got, missing, base: {"missing_seeds": missing, **summarize_row(row, got, base, demo)},
    )
    by_row = {s["row"]: s for s in summary}
    for s in summary:  # the verdicts travel in report.json too (the README's table is made from it)
        van = by_row.get(vanilla_of(s["row"]))
        if not s["n_seeds"]:
            s["verdict"] = ""
        else:
            s["verdict"] = against_demos(s, demo) if van is s else verdict(s, van)
        s["goal"] = {k: goal_check(s, van, k) for k in ("tv_to_demos", "tv_to_demos_upside_down")}
    table = []
    for s in summary:
        n = s["n_seeds"] + len(s["missing_seeds"])
        seeds = f"{s['n_seeds']}/{n}" + (f" (missing {s['missing_seeds']})" if s["missing_seeds"] else "")
        if not s["n_seeds"]:
            table.append([s["row"], seeds] + [""] * 10)
            continue
        f = s["final"]
        table.append(
            [
                s["row"],
                seeds,
                pct(f["dominant_share"]),
                num(f["tv_to_demos"], 2),
                num(f["tv_to_demos_upside_down"], 2),
                num(f["entropy_bits"], 2),
                num(f["sym_mean_score"]),
                num(f["mean_score"]),
                pct(f["none_share"]),
                num(f["condition_leak"]),
                num(f["noise_share"]),
                s["verdict"],
            ]
        )
    md = (
        f"### PushT modes: final EMA policy after {args.epochs} epochs ({args.model}, batch {args.batch_size}, "
        f"AdamW lr {args.lr:g} cosine; warm-up {args.warmup} epochs; {SYMMETRIC_ROLLOUTS} rollouts at the "
        "symmetric starts; scored with DDPM-100 for epsilon (the paper's setting) and Euler-16 for flow; the "
        "per-epoch table samples with 16 steps, DDIM for epsilon)\n\n"
    )
    md += markdown_table(
        [
            "row",
            "seeds",
            "dominant share % (symmetric)",
            "TV to demos",
            "TV to demos near 180°",
            "entropy (bits)",
            "score (symmetric)",
            "score (50 standard)",
            "no turn %",
            "noise leak R²",
            "action noise share",
            "verdict",
        ],
        table,
    )
    md += (
        "\n\nMean ± 95% t-interval over seeds. Dominant share = share of the direction that seed's vanilla "
        "policy (same objective and data) prefers, among the symmetric-start rollouts that turned the T "
        "(the paper's ordering); 50% is balanced. TV to demos = |cw share - the demos' cw share| "
        f"(raw demos started more than 135° from the goal: cw {demo['cw']} / ccw {demo['ccw']}; near 180°: "
        f"those started within {demo['upside_down']['max_deg']:g}° of upside down, the symmetric starts' "
        f"angle: cw {demo['upside_down']['cw']} / ccw {demo['upside_down']['ccw']}; mirrored demos: 50/50 "
        "for both). Noise leak R² = held-out R² of the paired training noise regressed on the observation "
        "over the final epoch's last 4096 training rows (ridge): the share of the noise a sampler drawing N(0, I) at inference "
        "cannot reproduce; ~0 for independent noise. Action noise share = the share of the final policy's "
        f"action variance that comes from its sampling noise rather than its observation ({NOISE_SHARE_SAMPLES} "
        f"samples for each of {NOISE_SHARE_OBS} validation observations, the per-epoch sampler; "
        "`immiscible-analyze noise_share`): a policy that reads its action off the noise scatters. "
        "Verdict: the dominant share's interval against vanilla's (led by the share of rollouts that turn "
        f"the T when more than {NO_TURN:.0%} do not), and the standard-start score difference; for a vanilla "
        "row, the seeds whose split is more one-sided than the demos'.\n"
    )
    md += (
        f"\n### The goal: TV <= {GOAL_TV:.2f} on its interval at a score no more than {GOAL_SCORE:.2f} below "
        "vanilla's\n\n"
    )
    md += markdown_table(
        ["row", "seeds", "against the far demos", "against the demos near 180°"],
        [
            [
                s["row"],
                s["n_seeds"],
                s["goal"]["tv_to_demos"],
                s["goal"]["tv_to_demos_upside_down"],
            ]
            for s in summary
            if (v := by_row.get(vanilla_of(s["row"]))) is not None and s["row"] != v["row"]
        ],
    )
    md += "\n\n### The paper's Table I PushT row, beside ours\n\n"
    md += markdown_table(
        ["row", "dominant mode", "score"], [[p["row"], p["dominant"], p["score"]] for p in PAPER]
    )
    md += "\n\n### Per evaluation epoch (dominant share % / standard score)\n\n"
    epochs = sorted({p["epoch"] for s in summary for p in s.get("curve", [])})
    md += markdown_table(
        ["row", *[f"epoch {e}" for e in epochs]],
        [
            [s["row"]]
            + [
                next(
                    (
                        f"{pct(p['dominant_share'])} / {num(p['mean_score'], 2)}"
                        for p in s["curve"]
                        if p["epoch"] == e
                    ),
                    "",
                )
                for e in epochs
            ]
            for s in summary
            if s["n_seeds"]
        ],
    )
    keys = sorted(
        {k for s in summary for k in s.get("final_steps", {})}, key=lambda k: (k[0], int(k.split("-")[1]))
    )
    md += "\n\n### Final checkpoint vs sampling steps (standard score / symmetric dominant share %)\n\n"
    md += markdown_table(
        ["row", *keys],
        [
            [s["row"]]
            + [
                (
                    f"{num(v['score'], 2)} / {pct(v['dominant_share'])}"
                    if (v := s["final_steps"].get(k))
                    else ""
                )
                for k in keys
            ]
            for s in summary
            if s["n_seeds"]
        ],
    )
    md += "\n\n### The demos, classified with the same code\n\n"
    md += (
        f"All {demo['all']['n']} demos: cw {demo['all']['cw']}, ccw {demo['all']['ccw']}, "
        f"none {demo['all']['none']}; started more than 135° from the goal ({demo['n']}): cw {demo['cw']}, "
        f"ccw {demo['ccw']}, none {demo['none']} (cw share {share_ci(demo)}), {demo['long_way']['cw']} cw / "
        f"{demo['long_way']['ccw']} ccw of them the long way round; started within "
        f"{demo['upside_down']['max_deg']:g}° of upside down ({demo['upside_down']['n']}): "
        f"cw {demo['upside_down']['cw']}, ccw {demo['upside_down']['ccw']}, none {demo['upside_down']['none']} "
        f"(cw share {share_ci(demo['upside_down'])}), {demo['upside_down']['long_way']['cw']} cw / "
        f"{demo['upside_down']['long_way']['ccw']} ccw the long way. Every other demo turns the shorter way, so "
        "the far split follows which side of upside down the starts lie on; a policy at the symmetric starts "
        "imitates the demos near 180°. Shares with their exact (Clopper-Pearson) 95% interval: a row's share "
        "inside it is not told apart from the demos'.\n"
    )
    host_list = hosts(list(cells.values()))
    md += hosts_md(host_list)
    payload = {
        "machine": machine(),
        "hosts": [json.loads(h) for h in host_list],
        "seeds": plan,
        "protocol": {
            "model": args.model,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "eval_every": args.eval_every,
            "warmup": args.warmup,
            "eval_sampler": {k: f"{a}-{b}" for k, (a, b) in EVAL_SAMPLER.items()},
            "final": {k: [f"{a}-{b}" for a, b in v] for k, v in FINAL.items()},
            "symmetric_rollouts": SYMMETRIC_ROLLOUTS,
            "overrides": args.override,
        },
        "demos": demo,
        "paper": PAPER,
        "summary": summary,
        "command": " ".join(sys.argv),
    }
    write_report(args.out, md, payload)
    plot_mean_ci(
        [
            {
                "label": s["row"],
                "n_seeds": s["n_seeds"],
                "curve": [
                    {
                        "epoch": p["epoch"],
                        "share": p["dominant_share"]["mean"],
                        "ci95": p["dominant_share"]["ci95"],
                    }
                    for p in s["curve"]
                ],
            }
            for s in summary
            if s["n_seeds"]
        ],
        args.out / "modes.png",
        x="epoch",
        y="share",
        ci="ci95",
        xlabel="epoch",
        ylabel="dominant share at the symmetric starts",
        title="PushT: does the policy keep both rotation modes? (0.5 = balanced)",
        ylim=(0.0, 1.02),
    )
    plot_noise_share(summary, cells, args.out / "noise_share.png")
    print(md)
    return payload


def plot_noise_share(summary: list[dict], cells: dict, path: Path) -> None:
    """One point per finished cell against its final policy's action noise share: the standard-start score
    (left) and the dominant share at the symmetric starts (right), one colour per row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2))
    FigureCanvasAgg(fig)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for k, s in enumerate(x for x in summary if x["n_seeds"]):
        got = [c for (row, _), c in sorted(cells.items()) if row == s["row"] and "noise_share" in c]
        if not got:
            continue
        share = [c["noise_share"]["noise_share"] for c in got]
        seeds = {p["seed"]: p["dominant_share"] for p in s["final"]["per_seed"]}
        style = {"color": f"C{k % 10}", "marker": "os^D"[k // 10 % 4], "label": s["row"]}
        left.scatter(share, [headline(c)["mean_score"] for c in got], **style)
        right.scatter(share, [seeds.get(c["seed"], float("nan")) for c in got], **style)
    left.set(xlabel="action noise share (final policy)", ylabel="score, 50 standard starts", ylim=(0, 1.02))
    right.set(xlabel="action noise share (final policy)", ylabel="dominant share, symmetric starts")
    right.axhline(0.5, color="k", lw=0.8, ls=":")
    ticks = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    right.legend(fontsize=7, frameon=False)
    fig.suptitle("PushT: a policy whose action follows its sampling noise (one point per seed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def demo_split(zarr: str | None) -> dict:
    """The demos' rotation split (all demos, those started > 135° from the goal, and those started within
    15° of upside down)."""
    from immiscible_policy.analysis.modes import demo_modes

    d = demo_modes(zarr)
    far, every, up = d["far_from_goal"], d["all"], d["upside_down"]
    out = {
        "all": {"n": every["n_rollouts"], **every["rotation"]},
        "n": far["n_rollouts"],
        **far["rotation"],
        **cw_share(far["rotation"]),
        "long_way": far["long_way"],
        "upside_down": {
            "n": up["n_rollouts"],
            **up["rotation"],
            **cw_share(up["rotation"]),
            "long_way": up["long_way"],
            "max_deg": up["max_deg"],
        },
        "mirrored_cw_share": 0.5,
        "threshold_deg": d["threshold_deg"],
        "far_from_goal_deg": far["min_deg"],
    }
    return out


def cw_share(rotation: dict) -> dict:
    """A demo split's cw share among the turns and its exact 95% interval."""
    cw, ccw = rotation["cw"], rotation["ccw"]
    return {"cw_share": cw / max(cw + ccw, 1), "cw_share_ci95": clopper_pearson(cw, ccw)}


def clopper_pearson(k: int, other: int) -> list[float]:
    """Exact 95% interval of a share k / (k + other): the demo splits are small samples (20 demos near
    upside down), so a policy's share is compared with an interval, not with a point."""
    from scipy.stats import beta

    n = k + other
    if not n:
        return [0.0, 1.0]
    lo = 0.0 if k == 0 else float(beta.ppf(0.025, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(0.975, k + 1, n - k))
    return [lo, hi]


def mode_examples(run_dir: Path, path: Path, seed: int, n: int = SYMMETRIC_ROLLOUTS) -> dict:
    """A video with one rollout of each rotation mode at the symmetric starts (first ``cw``, then ``ccw``).

    The ``n`` rollouts run as the evaluation runs them (one batch, one seeded generator, rollout i from
    symmetric start i); each rollout's actions are recorded, and the first of each mode is replayed with
    rendering (the physics is deterministic: the replay is the rollout). Returns the modes and starts."""
    import torch
    from immiscible_envs.pusht import MAX_EPISODE_STEPS, PushTEnv

    from immiscible_policy.metrics.pusht_modes import rotation_mode
    from immiscible_policy.policy.load import load_policy
    from immiscible_policy.video import write_video

    _, policy, cfg, _ = load_policy(run_dir, device="cpu")
    gen = torch.Generator().manual_seed(int(seed))
    envs = [PushTEnv(obs_type=str(cfg.task.obs_type), render_mode=None) for _ in range(n)]
    hist, actions, info = [], [[] for _ in range(n)], [None] * n
    start_seed = int(cfg.task.eval.start_seed)
    for i, env in enumerate(envs):
        obs, info[i] = env.reset(seed=start_seed + i, options={"starts": "symmetric"})
        hist.append([obs] * policy.n_obs_steps)
    active, steps = list(range(n)), 0
    while active and steps < MAX_EPISODE_STEPS:
        chunk = policy.predict_action(
            np.stack([np.stack(hist[i][-policy.n_obs_steps :]) for i in active]), generator=gen
        )
        still = []
        for row, i in enumerate(active):
            done = False
            for a in chunk[row][: MAX_EPISODE_STEPS - steps]:
                obs, _, done, _, info[i] = envs[i].step(a)
                hist[i].append(obs)
                actions[i].append(a)
                if done:
                    break
            if not done:
                still.append(i)
        steps += chunk.shape[1]
        active = still
    modes = [rotation_mode(inf["net_rotation"]) for inf in info]
    frames, shown = [], {}
    for mode in ("cw", "ccw"):
        if mode not in modes:
            continue
        i = modes.index(mode)
        shown[mode] = i
        env = PushTEnv(obs_type=str(cfg.task.obs_type), render_mode="rgb_array")
        env.reset(seed=start_seed + i, options={"starts": "symmetric"})
        frames.append(env.render())
        for a in actions[i]:
            env.step(a)
            frames.append(env.render())
        frames += [frames[-1]] * 10  # hold the end a second before the next mode
    if frames:
        write_video(path, frames, fps=10)
    return {
        "modes": {m: modes.count(m) for m in ("cw", "ccw", "none")},
        "shown_rollouts": shown,
        "path": str(path),
    }


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
    p.add_argument("--zarr", default=None, help="the PushT demos (default: the task's lookup)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("override", nargs="*", help="extra Hydra overrides for every cell")
    args = p.parse_args(argv)
    for row in args.rows:
        parse_row(row)
    plan = planned_seeds(args.rows, args.seeds)
    if args.fill_noise_share:
        print(f"[sweep] noise share filled in: {fill_noise_share(args.out) or 'none'}", flush=True)
    if not args.report_only:
        run_cells(cell_order(args.rows, plan), lambda row, seed: run_cell(row, seed, args), args.max_minutes)
    report(args.rows, plan, args)
    if args.video:
        run_dir = args.out / "runs" / cell_name(args.video, 0)
        name = cell_name(args.video, 0)
        out = mode_examples(run_dir, args.out / "video" / f"{name}.mp4", seed=0)
        write_json(args.out / "video" / f"{name}.json", out)
        print(f"[video] {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
