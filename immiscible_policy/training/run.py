"""One trainer invocation: :func:`training_run` opens it, :class:`TrainingRun` carries it.

Why its own module: it is the one place that ties the others together in the order exact resume needs
(config check, topology, run dir, lock and resume decision, seed; then device, DDP, optimiser/schedule/
EMA built before any state is loaded, the config record, the restored checkpoint, the log), so each
trainer reads top to bottom and keeps only its data, its model, its step and its cadence.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from immiscible_policy.checkpoint import find_latest
from immiscible_policy.config_check import check_config, resume_mode
from immiscible_policy.finite import NonFiniteGuard
from immiscible_policy.host import resolve_device
from immiscible_policy.loggers import logger_names
from immiscible_policy.noising import rename_legacy_objective
from immiscible_policy.parallel import Topology, make_topology
from immiscible_policy.run_log import RunLogger, plot_curves, plot_mode_history
from immiscible_policy.training.optimization import Optimization, make_optimization
from immiscible_policy.training.records import open_run_log, pending_record, run_record
from immiscible_policy.training.resume import claim_run, nothing_to_do
from immiscible_policy.training.state import restore_training, save_then_barrier
from immiscible_policy.training.stats import StepStats


@dataclass
class TrainingRun:
    """One trainer invocation: the checked config, its run dir (locked), the topology, and after
    :meth:`prepare` the optimiser/schedule/EMA, the config record and the main process's log.

    Both trainers open it with :func:`training_run` and read top to bottom: data, model,
    ``run.prepare(...)``, the loop (``run.checkpoint`` where a checkpoint is due), ``run.plot``.
    """

    cfg: Any
    run_dir: Path
    topo: Topology
    restore: bool
    opt: Optimization | None = None
    config_record: dict[str, Any] | None = None
    logger: RunLogger | None = None
    guard: NonFiniteGuard | None = None

    @property
    def tr(self) -> Any:
        return self.cfg.trainer

    @property
    def device(self) -> torch.device:
        return self.topo.device

    @property
    def main(self) -> bool:
        return self.topo.is_main

    def check_batch(self, n: int, what: str) -> None:
        """One line when the global batch exceeds the ``n`` training ``what`` (windows, images)."""
        topo = self.topo
        if n < topo.global_batch:
            raise ValueError(
                f"trainer.batch_size={topo.per_rank_batch} x {topo.ranks} ranks = {topo.global_batch} "
                f"exceeds the {n} training {what}; lower it."
            )

    def prepare(
        self,
        model: nn.Module,
        assigner: Any,
        *,
        total_steps: int,
        steps_per_epoch: int,
        forward: nn.Module | None = None,
        **meta: Any,
    ) -> tuple[nn.Module, int, int]:
        """Model on the device (DDP-wrapped for the training forward), AdamW + lr schedule + EMA over
        ``total_steps`` (the scheduler built before any state is loaded), the config record (``meta``:
        the trainer's shape facts, see :func:`run_record`), the checkpoint restored when resuming, and
        the log opened on the main process (records after the restored step dropped).

        ``forward``: the module whose forward is the training loss when that is not ``model``'s, e.g. the
        policy that owns ``model`` as its network; it is what DDP wraps (DDP synchronises the gradients
        of the module it runs the forward of), while the optimiser, EMA and checkpoints keep ``model``
        (its state dict's keys). It must have exactly ``model``'s parameters.

        Returns ``(train_model, epoch, step)``: the module to call in the training forward (``forward``,
        default ``model``, itself in one process) and where training continues (``(0, 0)`` for a new run).
        """
        topo, tr = self.topo, self.tr
        topo.check(assigner)
        self.guard = NonFiniteGuard(
            self.device,
            eager=self.device.type == "cpu" and topo.world_size == 1,  # no queue to wait for: every step
            describe=self._diverged_fix,
            reduce=topo.sum if topo.world_size > 1 else None,
        )
        forward = model if forward is None else forward
        if [id(p) for p in forward.parameters()] != [id(p) for p in model.parameters()]:
            raise ValueError(
                f"the training forward's module ({type(forward).__name__}) must have exactly the model's "
                "parameters: DDP all-reduces the gradients of the one, the optimiser steps the other"
            )
        forward.to(self.device)  # ``model`` with it
        train_model = topo.wrap(forward)  # DDP under several processes; ``model`` stays the bare module
        self.opt = make_optimization(model, tr, total_steps)
        self.config_record = run_record(
            self.cfg,
            assigner,
            batch=topo.per_rank_batch,
            steps_per_epoch=steps_per_epoch,
            topology=topo.record(),
            device=self.device,
            **meta,
        )
        # resume=auto on a run dir without a checkpoint starts here, restarting its log
        epoch, step = (
            restore_training(self.run_dir, model, self.opt, batch=topo.per_rank_batch, topology=topo.record())
            if self.restore
            else (0, 0)
        )
        if self.main:
            continuing = resume_mode(self.cfg) != "false"
            self.logger = open_run_log(
                self.run_dir,
                resume=continuing,
                step=step,
                config_record=self.config_record,
                loggers=logger_names(self.cfg.get("logger")),
            )
        return train_model, epoch, step

    def after_step(self, step: int, loss: Tensor, grad_norm: Tensor | None) -> None:
        """The finite check of step ``step`` (:class:`~immiscible_policy.finite.NonFiniteGuard`): at once
        on the CPU, else recorded on the device and raised by :meth:`check_finite`."""
        self.guard.update(step, loss, grad_norm)

    def check_finite(self, model: nn.Module, step: int) -> None:
        """Before a record or a checkpoint: raise one line if a step so far, or the weights, went
        non-finite (so a diverged state is never logged as numbers nor saved)."""
        self.guard.check(model, step)

    def _diverged_fix(self) -> str:
        """The end of the divergence message: what was kept, and what to change."""
        latest = find_latest(self.run_dir)
        fix = f"lower trainer.lr (now {self.tr.lr}) or set trainer.grad_clip"
        if latest is None:
            return f"no checkpoint was saved; {fix} and start a new run_dir."
        return (
            f"the last finite checkpoint, {latest}, is kept (nothing later was saved); {fix} and resume "
            "from it (resume=true), or start a new run_dir."
        )

    def pending(self, step: int) -> dict[str, Any] | None:
        """The record of the checkpoint resumed from, when its evaluation failed or the run died before
        logging it (main process, resuming only; see :func:`pending_record`)."""
        if not (self.main and self.restore):
            return None
        return pending_record(self.run_dir, step, self.logger.records)

    def train_minutes(self) -> float:
        """Training minutes logged before this invocation (summed over resumes; 0 for a new run)."""
        if self.main and self.restore and self.logger.records:
            return float(self.logger.records[-1].get("train_min", 0.0))
        return 0.0

    def summary(self, stats: StepStats) -> dict[str, float]:
        """The step statistics since the last record, summed over processes."""
        return stats.summary(self.topo.sum if self.topo.world_size > 1 else None)

    def checkpoint(
        self,
        model: nn.Module,
        step: int,
        *,
        epoch: int,
        pending: Mapping[str, Any],
        normalizer: Mapping[str, Any] | None = None,
    ) -> None:
        """Checkpoint ``step`` with its not yet logged record and due evaluations under ``pending``
        (before evaluating: a failing evaluation loses no training); every process calls it, the main
        one writes, all wait for it (:func:`save_then_barrier`). The loops call :meth:`check_finite`
        before the record this checkpoint carries, and the writer refuses non-finite state itself, so the
        checkpoints ``keep_last`` keeps are all finite."""
        save_then_barrier(
            self.topo,
            self.run_dir,
            step,
            model=model,
            opt=self.opt,
            config={**self.config_record, "pending": dict(pending)},
            epoch=epoch,
            normalizer=normalizer,
            keep_last=self.tr.keep_last,
        )

    def note(self, line: str | None) -> None:
        """Print an estimate line (main process)."""
        if line and self.main:
            print(line, flush=True)

    def close(self, failed: bool = False) -> None:
        """End the run's dashboards (main process; ``failed``: the run raised)."""
        if self.logger is not None:
            self.logger.close(failed)

    def plot(self, **kw: Any) -> None:
        """``curves.png`` from the log (main process, once there is one); ``kw`` for :func:`plot_curves`.
        With PushT mode counts in the records (docs/modes.md) also ``modes.png``: the cw / ccw / none shares
        against epoch, for the standard and the symmetric starts."""
        if self.main and self.logger.jsonl_path.exists():
            plot_curves(self.logger.jsonl_path, self.run_dir / "curves.png", **kw)
            if any("modes_cw" in r or "sym_modes_cw" in r for r in self.logger.records):
                plot_mode_history(self.run_dir / "modes.png", self.logger.records, x=kw.get("x", "epoch"))


@contextmanager
def training_run(cfg: Any, run_dir: str | Path, kind: str) -> Iterator[TrainingRun]:
    """Check the whole config (``kind``: ``policy`` | ``image``) before any data is loaded, set up the
    topology (processes, device), agree on one run dir (the main process's), lock it and decide
    ``resume`` (:func:`claim_run`), seed the global RNG; the lock is released when the block ends."""
    check_config(cfg, kind)
    rename_legacy_objective(cfg)  # an old config's trainer.prediction_type: recorded as trainer.objective
    tr = cfg.trainer
    topo = make_topology(tr, resolve_device(str(tr.device)))
    run_dir = Path(topo.broadcast(str(run_dir)))  # one run directory for all ranks: the main one's
    with claim_run(cfg, run_dir, topo) as restore:
        done = nothing_to_do(cfg, run_dir) if restore and topo.is_main else None
        if done:
            print(done, flush=True)
        torch.manual_seed(int(tr.seed))
        run = TrainingRun(cfg, run_dir, topo, restore)
        try:
            yield run
        except BaseException:
            run.close(failed=True)
            raise
        run.close()
