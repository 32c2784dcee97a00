"""What a run records about itself: ``config.json``, its log and dashboards, a checkpoint's pending record.

Why its own module: the config record is what a checkpoint needs to rebuild the model and what a resume
compares against, and the pending record is how a checkpoint written before its evaluation still reaches
the log; both the run object (:mod:`.run`) and the resume planning (:mod:`.resume`) read them, and neither
needs the other for it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from immiscible_policy.checkpoint import find_latest
from immiscible_policy.host import host_record
from immiscible_policy.loggers import DEFAULT_LOGGER, open_dashboards
from immiscible_policy.parallel import assigner_distributed
from immiscible_policy.run_log import RunLogger


def run_record(
    cfg: Any,
    assigner: Any,
    *,
    batch: int,
    steps_per_epoch: int,
    topology: Mapping[str, int] | None = None,
    device: Any = None,
    **meta: Any,
) -> dict[str, Any]:
    """What ``config.json`` records for a run: resolved config, assigner config (with its pairing
    schedule), scope and its
    ``distributed`` mode (None for sample scope), topology (world size, emulated ranks, per-rank and
    global batch; one process with ``batch`` when ``topology`` is None), and the ``host`` it runs on
    (:func:`immiscible_policy.host.host_record` for the training ``device``).

    ``meta`` holds the trainer's own shape facts (e.g. ``policy={"obs_dim": ...}``) that a checkpoint
    needs to rebuild the model.
    """
    from omegaconf import OmegaConf

    from immiscible_policy.pairing_schedule import PairingSchedule
    from immiscible_policy.registry import origin_of

    schedule = PairingSchedule.from_config(cfg.get("assigner")).to_dict()
    topo = dict(topology or {"world_size": 1, "per_rank_batch": int(batch), "global_batch": int(batch)})
    return {
        "cfg": OmegaConf.to_container(cfg, resolve=True),
        **meta,
        "assigner": {**assigner.config, **schedule},  # name, params and the pairing schedule
        "assigner_origin": origin_of(assigner),
        "assigner_scope": assigner.scope,
        "assigner_distributed": assigner_distributed(assigner),
        **topo,
        "steps_per_epoch": int(steps_per_epoch),
        "host": host_record(device),
    }


def open_run_log(
    run_dir: Path,
    *,
    resume: bool,
    step: int,
    config_record: Mapping[str, Any],
    loggers: Sequence[str] = (DEFAULT_LOGGER,),
) -> RunLogger:
    """The run's JSONL/CSV logger (records after ``step`` dropped on resume), ``run_dir/config.json``,
    and the dashboards ``loggers`` names besides ``jsonl`` (:mod:`immiscible_policy.loggers`), which
    then receive every record the logger writes."""
    logger = RunLogger(run_dir, resume=resume)
    if resume:
        logger.truncate_after(step)
    (Path(run_dir) / "config.json").write_text(json.dumps(dict(config_record), indent=2))
    logger.dashboards = open_dashboards(
        loggers, run_dir, config=config_record, start_step=step, resume=resume
    )
    return logger


def pending_record(run_dir: Path, step: int, logged: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The checkpoint's ``pending`` entry when its record never reached the log (the evaluation after the
    checkpoint failed, or the run was killed there); None when the log has it. The entry holds
    ``record`` (the training record) and which evaluations were due (``evaluate``, ``grid``)."""
    if any(r.get("step") == step for r in logged):
        return None
    latest = find_latest(run_dir)
    if latest is None:
        return None
    try:
        pending = json.loads((latest / "config.json").read_text()).get("pending")
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(pending, Mapping) or not isinstance(pending.get("record"), Mapping):
        return None
    return dict(pending) if pending["record"].get("step") == step else None
