"""Does a pairing speed up image diffusion / flow-matching training? Powered, resumable, Fashion-MNIST.

Rows are ``<objective>[+cond]/<assigner>[:options]``: ``flow/knn:k=4``, ``epsilon/linear:cost=l2``,
``flow+cond/c2ot`` (``+cond``: ``task.class_conditional=true``, the U-Net gets the label and c2ot pairs
within a label exactly). Each row x seed cell trains with ``immiscible-train task=fashion_mnist`` and is
scored, every ``--eval-every`` steps, by the fast metric **CFD** (Fréchet distance in a small
Fashion-MNIST classifier's features, ``immiscible_policy.metrics.classifier_fd``; ``--cfd-samples`` seeded
samples, the fixed fast sampler of its objective: flow Euler, epsilon DDIM, ``--sample-steps`` steps). At
the end the final EMA model is also scored by CFD at 1, 2, 4, 8 and 16 sampling steps (minibatch OT is
said to help most at few steps) and once by the real Inception FID (TF1 resize, as the paper's clean-fid
``legacy_tensorflow``) on ``--fid-samples`` >= 2000 samples. A finished cell writes
``cells/<cell>.json`` (with the host record of ``immiscible_policy.host``); a rerun skips finished cells
and resumes interrupted ones from their last checkpoint, so a grid can span sittings; several workers may
share one list (each cell is claimed by one, ``run_dir/.owner``).

Report (``report.{md,json}``, ``curves.png``, ``steps.png``): per row mean and 95% t-interval of CFD at
every evaluation step, final CFD and final Inception FID, steps to vanilla's final CFD (same objective and
conditioning; per seed, with CI) and vanilla/this, a verdict against vanilla, CFD vs sampling steps, the
Spearman rank correlation of final CFD and Inception FID over all cells, and the **power** section: the
seed-to-seed spread of vanilla's final CFD and the difference the row's seeds can detect.

Power: with n seeds per row and seed standard deviation s, the 95% t half-width is h = t(0.975, n-1) s /
sqrt(n) (4.30 s / sqrt(3) = 2.48 s at n = 3). Two rows differing by d are told apart ("each mean outside
the other's interval") when d > h, and their intervals are disjoint when d > 2h. The issue asks that a 15%
difference lie outside both intervals: h < 15% of vanilla's CFD, i.e. a seed CV below ~6% at 3 seeds: that
is why it evaluates a cheap metric on a thousand samples or more rather than the old sweep's 200-sample
Inception FID. The CPU plan (``CPU_SEEDS``) gives the unconditional rows 5 seeds and the conditional rows 3,
sized from vanilla's measured seed spread; ``--seeds`` sets every row's. ``--power`` runs only the vanilla
rows (their cells are the grid's own, nothing is wasted) and prints this section, so the spread is known
before the other rows are paid for.

Sizing: ``--estimate`` times a training step and a sampling forward on your machine and projects the
grid's cost before anything trains. The default CPU protocol is Fashion-MNIST resized to **16x16**,
``unet2d_tiny``, batch 64, lr 1e-3, **2000 steps**, CFD every 500 steps on **1000** samples (the same noise
in every cell: common random numbers cancel much of the sampling error between rows) at 16 steps, the final
model at 1/2/4/8/16 steps, and Inception FID (2000 samples) on **seed 0 only** (``--fid-seeds``; enough for
the rank correlation). The measured spread, step times and wall times, each with its machine, are in
docs/results.md ("Image training v2"), the one place measured numbers live. The vanilla rows run first
(power), then the paper's question rows, so a shorter sitting still answers the main question.
``train_min`` per cell and the host record show what each cell actually met.

Usage:
    python benchmarks/image_speedup.py --estimate                # time steps, project the grid's cost
    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/image_speedup.py --power &   # vanilla rows first
    OMP_NUM_THREADS=1 python benchmarks/image_speedup.py --workers 2             # the grid, 2 workers
    python benchmarks/image_speedup.py --report-only
    python benchmarks/image_speedup.py --smoke                   # ~2-5 minutes, plumbing only
    bash benchmarks/gpu_image_recipe.sh [--cifar PATH]           # GPU: paper-like, 10 minutes (docs)
Writes benchmarks/results/image_speedup[_smoke|_gpu]/{report.json, report.md, curves.png, steps.png}.
Older results (600 steps, 200-sample FID) are kept as results/image_speedup/report_v1.* and v1/cells.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    FAST_SAMPLER,
    RESULTS,
    T975,
    cell_name,  # noqa: F401  (re-exported: this sweep's cell names, e.g. flow_cond-knn_k4-s2)
    ci95,
    ci_text,
    common_points,
    first_reach,
    git_commit,
    hosts,
    hosts_md,
    load_cells,
    machine,
    markdown_table,
    mean_ci,
    plot_mean_ci,
    reach_text,
    row_seeds,
    run_cells,
    seeds_text,
    summarize_rows,
    write_report,
)
from _common import cell_order as _cell_order  # noqa: E402
from _common import row_overrides as _row_overrides  # noqa: E402
from _common import run_cell as _run_cell  # noqa: E402

FINAL_STEPS = (1, 2, 4, 8, 16)
FIRST_ROWS = ["flow/vanilla", "flow/knn:k=4", "flow/linear", "flow+cond/vanilla", "flow+cond/c2ot"]
REST_ROWS = [
    "flow/scale",
    "flow+cond/linear",
    "epsilon/vanilla",
    "epsilon/knn:k=4",
    "epsilon/linear",
    "epsilon/scale",
]
GPU_ROWS = ["flow/vanilla", "flow/knn:k=4", "flow/linear", "flow+cond/vanilla", "flow+cond/c2ot"]


# ------------------------------------------------------------------------------------------------ rows


def split_row(row: str) -> tuple[str, bool, str]:
    """'flow+cond/c2ot:weight=1' -> ('flow', True, 'c2ot:weight=1'); a bare assigner label means flow."""
    head, _, label = row.rpartition("/")
    objective, _, cond = (head or "flow").partition("+")
    if objective not in FAST_SAMPLER or cond not in ("", "cond") or not label:
        raise SystemExit(
            f"row {row!r}: use <objective>[+cond]/<assigner>, objective one of {', '.join(FAST_SAMPLER)}."
        )
    return objective, cond == "cond", label


def vanilla_of(row: str) -> str:
    """The baseline row of the same objective and conditioning."""
    objective, cond, _ = split_row(row)
    return f"{objective}{'+cond' if cond else ''}/vanilla"


def row_overrides(row: str, sample_steps: int) -> list[str]:
    """Hydra overrides of a row: _common.row_overrides (assigner, objective, its fast sampler at
    ``sample_steps``) plus the labels for ``+cond``, the one part PushT rows do not have."""
    objective, cond, label = split_row(row)
    return _row_overrides(objective, label, sample_steps) + (["task.class_conditional=true"] if cond else [])


def cell_order(rows: list[str], seeds) -> list[tuple[str, int]]:
    """Vanilla rows first (the power phase), then the paper's question rows, then the rest: seed-major."""
    return _cell_order(rows, seeds, lambda r: 0 if r.endswith("/vanilla") else 1 if r in FIRST_ROWS else 2)


