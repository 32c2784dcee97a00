"""PushT from pixels vs from keypoints on a CPU: the score after the same epochs and the same minutes.

Two rows, the same trainer (``trainer=quickstart``: rectified flow, AdamW lr 1e-3 cosine, batch 256, Euler-16
evaluation of the EMA policy on the 50 standard test starts every ``--eval-every`` epochs), the same U-Net
(``unet1d_cpu``'s: down dims 64/128/256):

- ``pixels``: ``task=pusht_image`` (``model=unet1d_image_cpu``: the last 2 camera frames 96x96 through the
  CPU-sized ResNet with GroupNorm + spatial softmax, random 84-crops in training, plus the agent xy);
- ``keypoints``: ``task=pusht model=unet1d_cpu`` (the 9 block keypoints + agent xy).

Why this pairing of rows: it isolates what the camera costs (encoder compute per step, and the epochs the
policy needs to learn the block pose from pixels) from everything else. Minutes are the trainer's
``train_min`` (training only, evaluations excluded, wall clock); the report states how many single-thread
trainers shared the machine (``--note``), because a shared CPU stretches wall minutes.

Cells (``cells/<row>-s<seed>.json``) are trained with ``immiscible-train`` through the sweeps' shared cell
life (``_common.run_cell``: claimed by one worker, resumable, skipped once written).

Usage:
    OMP_NUM_THREADS=1 python benchmarks/pusht_pixels.py --rows pixels &    # one worker per core
    OMP_NUM_THREADS=1 python benchmarks/pusht_pixels.py --rows keypoints
    python benchmarks/pusht_pixels.py --report-only
Writes benchmarks/results/pusht_pixels/{report.json, report.md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    git_commit,
    hosts,
    hosts_md,
    load_cells,
    machine,
    markdown_table,
    mean_ci,
    run_cell,
    run_cells,
    write_report,
)

OUT = RESULTS / "pusht_pixels"
ROWS = {
    "pixels": ["task=pusht_image", "model=unet1d_image_cpu"],
    "keypoints": ["task=pusht", "model=unet1d_cpu"],
}


def overrides(row: str, seed: int, args) -> list[str]:
    """The row's task and model, then the protocol every row shares."""
    return [
        *ROWS[row],
        "trainer=quickstart",
        f"trainer.epochs={args.epochs}",
        f"trainer.eval_every_epochs={args.eval_every}",
        f"trainer.checkpoint_every_epochs={args.eval_every}",
        f"trainer.seed={seed}",
        "trainer.progress=false",
    ]


def train(row: str, seed: int, args) -> dict | None:
    """The cell of ``row`` x ``seed``: its evaluations (epoch, training minutes, score) and the host."""

    def build(run_dir: Path, records: list[dict], wall_min: float, cmd: list[str]) -> dict:
        evals = [r for r in records if "mean_score" in r]
        return {
            "row": row,
            "seed": seed,
            "epochs": args.epochs,
            "curve": [
                {k: r[k] for k in ("epoch", "step", "train_min", "mean_score", "success_rate")} for r in evals
            ],
            "min_per_epoch": records[-1]["train_min"] / records[-1]["epoch"],
            "eval_seconds": [r["eval_seconds"] for r in evals],
            "machine": machine(),
            "git_commit": git_commit(),
            "overrides": cmd,
        }

    return run_cell(args.out, row, seed, overrides(row, seed, args), args.override, build)


def score_at_minutes(cell: dict, minutes: float) -> tuple[int, float] | None:
    """(epoch, score) of the last evaluation whose training minutes are within ``minutes``."""
    done = [p for p in cell["curve"] if p["train_min"] <= minutes + 1e-9]
    return (done[-1]["epoch"], done[-1]["mean_score"]) if done else None


def at_text(at: tuple[int, float] | None) -> str:
    """'10, 0.910' for a score_at_minutes result; '-' when no evaluation fell within the minutes."""
    return "-" if not at else "{}, {:.3f}".format(*at)


