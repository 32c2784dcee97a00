"""``immiscible-analyze``: measure why (and whether) immiscibility eases denoising.

    immiscible-analyze mixing [data=pusht|fashion_mnist] [assigners=vanilla,knn,linear,scale] [batch=256] [out=DIR]
    immiscible-analyze losses RUN_DIR [RUN_DIR ...] [out=DIR]
    immiscible-analyze bijectivity checkpoint=PATH [n=16 conditions=8 steps=50 out=DIR]

Each writes a JSON and a PNG into ``out`` (default ``analysis/``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from immiscible_policy.cli._kv import parse_kv, require_checkpoint

DATA = ("pusht", "fashion_mnist")
# The schedules each trainer uses by default: PushT policies DDPM 100 squaredcos, images DDPM 1000 linear.
SCHEDULES = {"pusht": (100, "squaredcos_cap_v2"), "fashion_mnist": (1000, "linear")}


def _opts(argv: list[str], allowed: tuple[str, ...]) -> tuple[dict, list[str]]:
    return parse_kv(argv, allowed, positional=True)


def _assigner_list(spec) -> list[str]:
    return [s for s in (spec.split(",") if isinstance(spec, str) else list(spec)) if s]


def pusht_action_batch(batch: int, seed: int = 0) -> torch.Tensor:
    """(batch, 16, 2) normalised action chunks from the real PushT demos (train split)."""
    from immiscible_policy.policy.dataset import PushTLowdimDataset

    ds = PushTLowdimDataset()
    act = ds.get_normalizer().normalize("action", ds.all_windows()["action"])
    idx = torch.randperm(act.shape[0], generator=torch.Generator().manual_seed(seed))[:batch]
    return act[idx]


def fashion_mnist_batch(batch: int, seed: int = 0) -> torch.Tensor:
    """(batch, 1, 32, 32) Fashion-MNIST training images in [-1, 1] (padded 28 -> 32, as the image task)."""
    from immiscible_policy.image.data import load_fashion_mnist

    images = load_fashion_mnist().all_images()
    idx = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:batch]
    return images[idx]


def cmd_mixing(argv: list[str]) -> dict:
    from diffusers import DDPMScheduler

    from immiscible_policy.analysis.mixing import mixing_curve
    from immiscible_policy.registry import create

    opts, _ = _opts(argv, ("data", "assigners", "batch", "out", "repeats", "num_train_timesteps"))
    data = str(opts.get("data", "pusht"))
    if data not in DATA:
        raise ValueError(f"data={data!r} is not supported; use one of {', '.join(DATA)}.")
    T, schedule = SCHEDULES[data]
    T = int(opts.get("num_train_timesteps", T))
    sched = DDPMScheduler(num_train_timesteps=T, beta_schedule=schedule)
    loader = pusht_action_batch if data == "pusht" else fashion_mnist_batch
    x0 = loader(int(opts.get("batch", 256)))
    ts = sorted({int(round(f * (T - 1))) for f in [i / 19 for i in range(20)]})
    names = _assigner_list(opts.get("assigners", "vanilla,knn,linear,scale"))
    result = {
        name: mixing_curve(x0, create(name), sched.alphas_cumprod, ts, repeats=int(opts.get("repeats", 4)))
        for name in names
    }
    out = Path(opts.get("out", "analysis"))
    _write(out / f"mixing_{data}.json", {"data": data, "batch": x0.shape[0], "T": T, "curves": result})
    _plot_lines(
        out / f"mixing_{data}.png",
        {n: ([p["t"] for p in c], [p["mixing"] for p in c]) for n, c in result.items()},
        "timestep t",
        "mixing = 1 - mean own-posterior weight",
        f"miscibility on {data} (B={x0.shape[0]})",
    )
    for n, c in result.items():
        print(f"{n:12s} " + " ".join(f"t{p['t']}:{p['mixing']:.3f}" for p in c[::4]))
    return result


def cmd_losses(argv: list[str]) -> dict:
    from immiscible_policy.analysis.losses import plot_bucket_losses

    opts, runs = _opts(argv, ("out",))
    if not runs:
        raise ValueError("give one or more run directories: immiscible-analyze losses RUN_A RUN_B")
    out = Path(opts.get("out", "analysis"))
    curves = plot_bucket_losses(runs, out / "bucket_losses.png")
    _write(out / "bucket_losses.json", curves)
    print(f"wrote {out / 'bucket_losses.png'}")
    return curves


def cmd_bijectivity(argv: list[str]) -> dict:
    from immiscible_policy.analysis.inversion import ddim_invert, ddim_sample
    from immiscible_policy.policy.dataset import PushTLowdimDataset
    from immiscible_policy.policy.train import load_policy

    opts, _ = _opts(argv, ("checkpoint", "n", "conditions", "steps", "out", "device"))
    require_checkpoint(opts)
    model, policy, cfg, ck = load_policy(opts["checkpoint"], device=str(opts.get("device", "cpu")))
    n, m, steps = int(opts.get("n", 16)), int(opts.get("conditions", 8)), int(opts.get("steps", 50))
    ds = PushTLowdimDataset(cfg.task.dataset_path, obs_type=str(cfg.task.obs_type))
    val = ds.get_validation_dataset().all_windows()
    train_act = policy.normalizer.normalize("action", ds.all_windows()["action"]).flatten(1)
    pick = torch.linspace(0, val["obs"].shape[0] - 1, m).long()
    ac = policy.core.scheduler.alphas_cumprod
    errs, distinct = [], []
    for j in pick.tolist():
        cond = policy.global_cond(policy.normalizer.normalize("obs", val["obs"][j : j + 1])).expand(n, -1)
        noise = torch.randn(n, policy.horizon, policy.action_dim, generator=torch.Generator().manual_seed(j))
        fn = lambda x, t, c=cond: model(x, t, c)  # noqa: E731
        sample = ddim_sample(fn, noise, ac, steps)
        back = ddim_invert(fn, sample, ac, steps)
        errs.append(float((back - noise).flatten(1).norm(dim=1).mean() / noise.flatten(1).norm(dim=1).mean()))
        nearest = torch.cdist(sample.flatten(1), train_act).argmin(dim=1)
        distinct.append(int(torch.unique(nearest).numel()))
    result = {
        "checkpoint": str(ck.path),
        "assigner": ck.config.get("assigner"),
        "relative_noise_reconstruction_error": sum(errs) / len(errs),
        "distinct_nearest_train_chunks_per_condition": sum(distinct) / len(distinct),
        "samples_per_condition": n,
        "conditions": m,
        "ddim_steps": steps,
    }
    out = Path(opts.get("out", "analysis"))
    _write(out / "bijectivity.json", result)
    print(json.dumps(result, indent=2))
    return result


def _write(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))


def _plot_lines(path: Path, series: dict, xlabel: str, ylabel: str, title: str) -> None:
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


COMMANDS = {"mixing": cmd_mixing, "losses": cmd_losses, "bijectivity": cmd_bijectivity}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; use one of {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    try:
        COMMANDS[argv[0]](argv[1:])
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
