"""``immiscible-analyze``: measure why (and whether) immiscibility eases denoising.

    immiscible-analyze mixing [data=pusht|fashion_mnist] [assigners=vanilla,knn,linear,scale] [batch=256] [out=DIR]
    immiscible-analyze losses RUN_DIR [RUN_DIR ...] [labels=a,b name=bucket_losses out=DIR]
    immiscible-analyze bijectivity checkpoint=RUN[,RUN...] [labels=a,b n=.. conditions=8 steps=50 refine=0
                                   seed=0 batch=64 device=cpu allow_import=false out=DIR]
    immiscible-analyze modes checkpoint=RUN[,RUN...] [labels=a,b n_states=5 n_rollouts=16 max_steps=200
                             seeds=100000,... margin=10 sampler=ddpm num_inference_steps=100
                             allow_import=false out=DIR]
    immiscible-analyze demo_modes [data=PATH threshold_deg=45 margin=10 far_deg=135 upside_down_deg=15
                                  out=DIR]
    immiscible-analyze leak [data=PATH mirror=false | checkpoint=RUN] [recipes=vanilla,linear+standardize=true,...
                            labels=a,b batch=256 rows=8192 seed=0 allow_import=false out=DIR]
    immiscible-analyze noise_share checkpoint=RUN[,RUN...] [labels=a,b n_obs=64 samples=16 seed=0
                                   sampler=ddim num_inference_steps=16 device=cpu allow_import=false out=DIR]

Each writes a JSON and a PNG into ``out`` (default ``analysis/``). ``bijectivity`` reads the checkpoint
kind from its config.json: policy (n=16 samples per observation, ``conditions`` observations) or image
(n=64 images; also ``bijectivity_<task>_nearest.png``: per checkpoint, in order, a row of samples over a
row of their nearest training images). ``refine=K`` refines each DDIM inversion step by K fixed-point
iterations (plain DDIM inversion is poor on PushT's 100-step squared-cosine schedule). A policy
checkpoint's data comes from its own task family and split (``task.env``: PushT or robomimic demos;
``val_ratio`` / ``split_seed`` / ``max_train_episodes`` as recorded): observations from its validation
episodes, nearest chunks from its training episodes.
``modes`` rolls PushT policies out from fixed test starts and classifies each rollout's first contact
as the left or right half of the T (see ``immiscible_policy.metrics.pusht_modes``). ``demo_modes`` classifies
the PushT demos (``data``: a zarr store, default the shared one) by rotation mode and approach side with
the evaluation's definitions (docs/modes.md): ``demo_modes_pusht.json`` and a scatter of each demo's turn
against its start's angle from the goal. ``noise_share`` samples ``samples`` actions for each of ``n_obs``
validation observations of a policy checkpoint and reports the share of the action's variance that comes
from the sampling noise rather than the observation (``immiscible_policy.analysis.noise_share``):
``noise_share_<task>.json`` and a bar per checkpoint. ``leak`` computes, before any training, how much each
pairing recipe (``strategy+key=value+...``: the strategy's options and the schedule's ``fraction`` ...)
leaks the observation into a low-dim policy's training noise (``immiscible_policy.analysis.leak``) on the
PushT demos or a run's own data: ``leak_<task>.json`` and a bar per recipe.
``allow_import=true`` (or ``IMMISCIBLE_ALLOW_IMPORT=1``) trusts checkpoints whose assigner is a
``module:Class`` path rather than a registered strategy; without it they are refused before anything
is imported. The computations live in ``immiscible_policy.analysis.runs``, the figures in
``immiscible_policy.analysis.plots``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from immiscible_policy.analysis.runs import DATA, SCHEDULES, checkpoint_kind, run_label
from immiscible_policy.cli._kv import bool_option, error_line, int_option, parse_kv, require_checkpoint
from immiscible_policy.outputs import check_writable

__all__ = ["COMMANDS", "DATA", "SCHEDULES", "checkpoint_kind", "main"]


def _opts(argv: list[str], allowed: tuple[str, ...]) -> tuple[dict, list[str]]:
    opts, words = parse_kv(argv, allowed, positional=True)
    if "allow_import" in opts:
        opts["allow_import"] = bool_option(opts, "allow_import", False)
    return opts, words


def _names(spec) -> list[str]:
    return [s for s in (spec.split(",") if isinstance(spec, str) else list(spec)) if s]


def _write(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))


def cmd_mixing(argv: list[str]) -> dict:
    from diffusers import DDPMScheduler

    from immiscible_policy.analysis.mixing import mixing_curve
    from immiscible_policy.analysis.plots import plot_lines
    from immiscible_policy.analysis.runs import mixing_batch
    from immiscible_policy.registry import create

    opts, _ = _opts(argv, ("data", "assigners", "batch", "out", "repeats", "num_train_timesteps"))
    data = str(opts.get("data", "pusht"))
    if data not in DATA:
        raise ValueError(f"data={data!r} is not supported; use one of {', '.join(DATA)}.")
    T, schedule = SCHEDULES[data]
    T = int(opts.get("num_train_timesteps", T))
    sched = DDPMScheduler(num_train_timesteps=T, beta_schedule=schedule)
    x0 = mixing_batch(data, int(opts.get("batch", 256)))
    ts = sorted({int(round(f * (T - 1))) for f in [i / 19 for i in range(20)]})
    names = _names(opts.get("assigners", "vanilla,knn,linear,scale"))
    result = {
        name: mixing_curve(x0, create(name), sched.alphas_cumprod, ts, repeats=int(opts.get("repeats", 4)))
        for name in names
    }
    out = Path(opts.get("out", "analysis"))
    _write(out / f"mixing_{data}.json", {"data": data, "batch": x0.shape[0], "T": T, "curves": result})
    plot_lines(
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
    from immiscible_policy.config_check import check_plain_name

    opts, runs = _opts(argv, ("out", "labels", "name"))
    if not runs:
        raise ValueError("give one or more run directories: immiscible-analyze losses RUN_A RUN_B")
    labels = _names(opts.get("labels", "")) or None
    if labels and len(labels) != len(runs):
        raise ValueError(f"labels= has {len(labels)} names for {len(runs)} runs; give one per run.")
    out, name = Path(opts.get("out", "analysis")), str(opts.get("name", "bucket_losses"))
    check_plain_name("name", name, f"the file names {out}/<name>.png and .json", "bucket_losses")
    curves = plot_bucket_losses(runs, out / f"{name}.png", labels=labels)
    _write(out / f"{name}.json", curves)
    print(f"wrote {out / name}.png")
    return curves


def _checkpoints(opts: dict) -> list[tuple[str, str | None]]:
    """[(checkpoint, label or None)] from ``checkpoint=A[,B...]`` and optional ``labels=a[,b...]``."""
    require_checkpoint(opts)
    paths = _names(opts["checkpoint"])
    labels = _names(opts.get("labels", "")) or [None] * len(paths)
    if len(labels) != len(paths):
        raise ValueError(
            f"labels= has {len(labels)} names for {len(paths)} checkpoints; give one per checkpoint."
        )
    return list(zip(paths, labels, strict=True))


def _one_task(cks: list[tuple[str, str | None]]) -> tuple[str, str]:
    """(kind, task) shared by every checkpoint; a one-line error when they mix kinds or tasks."""
    kinds = {checkpoint_kind(path) for path, _ in cks}
    if len(kinds) != 1:
        raise ValueError(
            f"checkpoints mix kinds/tasks {sorted(kinds)}; compare checkpoints of one task at a time."
        )
    return kinds.pop()


def _add_run(runs: dict, name: str, result) -> None:
    if name in runs:
        raise ValueError(f"two checkpoints are labelled {name!r}; pass labels=a,b,... to tell them apart.")
    runs[name] = result


def cmd_bijectivity(argv: list[str]) -> dict:
    from immiscible_policy.analysis.plots import plot_bijectivity, plot_nearest
    from immiscible_policy.analysis.runs import image_checkpoint_bijectivity, policy_checkpoint_bijectivity

    opts, _ = _opts(
        argv,
        ("checkpoint", "labels", "n", "conditions", "steps", "refine", "out", "device", "seed", "batch")
        + ("allow_import",),
    )
    cks = _checkpoints(opts)
    kind, task = _one_task(cks)
    steps, device = int(opts.get("steps", 50)), str(opts.get("device", "cpu"))
    refine, allow_import = int(opts.get("refine", 0)), opts.get("allow_import")
    runs, extras = {}, {}
    for path, label in tqdm(cks, desc="bijectivity", leave=False):
        if kind == "image":
            res, ck, grid = image_checkpoint_bijectivity(
                path,
                n=int(opts.get("n", 64)),
                steps=steps,
                seed=int(opts.get("seed", 0)),
                batch=int(opts.get("batch", 64)),
                refine=refine,
                device=device,
                allow_import=allow_import,
            )
        else:
            res, ck = policy_checkpoint_bijectivity(
                path,
                n=int(opts.get("n", 16)),
                conditions=int(opts.get("conditions", 8)),
                steps=steps,
                refine=refine,
                device=device,
                allow_import=allow_import,
            )
            grid = None
        name = run_label(label, ck)
        _add_run(runs, name, res)
        extras[name] = grid
    out = Path(opts.get("out", "analysis"))
    payload = {"kind": kind, "task": task, "ddim_steps": steps, "fixed_point_iters": refine, "runs": runs}
    _write(out / f"bijectivity_{task}.json", payload)
    plot_bijectivity(out / f"bijectivity_{task}.png", payload)
    if kind == "image":
        plot_nearest(out / f"bijectivity_{task}_nearest.png", extras)
    for name, r in runs.items():
        print(f"{name:12s} " + " ".join(f"{k}={v:.4g}" for k, v in r.items() if isinstance(v, float)))
    return payload


def cmd_modes(argv: list[str]) -> dict:
    from immiscible_policy.analysis.modes import clear_starts
    from immiscible_policy.analysis.plots import plot_modes
    from immiscible_policy.analysis.runs import checkpoint_modes

    allowed = ("checkpoint", "labels", "n_states", "n_rollouts", "seeds", "max_steps", "margin", "sampler")
    opts, _ = _opts(argv, (*allowed, "num_inference_steps", "seed", "out", "device", "allow_import"))
    cks = _checkpoints(opts)
    seeds = opts.get("seeds")  # "100000,100002", [100000, 100002] or 100000
    if seeds is not None:
        seeds = [int(s) for s in (seeds if isinstance(seeds, list) else _names(str(seeds)))]
    seeds = seeds or clear_starts(int(opts.get("n_states", 5)))
    n_rollouts = int(opts.get("n_rollouts", 16))
    steps = opts.get("num_inference_steps")
    runs = {}
    for path, label in cks:
        res, ck = checkpoint_modes(
            path,
            label,
            seeds=seeds,
            n_rollouts=n_rollouts,
            seed=int(opts.get("seed", 0)),
            sampler=None if opts.get("sampler") is None else str(opts["sampler"]),
            num_inference_steps=None if steps is None else int(steps),
            max_steps=int(opts.get("max_steps", 200)),
            margin=float(opts.get("margin", 10.0)),
            device=str(opts.get("device", "cpu")),
            allow_import=opts.get("allow_import"),
        )
        _add_run(runs, run_label(label, ck), res)
    out = Path(opts.get("out", "analysis"))
    payload = {"seeds": seeds, "n_rollouts": n_rollouts, "runs": runs}
    _write(out / "modes_pusht.json", payload)
    plot_modes(out / "modes_pusht.png", payload)
    for name, r in runs.items():
        shares = " ".join(f"{s['left_share']:.2f}" for s in r["starts"])
        print(f"{name:12s} mean H={r['mean_binary_entropy_bits']:.3f} bits, left share per start: {shares}")
    return payload


def cmd_demo_modes(argv: list[str]) -> dict:
    from immiscible_policy.analysis.modes import demo_modes
    from immiscible_policy.analysis.plots import plot_demo_modes

    opts, _ = _opts(argv, ("data", "threshold_deg", "margin", "far_deg", "upside_down_deg", "out"))
    numbers = {}
    defaults = (("threshold_deg", 45.0), ("margin", 10.0), ("far_deg", 135.0), ("upside_down_deg", 15.0))
    for key, default in defaults:
        try:
            numbers[key] = float(opts.get(key, default))
        except (TypeError, ValueError):
            raise ValueError(f"{key}={opts[key]!r}: use a number of degrees (margin: pixels).") from None
    payload = demo_modes(opts.get("data"), **numbers)
    out = Path(opts.get("out", "analysis"))
    _write(out / "demo_modes_pusht.json", payload)
    plot_demo_modes(out / "demo_modes_pusht.png", payload)
    for name in ("all", "far_from_goal", "upside_down"):
        m = payload[name]
        print(
            f"{name:13s} n={m['n_rollouts']:3d} rotation {m['rotation']} long way {m['long_way']} "
            f"approach {m['approach']} "
            f"(threshold {payload['threshold_deg']:g} deg)"
        )
    return payload


def cmd_noise_share(argv: list[str]) -> dict:
    from immiscible_policy.analysis.plots import plot_noise_share
    from immiscible_policy.analysis.runs import policy_checkpoint_noise_share

    allowed = ("checkpoint", "labels", "n_obs", "samples", "seed", "sampler", "num_inference_steps")
    opts, _ = _opts(argv, (*allowed, "device", "out", "allow_import"))
    cks = _checkpoints(opts)
    kind, task = _one_task(cks)
    numbers = {
        k: int_option(opts, k, d, least)
        for k, d, least in (("n_obs", 64, 2), ("samples", 16, 2), ("seed", 0, 0))
    }
    steps = opts.get("num_inference_steps")
    runs = {}
    for path, label in tqdm(cks, desc="noise_share", leave=False):
        res, ck = policy_checkpoint_noise_share(
            path,
            **numbers,
            sampler=None if opts.get("sampler") is None else str(opts["sampler"]),
            num_inference_steps=None if steps is None else int(steps),
            device=str(opts.get("device", "cpu")),
            allow_import=opts.get("allow_import"),
        )
        _add_run(runs, run_label(label, ck), res)
    payload = {"kind": kind, "task": task, **numbers, "runs": runs}
    return _finish(
        opts,
        f"noise_share_{task}",
        payload,
        plot_noise_share,
        lambda name, r: (
            f"{name:12s} noise share {r['noise_share']:.3f} (within-observation std {r['within_obs_std']:.3g}, "
            f"between {r['between_obs_std']:.3g}; {r['sampler']})"
        ),
    )


def _finish(opts: dict, stem: str, payload: dict, plot, line) -> dict:
    """Write ``<out>/<stem>.json`` and ``<stem>.png`` (``plot(path, payload)``), print ``line(name, run)``
    for each of the payload's runs; the payload."""
    out = Path(opts.get("out", "analysis"))
    _write(out / f"{stem}.json", payload)
    plot(out / f"{stem}.png", payload)
    for name, r in payload["runs"].items():
        print(line(name, r))
    return payload


