"""What both trainers (policy and image) share: device, optimiser/schedule/EMA, resume, checkpoints, stats.

Why one module: exact resume depends on a handful of conventions that must not drift between trainers:

* the lr scheduler is built *before* the optimiser state is loaded (``get_scheduler`` writes the initial
  lr into the optimiser's param groups; loading afterwards restores the saved lr);
* noise for step ``s`` comes from ``noise_generator(seed, rank, s)`` (in :mod:`immiscible_policy.noising`);
* the data order of epoch ``e`` comes from :func:`epoch_order` ``(seed, e)``;
* the global RNG (dropout) is saved in the checkpoint, and evaluation runs inside :func:`preserve_rng` so
  that evaluating (e.g. KID subset draws) never changes what training draws next;
* a checkpoint is written *before* that step's evaluation, with the not yet logged record under
  ``pending`` in its config: a failing evaluation loses no training, and resuming logs the record
  (evaluating first when that evaluation was due), see :func:`pending_record`;
* one trainer per run dir (:class:`~immiscible_policy.run_lock.RunLock`), and ``resume`` is checked
  against the run dir before anything is loaded (:func:`claim_run`);
* every process calls :func:`save_then_barrier` when a checkpoint is due: the main one writes, all
  wait for it, so no rank can miss the barrier the others wait at.

Both trainers open a run with :func:`training_run` (check, topology, run dir, lock, seed) and call
:meth:`TrainingRun.prepare` (device, DDP, optimiser/schedule/EMA, config record, resume, log) once
their data and model exist; what stays in a trainer is its data, its model, its step and its cadence.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.optimization import get_scheduler
from torch import Tensor, nn

from immiscible_policy.checkpoint import (
    find_latest,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from immiscible_policy.config_check import check_config, resume_mode, show
from immiscible_policy.ema import EMAModel, ema_resume_state, ema_state_dict_for_model, make_ema, restore_ema
from immiscible_policy.finite import NonFiniteGuard
from immiscible_policy.host import host_record, resolve_device
from immiscible_policy.loggers import DEFAULT_LOGGER, logger_names, open_dashboards
from immiscible_policy.noising import (
    NoisingCore,
    TrainingPair,
    condition_leak,
    noise_stats,
    rename_legacy_objective,
    trainer_objective,
)
from immiscible_policy.parallel import Topology, assigner_distributed, make_topology
from immiscible_policy.run_lock import LOCK_NAME, RunLock, owner_is_live, read_lock
from immiscible_policy.run_log import JSONL_NAME, RunLogger, plot_curves


@dataclass
class Optimization:
    """The mutable training state besides the weights: AdamW, its lr schedule and the EMA."""

    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    ema: EMAModel


def make_optimization(model: nn.Module, tr: Any, total_steps: int) -> Optimization:
    """AdamW(``tr.lr``, ``tr.betas``, ``tr.weight_decay``), ``tr.lr_scheduler`` with ``tr.warmup_steps``
    over ``total_steps``, and diffusion_policy's EMA warm-up (``tr.ema_power``)."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(tr.lr), betas=tuple(tr.betas), weight_decay=float(tr.weight_decay)
    )
    lr_scheduler = get_scheduler(
        str(tr.lr_scheduler),
        optimizer,
        num_warmup_steps=int(tr.warmup_steps),
        num_training_steps=int(total_steps),
    )
    return Optimization(optimizer, lr_scheduler, make_ema(model, power=float(tr.ema_power)))


def optimizer_step(
    model: nn.Module, opt: Optimization, loss: Tensor, grad_clip: float | None
) -> Tensor | None:
    """backward, optional grad-norm clip, AdamW step, lr schedule step, EMA update (in that order).

    Returns the total gradient norm before clipping (a device tensor, no host sync) when clipping, else
    None, for :meth:`TrainingRun.after_step`'s finite check."""
    opt.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip)) if grad_clip else None
    opt.optimizer.step()
    opt.lr_scheduler.step()
    opt.ema.step(model.parameters())
    return norm


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
    ask :func:`claim_run` first whether there is one to resume). Warns when the topology (world size,
    emulated ranks, per-rank batch; see :meth:`immiscible_policy.parallel.Topology.record`) differs: the
    run then continues with other global batches than an uninterrupted run would have used. Weights or
    optimiser state that do not fit the configured model (``resume_force=true`` past a model change) are
    a one-line ``ValueError``.
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


