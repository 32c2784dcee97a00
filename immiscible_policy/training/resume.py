"""Resume planning and the run dir's lock: whether to restore a run dir, and that it is the same run.

Why its own module: the decision is made before any data or model exists (the CLI asks it before Hydra
writes into the run dir; the trainer asks it again under the lock), so it must not depend on the run
object; it reads only the config, the run dir's checkpoints, its log and its lock.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from immiscible_policy.checkpoint import find_latest
from immiscible_policy.config_check import resume_mode, show
from immiscible_policy.noising import trainer_objective
from immiscible_policy.run_lock import LOCK_NAME, RunLock, owner_is_live, read_lock
from immiscible_policy.run_log import JSONL_NAME
from immiscible_policy.training.records import pending_record

# What must not change when a run is resumed: the pairing, the network and the data (the task minus its
# evaluation settings), and the objective. Values are compared for keys both configs hold, so keys added
# to the configs after a run was written do not block resuming it.
RESUME_SECTIONS = ("assigner", "model", "task")
RESUME_IGNORED = ("task.eval.", "task.collect.")


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}"))
        return out
    return {prefix: value}


def _run_identity(cfg: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section in RESUME_SECTIONS:
        if isinstance(cfg.get(section), Mapping):
            flat.update(_flat(cfg[section], section))
    trainer = cfg.get("trainer")
    if isinstance(trainer, Mapping):
        with suppress(ValueError):
            flat["trainer.objective"] = trainer_objective(trainer)
    return {k: v for k, v in flat.items() if not k.startswith(RESUME_IGNORED)}


def resume_differences(recorded: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, recorded value, new value)`` for the assigner/model/task/objective settings that differ."""
    a, b = _run_identity(recorded), _run_identity(new)
    return [(k, a[k], b[k]) for k in a if k in b and a[k] != b[k]]


def _check_same_run(cfg: Any, run_dir: Path, checkpoint: Path) -> None:
    from omegaconf import OmegaConf

    try:
        recorded = json.loads((checkpoint / "config.json").read_text()).get("cfg")
    except (OSError, json.JSONDecodeError):
        return  # load_checkpoint reports an unreadable checkpoint with its own one-line error
    if not isinstance(recorded, Mapping):
        return  # a checkpoint without the resolved config: nothing to compare
    new = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("assigner", "model", "task", "trainer")}
    diffs = resume_differences(recorded, new)
    if not diffs:
        return
    key, old, now = diffs[0]
    more = f" (+{len(diffs) - 1} more: {', '.join(d[0] for d in diffs[1:4])})" if len(diffs) > 1 else ""
    what = f"run_dir={run_dir} was trained with {key}={show(old)}, the new config has {key}={show(now)}{more}"
    if bool(cfg.get("resume_force", False)):
        print(f"warning: resume_force=true: {what}; resuming anyway", flush=True)
        return
    raise ValueError(f"resume: {what}; pass the run's settings, or resume_force=true to resume anyway.")


def _held_by_live_trainer(run_dir: Path) -> str | None:
    info = read_lock(run_dir / LOCK_NAME)
    if info is None or not owner_is_live(info):
        return None
    return (
        f"run_dir={run_dir} is in use by a running trainer (pid {info.get('pid')}, {run_dir / LOCK_NAME}); "
        "wait for it to finish or pick another run_dir."
    )