# ------------------------------------------------------------------------------------------------ cells


def resize_mode(args) -> str:
    """Fashion-MNIST's 28px are padded to 32 (the task's default), resized (antialiased) to anything else."""
    return "pad" if args.image_size == 32 and args.task == "fashion_mnist" else "resize"


def settings(args, seed: int | None = None) -> list[str]:
    """Hydra overrides shared by every cell (the measured protocol); Inception FID only for ``--fid-seeds``."""
    fid = seed is None or not args.fid_seeds or seed in args.fid_seeds
    out = [
        f"task={args.task}",
        f"task.image_size={args.image_size}",
        f"task.resize_mode={resize_mode(args)}",
        f"model={args.model}",
        f"trainer.lr={args.lr}",
        f"trainer.warmup_steps={args.warmup}",
        f"trainer.max_steps={args.steps}",
        f"trainer.batch_size={args.batch}",
        f"trainer.eval_every_steps={args.eval_every}",
        f"trainer.checkpoint_every_steps={args.eval_every}",
        "trainer.sample_every_steps=0",
        f"trainer.sample_batch_size={args.sample_batch}",
        f"trainer.fid.enabled={str(fid).lower()}",
        "trainer.fid.only_at_end=true",
        f"trainer.fid.n_samples={args.fid_samples}",
        f"trainer.fid.n_real={args.fid_real}",
        f"trainer.fid.kid_subset_size={min(args.fid_samples, args.fid_real, 1000)}",
        "trainer.cfd.enabled=true",
        f"trainer.cfd.n_samples={args.cfd_samples}",
        f"trainer.cfd.n_real={args.cfd_real}",
        f"trainer.final_steps=[{','.join(str(k) for k in FINAL_STEPS)}]",
        "trainer.progress=false",
    ]
    if args.task_path:
        out.append(f"task.path={args.task_path}")
    if args.max_images:
        out += [f"task.max_images={args.max_images}", "trainer.n_grid=16", "trainer.log_every_steps=5"]
    return out + list(args.preset_overrides)