def report(args) -> dict:
    cells = load_cells(args.out)
    by_row = {r: [c for (row, _), c in sorted(cells.items()) if row == r] for r in ROWS}
    epochs = sorted({p["epoch"] for cs in by_row.values() for c in cs for p in c["curve"]})
    table = []
    for row, cs in by_row.items():
        if not cs:
            table.append([row, "0", *["-"] * (len(epochs) + 2)])
            continue
        scores = []
        for e in epochs:
            vals = [p["mean_score"] for c in cs for p in c["curve"] if p["epoch"] == e]
            scores.append(mean_ci(vals) if vals else "-")
        mins = [c["min_per_epoch"] for c in cs]
        table.append([row, str(len(cs)), *scores, mean_ci(mins, 2), ", ".join(str(c["seed"]) for c in cs)])
    md = (
        f"### PushT from pixels vs keypoints (trainer=quickstart: flow, lr 1e-3, batch 256, Euler-16; the same "
        f"U-Net; {args.epochs} epochs)\n\n"
        + markdown_table(
            ["row", "seeds", *[f"score at epoch {e}" for e in epochs], "training min / epoch", "seed list"],
            table,
        )
        + "\n\nScore: mean over the 50 standard test starts of the EMA policy (mean ± 95% t-interval over seeds "
        "when there are several). Training minutes: wall clock of training only (evaluations excluded).\n"
    )
    same = []
    for c in by_row["pixels"]:
        k = cells.get(("keypoints", c["seed"]))  # the same seed's keypoint cell
        if k is None:
            continue
        same.append(
            {
                "seed": c["seed"],
                "pixels_minutes": c["curve"][-1]["train_min"],
                "pixels_score": c["curve"][-1]["mean_score"],
                "keypoints_at_those_minutes": score_at_minutes(k, c["curve"][-1]["train_min"]),
                "keypoints_minutes": k["curve"][-1]["train_min"],
                "keypoints_score": k["curve"][-1]["mean_score"],
                "pixels_at_keypoints_minutes": score_at_minutes(c, k["curve"][-1]["train_min"]),
            }
        )
    if same:
        md += (
            "\n### The same minutes\n\n"
            + markdown_table(
                [
                    "seed",
                    "pixels: minutes, final score",
                    "keypoints within those minutes (epoch, score)",
                    "keypoints: minutes, final score",
                    "pixels within those minutes (epoch, score)",
                ],
                [
                    [
                        s["seed"],
                        f"{s['pixels_minutes']:.1f}, {s['pixels_score']:.3f}",
                        at_text(s["keypoints_at_those_minutes"]),
                        f"{s['keypoints_minutes']:.1f}, {s['keypoints_score']:.3f}",
                        at_text(s["pixels_at_keypoints_minutes"]),
                    ]
                    for s in same
                ],
            )
            + "\n"
        )
    note = args.note or previous_note(args.out)
    if note:
        md += f"\nConditions: {note}\n"
    host_list = hosts(list(cells.values()))
    md += hosts_md(host_list)
    payload = {
        "protocol": {
            "epochs": args.epochs,
            "eval_every": args.eval_every,
            "rows": ROWS,
            "trainer": "quickstart",
        },
        "note": note,
        "cells": [cells[k] for k in sorted(cells)],
        "same_minutes": same,
        "hosts": host_list,
        "machine": machine(),
        "command": " ".join(sys.argv),
    }
    write_report(args.out, md, payload)
    print(md)
    return payload


def previous_note(out: Path) -> str:
    """The conditions note of the last report: it describes how the cells trained, so a ``--report-only``
    without ``--note`` keeps it instead of dropping it."""
    try:
        return json.loads((out / "report.json").read_text()).get("note", "")
    except (OSError, ValueError):
        return ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument(
        "--note",
        default="",
        help="how the machine was shared while the cells trained (default: the last report's)",
    )
    p.add_argument("--max-minutes", type=float, default=None, help="start no new cell after this long")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("override", nargs="*", help="extra Hydra overrides for every cell")
    args = p.parse_args(argv)
    if not args.report_only:
        order = [(r, s) for s in args.seeds for r in args.rows]
        run_cells(order, lambda row, seed: train(row, seed, args), args.max_minutes)
    report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
