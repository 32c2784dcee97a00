"""Cost of one assigner call versus batch size B and sample dimension D, and the L2 reduction it buys.

For each (B, D) and each strategy: median wall time per ``pair`` call, mean per-sample L2 reduction
(%), and the speed ratio to ``linear`` (linear's time / this time). Samples are shaped as the trainers
see them: D=32 -> action chunk (16, 2); 784 -> (1, 28, 28); 3072 -> (3, 32, 32); 16384 -> (4, 64, 64).
``randn(B,k,D)`` rows time the bare Gaussian draw that knn must make, to show its selection overhead.

Usage:
    python benchmarks/assign_cost.py                       # full grid + acceptance targets
    python benchmarks/assign_cost.py --quick               # small grid (smoke)
Writes benchmarks/results/assign_cost.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, markdown_table, median_ms, write_json  # noqa: E402

from immiscible_policy import create  # noqa: E402

SHAPES = {32: (16, 2), 784: (1, 28, 28), 3072: (3, 32, 32), 16384: (4, 64, 64)}
MAX_CANDIDATE_ELEMENTS = 2_200_000_000  # knn draws B*k*D Gaussians; skip cells beyond this (memory/time)
MAX_LINEAR_B = 8192


def strategies(d: int) -> dict[str, tuple[str, dict]]:
    pool = "full" if d == 32 else "pool:8"
    return {
        "vanilla": ("vanilla", {}),
        "linear": ("linear", {}),
        "linear-fp16": ("linear", {"quantize": "fp16"}),
        "knn-4": ("knn", {"k": 4}),
        "knn-64": ("knn", {"k": 64}),
        f"knn-pool-2 ({pool})": ("knn-pool", {"ratio": 2, "n_neighbors": 8, "space": pool}),
        "scale-2": ("scale", {"s": 2.0}),
    }


def measure(label, name, params, b, d, repeats, budget_s, seed=0):
    shape = (b, *SHAPES[d])
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g) * 2 - 1  # data-like range [-1, 1]
    noise = torch.randn(shape, generator=g)
    k = params.get("k", 1)
    if name == "knn" and b * k * d > MAX_CANDIDATE_ELEMENTS:
        return {"label": label, "B": b, "D": d, "skipped": f"B*k*D={b * k * d:.1e} candidates"}
    if name == "linear" and b > MAX_LINEAR_B:
        return {"label": label, "B": b, "D": d, "skipped": f"B > {MAX_LINEAR_B}"}
    a = create(name, **params)
    gen = torch.Generator().manual_seed(seed + 1)
    ms, n = median_ms(lambda: a.pair(x0, noise, generator=gen), repeats, budget_s)
    out = a.pair(x0, noise, generator=gen)
    before = (x0 - noise).flatten(1).norm(dim=1).mean().item()
    after = (out.x0 - out.noise).flatten(1).norm(dim=1).mean().item() if name != "scale" else before
    return {
        "label": label,
        "B": b,
        "D": d,
        "ms": ms,
        "repeats": n,
        "l2_reduction_pct": 100 * (before - after) / before,
    }


def measure_randn(b, d, k, repeats, budget_s):
    if b * k * d > MAX_CANDIDATE_ELEMENTS:
        return {"label": f"randn(B,{k},D)", "B": b, "D": d, "skipped": "too large"}
    g = torch.Generator().manual_seed(0)
    ms, n = median_ms(lambda: torch.randn((b, k, d), generator=g), repeats, budget_s)
    return {"label": f"randn(B,{k},D)", "B": b, "D": d, "ms": ms, "repeats": n, "l2_reduction_pct": None}


def targets(repeats, budget_s):
    """The issue's acceptance targets, each measured in the same process, back to back."""
    rows = []

    def pair_ms(name, params, b, d):
        return measure(name, name, params, b, d, repeats, budget_s)

    lin = pair_ms("linear", {}, 1024, 32)
    knn = pair_ms("knn", {"k": 64}, 1024, 32)
    rows.append(
        ("knn k=64 vs linear, B=1024 D=32", lin["ms"] / knn["ms"], ">= 10x", lin["ms"] / knn["ms"] >= 10)
    )
    lin = pair_ms("linear", {}, 4096, 3072)
    knn = pair_ms("knn", {"k": 4}, 4096, 3072)
    rows.append(
        ("knn k=4 vs linear, B=4096 D=3072", lin["ms"] / knn["ms"], ">= 10x", lin["ms"] / knn["ms"] >= 10)
    )
    for b, d, k in ((1024, 32, 64), (4096, 3072, 4), (256, 32, 4)):
        r = measure_randn(b, d, k, repeats, budget_s)
        kn = pair_ms("knn", {"k": k}, b, d)
        ratio = kn["ms"] / r["ms"]
        rows.append((f"knn k={k} / randn(B,k,D), B={b} D={d}", ratio, "<= 1.5x", ratio <= 1.5))
    lin = pair_ms("linear", {}, 8192, 3072)
    pool = measure(
        "knn-pool",
        "knn-pool",
        {"ratio": 2, "n_neighbors": 8, "space": "pool:8"},
        8192,
        3072,
        repeats,
        budget_s,
    )
    rows.append(
        (
            f"knn-pool (ratio 2, pool:8) vs linear, B=8192 D=3072 (keeps {pool['l2_reduction_pct']:.2f}% "
            f"L2 reduction vs linear's {lin['l2_reduction_pct']:.2f}%)",
            lin["ms"] / pool["ms"],
            ">= 10x",
            lin["ms"] / pool["ms"] >= 10,
        )
    )
    return [{"target": t, "value": v, "goal": g, "met": bool(m)} for t, v, g, m in rows]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="B in {64, 256}, D in {32, 3072}; no targets")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--budget-s", type=float, default=20.0, help="stop repeating a cell after this many seconds"
    )
    p.add_argument("--no-targets", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS / "assign_cost.json")
    args = p.parse_args(argv)
    bs = [64, 256] if args.quick else [64, 256, 1024, 2048, 8192]
    ds = [32, 3072] if args.quick else [32, 784, 3072, 16384]

    results = []
    for d in ds:
        for b in bs:
            for label, (name, params) in strategies(d).items():
                r = measure(label, name, params, b, d, args.repeats, args.budget_s)
                results.append(r)
                print(
                    f"B={b:5d} D={d:5d} {label:24s} "
                    + (f"{r['ms']:10.2f} ms" if "ms" in r else r["skipped"]),
                    flush=True,
                )
            results.append(measure_randn(b, d, 4, args.repeats, args.budget_s))
    lin_ms = {(r["B"], r["D"]): r["ms"] for r in results if r["label"] == "linear" and "ms" in r}
    for r in results:
        if "ms" in r and (r["B"], r["D"]) in lin_ms:
            r["speed_vs_linear"] = lin_ms[(r["B"], r["D"])] / r["ms"]
    tgt = [] if (args.quick or args.no_targets) else targets(args.repeats, args.budget_s)

    rows = []
    for r in results:
        if "skipped" in r:
            rows.append([r["B"], r["D"], r["label"], f"skipped ({r['skipped']})", "", ""])
            continue
        red = "" if r["l2_reduction_pct"] is None else f"{r['l2_reduction_pct']:.2f}"
        spd = f"{r['speed_vs_linear']:.1f}x" if "speed_vs_linear" in r else ""
        rows.append([r["B"], r["D"], r["label"], f"{r['ms']:.2f}", red, spd])
    md = "### Assigner cost per call\n\n" + markdown_table(
        ["B", "D", "strategy", "ms/call (median)", "L2 reduction %", "speed vs linear"], rows
    )
    if tgt:
        md += "\n\n### Targets\n\n" + markdown_table(
            ["target", "measured", "goal", "met"],
            [[t["target"], f"{t['value']:.2f}", t["goal"], t["met"]] for t in tgt],
        )
    payload = {"machine": machine(), "results": results, "targets": tgt, "command": " ".join(sys.argv)}
    write_json(args.out, payload)
    args.out.with_suffix(".md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
