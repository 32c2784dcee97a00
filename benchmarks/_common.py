"""Shared helpers for benchmarks: timing, environment description, JSON + markdown output, and the
bookkeeping of the resumable sweeps (pusht_speedup.py, image_speedup.py): rows, cells, statistics, report.

Why the sweeps share one copy: their cell files and reports are read across sittings, workers and
commits, so the cell life (claim, train with resume, write), the interval arithmetic and the report
files must not drift apart between the two."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def median_ms(fn: Callable[[], object], repeats: int, budget_s: float) -> tuple[float, int]:
    """Median wall time (ms) of ``fn`` after one warm-up call; stops repeating once ``budget_s`` is spent."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = [first]
    if first < budget_s:
        times = []
        spent = first
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            times.append(dt)
            spent += dt
            if spent > budget_s:
                break
    return statistics.median(times) * 1e3, len(times)


def machine() -> dict:
    """Where a number was measured (quote it with the number): CPU model and flags, cores, threads, torch,
    device, date. The same record every training run keeps (``immiscible_policy.host``), so a sweep's
    cells and its runs describe their host alike."""
    from immiscible_policy.host import host_record

    return host_record()


def write_text(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a temporary beside it, then one rename): a reader or a crash
    never meets half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, payload: dict) -> None:
    write_text(path, json.dumps(payload, indent=2))


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def plot_mean_ci(
    summary: list[dict],
    path: Path,
    *,
    x: str,
    y: str,
    ci: str | None = None,
    band: tuple[str, str] | None = None,
    xlabel: str,
    ylabel: str,
    title: str,
    ylim=None,
    logx: bool = False,
) -> None:
    """One line per summary entry (mean ``y`` over seeds against ``x``), shaded by ``ci`` (mean +- that key)
    or by ``band`` (the curve points' (low, high) keys, e.g. the seed range: with 2 seeds a 95% t-interval is
    +-9 standard deviations wide and hides every line)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for s in summary:
        if not s.get("n_seeds"):
            continue
        xs = [p[x] for p in s["curve"]]
        m = np.array([p[y] for p in s["curve"]])
        if band is not None:
            lo = np.array([p[band[0]] for p in s["curve"]])
            hi = np.array([p[band[1]] for p in s["curve"]])
        else:
            half = np.nan_to_num(np.array([p[ci] for p in s["curve"]]))
            lo, hi = m - half, m + half
        ax.plot(xs, m, marker="o", ms=3, label=f"{s['label']} (n={s['n_seeds']})")
        ax.fill_between(xs, lo, hi, alpha=0.12)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if ylim:
        ax.set_ylim(*ylim)
    if logx:
        ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _owner(run_dir: Path) -> int | None:
    """The pid in ``run_dir/.owner`` when it is a live process other than this one, else None."""
    try:
        pid = int((run_dir / ".owner").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return pid


def claim_cell(run_dir: Path) -> bool:
    """Claim a sweep cell for this process (``run_dir/.owner`` holds our pid); False if a live process has it.

    Why: sweeps are resumable, so two workers started on overlapping cell lists (say one per core) would
    otherwise resume the same run directory at once and corrupt it. A stale claim (dead pid) is taken over.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if _owner(run_dir) is not None:
        return False  # alive: another worker is on this cell
    (run_dir / ".owner").write_text(str(os.getpid()))
    return True


def release_cell(run_dir: Path) -> None:
    """Give up this process's claim on ``run_dir`` (a claim of another process is left alone), so that a
    worker waiting on the run (a warm-up to fork from) sees it free while this worker goes on."""
    owner = run_dir / ".owner"
    try:
        if int(owner.read_text().strip()) == os.getpid():
            owner.unlink()
    except (FileNotFoundError, ValueError):
        pass


# ------------------------------------------------------------------------------------------------ rows

#: the fixed fast evaluation sampler of each objective (the sweeps train and score with it)
FAST_SAMPLER = {"epsilon": "ddim", "v_prediction": "ddim", "sample": "ddim", "flow": "euler"}
_ASSIGNER_GROUPS = {n: n.replace("-", "_") for n in ("vanilla", "linear", "knn", "knn-pool", "scale", "c2ot")}


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


