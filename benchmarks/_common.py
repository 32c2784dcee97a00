"""Shared helpers for benchmarks: timing, environment description, JSON + markdown output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

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


def cpu_record() -> dict:
    """CPU model and the instruction-set flags that decide torch's speed (machines here differ by 5x)."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "model name" and model in ("", "x86_64", platform.machine()):
                model = val.strip()
            if key.strip() == "flags":
                flags = val.split()
                break
    except OSError:
        pass
    wanted = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16")
    wanted += ("amx_tile", "amx_bf16")
    return {"cpu_model": model, "cpu_flags": [f for f in wanted if f in flags]}


def machine() -> dict:
    """Where a number was measured (quote it with the number): CPU model and flags, cores, threads, torch,
    device, date."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        **cpu_record(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    return info


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


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
    import numpy as np
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


def claim_cell(run_dir: Path) -> bool:
    """Claim a sweep cell for this process (``run_dir/.owner`` holds our pid); False if a live process has it.

    Why: sweeps are resumable, so two workers started on overlapping cell lists (say one per core) would
    otherwise resume the same run directory at once and corrupt it. A stale claim (dead pid) is taken over.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    owner = run_dir / ".owner"
    try:
        pid = int(owner.read_text().strip())
    except (FileNotFoundError, ValueError):
        pid = None
    if pid is not None and pid != os.getpid():
        try:
            os.kill(pid, 0)
            return False  # alive: another worker is on this cell
        except ProcessLookupError:
            pass
        except PermissionError:
            return False
    owner.write_text(str(os.getpid()))
    return True
