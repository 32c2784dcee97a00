"""The one training loop both trainers run (nanoGPT style: read it top to bottom at once).

Why one loop: exact resume and the replay of a failed evaluation depend on a protocol that the policy
trainer (budget and cadences in epochs) and the image trainer (in steps) used to restate each in its own
loop. Here it is written once. Each step: the batch of the epoch's data order (:func:`epoch_order`, a
function of (seed, epoch)), its training pair from the step's noise streams (seeded by (seed, rank,
step); with ``trainer.pair_ahead`` the next step's pair is made on a thread meanwhile), the trainer's
loss, the optimiser step, the finite check and the statistics. At a unit (an epoch or a step) where the
trainer's cadence (:class:`Due`) asks for anything:

    finite check -> record -> checkpoint (every process, then the barrier) -> evaluate -> log -> report

The checkpoint carries the record and the evaluations due under ``pending``: a failing evaluation loses
no training, and a resumed run first evaluates and logs what its checkpoint still owed
(:meth:`~immiscible_policy.training.TrainingRun.pending`), so its log and weights equal an uninterrupted
run's. Logs, evaluations and reports are the main process's; every process checks, records (the
statistics are summed over processes) and checkpoints at the same units, so no collective is missed.
A trainer supplies only what is its own: batches and loss, its cadence, what a checkpoint holds besides
the training state, its evaluation and its printed line (:class:`Trainer`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from immiscible_policy.noising import NoisingCore, TrainingPair
from immiscible_policy.pair_ahead import PairAhead
from immiscible_policy.training import RunEstimate, StepStats, TrainingRun, epoch_order, optimizer_step

__all__ = ["Due", "Trainer", "every", "fit", "stop_at"]


def every(at: int, n: Any) -> bool:
    """Whether unit ``at`` falls on a cadence of every ``n`` units (0 or None: never)."""
    return bool(n) and at % int(n) == 0


@dataclass(frozen=True)
class Due:
    """What a unit does besides training, by the trainer's cadence. Any of them makes a record;
    :func:`fit` adds a checkpoint at the last unit of the invocation."""

    log: bool = False  # a record for the log (a policy: every epoch; an image model: log_every_steps)
    checkpoint: bool = False
    evaluate: bool = False  # the full evaluation (rollouts; FID/KID/CFD and a sample grid)
    grid: bool = False  # a sample grid only

    @property
    def kind(self) -> str | None:
        """The run estimate's name for what is evaluated here (an evaluation includes the grid)."""
        return "evaluation" if self.evaluate else "sample grid" if self.grid else None


@dataclass
class Trainer:
    """What a trainer supplies to :func:`fit`: its data, loss, cadence and evaluation. The order of
    things (step, record, checkpoint, evaluation, log) and the resume rules are the loop's, so that a
    trainer cannot get them wrong; ``evaluate`` and ``report`` run on the main process only."""

    unit: str  # "epoch" | "step": what the budget and cadences count, and each record's first key
    total: int  # the budget in units (trainer.epochs | trainer.max_steps)
    rows: int  # training rows (windows, images) the data order permutes
    steps_per_epoch: int
    core: NoisingCore  # told each step's epoch (the pairing schedule's share); statistics
    model: nn.Module  # the bare module: the optimiser's, the finite check's, the checkpoint's
    # (this process's rows (local_batch,), one generator per rank it plays) -> the step's batch and
    # training pair; may run on the pair-ahead thread, so it draws only from those generators
    prepare: Callable[[Tensor, list[torch.Generator]], Any]
    loss: Callable[[Any], tuple[Tensor, Tensor, TrainingPair]]  # prepared -> (loss, (B,) loss, pair)
    due: Callable[[int], Due]  # unit ``at`` (1-based: the epoch or step just completed) -> Due
    checkpoint: Callable[[int, int, dict[str, Any]], None]  # (step, epoch, pending): run.checkpoint
    evaluate: Callable[[dict[str, Any], Due], dict[str, Any]]  # scores into the record -> media
    report: Callable[[dict[str, Any], Due], None]  # the printed line of a logged record
    # (rows, seed, epoch) -> the epoch's data order: a permutation of the rows, or any row sequence that
    # fills the epoch's batches (policy/neighbour_batches.py); a function of (seed, epoch) so resume replays it
    order: Callable[[int, int, int], Tensor] = epoch_order


def stop_at(tr: Any, unit: str, at: int, total: int) -> int:
    """The unit this invocation ends at: the budget, or ``trainer.max_{unit}s_this_run`` units on."""
    more = tr.get(f"max_{unit}s_this_run")
    return min(total, at + int(more)) if more else total


def _steps(t: Trainer, at: int, step: int, stop: int) -> Iterator[tuple[int, int, int | None]]:
    """(epoch, batch index in it, the unit the step completes or None) of each step up to ``stop``."""
    if t.unit == "epoch":  # epochs count on their own: a resume with another batch keeps them
        for epoch in range(at, stop):
            for i in range(t.steps_per_epoch):
                yield epoch, i, epoch + 1 if i + 1 == t.steps_per_epoch else None
    else:
        for s in range(step, stop):
            yield *divmod(s, t.steps_per_epoch), s + 1


