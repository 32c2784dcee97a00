"""The PushT modes report: per-row statistics over seeds, verdicts, the goal check and figures.

Reads the cells ``pusht_modes.py`` wrote (``cells/*.json``) and writes ``report.{md,json}``, ``modes.png``
and ``noise_share.png`` (the markdown tables: ``pusht_modes_tables.py``); nothing here trains.
Definitions: a row's dominant share is the share of the direction that seed's vanilla policy prefers (the
paper's ordering), TV is measured against the demos' split classified with the evaluation's own code
(docs/modes.md).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from _common import (
    ci95,
    ci_text,
    grid_payload,
    hosts,
    hosts_md,
    load_cells,
    summarize_rows,
    write_report,
)
from pusht_modes_grid import (
    EVAL_SAMPLER,
    FINAL,
    GOAL_SCORE,
    GOAL_TV,
    NO_TURN,
    SYMMETRIC_ROLLOUTS,
    control_of,
    parse_row,
    vanilla_of,
)
from pusht_modes_tables import (
    PAPER,
    demos_md,
    dial_table_md,
    epoch_table_md,
    goal_table_md,
    main_table_md,
    paired_table_md,
    paper_md,
    steps_table_md,
)

from immiscible_policy.metrics.pusht_modes import binary_entropy


def split_of(point: dict, prefix: str) -> tuple[int, int, int]:
    """(cw, ccw, none) counts of an evaluation point (record keys ``<prefix>cw`` ...)."""
    return tuple(int(point.get(f"{prefix}{k}") or 0) for k in ("cw", "ccw", "none"))


def share_of(cw: int, ccw: int, direction: str) -> float:
    """The share of ``direction`` among the rollouts that turned (NaN when none turned)."""
    n = cw + ccw
    return float("nan") if n == 0 else (cw if direction == "cw" else ccw) / n


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
        "entropy_bits": binary_entropy(p_cw) if not math.isnan(p_cw) else 0.0,
        "none_share": none / max(cw + ccw + none, 1),
    }


def finite(values: list[float]) -> list[float]:
    return [v for v in values if v is not None and not math.isnan(v)]


def agg(values: list[float]) -> dict:
    """Mean, 95% t-interval half-width and count over the finite values (a failed seed's NaN is left out and
    shows as a smaller n, never as a zero)."""
    v = finite(values)
    return {"mean": float(np.mean(v)) if v else float("nan"), "ci95": ci95(v), "n": len(v)}


def summarize_row(
    row: str, got: list[dict], base: dict[int, dict], demo: dict, control: dict[int, dict] | None = None
) -> dict:
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
        scores = [c["final"][key]["standard"]["mean_score"] for c in cells]
        steps[key] = {
            "score": agg(scores),
            "sym_score": agg([s["mean_score"] for s in sym]),
            "dominant_share": agg([s["dominant_share"] for s in stats]),
            "tv_to_demos": agg([s["tv_to_demos"] for s in stats]),
            "tv_to_demos_upside_down": agg([s["tv_to_demos_upside_down"] for s in stats]),
            "per_seed": [
                {
                    "seed": c["seed"],
                    "mean_score": sc,
                    **{k: st[k] for k in ("dominant_share", "tv_to_demos_upside_down", "none_share")},
                }
                for c, sc, st in zip(cells, scores, stats)
            ],
        }
    last = [headline(c) for c in got]
    return {
        "paired": None if row == vanilla_of(row) else paired_with(got, base, per_seed),
        "paired_control": None if control is None else paired_with(got, control, per_seed),
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


def paired_with(got: list[dict], ref: dict[int, dict], per_seed) -> dict:
    """Each seed against the same seed of a reference row (row minus reference: its vanilla, or its control):
    dominant share, TV to the demos near 180° and standard score, mean and 95% interval of the differences.

    Why paired: a warm-up cell is bit-identical to its vanilla twin up to the warm-up (it forks from the
    twin's checkpoint), and so is a recipe's control, so the two differ only by what each did after it; the
    seed-to-seed spread of the split (wide: mirrored vanilla leans either way) cancels, and the difference's
    interval is the sharpest test of "does pairing change the split" the grid allows.
    """
    diffs = {"dominant_share": [], "tv_to_demos_upside_down": [], "mean_score": []}
    for c in got:
        v = ref.get(c["seed"])
        if v is None:
            continue
        mine, theirs = per_seed(headline(c), c), per_seed(headline(v), v)
        for k in ("dominant_share", "tv_to_demos_upside_down"):
            diffs[k].append(mine[k] - theirs[k])
        diffs["mean_score"].append(headline(c)["mean_score"] - headline(v)["mean_score"])
    return {k: agg(vals) for k, vals in diffs.items()}


def sampler_dial(s: dict, van: dict | None) -> dict | None:
    """A recipe at its headline sampler against its vanilla at the final sampler setting whose mean standard
    score is nearest the recipe's, paired seed by seed (recipe minus vanilla: dominant share, TV to the
    demos near 180°, score; the keys :func:`paired_verdict` reads); None for a vanilla row or without data.

    Why: fewer sampling steps make a policy's action follow its noise more, and its split more balanced, at
    a score cost (vanilla epsilon: DDPM-100 80% / 0.95, DDIM-4 70% / 0.80). A recipe that buys balance with
    score has only beaten vanilla if it is more balanced than vanilla at the same score; the setting is
    chosen by score alone, never by the split, so the comparison is not tilted either way."""
    if van is None or van is s or not s["n_seeds"]:
        return None
    setting = HEADLINE[parse_row(s["row"])[0]]
    mine = s["final_steps"].get(setting)
    if not mine or not van.get("final_steps"):
        return None
    key = min(
        van["final_steps"], key=lambda k: abs(van["final_steps"][k]["score"]["mean"] - mine["score"]["mean"])
    )
    theirs = {p["seed"]: p for p in van["final_steps"][key]["per_seed"]}
    keys = ("dominant_share", "tv_to_demos_upside_down", "mean_score")
    diffs = {k: [p[k] - theirs[p["seed"]][k] for p in mine["per_seed"] if p["seed"] in theirs] for k in keys}
    return {
        "recipe_setting": setting,
        "vanilla_setting": key,
        "recipe": {"dominant_share": mine["dominant_share"], "score": mine["score"]},
        "vanilla": {k: van["final_steps"][key][k] for k in ("dominant_share", "score")},
        **{k: agg(v) for k, v in diffs.items()},
    }


def controls(row: str, cells: dict[tuple[str, int], dict]) -> dict[int, dict] | None:
    """The row's control cells by seed (:func:`pusht_modes_grid.control_of`), None for a row without one."""
    control = control_of(row)
    if control is None:
        return None
    return {seed: c for (r, seed), c in cells.items() if r == control}


