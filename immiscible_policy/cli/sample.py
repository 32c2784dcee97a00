"""``immiscible-sample checkpoint=PATH n=64``: draw images from an image checkpoint; write a PNG grid (+ npz).

Options (key=value): checkpoint (run dir, checkpoints dir, ``last`` or a step dir; required), n (64),
steps (>= 1; the run's trainer.num_inference_steps), sampler (ddim|ddpm for diffusion, euler for flow; default
the run's), seed (0), output (<checkpoint>/samples.png), npz (also save ``images`` uint8 (N, H, W, C)
and ``labels``), nrow (square grid), batch_size (128), device (auto), use_ema (true), allow_import (false:
a checkpoint whose assigner is a ``module:Class`` path rather than a registered strategy is refused, since
loading it imports that module; true, or IMMISCIBLE_ALLOW_IMPORT=1, to trust it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from immiscible_policy.cli._kv import bool_option, int_option, parse_kv, require_checkpoint, run_kv_cli

OPTIONS = (
    "checkpoint",
    "n",
    "steps",
    "sampler",
    "seed",
    "output",
    "npz",
    "nrow",
    "batch_size",
    "device",
    "use_ema",
    "allow_import",
)


def parse(argv: list[str]) -> dict:
    """Options, with every number and flag checked before anything is loaded (one-line errors)."""
    opts, _ = parse_kv(argv, OPTIONS)
    require_checkpoint(opts)
    # steps=0 would silently run the full schedule and steps=-1 write pure noise: refuse both
    for key, minimum in (("n", 1), ("steps", 1), ("nrow", 1), ("batch_size", 1), ("seed", None)):
        if key in opts and not (key == "nrow" and opts[key] is None):
            opts[key] = int_option(opts, key, 0, minimum)
    for key in ("use_ema", "allow_import"):
        if key in opts:
            opts[key] = bool_option(opts, key, False)
    return opts


def sample_checkpoint(opts: dict) -> dict:
    """Generate and write the grid (and npz); returns what was written and how."""
    from immiscible_policy.checkpoint import (
        check_assigner,
        check_config,
        read_config,
    )
    from immiscible_policy.config_schema import trainer_sampler
    from immiscible_policy.image.data import to_uint8
    from immiscible_policy.image.diffusion import load_image_diffusion, sample_labels
    from immiscible_policy.image.sampling import save_grid
    from immiscible_policy.outputs import check_writable

    # config.json first (cheap): a damaged one, or an assigner that would be imported, stops here
    step_dir, config = read_config(opts["checkpoint"])
    check_config(config, step_dir, "image")
    check_assigner(config, step_dir, opts.get("allow_import"))
    output = Path(opts.get("output") or step_dir / "samples.png")
    for path in (output, Path(opts["npz"]) if opts.get("npz") else None):
        if path is not None:
            check_writable(path.parent)  # before sampling: a read-only folder costs no samples
    diffusion, _, ck = load_image_diffusion(
        opts["checkpoint"],
        device=str(opts.get("device", "auto")),
        use_ema=bool(opts.get("use_ema", True)),
        allow_import=opts.get("allow_import"),
    )
    n = int(opts.get("n", 64))
    asked = {"sampler": opts.get("sampler", diffusion.sampler)}  # auto: the image trainer's
    sampler = trainer_sampler(asked, diffusion.core.objective, "image")
    steps = int_option({"steps": opts.get("steps", diffusion.num_inference_steps)}, "steps", 0, 1)
    images = diffusion.sample(
        n,
        steps,
        sampler,
        seed=int(opts.get("seed", 0)),
        batch_size=int(opts.get("batch_size", 128)),
    )
    save_grid(images, output, nrow=opts.get("nrow"))
    result = {"output": str(output), "n": n, "steps": steps, "sampler": sampler, "checkpoint": str(ck.path)}
    if opts.get("npz"):
        labels = sample_labels(n, diffusion.num_classes)
        npz = Path(opts["npz"])
        npz.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            npz,
            images=to_uint8(images).permute(0, 2, 3, 1).numpy(),
            labels=np.full(n, -1) if labels is None else labels.numpy(),
        )
        result["npz"] = str(npz)
    return result


def _work(argv: list[str]) -> str:
    res = sample_checkpoint(parse(argv))
    return f"{res['n']} samples ({res['sampler']}, {res['steps']} steps) -> {res['output']}" + (
        f" + {res['npz']}" if "npz" in res else ""
    )


def main(argv: list[str] | None = None) -> int:
    return run_kv_cli(__doc__, argv, _work)


if __name__ == "__main__":
    sys.exit(main())
