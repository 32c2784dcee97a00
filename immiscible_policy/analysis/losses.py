"""Per-timestep-bucket training loss of several runs, versus step (the trainers log ``loss_t0..loss_tN``).

Immiscibility claims to make denoising easier step by step; this puts each run's loss in each noise-level
bucket side by side so that claim can be checked on one's own data and model.
"""

from __future__ import annotations

import re
from pathlib import Path

from immiscible_policy.run_log import read_jsonl

BUCKET = re.compile(r"^loss_t(\d+)$")


def bucket_curves(run_dir: str | Path) -> dict[int, list[tuple[int, float]]]:
    """{bucket: [(step, loss), ...]} from a run's metrics.jsonl; one-line error when there is none."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; pass run directories written by immiscible-train.")
    curves: dict[int, list[tuple[int, float]]] = {}
    for rec in read_jsonl(path):
        for key, val in rec.items():
            m = BUCKET.match(key)
            if m and isinstance(val, int | float) and val == val:
                curves.setdefault(int(m.group(1)), []).append((int(rec["step"]), float(val)))
    if not curves:
        raise ValueError(
            f"{path} has no loss_t<bucket> columns; it was written before bucket logging existed."
        )
    return curves


def plot_bucket_losses(runs: list[str | Path], png: str | Path, labels: list[str] | None = None) -> dict:
    """One panel per bucket, one line per run; returns the curves as a JSON-able dict."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = {str(labels[i] if labels else Path(r).name): bucket_curves(r) for i, r in enumerate(runs)}
    buckets = sorted({b for c in data.values() for b in c})
    cols = min(5, len(buckets))
    rows = (len(buckets) + cols - 1) // cols
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows))
    FigureCanvasAgg(fig)
    for k, b in enumerate(buckets):
        ax = fig.add_subplot(rows, cols, k + 1)
        for name, curves in data.items():
            if b in curves:
                steps, vals = zip(*curves[b])
                ax.plot(steps, vals, label=name)
        ax.set_title(f"t bucket {b} ({b / len(buckets):.1f}-{(b + 1) / len(buckets):.1f} T)", fontsize=8)
        ax.set_yscale("log")
        ax.tick_params(labelsize=7)
    fig.axes[0].legend(fontsize=7)
    fig.supxlabel("training step", fontsize=8)
    fig.supylabel("training loss in the bucket (log)", fontsize=8)
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    return {name: {str(b): c for b, c in curves.items()} for name, curves in data.items()}