def cell_from_records(row: str, seed: int, records: list[dict], args) -> dict:
    """The cell JSON from a finished run's metrics.jsonl records (pure: tested on synthetic records)."""
    objective, cond, label = split_row(row)
    evals = [r for r in records if "cfd" in r]
    last = evals[-1]
    return {
        "row": row,
        "objective": objective,
        "conditional": cond,
        "assigner": label,
        "seed": seed,
        "steps": args.steps,
        "model": args.model,
        "fast_sampler": f"{FAST_SAMPLER[objective]}-{args.sample_steps}",
        "curve": [{k: r[k] for k in ("step", "train_min", "cfd", "train_loss") if k in r} for r in evals],
        "final": {str(k): last[f"cfd_steps_{k}"] for k in FINAL_STEPS if f"cfd_steps_{k}" in last},
        "final_fid": {
            k: last[k] for k in ("fid", "kid", "fid_n_fake", "fid_n_real", "fid_resize") if k in last
        },
        "cfd_n_fake": last.get("cfd_n_fake"),
        "cfd_n_real": last.get("cfd_n_real"),
        **{
            k: float(np.mean([r[k] for r in records if k in r]))
            for k in ("noise_norm_ratio", "noise_proj_x0", "assign_ms")
            if any(k in r for r in records)
        },
        "machine": machine(),
        "git_commit": git_commit(),
    }


def run_cell(row: str, seed: int, args) -> dict | None:
    """The cell's JSON: finished, or trained now by _common.run_cell (None when another worker has it or
    training failed)."""
    overrides = [*row_overrides(row, args.sample_steps), *settings(args, seed), f"trainer.seed={seed}"]

    def build(run_dir: Path, records: list[dict], wall_min: float, cmd_overrides: list[str]) -> dict:
        cell = cell_from_records(row, seed, records, args)
        return {**cell, "cell_wall_min": wall_min, "overrides": cmd_overrides}

    return _run_cell(args.out, row, seed, overrides, args.override, build)


# ------------------------------------------------------------------------------------------------ report


def step_reaching(curve: list[dict], target: float) -> int | None:
    """First evaluated step whose CFD is at or below ``target`` (lower is better, unlike PushT's score)."""
    return first_reach(curve, "step", lambda p: p["cfd"] <= target)


def power(finals: list[float], n: int = 3) -> dict:
    """Seed spread of vanilla's final CFD and the differences ``n`` seeds per row can detect."""
    sd = float(np.std(finals, ddof=1)) if len(finals) > 1 else float("nan")
    mean = float(np.mean(finals))
    half = T975.get(n, 1.96) * sd / math.sqrt(n)
    return {
        "n_seeds_measured": len(finals),
        "mean": mean,
        "sd": sd,
        "cv_pct": 100 * sd / mean,
        "seeds_per_row": n,
        "ci95_half": half,
        "detectable_pct": 100 * half / mean,  # each mean outside the other's 95% interval
        "disjoint_pct": 200 * half / mean,  # the two 95% intervals do not overlap
        "meets_15pct": bool(100 * half / mean < 15),  # a 15% difference lies outside both intervals
    }