def plan_resume(cfg: Any, run_dir: str | Path, *, check_lock: bool = False) -> bool:
    """Whether to restore ``run_dir``'s checkpoint, by ``resume`` (false | true | auto); raises one line.

    * ``resume=true``: the run dir must exist and hold a checkpoint (a mistyped path used to start a new
      run silently), and its recorded assigner/model/task/objective must match the config unless
      ``resume_force=true``;
    * ``resume=auto``: the same when there is a checkpoint, else start a new run there (its log, if any,
      restarts from the beginning);
    * ``resume=false``: the run dir must not hold a run yet (``FileExistsError``).

    ``check_lock``: also refuse a run dir that a live trainer holds (the CLI asks before Hydra writes
    into it; the trainer itself takes the lock with :func:`claim_run`).
    """
    run_dir = Path(run_dir)
    mode = resume_mode(cfg)
    if mode == "true" and not run_dir.exists():
        raise ValueError(
            f"resume=true but run_dir={run_dir} does not exist; check the path, or use resume=auto to start "
            "a new run there when it has no checkpoint."
        )
    if check_lock and run_dir.is_dir():
        busy = _held_by_live_trainer(run_dir)
        if busy:
            raise ValueError(busy)
    latest = find_latest(run_dir) if run_dir.is_dir() else None
    if mode == "false":
        held = [p for p in (JSONL_NAME, "checkpoints") if (run_dir / p).exists()]
        if held:
            raise FileExistsError(
                f"run_dir={run_dir} already holds a run ({', '.join(held)}); pass resume=true to continue it, "
                "resume=auto to continue it or start when it has no checkpoint, or pick a new run_dir."
            )
        return False
    if latest is None:
        if mode == "true":
            raise ValueError(
                f"resume=true but run_dir={run_dir} has no checkpoint to resume from; check the path, or use "
                "resume=auto to start from scratch when there is none."
            )
        return False
    _check_same_run(cfg, run_dir, latest)
    return True


def nothing_to_do(cfg: Any, run_dir: str | Path) -> str | None:
    """One line when resuming ``run_dir`` would train nothing: its newest checkpoint is already at (or
    past) the budget (``trainer.epochs`` for a policy, ``trainer.max_steps`` for an image model) and its
    record reached the log (else the resumed run still has that evaluation to do); None otherwise.

    Why a line and exit status 0 (not an error): ``resume=auto`` scripts rerun finished cells and must go
    on; but ``resume=true trainer.epochs=12`` on a run at epoch 28 used to end without a word."""
    from immiscible_policy.run_log import read_jsonl

    latest = find_latest(run_dir)
    try:
        saved = json.loads((latest / "config.json").read_text()) if latest is not None else None
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(saved, Mapping):
        return None
    image = cfg.task.get("type") == "image"
    key, unit = ("trainer.max_steps", "step") if image else ("trainer.epochs", "epoch")
    done, budget = saved.get(unit), int(cfg.trainer.max_steps if image else cfg.trainer.epochs)
    if not isinstance(done, int) or done < budget:
        return None
    log = Path(run_dir) / JSONL_NAME
    if pending_record(Path(run_dir), int(saved.get("step", -1)), read_jsonl(log) if log.exists() else []):
        return None
    return (
        f"[immiscible] nothing to do: run_dir={run_dir} is already at {unit} {done} and {key}={budget}; "
        f"raise {key} to train on."
    )


@contextmanager
def claim_run(cfg: Any, run_dir: Path, topo: Any) -> Iterator[bool]:
    """Lock ``run_dir`` for this run (main process) and decide resume; yields whether to restore.

    The main process checks and locks; its verdict (or its one-line error) is broadcast, so every rank
    raises the same error instead of waiting for a main process that gave up. The lock is released when
    the block ends, however it ends.
    """
    lock, outcome = None, None
    if topo.is_main:
        try:
            if resume_mode(cfg) == "true" and not Path(run_dir).exists():
                plan_resume(cfg, run_dir)  # raises: nothing to resume (before the lock creates the dir)
            lock = RunLock(run_dir).acquire()
            outcome = ("ok", plan_resume(cfg, run_dir))
        except (ValueError, FileExistsError) as err:
            if lock is not None:
                lock.release()
            outcome = ("error", err)
    outcome = topo.broadcast(outcome)  # the exception itself (pickled across processes)
    if outcome[0] != "ok":
        raise outcome[1]
    try:
        yield bool(outcome[1])
    finally:
        if lock is not None:
            lock.release()
