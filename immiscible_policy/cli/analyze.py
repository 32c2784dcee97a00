"""``immiscible-analyze``: measure why (and whether) immiscibility eases denoising.

    immiscible-analyze mixing [data=pusht|fashion_mnist] [assigners=vanilla,knn,linear,scale] [batch=256] [out=DIR]
    immiscible-analyze losses RUN_DIR [RUN_DIR ...] [labels=a,b name=bucket_losses out=DIR]
    immiscible-analyze bijectivity checkpoint=RUN[,RUN...] [labels=a,b n=.. conditions=8 steps=50 refine=0
                                   seed=0 batch=64 device=cpu out=DIR]
    immiscible-analyze modes checkpoint=RUN[,RUN...] [labels=a,b n_states=5 n_rollouts=16 max_steps=200
                             seeds=100000,... margin=10 sampler=ddpm num_inference_steps=100 out=DIR]

Each writes a JSON and a PNG into ``out`` (default ``analysis/``). ``bijectivity`` reads the checkpoint
kind from its config.json: policy (n=16 samples per observation, ``conditions`` observations) or image
(n=64 images; also ``bijectivity_<task>_nearest.png``: per checkpoint, in order, a row of samples over a
row of their nearest training images). ``refine=K`` refines each DDIM inversion step by K fixed-point
iterations (plain DDIM inversion is poor on PushT's 100-step squared-cosine schedule).
``modes`` rolls PushT policies out from fixed test starts and classifies each rollout's first contact
as the left or right half of the T (see ``immiscible_policy.analysis.modes``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

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

    opts, runs = _opts(argv, ("out", "labels", "name"))
    if not runs:
        raise ValueError("give one or more run directories: immiscible-analyze losses RUN_A RUN_B")
    labels = _assigner_list(opts.get("labels", "")) or None
    if labels and len(labels) != len(runs):
        raise ValueError(f"labels= has {len(labels)} names for {len(runs)} runs; give one per run.")
    out, name = Path(opts.get("out", "analysis")), str(opts.get("name", "bucket_losses"))
    curves = plot_bucket_losses(runs, out / f"{name}.png", labels=labels)
    _write(out / f"{name}.json", curves)
    print(f"wrote {out / name}.png")
    return curves


def _checkpoints(opts: dict) -> list[tuple[str, str | None]]:
    """[(checkpoint, label or None)] from ``checkpoint=A[,B...]`` and optional ``labels=a[,b...]``."""
    require_checkpoint(opts)
    paths = _assigner_list(opts["checkpoint"])
    labels = _assigner_list(opts.get("labels", "")) or [None] * len(paths)
    if len(labels) != len(paths):
        raise ValueError(
            f"labels= has {len(labels)} names for {len(paths)} checkpoints; give one per checkpoint."
        )
    return list(zip(paths, labels, strict=True))


def checkpoint_kind(path: str) -> tuple[str, str]:
    """('image' | 'policy', task name) from a checkpoint's config.json (one-line error otherwise)."""
    from immiscible_policy.checkpoint import load_checkpoint

    config = load_checkpoint(path).config
    task = str(config.get("cfg", {}).get("task", {}).get("name", "unknown"))
    if "image" in config:
        return "image", task
    if "policy" in config:
        return "policy", task
    raise ValueError(
        f"{path}: config.json has neither image nor policy metadata; not an immiscible-train checkpoint."
    )


def _label(label: str | None, ck) -> str:
    return label or str((ck.config.get("assigner") or {}).get("name", ck.path.parent.parent.name))


def cmd_bijectivity(argv: list[str]) -> dict:
    opts, _ = _opts(
        argv, ("checkpoint", "labels", "n", "conditions", "steps", "refine", "out", "device", "seed", "batch")
    )
    cks = _checkpoints(opts)
    kinds = {checkpoint_kind(path) for path, _ in cks}
    if len(kinds) != 1:
        raise ValueError(
            f"checkpoints mix kinds/tasks {sorted(kinds)}; compare checkpoints of one task at a time."
        )
    kind, task = kinds.pop()
    steps, device = int(opts.get("steps", 50)), str(opts.get("device", "cpu"))
    runs, extras = {}, {}
    for path, label in tqdm(cks, desc="bijectivity", leave=False):
        if kind == "image":
            res, grid = _image_bijectivity(path, opts, steps, device)
        else:
            res, grid = _policy_bijectivity(path, opts, steps, device), None
        name = _label(label, res.pop("_ck"))
        if name in runs:
            raise ValueError(
                f"two checkpoints are labelled {name!r}; pass labels=a,b,... to tell them apart."
            )
        runs[name], extras[name] = res, grid
    out = Path(opts.get("out", "analysis"))
    refine = int(opts.get("refine", 0))
    payload = {"kind": kind, "task": task, "ddim_steps": steps, "fixed_point_iters": refine, "runs": runs}
    _write(out / f"bijectivity_{task}.json", payload)
    _plot_bijectivity(out / f"bijectivity_{task}.png", payload)
    if kind == "image":
        _plot_nearest(out / f"bijectivity_{task}_nearest.png", extras)
    for name, r in runs.items():
        print(f"{name:12s} " + " ".join(f"{k}={v:.4g}" for k, v in r.items() if isinstance(v, float)))
    return payload