def verdict(row: dict, base: dict | None) -> str:
    """'faster' / 'slower' / 'not distinguishable' from the final CFD (the same step budget): each mean
    must lie outside the other's 95% interval; 'baseline' for vanilla itself."""
    if base is None or not base.get("n_seeds"):
        return "no baseline"
    if row["row"] == base["row"]:
        return "baseline"
    a, ha, b, hb = row["final_cfd"], row["final_ci95"], base["final_cfd"], base["final_ci95"]
    if math.isnan(ha) or math.isnan(hb):
        return "too few seeds"
    if a < b - hb and b > a + ha:
        return "faster"
    if a > b + hb and b < a - ha:
        return "slower"
    return "not distinguishable"


def summarize_row(row: str, got: list[dict], base: dict[int, dict], target: float | None) -> dict:
    """Mean/CI over seeds; steps to ``target`` (vanilla's mean final CFD) per seed, ratios vs vanilla."""
    curve = [
        {
            "step": s,
            "cfd": float(np.mean(vals)),
            "cfd_ci95": ci95(vals),
            "cfd_min": float(np.min(vals)),
            "cfd_max": float(np.max(vals)),
        }
        for s, vals in common_points(got, "step", "cfd")
    ]
    reach: dict = {"target": target, "per_seed": {}, "steps": [], "ratios": []}
    if target is not None:
        for c in got:
            st = step_reaching(c["curve"], target)
            b = base.get(c["seed"])
            bs = step_reaching(b["curve"], target) if b else None
            reach["per_seed"][c["seed"]] = {"step": st, "vanilla_step": bs}
            if st is not None:
                reach["steps"].append(st)
                if bs is not None:
                    reach["ratios"].append(bs / st)
    finals = [c["curve"][-1]["cfd"] for c in got]
    final_steps = {}
    for k in FINAL_STEPS:
        v = [c["final"][str(k)] for c in got if str(k) in c.get("final", {})]
        if v:
            final_steps[str(k)] = {"cfd": float(np.mean(v)), "ci95": ci95(v), "n": len(v)}
    fids = [c["final_fid"]["fid"] for c in got if "fid" in c.get("final_fid", {})]
    return {
        "row": row,
        "label": row,
        "n_seeds": len(got),
        "curve": curve,
        "final_cfds": finals,
        "final_cfd": float(np.mean(finals)),
        "final_ci95": ci95(finals),
        "final_fids": fids,
        "final_fid": float(np.mean(fids)) if fids else None,
        "final_fid_ci95": ci95(fids) if fids else None,
        "final_steps": final_steps,
        "reach": reach,
        "train_min": float(np.mean([c["curve"][-1].get("train_min", float("nan")) for c in got])),
        **{
            k: float(np.mean([c[k] for c in got]))
            for k in ("noise_norm_ratio", "noise_proj_x0", "assign_ms")
            if all(k in c for c in got)
        },
    }


def rank_correlation(cells: list[dict]) -> dict:
    """Spearman's rho of final CFD vs final Inception FID over cells that have both."""
    pairs = [(c["curve"][-1]["cfd"], c["final_fid"]["fid"]) for c in cells if "fid" in c.get("final_fid", {})]
    if len(pairs) < 3:
        return {"n": len(pairs), "spearman": None}
    from scipy.stats import spearmanr

    rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return {"n": len(pairs), "spearman": float(rho)}


def has_cfd(cell: dict) -> bool:
    """Cells scored by CFD; older cells (the v1 sweep's Inception-only format) are left out of the report."""
    return "cfd" in (cell.get("curve") or [{}])[-1]


def build_summary(rows: list[str], seeds: list[int], cells: dict) -> list[dict]:
    """_common.summarize_rows with vanilla's mean final CFD as each row's target, then every row's verdict
    against its vanilla (which needs all rows summarized first)."""

    def summarize(row: str, got: list[dict], missing: list[int], base: dict[int, dict]) -> dict:
        target = float(np.mean([c["curve"][-1]["cfd"] for c in base.values()])) if base else None
        return {"missing_seeds": missing, **summarize_row(row, got, base, target)}

    summary = summarize_rows(rows, seeds, cells, vanilla_of, summarize)
    by_row = {s["row"]: s for s in summary}
    for s in summary:
        if s.get("n_seeds"):
            s["verdict"] = verdict(s, by_row.get(vanilla_of(s["row"])))
    return summary