def paired_verdict(s: dict, key: str = "paired", lead: bool = True) -> str:
    """The paired differences in words, against the same seeds' vanilla: the split's distance to the demos
    (TV near 180°) and the score, each named when its interval excludes 0, else 'not distinguishable', led by
    how few rollouts turn the T when more than ``NO_TURN`` do not (a broken policy's split is not two modes);
    '' without pairs. ``key="paired_control"``: the same against the row's control; ``key="dial"``: against
    vanilla at the sampler setting nearest in score (:func:`sampler_dial`). ``lead=False`` leaves out the
    no-turn lead (a second verdict on the same row)."""
    d = s.get(key)
    if not d or d["tv_to_demos_upside_down"]["n"] < 2:
        return "" if not d or not d["tv_to_demos_upside_down"]["n"] else "too few seeds"

    def word(a: dict, lower: str, higher: str) -> str:
        lo, hi = a["mean"] - a["ci95"], a["mean"] + a["ci95"]
        return lower if hi < 0 else higher if lo > 0 else "not distinguishable"

    tv, sc = d["tv_to_demos_upside_down"], d["mean_score"]
    none = s.get("final", {}).get("none_share", {}).get("mean", 0.0)
    head = f"turns the T in only {1 - none:.0%} of symmetric rollouts; " if lead and none > NO_TURN else ""
    return (
        f"{head}split {word(tv, 'closer to the demos', 'further from the demos')} "
        f"(TV {ci_text(tv['mean'], tv['ci95'], 2)}), score {word(sc, 'lower', 'higher')} "
        f"({ci_text(sc['mean'], sc['ci95'], 3)})"
    )


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


