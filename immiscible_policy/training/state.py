"""The training state a resumed run continues from: saving and restoring it, and the streams it replays.

Why together: exact resume is one contract between what a checkpoint holds (weights, EMA weights,
optimiser, lr schedule, EMA counters, global RNG, epoch/step) and what a resumed run reads back, so the
writer (:func:`save_training`), the reader (:func:`restore_training`) and the one place every process
checkpoints (:func:`save_then_barrier`) live side by side; so do the two helpers that keep the data order
(:func:`epoch_order`) and the global RNG stream (:func:`preserve_rng`) the same as an uninterrupted run's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from immiscible_policy.checkpoint import (
    find_latest,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from immiscible_policy.ema import ema_resume_state, ema_state_dict_for_model, restore_ema
from immiscible_policy.parallel import Topology
from immiscible_policy.training.optimization import Optimization


def restore_training(
    run_dir: Path,
    model: nn.Module,
    opt: Optimization,
    *,
    batch: int,
    topology: Mapping[str, int] | None = None,
) -> tuple[int, int]:
    """Load the newest checkpoint of ``run_dir`` into model/optimiser/schedule/EMA/global RNG.

    Returns ``(epoch, step)`` it was saved at, or ``(0, 0)`` when the run has no checkpoint (the trainers
    ask :func:`~immiscible_policy.training.resume.claim_run` first whether there is one to resume). Warns
    when the topology (world size, emulated ranks, per-rank batch; see
    :meth:`immiscible_policy.parallel.Topology.record`) differs: the run then continues with other global
    batches than an uninterrupted run would have used. Weights or optimiser state that do not fit the
    configured model (``resume_force=true`` past a model change) are a one-line ``ValueError``.
    """
    if find_latest(run_dir) is None:
        return 0, 0
    ck = load_checkpoint(run_dir)
    try:
        model.load_state_dict(ck.model_state)
        opt.optimizer.load_state_dict(ck.training_state["optimizer"])
        opt.lr_scheduler.load_state_dict(ck.training_state["lr_scheduler"])
        restore_ema(opt.ema, model, resume_state=ck.training_state["ema"], ema_model_state=ck.ema_state)
    except (RuntimeError, ValueError, KeyError) as err:
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        detail = "; ".join(lines[:2])[:300] or type(err).__name__
        raise ValueError(
            f"checkpoint {ck.path} does not fit the configured model ({detail}); resume with the run's "
            "model config (see its config.json) or start a new run_dir."
        ) from None
    set_rng_state(ck.training_state["rng"])
    now = dict(topology or {"world_size": 1, "per_rank_batch": batch})
    saved = {k: ck.config.get(k, 1 if k in ("world_size", "emulated_ranks") else None) for k in now}
    if saved != now:
        print(f"warning: resuming with topology {now}, the checkpoint was written with {saved}", flush=True)
    return int(ck.training_state["epoch"]), int(ck.training_state["step"])


def save_training(
    run_dir: Path,
    step: int,
    *,
    model: nn.Module,
    opt: Optimization,
    config: Mapping[str, Any],
    epoch: int,
    normalizer: Mapping[str, Any] | None = None,
    keep_last: int | None = None,
) -> Path:
    """Atomic checkpoint of weights, EMA weights, config (+ epoch/step) and the resumable training state."""
    return save_checkpoint(
        run_dir,
        step,
        model_state=model.state_dict(),
        ema_state=ema_state_dict_for_model(opt.ema, model),
        config={**config, "epoch": epoch, "step": step},
        normalizer=normalizer,
        training_state={
            "optimizer": opt.optimizer.state_dict(),
            "lr_scheduler": opt.lr_scheduler.state_dict(),
            "ema": ema_resume_state(opt.ema),
            "rng": rng_state(),
            "epoch": epoch,
            "step": step,
        },
        keep_last=keep_last,
    )


def save_then_barrier(topo: Topology, run_dir: Path, step: int, **save: Any) -> Path | None:
    """Checkpoint ``step`` (:func:`save_training` with ``save``) on the main process, then every process
    waits at the barrier until it is on disk; returns the checkpoint dir (None off the main process).

    Call it on *every* process whenever a checkpoint is due: it is the only place the trainers
    checkpoint, so the main process's save and the others' barrier cannot drift apart (a barrier that
    some ranks reach and others do not hangs a multi-process run)."""
    path = save_training(run_dir, step, **save) if topo.is_main else None
    topo.barrier()
    return path


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """(n,) permutation for epoch ``epoch``: a function of (seed, epoch) only, so resume replays it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch)))


@contextmanager
def preserve_rng() -> Iterator[None]:
    """Run a block (evaluation, sampling) without changing the global torch/numpy/python RNG streams."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