def report(rows: list[str], seeds: list[int], args) -> dict:
    cells = load_cells(args.out, has_cfd)
    summary = build_summary(rows, seeds, cells)
    main_rows, step_rows, curve_rows = [], [], []
    eval_steps = sorted({p["step"] for s in summary if s.get("n_seeds") for p in s["curve"]})
    for s in summary:
        if not s.get("n_seeds"):
            main_rows.append([s["row"], seeds_text(s)] + [""] * 6)
            continue
        r = s["reach"]
        reach_txt = "no baseline" if r["target"] is None else reach_text(r["steps"], s["n_seeds"], 0)
        is_base = s["row"].endswith("/vanilla")
        main_rows.append(
            [
                s["row"],
                seeds_text(s),
                ci_text(s["final_cfd"], s["final_ci95"], 2),
                "" if s["final_fid"] is None else ci_text(s["final_fid"], s["final_fid_ci95"], 1),
                reach_txt,
                "" if is_base or not r["ratios"] else mean_ci(r["ratios"], 2),
                s["verdict"],
                f"{s['train_min']:.1f}",
            ]
        )
        fs = s["final_steps"]
        step_rows.append(
            [s["row"], seeds_text(s)]
            + [ci_text(fs[str(k)]["cfd"], fs[str(k)]["ci95"], 2) if str(k) in fs else "" for k in FINAL_STEPS]
        )
        pts = {p["step"]: p for p in s["curve"]}
        curve_rows.append(
            [s["row"]]
            + [ci_text(pts[e]["cfd"], pts[e]["cfd_ci95"], 2) if e in pts else "" for e in eval_steps]
        )
    p = args
    md = (
        f"### {p.task} {p.image_size}x{p.image_size}, {p.model}, batch {p.batch}, lr {p.lr:g}, {p.steps} steps; EMA model\n\n"
        f"CFD = Fréchet distance in a small {p.task} classifier's features (the fast metric; "
        f"{p.cfd_samples} samples vs {p.cfd_real} training images, flow: Euler, epsilon: DDIM, "
        f"{p.sample_steps} steps); FID = real Inception FID (TF1 resize) of the final model on "
        f"{p.fid_samples} samples vs {p.fid_real} training images, once per cell "
        f"({'seeds ' + ' '.join(map(str, p.fid_seeds)) if p.fid_seeds else 'every seed'}). Lower is better for "
        "both.\n\n"
    )
    md += markdown_table(
        [
            "row",
            "seeds",
            "final CFD",
            "final Inception FID",
            "steps to vanilla's final CFD",
            "vanilla/this",
            "vs vanilla (final CFD)",
            "train min",
        ],
        main_rows,
    )
    md += (
        "\n\nMean ± 95% t-interval over seeds. Steps to vanilla's final CFD = first evaluation (every "
        f"{p.eval_every} steps) at or below the mean final CFD of vanilla with the same objective and "
        "conditioning, per seed; vanilla/this = vanilla's steps / this row's for the same seed (> 1 is a "
        "speed-up). Verdict: faster/slower when each row's mean final CFD lies outside the other's 95% "
        "interval, else not distinguishable.\n"
    )
    md += "\n### CFD of the final checkpoint vs sampling steps (flow: Euler, epsilon: DDIM)\n\n"
    md += markdown_table(["row", "seeds", *[str(k) for k in FINAL_STEPS]], step_rows)
    md += "\n\n### CFD during training (mean ± 95% CI over seeds)\n\n"
    md += markdown_table(["row", *[str(e) for e in eval_steps]], curve_rows)
    pw = {}
    for s in summary:
        if s["row"].endswith("/vanilla") and s.get("n_seeds", 0) >= 2:
            pw[s["row"]] = power(s["final_cfds"], n=len(row_seeds(seeds, s["row"])))
    if pw:
        md += "\n\n### Power: seed-to-seed spread of vanilla's final CFD\n\n"
        md += markdown_table(
            [
                "row",
                "seeds measured",
                "mean",
                "sd",
                "CV %",
                "seeds per row",
                "95% half-width",
                "detectable %",
                "disjoint %",
                "15% detectable",
            ],
            [
                [
                    r,
                    v["n_seeds_measured"],
                    f"{v['mean']:.3f}",
                    f"{v['sd']:.3f}",
                    f"{v['cv_pct']:.1f}",
                    v["seeds_per_row"],
                    f"{v['ci95_half']:.3f}",
                    f"{v['detectable_pct']:.1f}",
                    f"{v['disjoint_pct']:.1f}",
                    "yes" if v["meets_15pct"] else "no",
                ]
                for r, v in pw.items()
            ],
        )
        md += (
            "\n\nA row's 95% half-width with n seeds is t(0.975, n-1) sd / sqrt(n) (4.30 sd / sqrt(3), "
            "2.78 sd / sqrt(5)); detectable = a difference that puts each mean outside the other's interval "
            "(one half-width; the verdicts' rule and the issue's '15% outside both intervals'), disjoint = the "
            "two intervals do not overlap (two half-widths), both as % of vanilla's mean.\n"
        )
    rho = rank_correlation(list(cells.values()))
    md += (
        "\n\nRank agreement of the two metrics on the final checkpoints: Spearman rho(CFD, Inception FID) = "
        + ("n/a" if rho["spearman"] is None else f"{rho['spearman']:.2f}")
        + f" over {rho['n']} cells.\n"
    )
    host_list = hosts(list(cells.values()))
    md += hosts_md(host_list)
    md += f"\nCommand: `python {' '.join(a for a in sys.argv if a != '--report-only')}`\n"
    payload = {
        "machine": machine(),
        "hosts": [json.loads(h) for h in host_list],
        "seeds": seeds,
        "protocol": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "final_steps": list(FINAL_STEPS),
        "summary": summary,
        "power": pw,
        "rank_correlation": rho,
        "command": " ".join(sys.argv),
    }
    write_report(args.out, md, payload)
    plot_mean_ci(
        summary,
        args.out / "curves.png",
        x="step",
        y="cfd",
        band=("cfd_min", "cfd_max"),
        xlabel="training step",
        ylabel="CFD (EMA model); mean, shaded: seed range",
        title=f"{p.task}, {p.model}: fast metric during training",
    )
    steps_summary = [
        {
            "label": s["row"],
            "n_seeds": s["n_seeds"],
            "curve": [
                {"steps": int(k), "cfd": v["cfd"], "ci95": v["ci95"]} for k, v in s["final_steps"].items()
            ],
        }
        for s in summary
        if s.get("n_seeds") and s["final_steps"]
    ]
    plot_mean_ci(
        steps_summary,
        args.out / "steps.png",
        x="steps",
        y="cfd",
        ci="ci95",
        xlabel="sampling steps (final checkpoint)",
        ylabel="CFD; shaded: 95% CI",
        title=f"{p.task}: CFD vs sampling steps",
        logx=True,
    )
    print(md)
    return payload


