"""``immiscible-train``: Hydra entry point for both trainers (dispatches on ``task.type``).

immiscible-train task=pusht assigner=knn
immiscible-train task=fashion_mnist assigner=knn             # image task: unet2d_small + image_cpu trainer
immiscible-train task=pusht assigner.name=sinkhorn assigner.params.epsilon=0.05
immiscible-train resume=true run_dir=runs/<existing run>
accelerate launch --multi_gpu --num_processes 2 -m immiscible_policy.cli.train task=pusht  # DDP, 2 ranks
torchrun --nproc_per_node 2 -m immiscible_policy.cli.train task=pusht   # the same (gloo on a CPU machine)
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from immiscible_policy.cli._hydra import config_dir

TASK_TYPES = ("policy", "image")


def run(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir
    kind = cfg.task.get("type")
    if kind == "policy":
        from immiscible_policy.policy.train import train_policy

        train_policy(cfg, run_dir)
    elif kind == "image":
        from immiscible_policy.image.train import train_image

        train_image(cfg, run_dir)
    else:
        raise SystemExit(f"error: task.type={kind!r} is not supported; use one of {', '.join(TASK_TYPES)}.")


# Under several processes only the main one creates the run directory and writes Hydra's files there;
# the others write nothing and get the main process's run_dir from the trainer (it may hold ${now:...},
# which each process would resolve to its own second).
NON_MAIN_OVERRIDES = [
    "hydra.run.dir=.",
    "hydra.output_subdir=null",
    "hydra/job_logging=disabled",
    "hydra/hydra_logging=disabled",
]


def main() -> None:
    from immiscible_policy.parallel import launched_rank, launched_world_size

    if launched_world_size() > 1 and launched_rank() != 0:
        sys.argv += NON_MAIN_OVERRIDES
    hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")(_guarded)()


def _guarded(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:  # our one-line errors, no traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
