"""Does immiscibility speed up diffusion-policy training on PushT? Resumable multi-seed sweep.

Each (assigner, seed) cell trains the CPU default with ``immiscible-train`` (same split, same evaluation
seeds 100000..100049), evaluating the EMA model every ``--eval-every`` epochs. A finished cell writes
``cells/<label>-s<seed>.json``; a rerun skips finished cells and resumes interrupted ones from their
last checkpoint, so a long sweep can be completed over several sittings. The report marks missing cells.
Several workers may share one list (e.g. one per core with ``OMP_NUM_THREADS=1``): each cell is claimed by
one of them (``run_dir/.owner``).

It also measures, without training, what each assigner does to the noise the model is trained on
(mean ||noise||/sqrt(D), mean projection on x0/||x0||, per-sample L2 reduction) on real normalised
action chunks: at inference the sampler starts from exactly N(0, I).

Usage:
    python benchmarks/pusht_speedup.py --assigners vanilla knn linear --seeds 0 1 2 --epochs 60
    python benchmarks/pusht_speedup.py --report-only
Assigner labels may carry options: ``knn:k=16``, ``linear:quantize=fp16``.
Writes benchmarks/results/pusht_speedup/{report.json, report.md, curves.png}.
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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, claim_cell, machine, markdown_table, plot_mean_ci, write_json  # noqa: E402

OUT = RESULTS / "pusht_speedup"
THRESHOLDS = (0.7, 0.8, 0.9)


def parse_label(label: str) -> tuple[str, dict]:
    """'knn:k=16,space=full' -> ('knn', {'k': 16, 'space': 'full'})."""
    name, _, opts = label.partition(":")
    params = {}
    for kv in filter(None, opts.split(",")):
        k, _, v = kv.partition("=")
        params[k] = (
            json.loads(v) if v.replace(".", "", 1).lstrip("-").isdigit() or v in ("true", "false") else v
        )
    return name, params


def overrides_for(label: str) -> list[str]:
    """Hydra overrides selecting an assigner: a config group when one exists, else assigner.name=<plugin>."""
    name, params = parse_label(label)
    groups = {
        "vanilla": "vanilla",
        "linear": "linear",
        "knn": "knn",
        "knn-pool": "knn_pool",
        "scale": "scale",
    }
    out = [f"assigner={groups[name]}"] if name in groups else ["assigner=vanilla", f"assigner.name={name}"]
    return out + [f"++assigner.params.{k}={v}" for k, v in params.items()]


def cell_name(label: str, seed: int) -> str:
    return f"{label.replace(':', '_').replace(',', '_').replace('=', '')}-s{seed}"


def run_cell(label: str, seed: int, args) -> dict | None:
    cells = args.out / "cells"
    done = cells / f"{cell_name(label, seed)}.json"
    if done.exists():
        return json.loads(done.read_text())
    run_dir = args.out / "runs" / cell_name(label, seed)
    resume = (run_dir / "checkpoints" / "last").exists()
    if not claim_cell(run_dir):
        print(f"[sweep] {label} seed {seed} is being run by another worker; skipping it here", flush=True)
        return None
    cmd = [
        sys.executable,
        "-c",
        "import sys; from immiscible_policy.cli.train import main; sys.exit(main())",
        *overrides_for(label),
        f"trainer.seed={seed}",
        f"trainer.epochs={args.epochs}",
        f"trainer.eval_every_epochs={args.eval_every}",
        f"trainer.checkpoint_every_epochs={args.eval_every}",
        f"task.eval.n_episodes={args.n_episodes}",
        "trainer.progress=false",
        f"run_dir={run_dir}",
        "resume=true",  # continues from the last checkpoint, or starts fresh when there is none
        *args.override,
    ]
    print(
        f"[sweep] {'resuming' if resume else 'starting'} {label} seed {seed}: {' '.join(cmd[3:])}", flush=True
    )
    proc = subprocess.run(cmd, env={**os.environ})
    if proc.returncode != 0:
        print(f"[sweep] cell {label} seed {seed} failed with exit code {proc.returncode}", flush=True)
        return None
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    evals = [r for r in records if "mean_score" in r]
    cell = {
        "label": label,
        "seed": seed,
        "epochs": args.epochs,
        "curve": [
            {k: r[k] for k in ("epoch", "step", "train_min", "mean_score", "success_rate", "train_loss")}
            for r in evals
        ],
        "noise_norm_ratio": float(np.mean([r["noise_norm_ratio"] for r in records])),
        "noise_proj_x0": float(np.mean([r["noise_proj_x0"] for r in records])),
        "assign_ms": float(np.mean([r["assign_ms"] for r in records])),
        "overrides": cmd[3:],
    }
    write_json(done, cell)
    return cell


def ci95(values: list[float]) -> float:
    """Half-width of a t-based 95% interval of the mean (nan for < 2 values)."""
    n = len(values)
    if n < 2:
        return float("nan")
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}.get(n, 1.96)
    return t * float(np.std(values, ddof=1)) / math.sqrt(n)


def pairing_stats(labels: list[str], batch: int = 256, repeats: int = 20) -> list[dict]:
    """What each assigner does to the training noise on real normalised PushT action chunks (B, 16, 2)."""
    from immiscible_policy.noising import noise_stats
    from immiscible_policy.policy.dataset import PushTLowdimDataset
    from immiscible_policy.registry import create

    ds = PushTLowdimDataset()
    act = ds.get_normalizer().normalize("action", ds.all_windows()["action"])
    rows = []
    for label in labels:
        name, params = parse_label(label)
        a = create(name, **params)
        acc = {"noise_norm_ratio": [], "noise_proj_x0": [], "l2_reduction_pct": []}
        for r in range(repeats):
            g = torch.Generator().manual_seed(r)
            x0 = act[torch.randint(0, act.shape[0], (batch,), generator=g)]
            noise = torch.randn(x0.shape, generator=g)
            p = a.pair(x0, noise, generator=g)
            st = noise_stats(p.x0, p.noise)
            before = (x0 - noise).flatten(1).norm(dim=1)
            after = (p.x0 - p.noise).flatten(1).norm(dim=1)
            acc["noise_norm_ratio"].append(float(st["noise_norm_ratio"]))
            acc["noise_proj_x0"].append(float(st["noise_proj_x0"]))
            acc["l2_reduction_pct"].append(float(100 * (1 - after.mean() / before.mean())))
        rows.append({"label": label, **{k: float(np.mean(v)) for k, v in acc.items()}})
    return rows


def first_reach(epochs: list[int], minutes: list[float], scores: list[float], thr: float):
    for e, m, s in zip(epochs, minutes, scores):
        if s >= thr:
            return e, m
    return None, None


def median_epoch_minutes(cell: dict) -> float:
    """Median training minutes per epoch between evaluations.

    Robust to epochs slowed by other work on the machine (a shared 2-core CPU), which the summed
    ``train_min`` is not; minutes-to-threshold are reported as epochs x this.
    """
    pts = [(0, 0.0)] + [(p["epoch"], p["train_min"]) for p in cell["curve"]]
    rates = [(m1 - m0) / (e1 - e0) for (e0, m0), (e1, m1) in zip(pts, pts[1:]) if e1 > e0]
    return float(np.median(rates))


def report(labels: list[str], seeds: list[int], args) -> dict:
    cells = {}
    for f in sorted((args.out / "cells").glob("*.json")):
        c = json.loads(f.read_text())
        cells[(c["label"], c["seed"])] = c
    all_labels = list(dict.fromkeys(labels + [k[0] for k in cells]))
    summary = []
    for label in all_labels:
        got = [cells[(label, s)] for s in seeds if (label, s) in cells]
        missing = [s for s in seeds if (label, s) not in cells]
        if not got:
            summary.append({"label": label, "n_seeds": 0, "missing_seeds": missing})
            continue
        common = sorted(set.intersection(*[{p["epoch"] for p in c["curve"]} for c in got]))
        by_epoch = {e: [next(p for p in c["curve"] if p["epoch"] == e) for c in got] for e in common}
        curve = [
            {
                "epoch": e,
                "mean_score": float(np.mean([p["mean_score"] for p in ps])),
                "ci95": ci95([p["mean_score"] for p in ps]),
                "success_rate": float(np.mean([p["success_rate"] for p in ps])),
                "train_min": float(np.mean([p["train_min"] for p in ps])),
            }
            for e, ps in by_epoch.items()
        ]
        finals = [c["curve"][-1]["mean_score"] for c in got]
        epoch_min = float(np.median([median_epoch_minutes(c) for c in got]))
        reach = {}
        for thr in THRESHOLDS:
            e, m = first_reach(
                [p["epoch"] for p in curve],
                [p["train_min"] for p in curve],
                [p["mean_score"] for p in curve],
                thr,
            )
            reach[str(thr)] = {
                "epoch": e,
                "minutes": None if e is None else e * epoch_min,
                "measured_minutes": m,
            }
        summary.append(
            {
                "label": label,
                "n_seeds": len(got),
                "missing_seeds": missing,
                "curve": curve,
                "final_score": float(np.mean(finals)),
                "median_epoch_minutes": epoch_min,
                "final_ci95": ci95(finals),
                "final_success": float(np.mean([c["curve"][-1]["success_rate"] for c in got])),
                "reach": reach,
                "noise_norm_ratio": float(np.mean([c["noise_norm_ratio"] for c in got])),
                "noise_proj_x0": float(np.mean([c["noise_proj_x0"] for c in got])),
                "assign_ms": float(np.mean([c["assign_ms"] for c in got])),
            }
        )
    base = next((s for s in summary if s["label"] == "vanilla" and s.get("n_seeds")), None)
    rows = []
    for s in summary:
        if not s.get("n_seeds"):
            rows.append([s["label"], f"0/{len(seeds)} (missing)"] + [""] * 6)
            continue
        cells_txt = []
        for thr in THRESHOLDS:
            r = s["reach"][str(thr)]
            if r["epoch"] is None:
                cells_txt.append("not reached")
                continue
            txt = f"{r['epoch']} ep / {r['minutes']:.1f} min"
            b = base["reach"][str(thr)] if base else None
            if b and b["epoch"] is not None and s["label"] != "vanilla":
                txt += f" ({b['epoch'] / r['epoch']:.2f}x)"
            cells_txt.append(txt)
        ci = "" if math.isnan(s["final_ci95"]) else f" ± {s['final_ci95']:.3f}"
        seeds_txt = f"{s['n_seeds']}/{len(seeds)}" + (
            f" (missing {s['missing_seeds']})" if s["missing_seeds"] else ""
        )
        rows.append(
            [
                s["label"],
                seeds_txt,
                f"{s['final_score']:.3f}{ci}",
                f"{s['final_success']:.2f}",
                f"{60 * s['median_epoch_minutes']:.1f}",
                *cells_txt,
            ]
        )
    md = "### PushT: score of the EMA policy on 50 test seeds\n\n" + markdown_table(
        [
            "assigner",
            "seeds",
            "final mean score (95% CI)",
            "final success",
            "s/epoch",
            "first >= 0.7",
            "first >= 0.8",
            "first >= 0.9",
        ],
        rows,
    )
    md += (
        "\n\n(x) = vanilla's epochs / this assigner's epochs to the threshold (> 1 is a speed-up). Minutes = "
        "epochs x the median training seconds per epoch of that assigner's runs (evaluation excluded; the "
        "median ignores epochs slowed by other work on the shared CPU, the raw sums are in report.json).\n"
    )
    stats = pairing_stats(all_labels) if not args.no_stats else []
    if stats:
        md += "\n### What pairing does to the training noise (real normalised PushT chunks, B=256, D=32)\n\n"
        md += markdown_table(
            [
                "assigner",
                "mean norm(noise) / sqrt(D)",
                "mean <noise, x0 / norm(x0)>",
                "per-sample L2 reduction %",
            ],
            [
                [
                    r["label"],
                    f"{r['noise_norm_ratio']:.3f}",
                    f"{r['noise_proj_x0']:.3f}",
                    f"{r['l2_reduction_pct']:.1f}",
                ]
                for r in stats
            ],
        )
        md += "\n\nN(0, I) noise gives ratio ~1 and projection ~0; the sampler starts from exactly that at inference.\n"
    payload = {
        "machine": machine(),
        "seeds": seeds,
        "summary": summary,
        "pairing_stats": stats,
        "command": " ".join(sys.argv),
    }
    write_json(args.out / "report.json", payload)
    (args.out / "report.md").write_text(md)
    plot_mean_ci(
        summary,
        args.out / "curves.png",
        x="epoch",
        y="mean_score",
        ci="ci95",
        xlabel="epoch",
        ylabel="mean score (50 test seeds)",
        title="PushT, CPU default, EMA policy",
        ylim=(0, 1.02),
    )
    print(md)
    return payload


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--assigners", nargs="+", default=["vanilla", "knn", "linear"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--n-episodes", type=int, default=50)
    p.add_argument(
        "--max-minutes", type=float, default=None, help="start no new cell after this many minutes"
    )
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--no-stats", action="store_true", help="skip the pairing statistics")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument(
        "override", nargs="*", help="extra Hydra overrides for every cell, e.g. trainer.batch_size=128"
    )
    args = p.parse_args(argv)
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