def more_one_sided(s: dict, demo: dict) -> dict | None:
    """A vanilla row's seeds whose symmetric-start split is more one-sided than the demos' (Fisher's exact
    test at 5% of the seed's cw / ccw against the demos', both finite samples; "more one-sided": further
    from 50 / 50), against the demos near 180° and those far from the goal: ``{"n": seeds, name: {"k": how
    many, "ref": [cw, ccw]}}``; None without seeds. Mirrored rows compare with the mirrored demos (each split
    doubled and balanced)."""
    from scipy.stats import fisher_exact

    per_seed = s.get("final", {}).get("per_seed", [])
    if not per_seed:
        return None
    mirrored = parse_row(s["row"])[1]
    out: dict = {"n": len(per_seed)}
    for name, d in (("near 180°", demo["upside_down"]), ("far from the goal", demo)):
        ref = (d["cw"] + d["ccw"],) * 2 if mirrored else (d["cw"], d["ccw"])
        ref_dev = abs(ref[0] / sum(ref) - 0.5)
        k = sum(
            cw + ccw > 0
            and fisher_exact([[cw, ccw], list(ref)])[1] < 0.05
            and abs(cw / (cw + ccw) - 0.5) > ref_dev
            for cw, ccw, _ in (p["split"] for p in per_seed)
        )
        out[name] = {"k": int(k), "ref": list(ref)}
    return out


def against_demos(counts: dict | None) -> str:
    """A vanilla row's verdict in words, from :func:`more_one_sided`'s counts ('' without seeds)."""
    if counts is None:
        return ""
    parts = [
        f"{c['k']} of {counts['n']} seeds against those {name} ({c['ref'][0]} / {c['ref'][1]})"
        for name, c in counts.items()
        if name != "n"
    ]
    return "more one-sided than its demos: " + ", ".join(parts) + "; Fisher's exact test, 5%"


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
    """Summarise every row from the finished cells, judge it (verdict, goal), and write ``report.{md,json}``,
    ``modes.png``, ``frontier.png`` and ``noise_share.png`` into ``args.out``; returns the JSON payload."""
    cells = load_cells(args.out)
    demo = demo_split(args.zarr)
    summary = summarize_rows(
        rows,
        plan,
        cells,
        vanilla_of,
        lambda row, got, missing, base: {
            "missing_seeds": missing,
            **summarize_row(row, got, base, demo, controls(row, cells)),
        },
    )
    by_row = {s["row"]: s for s in summary}
    for s in summary:  # the verdicts travel in report.json too (the README's table is made from it)
        van = by_row.get(vanilla_of(s["row"]))
        if not s["n_seeds"]:
            s["verdict"] = ""
        elif van is s:
            s["more_one_sided"] = more_one_sided(s, demo)
            s["verdict"] = against_demos(s["more_one_sided"])
        else:
            s["verdict"] = verdict(s, van)
        s["paired_verdict"] = paired_verdict(s)
        s["control"] = control_of(s["row"])
        s["control_verdict"] = paired_verdict(s, "paired_control")
        s["dial"] = sampler_dial(s, van)
        s["dial_verdict"] = paired_verdict(s, "dial", lead=False)
        s["goal"] = {k: goal_check(s, van, k) for k in ("tv_to_demos", "tv_to_demos_upside_down")}
    host_list = hosts(list(cells.values()))
    md = (
        main_table_md(summary, demo, args)
        + goal_table_md(summary, by_row)
        + paired_table_md(summary)
        + dial_table_md(summary)
        + paper_md()
        + epoch_table_md(summary)
        + steps_table_md(summary)
        + demos_md(demo)
        + hosts_md(host_list)
    )
    payload = {
        **grid_payload(
            host_list,
            plan,
            args,
            warmup=args.warmup,
            eval_sampler={k: f"{a}-{b}" for k, (a, b) in EVAL_SAMPLER.items()},
            final={k: [f"{a}-{b}" for a, b in v] for k, v in FINAL.items()},
            symmetric_rollouts=SYMMETRIC_ROLLOUTS,
        ),
        "demos": demo,
        "paper": PAPER,
        "summary": summary,
        "command": " ".join(sys.argv),
    }
    write_report(args.out, md, payload)
    plot_mode_curves(summary, args.out / "modes.png")
    plot_frontier(summary, args.out / "frontier.png")
    plot_noise_share(summary, cells, args.out / "noise_share.png")
    print(md)
    return payload


