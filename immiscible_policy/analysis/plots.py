"""The figures ``immiscible-analyze`` writes next to its JSON results (matplotlib's Agg canvas, no GUI).

Each function takes the payload its command writes as JSON (or the series derived from it) and a PNG
path, so a figure can be redrawn from a saved result without re-running the analysis.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["plot_bijectivity", "plot_lines", "plot_modes", "plot_nearest"]


def plot_lines(path: Path, series: dict, xlabel: str, ylabel: str, title: str) -> None:
    """One line per name of ``series`` ({name: (x, y)}), e.g. the mixing curve of each assigner."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o", ms=3, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def plot_bijectivity(path: Path, payload: dict) -> None:
    """Bars per checkpoint: reconstruction error (dot: median), re-sample error, distinct nearest share,
    and for labelled images the class entropy of the nearest training images (dashed: N real images)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = list(payload["runs"].values())
    names = list(payload["runs"])
    image = payload["kind"] == "image"
    panels = [
        (
            "relative noise reconstruction\nerror (bar mean, dot median)",
            "relative_noise_reconstruction_error",
        ),
        ("relative re-sample error\n||x(z_rec) - x|| / ||x||", "relative_resample_error"),
    ]
    values = {k: [r.get(k, float("nan")) for r in runs] for _, k in panels}
    if image:
        panels.append(("distinct nearest training\nimages / N", "distinct"))
        values["distinct"] = [r["distinct_nearest"] / r["n_samples"] for r in runs]
        if all("class_entropy_bits" in r for r in runs):
            panels.append(("class entropy of nearest\nimages (bits)", "class_entropy_bits"))
            values["class_entropy_bits"] = [r["class_entropy_bits"] for r in runs]
    else:
        panels.append(("distinct nearest training\nchunks / N per observation", "distinct"))
        values["distinct"] = [
            r["distinct_nearest_train_chunks_per_condition"] / r["samples_per_condition"] for r in runs
        ]
    fig = Figure(figsize=(2.8 * len(panels), 3.0))
    FigureCanvasAgg(fig)
    for k, (title, key) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        vals = values[key]
        ax.bar(range(len(names)), vals, color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
        ax.set_title(title, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=7)
        if key == "relative_noise_reconstruction_error":
            med = [r["relative_noise_reconstruction_error_median"] for r in runs]
            ax.plot(range(len(names)), med, "ko", ms=4)
        ref = runs[0].get("reference_real_images")
        if key == "class_entropy_bits" and ref:
            ax.axhline(ref["class_entropy_bits"], color="k", ls="--", lw=1, label="N real images")
            ax.legend(fontsize=7, loc="lower right")
    refine = payload.get("fixed_point_iters", 0)
    fig.suptitle(
        f"bijectivity / diversity: {payload['task']} (DDIM {payload['ddim_steps']} steps"
        + (f", inversion refined x{refine}" if refine else "")
        + ")",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def plot_nearest(path: Path, extras: dict) -> None:
    """Per checkpoint (in order): a row of samples over a row of their nearest training images."""
    from immiscible_policy.image.sampling import save_grid

    rows = [row for samples, nearest in extras.values() for row in (samples, nearest)]
    save_grid(torch.cat(rows), path, nrow=rows[0].shape[0])


def plot_modes(path: Path, payload: dict) -> None:
    """Grouped bars: left share per start for each checkpoint (mean binary entropy in the legend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs, seeds = payload["runs"], payload["seeds"]
    fig = Figure(figsize=(max(5.0, 1.1 * len(seeds) + 2), 3.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(runs))
    for i, (name, r) in enumerate(runs.items()):
        shares = [s["left_share"] if s["left_share"] == s["left_share"] else 0.0 for s in r["starts"]]
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(seeds))]
        ax.bar(xs, shares, width, label=f"{name} (mean H={r['mean_binary_entropy_bits']:.2f} bits)")
    ax.axhline(0.5, color="k", lw=0.8, ls=":")
    ax.set_xticks(range(len(seeds)), [str(s) for s in seeds], fontsize=8)
    ax.set(xlabel="test start seed", ylabel="left / (left + right) first contacts", ylim=(0, 1.3))
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_title(f"PushT approach modes ({payload['n_rollouts']} rollouts per start)", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", ncol=min(3, len(runs)), frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