def row_overrides(objective: str, label: str, steps: int) -> list[str]:
    """Hydra overrides of a row: the assigner (a config group when one exists, else
    ``assigner.name=<plugin>``) with its options, the objective, its fast sampler at ``steps`` steps."""
    name, params = parse_label(label)
    group = _ASSIGNER_GROUPS.get(name)
    out = [f"assigner={group}"] if group else ["assigner=vanilla", f"assigner.name={name}"]
    out += [f"++assigner.params.{k}={v}" for k, v in params.items()]
    return out + [
        f"trainer.objective={objective}",
        f"trainer.sampler={FAST_SAMPLER[objective]}",
        f"trainer.num_inference_steps={steps}",
    ]


def cell_name(row: str, seed: int) -> str:
    """A row x seed as a file name: 'flow+cond/knn:k=4', 2 -> 'flow_cond-knn_k4-s2'."""
    safe = row.replace("/", "-").replace("+", "_").replace(":", "_").replace(",", "_").replace("=", "")
    return f"{safe}-s{seed}"


#: seeds of every row, or per row (a row absent from the mapping gets every seed the mapping names)
Seeds = list[int] | dict[str, list[int]]


def row_seeds(seeds: Seeds, row: str) -> list[int]:
    """The seeds ``row`` is planned with: the list itself, or the row's entry of a per-row plan."""
    if isinstance(seeds, dict):
        return seeds.get(row, sorted({s for v in seeds.values() for s in v}))
    return list(seeds)


def cell_order(rows: list[str], seeds: Seeds, rank: Callable[[str], int]) -> list[tuple[str, int]]:
    """Rows grouped by ``rank`` (lowest first), seed-major within a group: every seed of the rows that
    matter most runs before any other row, so a short sitting still answers the question."""
    ranks = sorted({rank(r) for r in rows})
    every = sorted({s for r in rows for s in row_seeds(seeds, r)})
    return [(r, s) for g in ranks for s in every for r in rows if rank(r) == g and s in row_seeds(seeds, r)]


# ------------------------------------------------------------------------------------------------ cells

TRAIN_CMD = [
    sys.executable,
    "-c",
    "import sys; from immiscible_policy.cli.train import main; sys.exit(main())",
]


def git_commit() -> str | None:
    """The code a cell was trained with (cells of one sweep may span sittings and commits)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_cell(
    out: Path,
    row: str,
    seed: int,
    overrides: list[str],
    extra: list[str],
    build: Callable[[Path, list[dict], float, list[str]], dict],
) -> dict | None:
    """One cell's life: its finished ``cells/<cell>.json``, or None when another worker holds it or training
    fails, else train ``runs/<cell>`` with ``immiscible-train`` (resuming its last checkpoint) and write the
    cell that ``build(run_dir, metrics.jsonl records, wall minutes, the command's overrides)`` returns."""
    done = out / "cells" / f"{cell_name(row, seed)}.json"
    if done.exists():
        return json.loads(done.read_text())
    run_dir = out / "runs" / cell_name(row, seed)
    state = "resuming" if (run_dir / "checkpoints" / "last").exists() else "starting"
    if not claim_cell(run_dir):
        print(f"[sweep] {row} seed {seed} is being run by another worker; skipping it here", flush=True)
        return None
    # resume=auto: continues from the last checkpoint, or starts fresh when there is none
    cmd = [*TRAIN_CMD, *overrides, f"run_dir={run_dir}", "resume=auto", *extra]
    print(f"[sweep] {state} {row} seed {seed}: {' '.join(cmd[3:])}", flush=True)
    earlier = earlier_invocations(run_dir)
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, env={**os.environ})
        if proc.returncode != 0:
            print(f"[sweep] cell {row} seed {seed} failed with exit code {proc.returncode}", flush=True)
            return None
        records = read_records(run_dir)
        cell = build(run_dir, records, sum(earlier) + (time.time() - t0) / 60, cmd[3:])
        cell["train_invocations"] = len(earlier) + 1
        write_json(done, cell)
    finally:  # the cell written (or failed): another worker may take the run directory
        release_cell(run_dir)
    return cell