class StepStats:
    """Running means over logged steps: loss, noise statistics, assigner time, per-timestep-bucket loss.

    ``add`` keeps everything on the device (no host sync per step: the GPU never waits for Python);
    ``summary()`` moves the sums to the host once per logged record, summed over processes first when
    given ``reduce`` (:meth:`immiscible_policy.parallel.Topology.sum`), and returns ``train_loss``,
    ``noise_norm_ratio``, ``noise_proj_x0``, ``pair_l2``, ``assign_ms``, ``paired_share`` and ``loss_t0..loss_t{n-1}`` and
    resets. For a conditional model it also reports ``condition_leak`` (held-out R^2 of the paired
    noise regressed on the condition, :func:`~immiscible_policy.noising.condition_leak`) over the last
    ``leak_rows`` (condition, noise) rows of this process. Sums are float64 (float32 on MPS), the same
    numbers the former per-step ``.item()`` gave.
    """

    KEYS = ("loss", "noise_norm_ratio", "noise_proj_x0", "pair_l2")

    def __init__(self, n_buckets: int, device: torch.device, leak_rows: int = 4096) -> None:
        self.n_buckets, self.device = int(n_buckets), device
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.leak_rows = int(leak_rows)
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.assign_ms = 0.0
        self.paired_share = 0.0
        self.sums = torch.zeros(len(self.KEYS), dtype=self.dtype, device=self.device)
        self.buckets = torch.zeros(self.n_buckets, device=self.device)
        self.bucket_n = torch.zeros_like(self.buckets)
        self.leak_cond: list[Tensor] = []
        self.leak_noise: list[Tensor] = []

    def _keep_leak_rows(self, cond: Tensor, noise: Tensor) -> None:
        """Remember the newest ``leak_rows`` (condition, paired noise) rows (views, trimmed when full)."""
        self.leak_cond.append(cond.detach())
        self.leak_noise.append(noise.detach().flatten(1))
        while sum(c.shape[0] for c in self.leak_cond[1:]) >= self.leak_rows:
            self.leak_cond.pop(0)
            self.leak_noise.pop(0)

    def add(self, loss: Tensor, per_sample: Tensor, tp: TrainingPair, core: NoisingCore) -> Tensor:
        """Accumulate one step; returns the step's loss (a detached device tensor, no host sync).

        The pair's conditions (``tp.cond``), when the model has any, feed the condition-leak diagnostic."""
        if tp.cond is not None and self.leak_rows:
            self._keep_leak_rows(tp.cond, tp.noise)
        b = core.bucket_losses(per_sample, tp.timesteps, self.n_buckets)
        seen = ~torch.isnan(b)
        self.buckets += torch.where(seen, b, 0.0)
        self.bucket_n += seen.float()
        stats = noise_stats(tp.x0, tp.noise)
        value = loss.detach()
        row = torch.stack([value.float(), *(stats[k].float() for k in self.KEYS[1:])]).to(self.dtype)
        self.sums += row
        self.assign_ms += tp.info["assign_ms"]
        self.paired_share += float(tp.info.get("paired_share", 1.0))
        self.n += 1
        return value

    def summary(self, reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """Means since the last summary (over processes too when ``reduce`` sums across them)."""
        extra = torch.tensor(
            [self.assign_ms, self.paired_share, self.n], dtype=self.dtype, device=self.device
        )
        packed = torch.cat([self.sums, extra, self.buckets.to(self.dtype), self.bucket_n.to(self.dtype)])
        if reduce is not None:
            packed = reduce(packed)
        k = len(self.KEYS)
        sums, (assign_ms, paired, n) = packed[:k].tolist(), packed[k : k + 3].tolist()
        buckets = packed[k + 3 : k + 3 + self.n_buckets].float()
        bucket_n = packed[k + 3 + self.n_buckets :].float()
        n = max(n, 1)
        out = {"train_loss": sums[0] / n}
        out.update({key: sums[j] / n for j, key in enumerate(self.KEYS) if key != "loss"})
        out["assign_ms"] = assign_ms / n
        out["paired_share"] = paired / n  # the pairing schedule's share of each batch (1 = all rows)
        means = (buckets / bucket_n.clamp_min(1)).tolist()
        out.update({f"loss_t{j}": float(v) for j, v in enumerate(means)})
        if self.leak_cond and sum(c.shape[0] for c in self.leak_cond) >= 64:
            out["condition_leak"] = condition_leak(
                torch.cat(self.leak_cond)[-self.leak_rows :], torch.cat(self.leak_noise)[-self.leak_rows :]
            )
        self.reset()
        return out


# ------------------------------------------------------------------------------------ resume guard, lock

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


# ------------------------------------------------------------------------------------------------ estimate


def duration(seconds: float, approx: str = "~") -> str:
    """``~12 s``, ``~23 min``, ``~1.4 h``."""
    if seconds < 90:
        return f"{approx}{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{approx}{seconds / 60:.0f} min"
    return f"{approx}{seconds / 3600:.1f} h"


class RunEstimate:
    """How long this invocation will take, from measurements only (printed once, updated once).

    Steps: after ``warmup`` steps (allocation, first-call costs) the next ``n`` (at most 10) are timed,
    with one device sync at each end on CUDA, for the first line; from then on every step keeps counting
    (no more syncs: over many steps the queue's back-pressure makes the mean right), so the line after
    the first evaluation and the progress bar's ``remaining`` use the mean over all steps so far: a
    machine that was busy during the first steps (other jobs on a shared CPU) is not extrapolated for
    the whole run. Only the step loop counts (:meth:`skip` restarts the clock after evaluations,
    checkpoints and logging). Evaluations: their count is known from the cadence; their time is
    reported only once the first one has been measured (:meth:`evaluated`). :meth:`tick` costs one
    ``perf_counter`` per step.
    """

    def __init__(
        self,
        *,
        steps: int,
        device: torch.device,
        evaluations: Mapping[str, int],
        steps_per_epoch: int | None = None,
        epochs: int | None = None,
    ) -> None:
        self.steps, self.device = int(steps), device
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        self.warmup = 2 if self.steps >= 12 else 1
        self.target = min(10, self.steps - self.warmup)
        self.done, self.n, self.seconds, self.last = 0, 0, 0.0, None
        self.s_step: float | None = None
        self.planned = {k: int(v) for k, v in evaluations.items()}
        self.measured: dict[str, list[float]] = {k: [] for k in self.planned}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def skip(self) -> None:
        """Time between steps that is not a step (evaluation, checkpoint): not counted."""
        if self.last is not None:
            self.last = time.perf_counter()

    def tick(self) -> str | None:
        """After each training step; returns the estimate line once the step time is measured."""
        self.done += 1
        if self.target < 1 or self.done < self.warmup:
            return None
        if self.done == self.warmup:
            self._sync()
            self.last = time.perf_counter()
            return None
        first = self.s_step is None
        if first and self.n + 1 >= self.target:
            self._sync()
        now = time.perf_counter()
        self.seconds += now - self.last
        self.n += 1
        self.last = now
        if first and self.n < self.target:
            return None
        self.s_step = self.seconds / self.n
        return self.line() if first else None

    def evaluated(self, kind: str, seconds: float) -> str | None:
        """After each evaluation of ``kind``; returns the updated line after the first one."""
        first = not self.measured[kind]
        self.measured[kind].append(float(seconds))
        return self.line() if first and self.s_step is not None else None

    def line(self) -> str:
        train = self.steps * float(self.s_step or 0.0)
        if self.steps_per_epoch and self.epochs:
            what = f"{self.steps_per_epoch} steps/epoch x {self.epochs} epochs"
        else:
            what = f"{self.steps} steps"
        text = f"[immiscible] estimate: {what} at {self.s_step:.3g} s/step -> {duration(train)} training"
        total, unknown = train, False
        for kind, count in self.planned.items():
            if not count:
                continue
            name = kind if count == 1 else f"{kind}s"
            seen = self.measured[kind]
            if seen:
                each = sum(seen) / len(seen)
                total += count * each
                text += f" + {count} {name} ({duration(each)} each, measured after the first)"
            else:
                unknown = True
                text += f" + {count} {name} (time measured after the first)"
        return text + f" ~= {duration(total, '')}" + (" + evaluations" if unknown else "")

    def remaining(self) -> str | None:
        """Short time-left for a progress bar (None until the step time is measured)."""
        if self.s_step is None:
            return None
        left = max(self.steps - self.done, 0) * self.s_step
        unknown = False
        for kind, count in self.planned.items():
            todo = max(count - len(self.measured[kind]), 0)
            if todo and self.measured[kind]:
                left += todo * sum(self.measured[kind]) / len(self.measured[kind])
            elif todo:
                unknown = True
        return duration(left, "") + ("+eval" if unknown else "")


# ------------------------------------------------------------------------------ one trainer run, set-up


def save_then_barrier(topo: Topology, run_dir: Path, step: int, **save: Any) -> Path | None:
    """Checkpoint ``step`` (:func:`save_training` with ``save``) on the main process, then every process
    waits at the barrier until it is on disk; returns the checkpoint dir (None off the main process).

    Call it on *every* process whenever a checkpoint is due: it is the only place the trainers
    checkpoint, so the main process's save and the others' barrier cannot drift apart (a barrier that
    some ranks reach and others do not hangs a multi-process run)."""
    path = save_training(run_dir, step, **save) if topo.is_main else None
    topo.barrier()
    return path


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
        self, model: nn.Module, assigner: Any, *, total_steps: int, steps_per_epoch: int, **meta: Any
    ) -> tuple[nn.Module, int, int]:
        """Model on the device (DDP-wrapped for the training forward), AdamW + lr schedule + EMA over
        ``total_steps`` (the scheduler built before any state is loaded), the config record (``meta``:
        the trainer's shape facts, see :func:`run_record`), the checkpoint restored when resuming, and
        the log opened on the main process (records after the restored step dropped).

        Returns ``(train_model, epoch, step)``: the module to call in the training forward (``model``
        itself in one process) and where training continues (``(0, 0)`` for a new run).
        """
        topo, tr = self.topo, self.tr
        topo.check(assigner)
        self.guard = NonFiniteGuard(
            self.device,
            eager=self.device.type == "cpu" and topo.world_size == 1,  # no queue to wait for: every step
            describe=self._diverged_fix,
            reduce=topo.sum if topo.world_size > 1 else None,
        )
        model.to(self.device)
        train_model = topo.wrap(model)  # DDP under several processes; ``model`` stays the bare module
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
                from immiscible_policy.analysis.plots import plot_mode_history

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
