"""The PushT modes report's tables: the headline table, the README's block, the goal check, the paired
comparison, the per-epoch and per-step tables and the demos' own split, as markdown.

Builds text from the summary ``pusht_modes_report.py`` computes (its statistics and verdicts); nothing here
reads cells or judges a row.
"""

from __future__ import annotations

import math
import textwrap

from _common import ci_text, markdown_table
from pusht_modes_grid import (
    GOAL_SCORE,
    GOAL_TV,
    NO_TURN,
    NOISE_SHARE_OBS,
    NOISE_SHARE_SAMPLES,
    SYMMETRIC_ROLLOUTS,
    vanilla_of,
)

#: Immiscible Diffusion Policy, Table I, PushT (10 seeds x 50 rollouts; their counts: a share is of the
#: rollouts that turned, ordered by each seed's Diffusion Policy frequency)
PAPER = [
    {"row": "Diffusion Policy (paper)", "dominant": "97.6 ± 1.6%", "score": "95.16 ± 0.30"},
    {"row": "Immiscible DP, Hungarian + warm-up (paper)", "dominant": "65 / 35", "score": "95.39 ± 0.10"},
    {"row": "expert demos (paper)", "dominant": "43.1 / 56.9", "score": "-"},
]


def paper_md() -> str:
    """The paper's Table I PushT row, for the report to print beside ours."""
    return "\n\n### The paper's Table I PushT row, beside ours\n\n" + markdown_table(
        ["row", "dominant mode", "score"], [[p["row"], p["dominant"], p["score"]] for p in PAPER]
    )


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


def main_table_md(summary: list[dict], demo: dict, args) -> str:
    """The headline table (one row per recipe: final modes, scores, leak, noise share, verdict) and its key."""
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
    return md


def readme_md(summary: list[dict], plan: dict[str, list[int]], epochs: int) -> str:
    """The README's block (``pusht_modes.py --report-only --readme README.md``): how many cells are in, and
    one line per row with seeds: the final symmetric-start split, its distance to the demos near 180°, the
    standard score, the action noise share, and its verdict (:func:`readme_verdict`)."""
    done = sum(s["n_seeds"] for s in summary)
    total = sum(len(v) for v in plan.values())
    head = (
        f"**Measured: {done} of {total} cells"
        + (" (a lead, not a result: the rows fill to their seed counts).**" if done < total else ".**")
        + f" Final EMA policy after {epochs} epochs, {SYMMETRIC_ROLLOUTS} rollouts at the symmetric starts, "
        "scored with DDPM-100 "
        "(epsilon, the paper's setting) or Euler-16 (flow); mean ± 95% t-interval over seeds; dominant share in "
        "each seed's vanilla direction; paired: the recipe minus the same seed's vanilla, which it equals up to "
        "the warm-up, at the recipe's sampler and at vanilla's sampler setting nearest in score (fewer steps make "
        "vanilla itself more balanced at a lower score; [frontier.png](benchmarks/results/pusht_modes/frontier.png)) "
        "([report.md](benchmarks/results/pusht_modes/report.md) has every column, the verdicts, the "
        "goal check and the paper's Table I beside ours):"
    )
    rows = []
    for s in summary:
        if not s["n_seeds"]:
            continue
        f = s["final"]
        n = s["n_seeds"] + len(s["missing_seeds"])
        rows.append(
            [
                s["row"],
                f"{s['n_seeds']} of {n}",
                pct(f["dominant_share"]),
                num(f["tv_to_demos_upside_down"], 2),
                num(f["mean_score"]),
                num(f["noise_share"]),
                readme_verdict(s),
            ]
        )
    return (
        textwrap.fill(head, 110, break_on_hyphens=False)
        + "\n\n"
        + markdown_table(
            [
                "row",
                "seeds",
                "dominant share % (symmetric starts)",
                "TV to demos near 180°",
                "score (50 standard starts)",
                "action noise share",
                "verdict (a recipe: against the same seeds' vanilla)",
            ],
            rows,
        )
    )