def read_records(run_dir: Path) -> list[dict]:
    """A run's ``metrics.jsonl`` records (none when it has no such file yet)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def earlier_invocations(run_dir: Path) -> list[float]:
    """Training minutes each earlier invocation of a resumed run spent, from its records' ``wall_min``.

    Why: a cell's wall time is its cost, and a cell resumed in a later sitting would otherwise record only
    the last invocation's minutes. Each trainer invocation counts ``wall_min`` from its own start, so the
    records split into invocations where it drops; each counts to its last record (an interrupted
    invocation's minutes after its last epoch are not known, so a resumed cell's total is a lower bound).
    Records copied from another run at a fork (``forked_from.json``: up to its ``epoch``) are not this cell's
    work and are skipped.
    """
    fork = run_dir / "forked_from.json"
    skip = json.loads(fork.read_text()).get("epoch", 0) if fork.exists() else -1
    spent: list[float] = []
    last = None
    for r in read_records(run_dir):
        if r.get("epoch", 0) <= skip or "wall_min" not in r:
            continue
        if last is None or r["wall_min"] < last:
            spent.append(0.0)
        spent[-1] = last = r["wall_min"]
    return spent


def run_cells(
    order: list[tuple[str, int]],
    run: Callable[[str, int], object],
    max_minutes: float | None,
    start: float | None = None,
) -> None:
    """Run cells in ``order``; start none after ``max_minutes`` (a rerun of the same command continues),
    counted from ``start`` (a ``time.time()``; default now), so that a sweep whose setup before the cells
    takes long (image_speedup trains its metric's classifier) can count that setup too."""
    start = time.time() if start is None else start
    for row, seed in order:
        if max_minutes and (time.time() - start) / 60 > max_minutes:
            print("[sweep] time budget spent; rerun the same command to continue", flush=True)
            break
        run(row, seed)


def load_cells(out: Path, keep: Callable[[dict], bool] = lambda c: True) -> dict[tuple[str, int], dict]:
    """The finished cells under ``out/cells`` by (row, seed); files without a row (older formats) or that
    ``keep`` refuses are skipped."""
    cells = {}
    for f in sorted((out / "cells").glob("*.json")):
        c = json.loads(f.read_text())
        if "row" in c and keep(c):
            cells[(c["row"], c["seed"])] = c
    return cells


# ------------------------------------------------------------------------------------------------ statistics

#: t(0.975, n - 1) by sample size n; 1.96 beyond
T975 = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}


def ci95(values: list[float]) -> float:
    """Half-width of a t-based 95% interval of the mean (nan for < 2 values)."""
    n = len(values)
    if n < 2:
        return float("nan")
    return T975.get(n, 1.96) * float(np.std(values, ddof=1)) / math.sqrt(n)


def ci_text(mean: float, half: float | None, digits: int = 3) -> str:
    """'0.812 ± 0.034'; the mean alone when the half-width is None or nan (one seed)."""
    return f"{mean:.{digits}f}" + ("" if half is None or math.isnan(half) else f" ± {half:.{digits}f}")


def mean_ci(values: list[float], digits: int = 3) -> str:
    """Mean ± 95% t-interval of ``values`` as text; '-' for none."""
    if not values:
        return "-"
    return ci_text(np.mean(values), ci95(values), digits)


def first_reach(curve: list[dict], x: str, reached: Callable[[dict], bool]) -> int | None:
    """``x`` (epoch, step) of the first curve point that ``reached`` accepts; None if none does."""
    return next((p[x] for p in curve if reached(p)), None)


def reach_text(values: list[float], n: int, digits: int = 1) -> str:
    """Mean ± CI of the epochs/steps at which the seeds reached a target, and how many of ``n`` did."""
    if not values:
        return f"not reached (0/{n})"
    return mean_ci(values, digits) + ("" if len(values) == n else f" ({len(values)}/{n} reached)")


