"""Does immiscibility speed up image diffusion training? Fashion-MNIST 32x32, FID/KID vs step, resumable.

Each (assigner, seed) cell trains a small model (default ``unet2d_tiny``, 0.27M parameters) with
``immiscible-train task=fashion_mnist`` for a fixed step budget; every ``--eval-every`` steps the EMA
model draws ``--fid-samples`` images (DDIM ``--ddim-steps``, the same seeded noise at every evaluation)
and is scored by FID and KID against a fixed ``--fid-real`` training images (standard TF Inception,
``immiscible_policy.metrics.fid``). A finished cell writes ``cells/<label>-s<seed>.json``; a rerun
skips finished cells and resumes interrupted ones from their last checkpoint (as ``pusht_speedup.py``).

Reported per assigner: the mean FID/KID curve over seeds, final FID (95% CI), and the first evaluated
step whose mean FID reaches vanilla's final mean FID, with the speedup ratio vanilla_steps / steps.
On this 2-core CPU the Inception forward costs ~0.2 s per image uncontended, so sample counts are small:
FID is biased upwards at few samples (compare assigners only at equal counts); KID is unbiased.

Usage:
    python benchmarks/image_speedup.py                               # full sweep (hours on a CPU)
    python benchmarks/image_speedup.py --smoke                       # ~1-2 minutes, plumbing only
    python benchmarks/image_speedup.py --assigners vanilla knn:k=4 --seeds 0 1 --steps 4000
    python benchmarks/image_speedup.py --report-only
Several workers may run at once (e.g. one per core, with overlapping lists): each cell is claimed by one.
Writes benchmarks/results/image_speedup[_smoke]/{report.json, report.md, fid.png}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, claim_cell, machine, markdown_table, plot_mean_ci, write_json  # noqa: E402
from pusht_speedup import cell_name, ci95, overrides_for  # noqa: E402

DEFAULT_ASSIGNERS = ["vanilla", "knn:k=4", "knn:k=64", "linear", "scale"]


def settings(args) -> list[str]:
    """Hydra overrides shared by every cell (the measured protocol)."""
    out = [
        "task=fashion_mnist",
        f"model={args.model}",
        f"trainer.lr={args.lr}",
        f"trainer.warmup_steps={args.warmup}",
        f"trainer.max_steps={args.steps}",
        f"trainer.batch_size={args.batch}",
        f"trainer.eval_every_steps={args.eval_every}",
        f"trainer.checkpoint_every_steps={args.eval_every}",
        f"trainer.sample_every_steps={args.eval_every}",
        f"trainer.num_inference_steps={args.ddim_steps}",
        "trainer.sampler=ddim",
        f"trainer.fid.n_samples={args.fid_samples}",
        f"trainer.fid.n_real={args.fid_real}",
        f"trainer.fid.kid_subset_size={min(args.fid_samples, args.fid_real, 1000)}",
        "trainer.progress=false",
    ]
    if args.smoke:
        out += [
            "task.max_images=512",
            "trainer.n_grid=16",
            "trainer.log_every_steps=5",
        ]
    return out


def sweep_command() -> str:
    """The command that (re)makes these cells: this one without ``--report-only``."""
    return " ".join(a for a in sys.argv if a != "--report-only")


def run_cell(label: str, seed: int, args) -> dict | None:
    done = args.out / "cells" / f"{cell_name(label, seed)}.json"
    if done.exists():
        return json.loads(done.read_text())
    run_dir = args.out / "runs" / cell_name(label, seed)
    if not claim_cell(run_dir):
        print(f"[sweep] {label} seed {seed} is being run by another worker; skipping it here", flush=True)
        return None
    cmd = [
        sys.executable,
        "-c",
        "import sys; from immiscible_policy.cli.train import main; sys.exit(main())",
        *overrides_for(label),
        *settings(args),
        f"trainer.seed={seed}",
        f"run_dir={run_dir}",
        "resume=auto",  # continues from the last checkpoint, or starts fresh when there is none
        *args.override,
    ]
    state = "resuming" if (run_dir / "checkpoints" / "last").exists() else "starting"
    print(f"[sweep] {state} {label} seed {seed}: {' '.join(cmd[3:])}", flush=True)
    if subprocess.run(cmd, env={**os.environ}).returncode != 0:
        print(f"[sweep] cell {label} seed {seed} failed", flush=True)
        return None
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    keys = ("step", "train_min", "fid", "kid", "kid_std", "train_loss")
    cell = {
        "label": label,
        "seed": seed,
        "steps": args.steps,
        "curve": [{k: r[k] for k in keys} for r in records if "fid" in r],
        "fid_n_fake": args.fid_samples,
        "fid_n_real": args.fid_real,
        "ddim_steps": args.ddim_steps,
        "noise_norm_ratio": float(np.mean([r["noise_norm_ratio"] for r in records])),
        "noise_proj_x0": float(np.mean([r["noise_proj_x0"] for r in records])),
        "assign_ms": float(np.mean([r["assign_ms"] for r in records])),
        "overrides": cmd[3:],
    }
    write_json(done, cell)
    return cell


def summarise(label: str, got: list[dict]) -> dict:
    """Mean curve over seeds at the steps every seed evaluated, and the final FID/KID with 95% CIs."""
    common = sorted(set.intersection(*[{p["step"] for p in c["curve"]} for c in got]))
    curve = []
    for s in common:
        pts = [next(p for p in c["curve"] if p["step"] == s) for c in got]
        fids, kids = [p["fid"] for p in pts], [p["kid"] for p in pts]
        curve.append(
            {
                "step": s,
                "fid": float(np.mean(fids)),
                "fid_ci95": ci95(fids),
                "fid_min": float(np.min(fids)),
                "fid_max": float(np.max(fids)),
                "kid": float(np.mean(kids)),
                "train_min": float(np.mean([p["train_min"] for p in pts])),
            }
        )
    finals = [c["curve"][-1]["fid"] for c in got]
    return {
        "label": label,
        "n_seeds": len(got),
        "curve": curve,
        "final_fid": float(np.mean(finals)),
        "final_fid_ci95": ci95(finals),
        "final_kid": float(np.mean([c["curve"][-1]["kid"] for c in got])),
        "noise_norm_ratio": float(np.mean([c["noise_norm_ratio"] for c in got])),
        "assign_ms": float(np.mean([c["assign_ms"] for c in got])),
    }


def report(labels: list[str], seeds: list[int], args) -> dict:
    cells = {}
    for f in sorted((args.out / "cells").glob("*.json")):
        c = json.loads(f.read_text())
        cells[(c["label"], c["seed"])] = c
    summary = []
    for label in dict.fromkeys(labels + [k[0] for k in cells]):
        got = [cells[(label, s)] for s in seeds if (label, s) in cells and cells[(label, s)]["curve"]]
        s = summarise(label, got) if got else {"label": label, "n_seeds": 0}
        s["missing_seeds"] = [x for x in seeds if (label, x) not in cells]
        summary.append(s)
    base = next((s for s in summary if s["label"] == "vanilla" and s["n_seeds"]), None)
    rows = []
    for s in summary:
        if not s["n_seeds"]:
            rows.append([s["label"], f"0/{len(seeds)} (missing)", "", "", "", ""])
            continue
        reach, ratio = None, ""
        if base:
            target, base_steps = base["final_fid"], base["curve"][-1]["step"]
            reach = next((p["step"] for p in s["curve"] if p["fid"] <= target), None)
            s["steps_to_vanilla_final_fid"] = reach
            s["speedup"] = base_steps / reach if reach else None
            ratio = f"{s['speedup']:.2f}x" if reach else "not reached"
        ci = "" if math.isnan(s["final_fid_ci95"]) else f" ± {s['final_fid_ci95']:.2f}"
        rows.append(
            [
                s["label"],
                f"{s['n_seeds']}/{len(seeds)}"
                + (f" (missing {s['missing_seeds']})" if s["missing_seeds"] else ""),
                f"{s['final_fid']:.2f}{ci}",
                f"{s['final_kid']:.4f}",
                "" if reach is None else str(reach),
                ratio,
            ]
        )
    md = (
        f"### Fashion-MNIST 32x32, {args.model}, lr {args.lr:g}, {args.steps} steps x batch {args.batch}: EMA model, "
        f"FID/KID of {args.fid_samples} samples (DDIM {args.ddim_steps} steps) vs {args.fid_real} training images\n\n"
    )
    md += markdown_table(
        ["assigner", "seeds", "final FID (95% CI)", "final KID", "steps to vanilla's final FID", "speedup"],
        rows,
    )
    md += (
        "\n\nspeedup = vanilla's steps / this assigner's first evaluated step at or below vanilla's final mean "
        f"FID (evaluations every {args.eval_every} steps; > 1 is faster). FID at {args.fid_samples} samples is "
        "biased upwards; compare rows, not papers.\n"
        f"\nCommand: `python {sweep_command()}`\n"
    )
    payload = {
        "machine": machine(),
        "seeds": seeds,
        "protocol": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "summary": summary,
        "command": sweep_command(),
    }
    payload["protocol"]["override"] = list(args.override)
    write_json(args.out / "report.json", payload)
    (args.out / "report.md").write_text(md)
    plot_mean_ci(
        summary,
        args.out / "fid.png",
        x="step",
        y="fid",
        band=("fid_min", "fid_max"),
        xlabel="training step",
        ylabel="FID (EMA model); mean, shaded: seed range",
        title=f"Fashion-MNIST 32x32, {args.model}",
    )
    print(md)
    return payload


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--assigners", nargs="+", default=None, help=f"labels (default {' '.join(DEFAULT_ASSIGNERS)})"
    )
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1")
    # Defaults = the CPU protocol measured in README (5 assigners x 2 seeds in ~1.5 h on 2 cores). A GPU
    # protocol closer to the paper: --model unet2d_small --lr 2e-4 --steps 20000 --eval-every 2000
    # --fid-samples 5000 --fid-real 10000 --ddim-steps 50.
    p.add_argument(
        "--model", default="unet2d_tiny", help="model config group (unet2d_tiny | unet2d_small | ...)"
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--fid-samples", type=int, default=200)
    p.add_argument("--fid-real", type=int, default=1000)
    p.add_argument("--ddim-steps", type=int, default=25)
    p.add_argument("--smoke", action="store_true", help="tiny protocol (~1-2 min) to check the plumbing")
    p.add_argument(
        "--max-minutes", type=float, default=None, help="start no new cell after this many minutes"
    )
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("override", nargs="*", help="extra Hydra overrides for every cell")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.eval_every, args.batch, args.warmup = 10, 10, 32, 2
        args.fid_samples, args.fid_real, args.ddim_steps = 8, 16, 3
        args.assigners = args.assigners or ["vanilla", "knn:k=4"]
        args.seeds = args.seeds or [0]
    args.assigners = args.assigners or DEFAULT_ASSIGNERS
    args.seeds = args.seeds or [0, 1]
    args.out = args.out or RESULTS / ("image_speedup_smoke" if args.smoke else "image_speedup")
    start = time.time()
    if not args.report_only:
        for seed in args.seeds:  # seed-major: every assigner gets seed 0 before any gets seed 1
            for label in args.assigners:
                if args.max_minutes and (time.time() - start) / 60 > args.max_minutes:
                    print("[sweep] time budget spent; rerun the same command to continue", flush=True)
                    break
                run_cell(label, seed, args)
    report(args.assigners, args.seeds, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