def readme_verdict(s: dict) -> str:
    """A row's verdict for the README: a recipe's paired verdict (its unpaired one while it has no pair), for
    a recipe with a control the same against it, and against vanilla at the sampler setting nearest in score
    (from 2 pairs; not when that is the recipe's own setting, the first verdict's comparison); a vanilla
    row's count of seeds more one-sided than the demos near 180° (Fisher's exact test)."""
    if s.get("paired") is None and s.get("more_one_sided"):
        m = s["more_one_sided"]
        return f"more one-sided than the demos near 180° in {m['near 180°']['k']} of {m['n']} seeds"
    out = s.get("paired_verdict") or s.get("verdict") or "-"
    if s.get("control_verdict"):
        out += f"; against its control {s['control'].split('/')[1]}: {s['control_verdict']}"
    dial = s.get("dial")
    if dial and dial["mean_score"]["n"] >= 2 and dial["vanilla_setting"] != dial["recipe_setting"]:
        out += f"; against vanilla at {dial['vanilla_setting']} (nearest in score): {s['dial_verdict']}"
    return out


def goal_table_md(summary: list[dict], by_row: dict[str, dict]) -> str:
    """The goal check of every recipe row against both demo splits."""
    md = (
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
    return md


def paired_table_md(summary: list[dict]) -> str:
    """Every recipe row against the same seeds' vanilla, and a recipe with a control against the same
    seeds' control (``pusht_modes_report.paired_with``)."""
    lines = []
    for s in summary:
        for key, verdict, ref in (
            ("paired", "paired_verdict", vanilla_of(s["row"])),
            ("paired_control", "control_verdict", s.get("control")),
        ):
            d = s.get(key)
            if d and d["mean_score"]["n"]:
                lines.append(
                    [
                        f"{s['row']} − {ref.split('/')[1]}",
                        d["mean_score"]["n"],
                        pct(d["dominant_share"]),
                        num(d["tv_to_demos_upside_down"], 2),
                        num(d["mean_score"]),
                        s[verdict],
                    ]
                )
    md = (
        "\n\n### Paired with the same seed's vanilla or control (row minus it, mean ± 95% t-interval over "
        "the seeds both have)\n\n"
    )
    md += markdown_table(
        [
            "row − reference",
            "pairs",
            "dominant share (points)",
            "TV to demos near 180°",
            "score (50 standard)",
            "verdict",
        ],
        lines,
    )
    md += (
        "\n\nA warm-up cell is bit-identical to its vanilla twin up to the warm-up (forked from its "
        "checkpoint), and so is a recipe's control (the neighbour batches with independent noise), so the "
        "difference is what the recipe did after it, with the seed-to-seed spread removed; a negative TV "
        "difference is a split closer to the demos'.\n"
    )
    return md


def dial_table_md(summary: list[dict]) -> str:
    """Each recipe at its headline sampler against its vanilla at the sampler setting nearest in score
    (pusht_modes_report.sampler_dial), paired seed by seed."""
    md = (
        "\n\n### Against vanilla's own sampler dial: a recipe vs its vanilla at the sampler setting nearest "
        "in score (paired, recipe minus vanilla)\n\n"
        "Fewer sampling steps make a policy's action follow its noise more and its split more balanced, at a "
        "score cost; a recipe has beaten vanilla only if it is more balanced than vanilla at the same score "
        "(frontier.png). The vanilla setting is the one whose mean score is nearest the recipe's, chosen by "
        "score alone.\n\n"
    )
    rows = []
    for s in summary:
        d = s.get("dial")
        if not d:
            continue
        rows.append(
            [
                s["row"],
                f"{pct(d['recipe']['dominant_share'])} / {num(d['recipe']['score'], 2)}",
                f"{d['vanilla_setting']}: {pct(d['vanilla']['dominant_share'])} / {num(d['vanilla']['score'], 2)}",
                d["mean_score"]["n"],
                num(d["tv_to_demos_upside_down"], 2),
                num(d["mean_score"], 3),
                s.get("dial_verdict", ""),
            ]
        )
    headers = ["row", "recipe: share % / score", "vanilla setting: share % / score", "pairs"]
    headers += ["TV near 180° (diff)", "score (diff)", "verdict"]
    return md + markdown_table(headers, rows)


def epoch_table_md(summary: list[dict]) -> str:
    """Dominant share and standard score of every row at each evaluation epoch."""
    md = "\n\n### Per evaluation epoch (dominant share % / standard score)\n\n"
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
    return md


def steps_table_md(summary: list[dict]) -> str:
    """The final checkpoint of every row at each sampling setting."""
    keys = sorted(
        {k for s in summary for k in s.get("final_steps", {})}, key=lambda k: (k[0], int(k.split("-")[1]))
    )
    md = "\n\n### Final checkpoint vs sampling steps (standard score / symmetric dominant share %)\n\n"
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
    return md


def demos_md(demo: dict) -> str:
    """The demos' own split, classified with the evaluation's code."""
    return "\n\n### The demos, classified with the same code\n\n" + (
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