def _policy_bijectivity(path: str, opts: dict, steps: int, device: str) -> dict:
    from immiscible_policy.analysis.bijectivity import policy_bijectivity
    from immiscible_policy.policy.dataset import PushTLowdimDataset
    from immiscible_policy.policy.train import load_policy

    model, policy, cfg, ck = load_policy(path, device=device)
    ds = PushTLowdimDataset(cfg.task.dataset_path, obs_type=str(cfg.task.obs_type))
    res = policy_bijectivity(
        model,
        policy,
        ds,
        n=int(opts.get("n", 16)),
        conditions=int(opts.get("conditions", 8)),
        steps=steps,
        fixed_point_iters=int(opts.get("refine", 0)),
    )
    return {"checkpoint": str(ck.path), "assigner": ck.config.get("assigner"), **res, "_ck": ck}


def _image_bijectivity(path: str, opts: dict, steps: int, device: str):
    from immiscible_policy.analysis.bijectivity import image_bijectivity
    from immiscible_policy.image.data import load_dataset, to_unit
    from immiscible_policy.image.model import predict
    from immiscible_policy.image.sampling import load_image_model

    model, core, cfg, ck = load_image_model(path, device=device)
    ds = load_dataset(cfg.task)
    num_classes = int(ck.config["image"]["num_classes"])
    res, samples, nearest = image_bijectivity(
        lambda x, t, lab: predict(model, x, t, None if lab is None else lab.to(x.device)),
        core,
        ds.images,
        ds.labels,
        n=int(opts.get("n", 64)),
        steps=steps,
        seed=int(opts.get("seed", 0)),
        batch_size=int(opts.get("batch", 64)),
        num_classes=ds.num_classes,
        conditional=num_classes > 0,
        device=next(model.parameters()).device,
        fixed_point_iters=int(opts.get("refine", 0)),
    )
    res = {"checkpoint": str(ck.path), "assigner": ck.config.get("assigner"), "dataset": ds.ref_key, **res}
    k = 12  # the nearest-image figure shows the first k samples over their nearest training images
    return {**res, "_ck": ck}, (samples[:k], to_unit(ds.images[nearest[:k]]))


def cmd_modes(argv: list[str]) -> dict:
    import numpy as np

    from immiscible_policy.analysis.modes import clear_starts, rollout_modes
    from immiscible_policy.policy.train import load_policy

    allowed = ("checkpoint", "labels", "n_states", "n_rollouts", "seeds", "max_steps", "margin", "sampler")
    opts, _ = _opts(argv, (*allowed, "num_inference_steps", "seed", "out", "device"))
    cks = _checkpoints(opts)
    seeds = opts.get("seeds")  # "100000,100002", [100000, 100002] or 100000
    if seeds is not None:
        seeds = [int(s) for s in (seeds if isinstance(seeds, list) else _assigner_list(str(seeds)))]
    seeds = seeds or clear_starts(int(opts.get("n_states", 5)))
    n_rollouts, seed = int(opts.get("n_rollouts", 16)), int(opts.get("seed", 0))
    runs = {}
    for path, label in cks:
        kind, task = checkpoint_kind(path)
        if kind != "policy" or task != "pusht":
            raise ValueError(f"{path} is a {task} {kind} checkpoint; modes needs a PushT policy checkpoint.")
        model, policy, cfg, ck = load_policy(path, device=str(opts.get("device", "cpu")))
        policy.sampler = str(opts.get("sampler", policy.sampler))
        policy.num_inference_steps = int(opts.get("num_inference_steps", policy.num_inference_steps))
        device = next(model.parameters()).device
        per_start = []
        for k, start in enumerate(tqdm(seeds, desc=f"modes {_label(label, ck)}", leave=False)):
            gen = torch.Generator(device=device).manual_seed(seed * 100_003 + k)
            per_start.append(
                rollout_modes(
                    lambda obs, g=gen, p=policy, m=model: p.predict_action(m, obs, generator=g),
                    start,
                    n_rollouts,
                    obs_type=str(cfg.task.obs_type),
                    n_obs_steps=policy.n_obs_steps,
                    max_steps=int(opts.get("max_steps", 200)),
                    margin=float(opts.get("margin", 10.0)),
                )
            )
        name = _label(label, ck)
        if name in runs:
            raise ValueError(
                f"two checkpoints are labelled {name!r}; pass labels=a,b,... to tell them apart."
            )
        runs[name] = {
            "checkpoint": str(ck.path),
            "assigner": ck.config.get("assigner"),
            "sampler": f"{policy.sampler} {policy.num_inference_steps} steps",
            "mean_binary_entropy_bits": float(np.mean([s["binary_entropy_bits"] for s in per_start])),
            "starts_with_both_sides": sum(
                s["counts"]["left"] > 0 and s["counts"]["right"] > 0 for s in per_start
            ),
            "starts": per_start,
        }
    out = Path(opts.get("out", "analysis"))
    payload = {"seeds": seeds, "n_rollouts": n_rollouts, "runs": runs}
    _write(out / "modes_pusht.json", payload)
    _plot_modes(out / "modes_pusht.png", payload)
    for name, r in runs.items():
        shares = " ".join(f"{s['left_share']:.2f}" for s in r["starts"])
        print(f"{name:12s} mean H={r['mean_binary_entropy_bits']:.3f} bits, left share per start: {shares}")
    return payload


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


def _plot_bijectivity(path: Path, payload: dict) -> None:
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


def _plot_nearest(path: Path, extras: dict) -> None:
    """Per checkpoint (in order): a row of samples over a row of their nearest training images."""
    from immiscible_policy.image.sampling import save_grid

    rows = [row for samples, nearest in extras.values() for row in (samples, nearest)]
    save_grid(torch.cat(rows), path, nrow=rows[0].shape[0])


def _plot_modes(path: Path, payload: dict) -> None:
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


COMMANDS = {"mixing": cmd_mixing, "losses": cmd_losses, "bijectivity": cmd_bijectivity, "modes": cmd_modes}


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
