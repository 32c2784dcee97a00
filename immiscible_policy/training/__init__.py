"""What both trainers (policy and image) share: device, optimiser/schedule/EMA, resume, checkpoints, stats.

Why one package: exact resume depends on a handful of conventions that must not drift between trainers:

* the lr scheduler is built *before* the optimiser state is loaded (``get_scheduler`` writes the initial
  lr into the optimiser's param groups; loading afterwards restores the saved lr), see :mod:`.run`;
* noise for step ``s`` comes from ``noise_generator(seed, rank, s)`` (in :mod:`immiscible_policy.noising`);
* the data order of epoch ``e`` comes from :func:`~.state.epoch_order` ``(seed, e)``;
* the global RNG (dropout) is saved in the checkpoint, and evaluation runs inside
  :func:`~.state.preserve_rng` so that evaluating (e.g. KID subset draws) never changes what training
  draws next;
* a checkpoint is written *before* that step's evaluation, with the not yet logged record under
  ``pending`` in its config: a failing evaluation loses no training, and resuming logs the record
  (evaluating first when that evaluation was due), see :func:`~.records.pending_record`;
* one trainer per run dir (:class:`~immiscible_policy.run_lock.RunLock`), and ``resume`` is checked
  against the run dir before anything is loaded (:func:`~.resume.claim_run`);
* every process calls :func:`~.state.save_then_barrier` when a checkpoint is due: the main one writes,
  all wait for it, so no rank can miss the barrier the others wait at.

Both trainers open a run with :func:`~.run.training_run` (check, topology, run dir, lock, seed) and call
:meth:`~.run.TrainingRun.prepare` (device, DDP, optimiser/schedule/EMA, config record, resume, log) once
their data and model exist; what stays in a trainer is its data, its model, its step and its cadence.

One module per responsibility, each importing only those below it (run -> resume -> records; run ->
state -> optimization; stats and estimate stand alone):

* :mod:`.optimization`: AdamW, its lr schedule and the EMA, and the order of one optimiser step;
* :mod:`.state`: saving and restoring the training state, the data order and RNG streams resume replays;
* :mod:`.records`: what a run records (``config.json``, the log, a checkpoint's pending record);
* :mod:`.stats`: the per-step statistics behind each logged record;
* :mod:`.resume`: whether and what to resume, the run dir's lock;
* :mod:`.estimate`: how long the run will take;
* :mod:`.run`: one trainer invocation (:class:`~.run.TrainingRun`) tying them together.

This ``__init__`` re-exports the names the trainers, the CLI, the benchmarks and the tests import from
``immiscible_policy.training``, so none of them has to know the split.
"""

from immiscible_policy.training.estimate import RunEstimate
from immiscible_policy.training.optimization import make_optimization, optimizer_step
from immiscible_policy.training.records import run_record
from immiscible_policy.training.resume import nothing_to_do, plan_resume
from immiscible_policy.training.run import TrainingRun, training_run
from immiscible_policy.training.state import (
    epoch_order,
    preserve_rng,
    restore_training,
    save_then_barrier,
    save_training,
)
from immiscible_policy.training.stats import StepStats

__all__ = [
    "RunEstimate",
    "StepStats",
    "TrainingRun",
    "epoch_order",
    "make_optimization",
    "nothing_to_do",
    "optimizer_step",
    "plan_resume",
    "preserve_rng",
    "restore_training",
    "run_record",
    "save_then_barrier",
    "save_training",
    "training_run",
]