# ------------------------------------------------------------------------------------------------ sizing


def estimate(args) -> dict:
    """Time training steps and sampling forwards of ``args.model`` here; project one cell and the grid.

    Timed in process CPU seconds (``time.process_time``), i.e. core-seconds: on a shared machine the wall
    time of a niced process says how busy the others are, its CPU time what the work costs. Run it with
    ``OMP_NUM_THREADS=1`` (one worker per core, as the grid runs)."""
    import torch
    from omegaconf import OmegaConf

    from immiscible_policy.image.model import build_unet, predict

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "model" / f"{args.model}.yaml")
    model = build_unet(cfg, image_size=args.image_size, channels=1 if args.task == "fashion_mnist" else 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, model.config.in_channels, args.image_size, args.image_size)
    t = torch.randint(0, 1000, (args.batch,))
    times = []
    for _ in range(6):
        t0 = time.process_time()
        loss = (predict(model, x, t) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.process_time() - t0)
    step_s = float(np.median(times[1:]))
    with torch.no_grad():
        xb = x.new_zeros(args.sample_batch, *x.shape[1:]).normal_()
        tb = torch.randint(0, 1000, (args.sample_batch,))
        predict(model, xb, tb)
        t0 = time.process_time()
        for _ in range(3):
            predict(model, xb, tb)
        fwd_s = (time.process_time() - t0) / 3 / args.sample_batch
    n_evals = args.steps // args.eval_every
    sample_s = fwd_s * args.cfd_samples * (n_evals * args.sample_steps + sum(FINAL_STEPS))
    fid_s = args.fid_samples * (fwd_s * args.sample_steps + args.inception_s_per_image)
    cell_s = step_s * args.steps + sample_s
    cells = sum(len(row_seeds(args.seeds, r)) for r in args.rows)
    fid_cells = sum(
        len([s for s in row_seeds(args.seeds, r) if not args.fid_seeds or s in args.fid_seeds])
        for r in args.rows
    )
    out = {
        "train_step_s": step_s,
        "sample_forward_ms_per_image": 1e3 * fwd_s,
        "cell_core_min": cell_s / 60,
        "cells": cells,
        "fid_core_min_per_cell": fid_s / 60,
        "fid_cells": fid_cells,
        "grid_core_hours": (cells * cell_s + fid_cells * fid_s) / 3600,
        "assumed_inception_s_per_image": args.inception_s_per_image,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(out, indent=2))
    return out


