"""Cost of one assigner call versus batch size B and sample dimension D, and the L2 reduction it buys.

For each (B, D) and each strategy: median wall time per ``pair`` call, mean per-sample L2 reduction
(%), and the speed ratio to ``linear`` (linear's time / this time). Samples are shaped as the trainers
see them: D=32 -> action chunk (16, 2); 784 -> (1, 28, 28); 3072 -> (3, 32, 32); 16384 -> (4, 64, 64).
``randn(B,k,D)`` rows time the bare Gaussian draw that knn must make, to show its selection overhead.
``linear`` uses its default ``solver: auto`` (lapx's exact ``lapjvr`` when installed); ``linear-scipy``
is the same assignment solved by ``scipy.optimize.linear_sum_assignment``.

``--solvers`` instead compares the exact solvers side by side in one run (why the ``solver`` option
exists, and why ``lapjv`` is its default): scipy and lapjv on the same float64 cost (and lapjv on the
float32 cost), with the optimal totals compared; random costs, ties and duplicate samples; the pair
calls of ``linear`` under both solvers, ``knn`` and ``knn-pool``; ``c2ot``'s label blocks solved one by
one or padded into one ``lapjvr_batch`` call. Every cell times its candidates in interleaved rounds (one
call of each per round, order rotating), so load from other processes hits them alike.

Usage:
    python benchmarks/assign_cost.py                       # full grid + acceptance targets
    python benchmarks/assign_cost.py --quick               # small grid (smoke)
    OMP_NUM_THREADS=1 python benchmarks/assign_cost.py --solvers [--note "shared machine"]
Writes benchmarks/results/assign_cost.{json,md} (``--solvers``: assign_solvers.{json,md}).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, markdown_table, median_ms, write_json  # noqa: E402

from immiscible_policy import create  # noqa: E402
from immiscible_policy.assigners.linear import assignment_cost  # noqa: E402
from immiscible_policy.assigners.solvers import (  # noqa: E402
    LAPX_REQUIREMENT,
    label_groups,
    lapjv_available,
    solve,
    solve_blocks,
)

SHAPES = {32: (16, 2), 784: (1, 28, 28), 3072: (3, 32, 32), 16384: (4, 64, 64)}
MAX_CANDIDATE_ELEMENTS = 2_200_000_000  # knn draws B*k*D Gaussians; skip cells beyond this (memory/time)
MAX_LINEAR_B = 8192


def strategies(d: int) -> dict[str, tuple[str, dict]]:
    pool = "full" if d == 32 else "pool:8"
    return {
        "vanilla": ("vanilla", {}),
        "linear": ("linear", {}),
        "linear-scipy": ("linear", {"solver": "scipy"}),
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


# ------------------------------------------------------------------------------ --solvers: exact solvers

SOLVER_BS = [64, 256, 1024, 2048, 4096]
SOLVER_DS = [32, 3072]
BLOCK_CELLS = [(1024, 10), (2048, 10), (2048, 100), (1024, 1000)]  # (B, number of labels), D = 32


def interleaved_ms(
    fns: dict[str, Callable[[], object]], repeats: int, budget_s: float, min_s: float = 2.0
) -> dict:
    """{label: (median ms, calls timed)}: rounds of one call of each ``fn`` (order rotating each round).

    At least ``repeats`` rounds, more (up to 200) while the cell has taken under ``min_s``: a call of a
    millisecond is at the mercy of the other processes on a shared machine, a median of many is not.
    Round 0 warms up and is dropped unless ``budget_s`` ends the cell after it (then one call at that
    size is seconds of work and nothing is left to warm)."""
    keys, times = list(fns), {k: [] for k in fns}
    start = time.perf_counter()
    for r in range(201):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
        spent = time.perf_counter() - start
        if spent > budget_s or (r >= repeats and spent > min_s):
            break
    drop = 1 if len(times[keys[0]]) > 1 else 0
    return {k: (statistics.median(v[drop:]) * 1e3, len(v) - drop) for k, v in times.items()}


def batch(b: int, d: int, seed: int = 0, duplicate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 in [-1, 1] shaped as the trainers see it, and its noise (``duplicate``: every sample twice)."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand((b, *SHAPES[d]), generator=g) * 2 - 1
    if duplicate:
        x0[1::2] = x0[0::2][: b // 2]
    return x0, torch.randn((b, *SHAPES[d]), generator=g)


def total(cost: np.ndarray, perm: np.ndarray) -> float:
    return float(cost[np.arange(len(perm)), perm].astype(np.float64).sum())


def solve_cell(b, d, case, cost32: np.ndarray, repeats, budget_s) -> dict:
    """scipy vs lapjv (float64 cost, what the assigners solve) and lapjvr on the float32 cost."""
    import lap

    c64 = cost32.astype(np.float64)
    fns = {
        "scipy": lambda: solve(c64, "scipy"),
        "lapjv": lambda: solve(c64, "lapjv"),
        "lapjv-float32": lambda: lap.lapjvr(cost32, return_cost=False)[1],
    }
    ms = interleaved_ms(fns, repeats, budget_s)
    totals = {k: total(c64, np.asarray(f())) for k, f in fns.items()}
    return {
        "B": b,
        "D": d,
        "case": case,
        **{f"{k}_ms": ms[k][0] for k in fns},
        "repeats": ms["scipy"][1],
        "speedup": ms["scipy"][0] / ms["lapjv"][0],
        "speedup_float32": ms["scipy"][0] / ms["lapjv-float32"][0],
        "scipy_total": totals["scipy"],
        "lapjv_gap": totals["lapjv"] - totals["scipy"],
        "lapjv_float32_gap": totals["lapjv-float32"] - totals["scipy"],
    }


def pair_cell(b, d, repeats, budget_s) -> list[dict]:
    """One interleaved run of the pair calls: linear under both solvers, knn, knn-pool."""
    x0, noise = batch(b, d)
    k = 64 if d == 32 else 4
    pool = "full" if d == 32 else "pool:8"
    made = {
        "linear (scipy)": create("linear", solver="scipy"),
        "linear (lapjv)": create("linear", solver="lapjv"),
        f"knn-{k}": create("knn", k=k),
        f"knn-pool-2 ({pool})": create("knn-pool", ratio=2, n_neighbors=8, space=pool),
    }
    if b * k * d > MAX_CANDIDATE_ELEMENTS:
        made.pop(f"knn-{k}")
    gens = {label: torch.Generator().manual_seed(1) for label in made}
    fns = {label: (lambda a=a, g=gens[label]: a.pair(x0, noise, generator=g)) for label, a in made.items()}
    ms = interleaved_ms(fns, repeats, budget_s)
    before = (x0 - noise).flatten(1).norm(dim=1).mean().item()
    rows = []
    for label, a in made.items():
        out = a.pair(x0, noise, generator=torch.Generator().manual_seed(1))
        after = (out.x0 - out.noise).flatten(1).norm(dim=1).mean().item()
        rows.append(
            {
                "B": b,
                "D": d,
                "label": label,
                "ms": ms[label][0],
                "repeats": ms[label][1],
                "l2_reduction_pct": 100 * (before - after) / before,
            }
        )
    base = next(r["ms"] for r in rows if r["label"] == "linear (scipy)")
    for r in rows:
        r["speed_vs_linear_scipy"] = base / r["ms"]
    return rows


def padded_batch_solve(cost: np.ndarray, groups: list[np.ndarray], n_threads: int) -> np.ndarray:
    """All label blocks in one ``lapjvr_batch`` call: each block padded to the largest with dummy rows and
    columns (0 among themselves, forbidden (+inf) to real ones), so every block keeps to itself."""
    import lap

    n = max(len(g) for g in groups)
    padded = np.full((len(groups), n, n), np.inf)
    for i, rows in enumerate(groups):
        padded[i, : len(rows), : len(rows)] = cost[np.ix_(rows, rows)]
        padded[i, len(rows) :, len(rows) :] = 0.0
    _, cols = lap.lapjvr_batch(padded, return_cost=False, n_threads=n_threads)
    perm = np.empty(len(cost), dtype=np.int64)
    for rows, c in zip(groups, cols, strict=True):
        perm[rows] = rows[np.asarray(c)[: len(rows)]]
    return perm


def block_cell(b, n_labels, repeats, budget_s) -> list[dict]:
    """c2ot's per-label solves: one call per block (scipy, lapjv) vs one padded batched call."""
    x0, noise = batch(b, 32)
    labels = torch.randint(0, n_labels, (b,), generator=torch.Generator().manual_seed(2))
    cost = assignment_cost(x0, noise, space="full", quantize=None, cost="l2").numpy()  # float32, as c2ot
    groups = label_groups(labels.numpy())
    c2ot = {solver: create("c2ot", solver=solver) for solver in ("scipy", "lapjv")}
    fns = {
        "scipy, per block": lambda: solve_blocks(cost, groups, "scipy"),
        "lapjv, per block": lambda: solve_blocks(cost, groups, "lapjv"),
        "lapjvr_batch padded, 1 thread": lambda: padded_batch_solve(cost, groups, 1),
        "lapjvr_batch padded, 2 threads": lambda: padded_batch_solve(cost, groups, 2),
        "c2ot pair (scipy)": lambda: c2ot["scipy"].pair(x0, noise, cond=labels),
        "c2ot pair (lapjv)": lambda: c2ot["lapjv"].pair(x0, noise, cond=labels),
    }
    ms = interleaved_ms(fns, repeats, budget_s)
    lab = labels.numpy()
    rows = []
    want = total(cost, solve_blocks(cost, groups, "scipy"))
    for label, f in fns.items():
        out = f()
        perm = np.asarray(out) if isinstance(out, np.ndarray) else None
        row = {"B": b, "labels": n_labels, "label": label, "ms": ms[label][0], "repeats": ms[label][1]}
        if perm is not None:  # a bare solve: check it kept the labels and found the optimum
            row["keeps_labels"] = bool(np.array_equal(lab[perm], lab))
            row["gap"] = total(cost, perm) - want
            row["optimal"] = bool(abs(row["gap"]) <= 1e-9 * abs(want))
        rows.append(row)
    base = rows[0]["ms"]
    for r in rows:
        r["speed_vs_scipy_blocks"] = base / r["ms"]
    return rows