def common_points(cells: list[dict], x: str, y: str) -> list[tuple[int, list[float]]]:
    """(x, every cell's y there) at each ``x`` that all cells' curves evaluated, in order."""
    xs = sorted(set.intersection(*[{p[x] for p in c["curve"]} for c in cells]))
    return [(v, [next(p[y] for p in c["curve"] if p[x] == v) for c in cells]) for v in xs]


# ------------------------------------------------------------------------------------------------ report


def summarize_rows(
    rows: list[str],
    seeds: Seeds,
    cells: dict[tuple[str, int], dict],
    baseline: Callable[[str], str],
    summarize: Callable[[str, list[dict], list[int], dict[int, dict]], dict],
) -> list[dict]:
    """One entry a row (the asked rows, then any other row that has cells): ``summarize(row, its cells,
    missing seeds, the baseline row's cells by seed)``, or a stub naming the missing seeds if it has none."""
    summary = []
    for row in dict.fromkeys(rows + [k[0] for k in cells]):
        planned = row_seeds(seeds, row)
        got = [cells[(row, s)] for s in planned if (row, s) in cells]
        missing = [s for s in planned if (row, s) not in cells]
        if not got:
            summary.append({"row": row, "label": row, "n_seeds": 0, "missing_seeds": missing})
            continue
        base = {s: cells[(baseline(row), s)] for s in planned if (baseline(row), s) in cells}
        summary.append(summarize(row, got, missing, base))
    return summary


def seeds_text(s: dict) -> str:
    """'2/3 (missing [2])': a summary entry's seeds out of the seeds planned for its row."""
    n = s["n_seeds"] + len(s["missing_seeds"])
    return f"{s['n_seeds']}/{n}" + (f" (missing {s['missing_seeds']})" if s["missing_seeds"] else "")


def hosts(cells: list[dict]) -> list[str]:
    """The distinct hosts of ``cells`` as sorted JSON (the date left out: it does not make a new host)."""
    return sorted(
        {
            json.dumps({k: v for k, v in c["machine"].items() if k != "date"}, sort_keys=True)
            for c in cells
            if "machine" in c
        }
    )


def hosts_md(host_list: list[str]) -> str:
    """The report's Hosts section ('' when no cell recorded one)."""
    return "\n### Hosts\n\n" + "\n".join(f"- `{h}`" for h in host_list) + "\n" if host_list else ""


def grid_payload(host_list: list[str], seeds: dict, args, **protocol) -> dict:
    """The head of a policy grid's report.json: this machine, the cells' hosts, the seeds, and the protocol
    (the sweep model's settings from ``args``, then the grid's own ``protocol`` keys and the overrides)."""
    return {
        "machine": machine(),
        "hosts": [json.loads(h) for h in host_list],
        "seeds": seeds,
        "protocol": {
            "model": args.model,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "eval_every": args.eval_every,
            **protocol,
            "overrides": args.override,
        },
    }


def write_report(out: Path, md: str, payload: dict) -> None:
    """``report.json`` and ``report.md`` under ``out``."""
    write_json(out / "report.json", payload)
    (out / "report.md").write_text(md)


def replace_block(path: Path, name: str, text: str) -> None:
    """Replace what lies between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in ``path`` with ``text``.

    Why: a README's measured numbers must come from the report that measured them; regenerating the block
    by hand (or by a script outside the repository) let the two drift. Everything outside the markers is
    the author's and stays byte for byte; a file without both markers, in order, is left alone with a
    one-line error."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    try:
        old = path.read_text()
    except OSError as e:
        raise SystemExit(f"cannot read {path}: {e.strerror}") from None
    i, j = old.find(begin), old.find(end)
    if i < 0 or j < i:
        raise SystemExit(
            f"{path}: no '{begin}' ... '{end}' block to fill; add the two markers where it goes."
        )
    new = old[: i + len(begin)] + "\n" + text.strip("\n") + "\n" + old[j:]
    if new != old:
        write_text(path, new)