def fit(run: TrainingRun, t: Trainer, *, at: int, step: int) -> dict[str, Any]:
    """Train from unit ``at`` and ``step`` (where :meth:`TrainingRun.prepare` resumed; for a step-based
    trainer both are the step) to the budget or ``max_{unit}s_this_run`` units on; returns the last
    record (as logged, on the main process)."""
    tr, topo, model, opt, unit, spe = run.tr, run.topo, t.model, run.opt, t.unit, t.steps_per_epoch
    seed, stop = int(tr.seed), stop_at(tr, unit, at, t.total)
    n_steps = (stop - at) * (spe if unit == "epoch" else 1)
    pending = run.pending(step)  # the resumed checkpoint's record, when it never reached the log
    owed = Due(evaluate=bool(pending.get("evaluate")), grid=bool(pending.get("grid"))) if pending else None
    kinds = Counter(t.due(u).kind for u in range(at + 1, stop + 1))  # by the loop's own rules
    if owed:
        kinds[owed.kind] += 1
    estimate = RunEstimate(
        steps=n_steps,
        device=run.device,
        evaluations={k: kinds[k] for k in ("evaluation", "sample grid")},
        **({"steps_per_epoch": spe, "epochs": stop - at} if unit == "epoch" else {}),
    )
    start = time.time()

    def finish(record: dict[str, Any], due: Due) -> dict[str, Any]:
        """Evaluate what is due (timed, training mode restored), then log and report (main process)."""
        media: dict[str, Any] = {}
        if due.kind:
            tick = time.time()
            model.eval()
            media = t.evaluate(record, due)
            model.train()
            run.note(estimate.evaluated(due.kind, time.time() - tick))
        logged = run.logger.log(record, media)
        t.report(record, due)
        return logged

    last: dict[str, Any] = {}
    if pending is not None:  # what the checkpoint owes first, as the interrupted run would have done it
        t.core.set_epoch(max(at - 1, 0) if unit == "epoch" else max(step - 1, 0) // spe)  # its pairing
        record = dict(pending["record"])
        if owed.kind:
            owes = f"{unit} {record[unit]} (its checkpoint was saved, its {owed.kind} was not)"
            print(f"[immiscible] evaluating {owes}", flush=True)
        last = finish(record, owed)

    def make(order: Tensor, i: int, step: int) -> Any:
        """Batch ``i`` of the epoch ``order`` (this process's slice), paired with step's noise streams."""
        return t.prepare(topo.rows(order, i), topo.generators(seed, step))

    stats, train_min = StepStats(int(tr.n_loss_buckets), run.device), run.train_minutes()
    show = bool(tr.progress) and run.main
    bar = tqdm(total=step + n_steps, initial=step, desc="steps", disable=not show, leave=False)
    ahead = PairAhead(bool(tr.get("pair_ahead", False)))  # trainer.pair_ahead
    order, order_epoch = None, -1
    model.train()
    estimate.skip()
    tick = time.time()
    try:
        for k, (epoch, i, done) in enumerate(_steps(t, at, step, stop)):
            if epoch != order_epoch:  # a new epoch: its data order and its pairing share
                order, order_epoch = t.order(t.rows, seed, epoch).to(run.device), epoch
                t.core.set_epoch(epoch)
                if unit == "epoch":
                    bar.set_description(f"epoch {epoch + 1}/{t.total}")
            more = i + 1 < spe and k + 1 < n_steps  # pair_ahead: the next batch, within this epoch
            nxt = partial(make, order, i + 1, step + 1) if more else None
            item = ahead.get(step, partial(make, order, i, step), step + 1, nxt)
            loss, per_sample, tp = t.loss(item)
            grad_norm = optimizer_step(model, opt, loss, tr.grad_clip)
            step += 1
            run.after_step(step, loss, grad_norm)  # a non-finite loss stops the run (finite.py)
            value = stats.add(loss, per_sample, tp, t.core)
            run.note(estimate.tick())
            bar.update(1)
            if show and step % 10 == 0:  # the only host sync of a step, and only with a progress bar
                eta = estimate.remaining()
                bar.set_postfix(loss=f"{value.item():.4f}", **({"eta": eta} if eta else {}), refresh=False)
            due = t.due(done) if done else Due()
            checkpoint = due.checkpoint or done == stop  # the last unit of an invocation: always
            if not (due.log or due.kind or checkpoint):
                continue
            run.check_finite(model, step)  # before the record and the checkpoint: never log or save nan
            train_min += (time.time() - tick) / 60
            other = {"step": step} if unit == "epoch" else {"epoch": step / spe}
            record = {unit: done, **other, "lr": opt.lr_scheduler.get_last_lr()[0], **run.summary(stats)}
            record["train_min"] = train_min  # training only (no evaluation), summed over resumes
            record["wall_min"] = (time.time() - start) / 60  # this invocation's so far
            if checkpoint:  # before the evaluation (a failing one loses no training); every process
                owes = {"record": record, "evaluate": due.evaluate, "grid": due.grid}
                t.checkpoint(step, done if unit == "epoch" else step // spe, owes)
            last = finish(record, due) if run.main else record
            estimate.skip()
            tick = time.time()
    finally:
        bar.close()
        ahead.close()
    return last