#: the recipes ``leak`` compares by default: vanilla, the published matching on all / half / a quarter of
#: each batch, and the other pairings of the PushT modes sweep
LEAK_RECIPES = (
    "vanilla,linear+standardize=true,linear+standardize=true+fraction=0.5,"
    "linear+standardize=true+fraction=0.25,c2ot+standardize=true,knn+k=4"
)


def cmd_leak(argv: list[str]) -> dict:
    from immiscible_policy.analysis.leak import recipe_leak
    from immiscible_policy.analysis.plots import plot_leak
    from immiscible_policy.analysis.runs import pairing_data

    allowed = ("data", "mirror", "checkpoint", "recipes", "labels", "batch", "rows", "seed", "out")
    opts, _ = _opts(argv, (*allowed, "allow_import"))
    if "checkpoint" in opts and ("data" in opts or "mirror" in opts):
        raise ValueError("give data= (and mirror=) or checkpoint=, not both: a run brings its own data.")
    recipes = _names(opts.get("recipes", LEAK_RECIPES))
    labels = _names(opts.get("labels", "")) or recipes
    if len(labels) != len(recipes):
        raise ValueError(f"labels= has {len(labels)} names for {len(recipes)} recipes; give one per recipe.")
    numbers = {
        k: int_option(opts, k, d, least)
        for k, d, least in (("batch", 256, 2), ("rows", 8192, 64), ("seed", 0, 0))
    }
    actions, cond, episodes, task, source = pairing_data(
        None if opts.get("data") is None else str(opts["data"]),
        None if opts.get("checkpoint") is None else str(opts["checkpoint"]),
        mirror=bool_option(opts, "mirror", False),
        allow_import=opts.get("allow_import"),
    )
    runs = {}
    for recipe, label in tqdm(list(zip(recipes, labels)), desc="leak", leave=False):
        _add_run(runs, label, recipe_leak(recipe, actions, cond, episodes=episodes, **numbers))
    payload = {"task": task, **source, "windows": int(actions.shape[0]), **numbers, "runs": runs}
    return _finish(
        opts,
        f"leak_{task}",
        payload,
        plot_leak,
        lambda name, r: (
            f"{name:40s} leak R2 {r['condition_leak']:+.4f}  noise proj {r['noise_proj_x0']:+.3f}  "
            f"norm {r['noise_norm_ratio']:.3f}  pair L2 {r['pair_l2']:.3f}  share {r['paired_share']:.2f}"
        ),
    )


COMMANDS = {
    "mixing": cmd_mixing,
    "losses": cmd_losses,
    "bijectivity": cmd_bijectivity,
    "modes": cmd_modes,
    "demo_modes": cmd_demo_modes,
    "noise_share": cmd_noise_share,
    "leak": cmd_leak,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; use one of {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    try:
        check_writable(_out_dir(argv[1:]))  # before any work: a read-only out= costs no analysis
        COMMANDS[argv[0]](argv[1:])
    except (ValueError, OSError) as exc:
        print(error_line(exc), file=sys.stderr)
        return 2
    return 0


def _out_dir(argv: list[str]) -> Path:
    """The ``out=`` folder every command writes into (``analysis`` by default)."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith("out=")]
    return Path(given[-1] if given else "analysis")


if __name__ == "__main__":
    sys.exit(main())
