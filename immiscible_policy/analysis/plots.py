"""The figures ``immiscible-analyze`` writes next to its JSON results (matplotlib's Agg canvas, no GUI).

Each function takes the payload its command writes as JSON (or the series derived from it) and a PNG
path, so a figure can be redrawn from a saved result without re-running the analysis.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = [
    "plot_bijectivity",
    "plot_demo_modes",
    "plot_lines",
    "plot_modes",
    "plot_nearest",
]


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


def plot_noise_share(path: Path, payload: dict) -> None:
    """Two panels of bars, one bar per checkpoint: the noise share of the action's variance, and the
    within- against the between-observation standard deviation."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names, runs = list(payload["runs"]), list(payload["runs"].values())
    fig = Figure(figsize=(max(6.0, 1.6 * len(names) + 2), 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    shares = [r["noise_share"] for r in runs]
    ax.bar(range(len(names)), shares, color=[f"C{i}" for i in range(len(names))])
    for i, v in enumerate(shares):
        ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
    ax.set(ylim=(0, max(1.0, *shares) * 1.05))
    ax.set_title("share of the action's variance\nfrom the sampling noise", fontsize=8)
    ax = fig.add_subplot(1, 2, 2)
    width = 0.4
    xs = range(len(names))
    ax.bar(
        [x - width / 2 for x in xs], [r["within_obs_std"] for r in runs], width, label="within an observation"
    )
    ax.bar(
        [x + width / 2 for x in xs], [r["between_obs_std"] for r in runs], width, label="between observations"
    )
    ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
    ax.set_title("action std (env units, RMS over coordinates)", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    fig.suptitle(
        f"{payload['task']}: {payload['samples']} samples for each of {payload['n_obs']} observations",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def plot_leak(path: Path, payload: dict) -> None:
    """Three panels of bars, one bar per recipe: the condition leak (held-out R^2), the noise's projection on
    its own chunk, and the mean pair distance."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names, runs = list(payload["runs"]), list(payload["runs"].values())
    fig = Figure(figsize=(max(9.0, 1.8 * len(names) + 3), 3.8))
    FigureCanvasAgg(fig)
    panels = (("condition leak: held-out R² of the\nnoise from the observation", "condition_leak", "+.3f"),)
    panels += (("the noise's projection on its\nown chunk (0: independent)", "noise_proj_x0", "+.2f"),)
    panels += (("mean L2 from a chunk to its noise", "pair_l2", ".3f"),)
    for k, (title, key, fmt) in enumerate(panels):
        ax = fig.add_subplot(1, 3, k + 1)
        vals = [r[key] for r in runs]
        ax.bar(range(len(names)), vals, color=[f"C{i}" for i in range(len(names))])
        for i, v in enumerate(vals):
            ax.text(i, v, format(v, fmt), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_title(title, fontsize=8)
        ax.axhline(0, color="k", lw=0.6)
    fig.suptitle(
        f"{payload['task']}: pairing recipes before training (batch {payload['batch']})", fontsize=10
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


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


def plot_demo_modes(path: Path, payload: dict) -> None:
    """Each demo's net rotation against its start's angle from the goal (``demo_modes``'s payload), coloured
    by rotation mode: the shortest turn is the line y = -x, the threshold band is shaded, the starts
    beyond +-``far_deg`` (where the direction is a choice) lie outside the dotted lines, and those within
    ``upside_down_deg`` of upside down (the symmetric starts' angle) in the shaded edges."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    eps, thr = payload["episodes"], payload["threshold_deg"]
    far = payload["far_from_goal"]["min_deg"]
    fig = Figure(figsize=(6.5, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.axhspan(-thr, thr, color="0.92", label=f"none: |turn| < {thr:g} deg")
    ax.plot([-180, 180], [180, -180], color="0.5", lw=0.8, ls="--", label="shortest turn to the goal")
    for x in (-far, far):
        ax.axvline(x, color="k", lw=0.6, ls=":")
    up = payload["upside_down"]
    ax.axvspan(
        180 - up["max_deg"], 185, color="C2", alpha=0.12, label=f"within {up['max_deg']:g} deg of upside down"
    )
    ax.axvspan(-185, -180 + up["max_deg"], color="C2", alpha=0.12)
    for mode, color in (("cw", "C0"), ("ccw", "C1"), ("none", "0.4")):
        pts = [(e["start_from_goal_deg"], e["rotation_deg"]) for e in eps if e["mode"] == mode]
        if pts:
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, s=12, color=color, label=f"{mode} ({len(pts)})")
    rot = payload["far_from_goal"]["rotation"]
    ax.set(
        xlabel="start angle - goal angle (deg, wrapped)",
        ylabel="net rotation (deg, + = clockwise on screen)",
        xlim=(-185, 185),
        title=f"PushT demos ({payload['n_episodes']}): starts > {far:g} deg from the goal turn "
        f"cw {rot['cw']} / ccw {rot['ccw']};\nstarts within {up['max_deg']:g} deg of upside down: cw {up['rotation']['cw']} / "
        f"ccw {up['rotation']['ccw']}",
    )
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")  # that corner is empty: the points follow y = -x
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