def row_panels(rows: list[dict], path: Path, *, xlabel: str, title: str, draw) -> None:
    """One panel per objective and data (epsilon, flow, flow+mirror), the panel's vanilla first, in black
    (the reference its recipes are judged against), the rest coloured; ``draw(ax, s, style, reference)``
    draws one row; y is the dominant share at the symmetric starts, legend below each panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = list(dict.fromkeys(s["row"].split("/")[0] for s in rows))
    fig = Figure(figsize=(4.6 * max(len(panels), 1), 5.2))
    FigureCanvasAgg(fig)
    for k, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        mine = [s for s in rows if s["row"].split("/")[0] == panel]
        for i, s in enumerate(sorted(mine, key=lambda s: s["row"] != vanilla_of(s["row"]))):
            reference = s["row"] == vanilla_of(s["row"])
            style = {"color": "k", "lw": 2.2} if reference else {"color": f"C{i % 10}", "lw": 1.2}
            style["label"] = f"{s['row'].split('/')[1]} (n={s['n_seeds']})"
            draw(ax, s, style, reference)
        ax.axhline(0.5, color="k", lw=0.8, ls=":")
        ax.set(title=panel, xlabel=xlabel, ylim=(0.2, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
        if k == 0:
            ax.set_ylabel("dominant share, symmetric starts (0.5 = balanced)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def plot_mode_curves(summary: list[dict], path: Path) -> None:
    """Each row's dominant share at the symmetric starts against epoch (mean over seeds), vanilla shaded by
    its 95% interval over seeds. Recipes are lines only (17 overlapping bands hide every line; their
    intervals and the paired differences are report.md's tables)."""

    def draw(ax, s, style, reference):
        xs = [p["epoch"] for p in s["curve"]]
        m = np.array([p["dominant_share"]["mean"] for p in s["curve"]])
        ax.plot(xs, m, marker="o", ms=3, **style)
        if reference and s["n_seeds"] >= 3:
            half = np.array([p["dominant_share"]["ci95"] for p in s["curve"]], dtype=float)
            ax.fill_between(xs, m - half, m + half, alpha=0.15, color="k", lw=0)

    row_panels(
        [s for s in summary if s["n_seeds"]],
        path,
        xlabel="epoch",
        title="PushT: does the policy keep both rotation modes? (mean over seeds; shaded: vanilla's 95% interval)",
        draw=draw,
    )


def plot_frontier(summary: list[dict], path: Path) -> None:
    """Balance against score: each row's final checkpoint at every sampler setting (mean over seeds; x the
    standard-start score), vanilla's settings named. A recipe beats vanilla only where it lies below
    vanilla's curve (more balanced at the same score), not merely below vanilla's headline point."""

    def draw(ax, s, style, reference):
        keys = sorted(s["final_steps"], key=lambda key: s["final_steps"][key]["score"]["mean"])
        xs = [s["final_steps"][key]["score"]["mean"] for key in keys]
        ys = [s["final_steps"][key]["dominant_share"]["mean"] for key in keys]
        ax.plot(xs, ys, marker="o", ms=3, **style)
        if reference:
            for key, x, y in zip(keys, xs, ys):
                ax.annotate(key, (x, y), fontsize=6, xytext=(3, -9), textcoords="offset points")

    row_panels(
        [s for s in summary if s["n_seeds"] and s.get("final_steps")],
        path,
        xlabel="score, 50 standard starts",
        title="PushT: balance against score across sampler settings (final checkpoint, mean over seeds)",
        draw=draw,
    )


def plot_noise_share(summary: list[dict], cells: dict, path: Path) -> None:
    """One point per finished cell against its final policy's action noise share: the standard-start score
    (left) and the dominant share at the symmetric starts (right), one colour per row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12.5, 4.2))
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
    if right.get_legend_handles_labels()[0]:  # no cell measured it yet: no legend to draw
        right.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
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
