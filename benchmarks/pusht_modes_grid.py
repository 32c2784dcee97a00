"""The PushT modes grid: its rows, their recipes, the protocol's constants and the order cells run in.

A row is ``<objective>[+mirror]/<recipe>`` (benchmarks/pusht_modes.py's docstring lists the recipes); the
sweep (``pusht_modes.py``) trains and evaluates the cells, ``pusht_modes_report.py`` summarises them.
"""

from __future__ import annotations

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
        "flow+mirror/c2ot-nb8": 5,
        "flow+mirror/vanilla-nb8": 5,
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
#: seeds beyond PRIORITY's, run after every other cell: our neighbour-batch recipe, its control and their
#: vanilla to 8 seeds on the mirrored demos (at 4 seeds c2ot-nb8 moved the split 0.05 ± 0.04 closer to
#: 50 / 50 than its control, paired seed by seed: an interval 5 seeds barely separate from zero)
EXTEND = {"flow+mirror/vanilla": 8, "flow+mirror/c2ot-nb8": 8, "flow+mirror/vanilla-nb8": 8}

#: the noise-share measurement of a final checkpoint: observations (evenly spaced validation windows) and
#: samples per observation, with the checkpoint's own sampler (the per-epoch one: DDIM-16 / Euler-16)
NOISE_SHARE_OBS, NOISE_SHARE_SAMPLES = 64, 16


#: above this mean share of symmetric rollouts that do not turn the T, a verdict says how few turn before
#: it speaks of modes (a broken policy's split is not two kept modes)
NO_TURN = 0.2
#: the issue's goal: a split within 10 points of the demos' (the TV interval's upper end) at a standard-start
#: score no more than 0.02 below vanilla's (mean difference)
GOAL_TV, GOAL_SCORE = 0.10, 0.02


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


def control_of(row: str) -> str | None:
    """The row that tells a recipe's pairing from the rest of what it changes, or None: for a recipe on
    neighbour batches ('flow+mirror/c2ot-nb8'), the same batches with independent noise
    ('flow+mirror/vanilla-nb8'), since grouping similar observations into a batch is itself a change."""
    head, _, recipe = row.partition("/")
    base, *mods = recipe.split("-")
    groups = [m for m in mods if m.startswith("nb")]
    return f"{head}/vanilla-{groups[0]}" if base != "vanilla" and groups else None


def recipe_overrides(recipe: str, warmup: int) -> list[str]:
    """Hydra overrides of a recipe name (module docstring); ``-f<share>``, ``-ramp``, ``-nowarmup`` and
    ``-nb<k>`` (neighbour batches of k from the start) suffixes."""
    base, *mods = recipe.split("-")
    fraction, ramp, start, groups = None, False, warmup, None
    for m in mods:
        if m == "ramp":
            ramp = True
        elif m == "nowarmup":
            start = 0
        elif m.startswith("f") and m[1:].replace(".", "", 1).isdigit():
            fraction = float(m[1:])
        elif m.startswith("nb") and m[2:].isdigit() and int(m[2:]) > 1:
            groups = int(m[2:])
        else:
            raise SystemExit(
                f"recipe {recipe!r}: unknown part {m!r} (use -f<share>, -ramp, -nowarmup, -nb<k>)."
            )
    if base == "vanilla":  # the baseline; with -nb<k>, the control for what neighbour batches alone do
        if fraction is not None or ramp or start != warmup or (mods and groups is None):
            raise SystemExit(f"recipe {recipe!r}: vanilla takes only -nb<k>.")
        if groups is None:
            return ["assigner=vanilla"]
        return ["assigner=vanilla", f"assigner.start_epoch={start}", f"trainer.neighbour_batches={groups}"]
    strategies = {
        "published": ["assigner=linear", "assigner.params.standardize=true"],
        "c2ot": ["assigner=c2ot", "assigner.params.standardize=true"],
        "knn": ["assigner=knn", "++assigner.params.k=4"],
    }
    if base not in strategies:
        raise SystemExit(f"recipe {recipe!r}: unknown base {base!r}; use vanilla, {', '.join(strategies)}.")
    out = [*strategies[base], f"assigner.start_epoch={start}"]
    if groups is not None:
        out.append(f"trainer.neighbour_batches={groups}")
    if fraction is not None:
        out.append(f"assigner.fraction={fraction}")
    if ramp:
        out.append(f"assigner.ramp_epochs={warmup}")
    return out


def planned_seeds(rows: list[str], seeds: int | None) -> dict[str, list[int]]:
    """Seeds per row: EXTEND's count, else the priority table's (5 for a row neither names), or ``--seeds N``
    for all."""
    table = {r: n for group in PRIORITY.values() for r, n in group.items()} | EXTEND
    return {r: list(range(seeds if seeds is not None else table.get(r, 5))) for r in rows}


def cell_order(rows: list[str], plan: dict[str, list[int]]) -> list[tuple[str, int]]:
    """The pilot (seeds 0-1 of PILOT), then (a), (b), (c) seed-major within each (a row's seeds up to that
    group's count), then any other row, then EXTEND's extra seeds.

    Within a group the vanilla cells run one seed ahead of the others (vanilla s0, vanilla s1, the rest of
    s0, vanilla s2, the rest of s1, ...), so that with two workers a warm-up cell finds its vanilla twin's
    checkpoint to fork from (:func:`fork_warmup`) instead of training the same warm-up again.
    """
    order: list[tuple[str, int]] = []
    groups = [[r for r in PILOT if r in rows]] + [[r for r in g if r in rows] for g in PRIORITY.values()]
    groups.append([r for r in rows if not any(r in g for g in PRIORITY.values())])  # pilot-only rows too
    groups.append([r for r in EXTEND if r in rows])
    # a group's seeds of a row: the pilot's two, each priority group's count, the rest, then EXTEND's
    caps = [{r: 2 for r in PILOT}] + [dict(g) for g in PRIORITY.values()] + [{}, {}]

    def add(cells: list[tuple[str, int]]) -> None:
        order.extend(c for c in cells if c not in order)

    for i, group in enumerate(groups):
        within = {r: [s for s in plan[r] if s < caps[i].get(r, len(plan[r]))] for r in group}
        seeds = [0, 1] if i == 0 else sorted({s for r in group for s in within[r]})
        vanillas = {s: [(r, s) for r in group if r.endswith("/vanilla") and s in within[r]] for s in seeds}
        rest = {s: [(r, s) for r in group if not r.endswith("/vanilla") and s in within[r]] for s in seeds}
        for k, s in enumerate(seeds):
            add(vanillas[s] if k else vanillas[s] + (vanillas[seeds[1]] if len(seeds) > 1 else []))
            if k + 1 < len(seeds):
                add(vanillas[seeds[k + 1]])
            add(rest[s])
    for r in rows:
        add([(r, s) for s in plan[r]])
    return order
