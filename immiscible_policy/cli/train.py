"""``immiscible-train``: Hydra entry point for both trainers (dispatches on ``task.type``).

immiscible-train task=pusht assigner=knn
immiscible-train task=fashion_mnist assigner=knn             # image task: unet2d_small + image_cpu trainer
immiscible-train task=pusht assigner.name=sinkhorn assigner.params.epsilon=0.05
immiscible-train resume=true run_dir=runs/<existing run>       # refuses a run dir without a checkpoint
immiscible-train resume=auto run_dir=runs/<run>                # continue it if it has a checkpoint, else start
accelerate launch --multi_gpu --num_processes 2 -m immiscible_policy.cli.train task=pusht  # DDP, 2 ranks
torchrun --nproc_per_node 2 -m immiscible_policy.cli.train task=pusht   # the same (gloo on a CPU machine)
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from immiscible_policy.cli._hydra import compose_train, config_dir

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


def preflight(overrides: list[str]) -> None:
    """Everything that can be refused before Hydra creates the run directory, as one-line errors:
    composition (unknown keys, missing groups), the whole config (:func:`check_config`) and ``resume``
    against the run dir (a mistyped ``run_dir`` with ``resume=true``, a run a live trainer holds, a run
    recorded with another assigner/model/task). Skipped when Hydra flags (``--cfg``, ``-m``, ...) are given.
    """
    if any(a.startswith("-") for a in overrides):
        return
    from hydra import initialize_config_dir

    from immiscible_policy.config_check import check_config
    from immiscible_policy.training import plan_resume

    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose_train(overrides)
        check_config(cfg)
        try:
            run_dir = str(cfg.run_dir)
        except Exception:  # an unresolvable run_dir: the trainer reports it
            return
        plan_resume(cfg, run_dir, check_lock=True)


def main() -> None:
    from immiscible_policy.parallel import launched_rank, launched_world_size

    if launched_world_size() > 1 and launched_rank() != 0:
        sys.argv += NON_MAIN_OVERRIDES
    else:  # the main process only: the others would see its run dir lock as "in use"
        try:
            preflight(sys.argv[1:])
        except (ValueError, FileNotFoundError, FileExistsError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
    hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")(_guarded)()


def _guarded(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:  # our one-line errors, no traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
