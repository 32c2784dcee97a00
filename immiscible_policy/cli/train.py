"""``immiscible-train``: Hydra entry point for both trainers (dispatches on ``task.type``).

immiscible-train task=pusht assigner=knn
immiscible-train task=fashion_mnist assigner=knn             # image task: unet2d_small + image_cpu trainer
immiscible-train task=pusht assigner.name=sinkhorn assigner.params.epsilon=0.05
immiscible-train resume=true run_dir=runs/<existing run>       # refuses a run dir without a checkpoint
immiscible-train resume=auto run_dir=runs/<run>                # continue it if it has a checkpoint, else start
accelerate launch --multi_gpu --num_processes 2 -m immiscible_policy.cli.train task=pusht  # DDP, 2 ranks
torchrun --nproc_per_node 2 -m immiscible_policy.cli.train task=pusht   # the same (gloo on a CPU machine)

Exit status 2 with one ``error: ...`` line for anything refused (config, resume, a run dir that cannot be
written, a diverged run: finite.py). Resuming a run already at its budget (``resume=true
trainer.epochs=12`` on a run at epoch 28) prints ``nothing to do`` and exits 0, so ``resume=auto`` scripts
can rerun finished runs. ``run_dir/train.log`` holds what the run printed. A run that fails before
saving anything leaves no run dir behind (when this invocation created it).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from immiscible_policy.cli._hydra import compose_train, config_dir
from immiscible_policy.cli._kv import error_line
from immiscible_policy.cli._tee import LOG_NAME, tee_log

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


#: what the main process's preflight saw: the run dir it resolved and whether it existed before this run
_PREFLIGHT: dict[str, object] = {}
#: what a run dir holds before its first checkpoint or record (Hydra's files, our log, lock, config, a
#: checkpoints/ folder whose first save failed)
STUB_NAMES = {".hydra", LOG_NAME, ".lock", "config.json", "metrics.jsonl", "metrics.csv", "checkpoints"}


def preflight(overrides: list[str]) -> str | None:
    """Everything that can be refused before Hydra creates the run directory, as one-line errors:
    composition (unknown keys, missing groups), the whole config (:func:`check_config`), a run dir that
    cannot be written, and ``resume`` against the run dir (a mistyped ``run_dir`` with ``resume=true``,
    a run a live trainer holds, a run recorded with another assigner/model/task). Returns the
    ``nothing to do`` line when resuming a run already at its budget. Skipped when Hydra flags (``--cfg``,
    ``-m``, ...) are given.
    """
    if any(a.startswith("-") for a in overrides):
        return None
    from hydra import initialize_config_dir

    from immiscible_policy.config_check import check_config
    from immiscible_policy.outputs import check_writable
    from immiscible_policy.training import nothing_to_do, plan_resume

    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose_train(overrides)
        check_config(cfg)
        try:
            run_dir = str(cfg.run_dir)
        except Exception:  # an unresolvable run_dir: the trainer reports it
            return None
        check_writable(run_dir)
        _PREFLIGHT.update(run_dir=str(Path(run_dir).resolve()), existed=Path(run_dir).exists())
        if plan_resume(cfg, run_dir, check_lock=True):
            return nothing_to_do(cfg, run_dir)
        if is_stub(Path(run_dir)):
            print(
                f"[immiscible] run_dir={run_dir} holds an earlier run that stopped before saving anything "
                f"({', '.join(sorted(p.name for p in Path(run_dir).iterdir()))}); starting a new run there.",
                flush=True,
            )
    return None


def is_stub(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run that saved nothing: only :data:`STUB_NAMES`, an empty log and
    no step checkpoint (a failed first save leaves only temp files, which are ours)."""
    if not run_dir.is_dir():
        return False
    names = {p.name for p in run_dir.iterdir()}
    log, ckpts = run_dir / "metrics.jsonl", run_dir / "checkpoints"
    empty_log = not log.exists() or not log.read_text().strip()
    no_checkpoint = not ckpts.is_dir() or not any(p.name.isdigit() for p in ckpts.iterdir())
    return bool(names) and names <= STUB_NAMES and empty_log and no_checkpoint


def remove_stub(run_dir: Path) -> None:
    """After a failed run: remove the run dir when this invocation created it and it saved nothing (so
    a rerun with the same ``run_dir`` is not refused, nor silently reuses a stub). Only the names in
    :data:`STUB_NAMES` are removed, and the folder itself only once it is empty."""
    fresh = _PREFLIGHT.get("run_dir") != str(run_dir.resolve()) or not _PREFLIGHT.get("existed", True)
    if not (_PREFLIGHT and fresh and is_stub(run_dir)):
        return
    for name in STUB_NAMES:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        run_dir.rmdir()


def main() -> None:
    from immiscible_policy.parallel import launched_rank, launched_world_size

    if launched_world_size() > 1 and launched_rank() != 0:
        sys.argv += NON_MAIN_OVERRIDES
    else:  # the main process only: the others would see its run dir lock as "in use"
        try:
            done = preflight(sys.argv[1:])
        except (ValueError, OSError) as exc:
            print(error_line(exc), file=sys.stderr)
            sys.exit(2)
        if done:
            print(done)
            sys.exit(0)
    hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")(_guarded)()


def _guarded(cfg: DictConfig) -> None:
    """Run, with what it prints also in ``run_dir/train.log`` (main process); our one-line errors and
    OS errors as ``error: ...`` with exit status 2, never a traceback; no stub left by a failed run."""
    from immiscible_policy.parallel import launched_rank

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    main_process = launched_rank() == 0
    try:
        with tee_log(run_dir / LOG_NAME) if main_process else contextlib.nullcontext():
            try:
                run(cfg)
            except (ValueError, OSError) as exc:  # our one-line errors, no traceback
                print(error_line(exc), file=sys.stderr)
                raise SystemExit(2) from None
    except BaseException:
        if main_process:
            remove_stub(run_dir)
        raise


if __name__ == "__main__":
    main()