# ------------------------------------------------------------------------------------------------ main


def prepare_metric(args) -> None:
    """Train and cache the CFD feature network once, before any worker starts (each would train it)."""
    from omegaconf import OmegaConf

    from immiscible_policy.image.data import load_dataset
    from immiscible_policy.metrics.classifier_fd import ClassifierRecipe, load_or_train

    task = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "task" / f"{args.task}.yaml")
    task.path = args.task_path or task.get("path")
    if task.path == "???":
        raise SystemExit(f"task {args.task} needs a data path: pass --task-path.")
    task.max_images = args.max_images or None
    task.image_size, task.resize_mode = args.image_size, resize_mode(args)  # the cells' exact images
    ds = load_dataset(task)
    import torch

    device = "cuda" if args.gpu and torch.cuda.is_available() else "cpu"
    load_or_train(ds.images, ds.labels, ds.num_classes, ClassifierRecipe(), device=device)


#: the CPU grid's seeds: 5 for the unconditional rows, 3 for the class-conditional ones, sized from the power
#: section's measured seed spread (docs/results.md, "Image training v2": why 3 seeds were not enough).
CPU_SEEDS = [0, 1, 2, 3, 4]
CPU_SEEDS_COND = [0, 1, 2]

PRESETS = {
    # the CPU grid (sizing in the module docstring)
    "cpu": dict(
        model="unet2d_tiny",
        lr=1e-3,
        warmup=100,
        steps=2000,
        eval_every=500,
        batch=64,
        image_size=16,
        fid_seeds=[0],
        cfd_samples=1000,
        fid_real=5000,  # one Inception pass over the reference: ~0.2 s/image on one CPU core
        sample_batch=64,
    ),
    # GPU, paper-like: torchcfm's CIFAR-10 UNet shape at 64 base channels (the 128-channel one trains too
    # few steps in 10 minutes), batch 128, bf16 autocast, lr 2e-4 as torchcfm, 5 rows run at once
    "gpu": dict(
        model="ddpm_cifar10",
        lr=2e-4,
        warmup=200,
        steps=4000,
        eval_every=1000,
        batch=128,
        image_size=32,
        fid_seeds=[],
        cfd_samples=2000,
        fid_real=10000,
        sample_batch=256,
    ),
}
GPU_OVERRIDES = [
    "model.block_out_channels=[64,128,128,128]",
    "model.down_block_types=[DownBlock2D,AttnDownBlock2D,DownBlock2D,DownBlock2D]",
    "model.up_block_types=[UpBlock2D,UpBlock2D,AttnUpBlock2D,UpBlock2D]",
    "model.attention_head_dim=64",
    "trainer.mixed_precision=bf16",
    "trainer.device=cuda",
]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", nargs="+", default=None, help="default: the question rows, then the rest")
    p.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        help="every row; default cpu: 0-4 (+cond: 0-2), gpu: 0 1 2",
    )
    p.add_argument("--gpu", action="store_true", help="GPU preset (see PRESETS, gpu_image_recipe.sh)")
    p.add_argument("--task", default="fashion_mnist", help="fashion_mnist | cifar10 (with --task-path)")
    p.add_argument("--task-path", default=None, help="dataset path (cifar10: cifar-10-python.tar.gz)")
    for name in ("model", "lr", "warmup", "steps", "eval_every", "batch"):
        p.add_argument(f"--{name.replace('_', '-')}", default=None, type=str if name == "model" else float)
    p.add_argument("--sample-steps", type=int, default=16, help="sampling steps of the evaluations")
    p.add_argument("--sample-batch", type=int, default=None, help="cpu: 64 (measured fastest), gpu: 256")
    p.add_argument("--cfd-samples", type=int, default=None, help="cpu: 1000, gpu: 2000")
    p.add_argument("--cfd-real", type=int, default=10000)
    p.add_argument("--fid-samples", type=int, default=2000)
    p.add_argument("--fid-real", type=int, default=None, help="cpu: 5000, gpu: 10000")
    p.add_argument(
        "--fid-seeds",
        nargs="*",
        type=int,
        default=None,
        help="seeds scored by Inception FID (cpu: 0; gpu: all)",
    )
    p.add_argument("--image-size", type=int, default=None, help="cpu preset: 16, gpu: 32")
    p.add_argument("--max-images", type=int, default=None, help="first N training images only (smoke)")
    p.add_argument("--power", action="store_true", help="run only the vanilla rows; report their spread")
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing the cell list")
    p.add_argument("--smoke", action="store_true", help="tiny protocol (minutes) to check the plumbing")
    p.add_argument("--estimate", action="store_true", help="time steps and project the grid; no training")
    p.add_argument("--inception-s-per-image", type=float, default=0.15, help="for --estimate")
    p.add_argument("--max-minutes", type=float, default=None, help="start no new cell after this long")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)  # workers of --workers
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("override", nargs="*", help="extra Hydra overrides for every cell")
    args = p.parse_args(argv)
    preset = PRESETS["gpu" if args.gpu else "cpu"]
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    for k in ("steps", "eval_every", "batch", "warmup", "image_size"):
        setattr(args, k, int(getattr(args, k)))
    args.preset_overrides = list(GPU_OVERRIDES) if args.gpu else []
    if args.smoke:  # the same code path, tiny: a few steps, few samples, 512 images
        args.steps, args.eval_every, args.batch, args.warmup = 8, 4, 16, 1
        args.cfd_samples, args.cfd_real, args.fid_samples, args.fid_real = 32, 64, 16, 32
        args.sample_steps, args.sample_batch, args.max_images = 2, 32, args.max_images or 512
        args.model = "unet2d_tiny"
        args.preset_overrides = [o for o in args.preset_overrides if not o.startswith("model.")]
        args.preset_overrides = [o for o in args.preset_overrides if "bf16" not in o and "cuda" not in o]
        args.rows = args.rows or ["flow/vanilla", "flow/linear", "flow+cond/c2ot"]
        args.seeds = args.seeds or [0, 1]
    args.rows = args.rows or (GPU_ROWS if args.gpu else FIRST_ROWS + REST_ROWS)
    if args.power:
        args.rows = [r for r in args.rows if r.endswith("/vanilla")]
    args.seeds = args.seeds or (
        [0, 1, 2] if args.gpu else {r: CPU_SEEDS_COND if "+cond" in r else CPU_SEEDS for r in args.rows}
    )
    for row in args.rows:
        split_row(row)
    suffix = "_smoke" if args.smoke else "_gpu" if args.gpu else ""
    args.out = args.out or RESULTS / f"image_speedup{suffix}"
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.estimate:
        estimate(args)
        return 0
    start = time.time()
    if not args.report_only:
        prepare_metric(args)
        if args.workers > 1:  # N copies of this command share the cell list (claim_cell)
            argv_w = [a for a in (argv if argv is not None else sys.argv[1:])]
            base = [sys.executable, str(Path(__file__).resolve()), *argv_w, "--workers", "1", "--no-report"]
            procs = [subprocess.Popen(base) for _ in range(args.workers)]
            codes = [p.wait() for p in procs]
            if any(codes):
                print(f"[sweep] worker exit codes {codes}", flush=True)
        else:
            run_cells(
                cell_order(args.rows, args.seeds),
                lambda row, seed: run_cell(row, seed, args),
                args.max_minutes,
                start=start,  # the budget counts prepare_metric's classifier training too, as before
            )
    if not args.no_report:
        report(args.rows, args.seeds, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
