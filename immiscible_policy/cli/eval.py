"""``immiscible-eval checkpoint=PATH``: re-run a policy checkpoint's rollouts; write metrics JSON + video.

Options (key=value): checkpoint (run dir, checkpoints dir, ``last`` or a step dir; required),
n_episodes (default: the task's, 50), start_seed, output_dir (default: <checkpoint>/eval),
device (auto), use_ema (true), sampler (ddpm|ddim for diffusion, euler|heun for flow, auto: the policy
trainer's, DDPM or the objective's own; checked against the checkpoint's objective), num_inference_steps
(>= 1), seed (sampling noise, 0),
n_video_episodes (2), video_format (mp4, the default, or gif: the video is output_dir/rollout.<format>),
allow_import (false: a checkpoint whose assigner is a ``module:Class`` path rather than a registered
strategy is refused, since loading it imports that module; true, or IMMISCIBLE_ALLOW_IMPORT=1, to trust
it), modes (PushT: ``standard``, the default: the test starts, whose metrics include which way each
rollout turned the T, ``modes``; ``symmetric``: also ``symmetric_rollouts`` rollouts (default the task's
``eval.symmetric_rollouts``, else 50) from the symmetric starts, where turning either way is equally good,
written as a ``symmetric`` block beside the standard metrics, video output_dir/rollout_symmetric.<format>;
docs/modes.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from immiscible_policy.cli._kv import bool_option, int_option, parse_kv, require_checkpoint, run_kv_cli
from immiscible_policy.video import DEFAULT_FORMAT, check_format

OPTIONS = (
    "checkpoint",
    "n_episodes",
    "start_seed",
    "output_dir",
    "device",
    "use_ema",
    "sampler",
    "num_inference_steps",
    "seed",
    "n_video_episodes",
    "video_format",
    "allow_import",
    "modes",
    "symmetric_rollouts",
)
#: ``modes=``: the standard test starts only, or also the symmetric starts (docs/modes.md).
MODES = ("standard", "symmetric")
DEFAULT_SYMMETRIC_ROLLOUTS = 50


def parse(argv: list[str]) -> dict:
    """Options, with every number and flag checked before anything is loaded (one-line errors)."""
    opts, _ = parse_kv(argv, OPTIONS)
    require_checkpoint(opts)
    for key, minimum in (
        ("n_episodes", 1),
        ("num_inference_steps", 1),
        ("n_video_episodes", 0),
        ("start_seed", None),
        ("seed", None),
        ("symmetric_rollouts", 1),
    ):
        if key in opts:
            opts[key] = int_option(opts, key, 0, minimum)
    for key in ("use_ema", "allow_import"):
        if key in opts:
            opts[key] = bool_option(opts, key, False)
    opts["video_format"] = check_format(str(opts.get("video_format", DEFAULT_FORMAT)))
    opts["modes"] = str(opts.get("modes", "standard"))
    if opts["modes"] not in MODES:
        raise ValueError(
            f"modes={opts['modes']!r} is not supported; use standard (the test starts) or symmetric "
            "(also the symmetric starts)."
        )
    if "symmetric_rollouts" in opts and opts["modes"] != "symmetric":
        raise ValueError(
            "symmetric_rollouts is read only with modes=symmetric; add modes=symmetric or drop it."
        )
    return opts


def evaluate_checkpoint(opts: dict) -> dict:
    from immiscible_policy.checkpoint import resolve_checkpoint
    from immiscible_policy.config_schema import trainer_sampler
    from immiscible_policy.outputs import check_writable
    from immiscible_policy.policy.evaluate import rollout
    from immiscible_policy.policy.load import load_policy
    from immiscible_policy.policy.tasks import is_pusht_task

    # where the metrics and videos go, checked before anything is loaded or rolled out
    out_dir = Path(opts.get("output_dir") or resolve_checkpoint(opts["checkpoint"]) / "eval")
    check_writable(out_dir)
    _, policy, cfg, ck = load_policy(
        opts["checkpoint"],
        device=str(opts.get("device", "auto")),
        use_ema=bool(opts.get("use_ema", True)),
        allow_import=opts.get("allow_import"),
    )
    symmetric = opts.get("modes", "standard") == "symmetric"
    if symmetric and not is_pusht_task(cfg.task):
        raise ValueError(
            f"{ck.path} is a {cfg.task.get('name')} checkpoint; modes=symmetric needs a PushT policy checkpoint."
        )
    if "sampler" in opts:
        policy.sampler = trainer_sampler({"sampler": str(opts["sampler"])}, policy.core.objective, "policy")
    if "num_inference_steps" in opts:
        policy.num_inference_steps = int(opts["num_inference_steps"])
        if policy.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={policy.num_inference_steps}: use an integer >= 1.")
    if "start_seed" in opts:
        cfg.task.eval.start_seed = int(opts["start_seed"])
    out_dir.mkdir(parents=True, exist_ok=True)
    kw = {
        "video_path": out_dir / f"rollout.{opts.get('video_format', DEFAULT_FORMAT)}",
        "n_video_episodes": int(opts.get("n_video_episodes", 2)),
    }
    if "n_episodes" in opts:
        kw["n_episodes"] = int(opts["n_episodes"])
    metrics = rollout(policy, cfg.task, seed=int(opts.get("seed", 0)), **kw)
    if symmetric:
        n = (
            opts.get("symmetric_rollouts")
            or cfg.task.eval.get("symmetric_rollouts")
            or DEFAULT_SYMMETRIC_ROLLOUTS
        )
        kw["video_path"] = out_dir / f"rollout_symmetric.{opts.get('video_format', DEFAULT_FORMAT)}"
        kw["n_episodes"] = int(n)
        metrics["symmetric"] = rollout(
            policy, cfg.task, seed=int(opts.get("seed", 0)), starts="symmetric", **kw
        )
    metrics.update(
        checkpoint=str(ck.path),
        step=ck.step,
        assigner=ck.config.get("assigner"),
        weights="ema" if opts.get("use_ema", True) else "model",
        sampler=policy.sampler,
        num_inference_steps=policy.num_inference_steps,
        output_dir=str(out_dir),
    )
    metrics = {k: (str(v) if isinstance(v, Path) else v) for k, v in metrics.items()}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _modes(m: dict) -> str:
    """``turns cw/ccw/none a/b/c (dominant d)`` of one block of metrics (empty without PushT modes)."""
    from immiscible_policy.metrics.pusht_modes import flat_modes, mode_line

    return mode_line(flat_modes(m["modes"]), "modes_") if "modes" in m else ""


def _work(argv: list[str]) -> str:
    m = evaluate_checkpoint(parse(argv))
    line = (
        f"mean_score {m['mean_score']:.3f}  success_rate {m['success_rate']:.2f}  "
        f"episodes {m['n_episodes']}{_modes(m)}"
    )
    sym = m.get("symmetric")
    if sym is not None:
        line += (
            f"  | symmetric starts: mean_score {sym['mean_score']:.3f}  success_rate {sym['success_rate']:.2f}  "
            f"episodes {sym['n_episodes']}{_modes(sym)}"
        )
    return f"{line}  -> {m['output_dir']}"


def main(argv: list[str] | None = None) -> int:
    return run_kv_cli(__doc__, argv, _work)


if __name__ == "__main__":
    sys.exit(main())