def run_solvers(args) -> int:
    if not lapjv_available():
        print(f"--solvers compares against lapx's lapjvr: pip install '{LAPX_REQUIREMENT}'", file=sys.stderr)
        return 2
    solves, pairs, blocks = [], [], []
    bs, ds = ([64, 256], [32]) if args.quick else (SOLVER_BS, SOLVER_DS)
    tie_bs = [256] if args.quick else [1024, 2048]
    block_cells = [(256, 10)] if args.quick else BLOCK_CELLS
    for d in ds:
        for b in bs:
            x0, noise = batch(b, d)
            c = assignment_cost(x0, noise, space="full", quantize=None, cost="l2").numpy()
            solves.append(solve_cell(b, d, "random", c, args.repeats, args.budget_s))
            pairs += pair_cell(b, d, args.repeats, args.budget_s)
            print(f"B={b:5d} D={d:5d} " + "  ".join(f"{r['label']} {r['ms']:.2f} ms" for r in pairs[-4:]))
            print(
                f"            solve: scipy {solves[-1]['scipy_ms']:.2f} ms, lapjv {solves[-1]['lapjv_ms']:.2f} ms"
            )
    for case in ("ties", "duplicate samples"):  # adversarial: B = 1024, 2048 at D = 32
        for b in tie_bs:
            x0, noise = batch(b, 32, duplicate=case == "duplicate samples")
            c = assignment_cost(x0, noise, space="full", quantize=None, cost="l2")
            if case == "ties":
                c = (c * 2).round() / 2  # distances rounded to 0.5: thousands of equal entries per row
            solves.append(solve_cell(b, 32, case, c.numpy(), args.repeats, args.budget_s))
    for b, n_labels in block_cells:
        blocks += block_cell(b, n_labels, args.repeats, args.budget_s)

    def same(gap: float, ref: float) -> str:
        return "yes" if abs(gap) <= 1e-9 * max(1.0, abs(ref)) else f"no ({gap:+.3g})"

    md = "### Exact solvers: one solve of the same (B, B) L2 cost\n\n" + markdown_table(
        [
            "B",
            "D",
            "case",
            "scipy ms",
            "lapjv ms",
            "speed-up",
            "same optimum",
            "lapjv float32 ms",
            "float32 same",
        ],
        [
            [
                r["B"],
                r["D"],
                r["case"],
                f"{r['scipy_ms']:.2f}",
                f"{r['lapjv_ms']:.2f}",
                f"{r['speedup']:.1f}x",
                same(r["lapjv_gap"], r["scipy_total"]),
                f"{r['lapjv-float32_ms']:.2f}",
                same(r["lapjv_float32_gap"], r["scipy_total"]),
            ]
            for r in solves
        ],
    )
    md += "\n\n### Pair calls (interleaved per B, D)\n\n" + markdown_table(
        ["B", "D", "strategy", "ms/call (median)", "L2 reduction %", "speed vs linear (scipy)"],
        [
            [
                r["B"],
                r["D"],
                r["label"],
                f"{r['ms']:.2f}",
                f"{r['l2_reduction_pct']:.2f}",
                f"{r['speed_vs_linear_scipy']:.1f}x",
            ]
            for r in pairs
        ],
    )
    md += "\n\n### c2ot label blocks (D = 32)\n\n" + markdown_table(
        ["B", "labels", "solve", "ms (median)", "speed vs scipy per block", "keeps labels, optimal"],
        [
            [
                r["B"],
                r["labels"],
                r["label"],
                f"{r['ms']:.2f}",
                f"{r['speed_vs_scipy_blocks']:.2f}x",
                "" if "gap" not in r else ("yes" if r["keeps_labels"] and r["optimal"] else "NO"),
            ]
            for r in blocks
        ],
    )
    tb = max(bs)  # 2048 is the target; --quick checks the same at its largest B
    tb = 2048 if 2048 in bs else tb
    cell = next(r for r in solves if (r["B"], r["D"], r["case"]) == (tb, 32, "random"))
    lin = {r["label"]: r["ms"] for r in pairs if (r["B"], r["D"]) == (tb, 32)}
    exact = abs(cell["lapjv_gap"]) <= 1e-9 * abs(cell["scipy_total"])
    ratio = cell["scipy_ms"] / lin["linear (lapjv)"]
    targets = [
        {
            "target": f"linear (lapjv) pair call vs scipy's solve alone, B={tb} D=32, same optimum",
            "value": ratio,
            "goal": ">= 5x, exact",
            "met": bool(ratio >= 5 and exact),
        },
        {
            "target": f"linear (lapjv) vs linear (scipy), pair calls, B={tb} D=32",
            "value": lin["linear (scipy)"] / lin["linear (lapjv)"],
            "goal": ">= 5x",
            "met": bool(lin["linear (scipy)"] / lin["linear (lapjv)"] >= 5),
        },
    ]
    md += "\n\n### Targets\n\n" + markdown_table(
        ["target", "measured", "goal", "met"],
        [[t["target"], f"{t['value']:.2f}", t["goal"], t["met"]] for t in targets],
    )
    host = machine()
    import lap

    head = (
        f"Host: {host.get('cpu_model')} ({host.get('cores')} cores), torch {host.get('torch')} "
        f"({host.get('threads')} threads), lapx {lap.__version__}, {host.get('date')}."
        + (f" {args.note}" if args.note else "")
        + f"\nCommand: `{' '.join(sys.argv)}`\n\n"
    )
    payload = {
        "machine": host,
        "note": args.note,
        "lapx": lap.__version__,
        "results": solves,
        "pairs": pairs,
        "blocks": blocks,
        "targets": targets,
        "command": " ".join(sys.argv),
    }
    write_json(args.out, payload)
    args.out.with_suffix(".md").write_text(head + md + "\n")
    print(head + md)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small grid (smoke); no targets without --solvers")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--budget-s", type=float, default=20.0, help="stop repeating a cell after this many seconds"
    )
    p.add_argument("--no-targets", action="store_true")
    p.add_argument("--solvers", action="store_true", help="exact solvers side by side (assign_solvers.*)")
    p.add_argument("--note", default="", help="--solvers: a line on the conditions, kept with the results")
    p.add_argument("--out", type=Path, default=None, help="default: results/assign_{cost,solvers}.json")
    args = p.parse_args(argv)
    args.out = args.out or RESULTS / ("assign_solvers.json" if args.solvers else "assign_cost.json")
    if args.solvers:
        return run_solvers(args)
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
