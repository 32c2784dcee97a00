"""The diffusion-policy training loop, top to bottom (nanoGPT style).

One step: normalised batch -> noising core (assigner pairs noise) -> U-Net -> MSE -> AdamW -> EMA.
Every ``eval_every_epochs`` the EMA model is rolled out on the fixed test seeds; every
``checkpoint_every_epochs`` a checkpoint is written atomically, before that epoch's evaluation (a
failing evaluation loses no training; ``resume=true`` evaluates and logs that epoch first). Noise for step s is drawn from a
generator seeded by (seed, rank, s) and the data order of epoch e from (seed, e), so ``resume=true``
continues exactly where an uninterrupted run would be. Under ``accelerate launch`` / ``torchrun`` each
rank trains on its slice of every global batch (rules in :mod:`immiscible_policy.parallel`); logging,
checkpoints and rollouts happen on the main process.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from immiscible_policy.config_check import check_config, resume_mode
from immiscible_policy.ema import ema_module
from immiscible_policy.parallel import make_topology
from immiscible_policy.policy.build import build_model, build_policy, policy_sampler
from immiscible_policy.policy.evaluate import rollout
from immiscible_policy.policy.load import load_policy
from immiscible_policy.policy.tasks import task_env
from immiscible_policy.run_log import plot_curves
from immiscible_policy.training import (
    RunEstimate,
    StepStats,
    claim_run,
    epoch_order,
    make_optimization,
    open_run_log,
    optimizer_step,
    pending_record,
    preserve_rng,
    resolve_device,
    restore_training,
    run_record,
    save_training,
)

# the loop is train_policy; the rest is re-exported for code that imported it from here
__all__ = [
    "build_model",
    "build_policy",
    "load_policy",
    "policy_sampler",
    "resolve_device",
    "rollout",
    "train_policy",
]


def train_policy(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train (or resume) a diffusion policy (PushT, robomimic, ...) into ``run_dir``; returns the final record.

    The config is checked before any data is loaded (:func:`immiscible_policy.config_check.check_config`),
    ``resume`` against the run dir, which the run then holds locked (:func:`~immiscible_policy.training.claim_run`).
    """
    check_config(cfg, "policy")
    tr = cfg.trainer
    topo = make_topology(tr, resolve_device(str(tr.device)))
    run_dir = Path(topo.broadcast(str(run_dir)))  # one run directory for all ranks: the main one's
    with claim_run(cfg, run_dir, topo) as restore:
        return _train_policy(cfg, run_dir, topo, restore)


def _eval_due(tr: Any, epoch: int, epochs: int) -> bool:
    """Whether the epoch that just ended (1-based ``epoch``) evaluates."""
    every = int(tr.eval_every_epochs)
    return bool((every and epoch % every == 0) or (epoch == epochs and tr.eval_at_end))


def _train_policy(cfg: DictConfig, run_dir: Path, topo: Any, restore: bool) -> dict:
    task, tr = cfg.task, cfg.trainer
    device = topo.device
    torch.manual_seed(int(tr.seed))

    # ---- data: the whole train split as normalised tensors on the device (PushT is ~35 MB)
    dataset = task_env(task).make_dataset(task)
    normalizer = dataset.get_normalizer()
    windows = dataset.all_windows()
    obs_all = normalizer.normalize("obs", windows["obs"]).to(device)
    act_all = normalizer.normalize("action", windows["action"]).to(device)
    n_windows, batch = act_all.shape[0], topo.global_batch
    if n_windows < batch:
        raise ValueError(
            f"trainer.batch_size={topo.per_rank_batch} x {topo.ranks} ranks = {batch} exceeds the "
            f"{n_windows} training windows; lower it."
        )

    # ---- model, optimiser, schedule, EMA (the lr scheduler exists before any optimiser state is loaded)
    model, policy = build_policy(cfg, normalizer, dataset.obs_dim, dataset.action_dim)
    topo.check(policy.core.assigner)
    model.to(device)
    train_model = topo.wrap(model)  # DDP under several processes; ``model`` stays the bare module
    steps_per_epoch = n_windows // batch  # drop_last: every step sees a full global batch
    if tr.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, int(tr.max_steps_per_epoch))
    epochs = int(tr.epochs)
    opt = make_optimization(model, tr, epochs * steps_per_epoch)

    config_record = run_record(
        cfg,
        policy.core.assigner,
        batch=topo.per_rank_batch,
        steps_per_epoch=steps_per_epoch,
        topology=topo.record(),
        device=device,
        policy={"obs_dim": dataset.obs_dim, "action_dim": dataset.action_dim},
    )

    # ---- resume (resume=auto on a run dir without a checkpoint starts here, restarting its log)
    start_epoch, step = (
        restore_training(run_dir, model, opt, batch=topo.per_rank_batch, topology=topo.record())
        if restore
        else (0, 0)
    )
    main = topo.is_main
    continuing = resume_mode(cfg) != "false"
    logger = (
        open_run_log(run_dir, resume=continuing, step=step, config_record=config_record) if main else None
    )

    n_params = sum(p.numel() for p in model.parameters())
    if main:
        print(
            f"[immiscible] task={task.name} assigner={policy.core.assigner!r} "
            f"objective={policy.core.prediction_type} sampler={policy.sampler}/{policy.num_inference_steps} "
            f"params={n_params / 1e6:.2f}M "
            f"device={device} windows={n_windows} {topo.describe()} steps/epoch={steps_per_epoch} "
            f"epochs={start_epoch}->{epochs} run_dir={run_dir}",
            flush=True,
        )

    def evaluate(record: dict[str, Any]) -> None:
        """Roll out the EMA model on the fixed test seeds into ``record``; the global RNG is untouched."""
        with preserve_rng():
            metrics = rollout(
                policy, ema_module(opt.ema, model), task, seed=int(tr.seed), progress=bool(tr.progress)
            )
        record.update(mean_score=metrics["mean_score"], success_rate=metrics["success_rate"])
        record["eval_seconds"] = metrics["seconds"]

    def report(record: dict[str, Any]) -> None:
        score = (
            f" score {record['mean_score']:.3f} success {record['success_rate']:.2f}"
            if "mean_score" in record
            else ""
        )
        print(f"epoch {record['epoch']}: loss {record['train_loss']:.4f}{score}", flush=True)

    stop_epoch = epochs
    if tr.get("max_epochs_this_run"):
        stop_epoch = min(epochs, start_epoch + int(tr.max_epochs_this_run))
    # the record of the checkpoint we resume from, when its evaluation failed or the run died before logging it
    pending = pending_record(run_dir, step, logger.records) if (main and restore) else None
    n_evals = sum(_eval_due(tr, e, epochs) for e in range(start_epoch + 1, stop_epoch + 1))
    estimate = RunEstimate(
        steps=(stop_epoch - start_epoch) * steps_per_epoch,
        device=device,
        evaluations={"evaluation": n_evals + bool(pending and pending.get("evaluate"))},
        steps_per_epoch=steps_per_epoch,
        epochs=stop_epoch - start_epoch,
    )

    def note(line: str | None) -> None:
        if line and main:
            print(line, flush=True)

    last: dict = {}
    if pending is not None:
        record = dict(pending["record"])
        if pending.get("evaluate"):
            print(
                f"[immiscible] evaluating epoch {record['epoch']} (its checkpoint was saved, its evaluation was not)"
            )
            tick = time.time()
            evaluate(record)
            note(estimate.evaluated("evaluation", time.time() - tick))
        last = logger.log(record)
        report(record)

    start_time = time.time()
    train_min = (
        float(logger.records[-1].get("train_min", 0.0)) if (main and restore and logger.records) else 0.0
    )
    stats = StepStats(int(tr.n_loss_buckets), device)
    for epoch in range(start_epoch, stop_epoch):
        model.train()
        order = epoch_order(n_windows, int(tr.seed), epoch).to(device)
        epoch_start = time.time()
        show = bool(tr.progress) and main
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", disable=not show, leave=False)
        estimate.skip()
        for i in bar:
            idx = topo.rows(order, i)  # this process's slice of global batch i
            gens = topo.generators(int(tr.seed), step)  # one stream per rank: (seed, rank, step)
            loss, per_sample, tp = policy.loss(train_model, obs_all[idx], act_all[idx], gens)
            optimizer_step(model, opt, loss, tr.grad_clip)
            step += 1
            value = stats.add(loss, per_sample, tp, policy.core)
            note(estimate.tick())
            if show and i % 10 == 0:  # the only host sync of a step, and only with a progress bar
                eta = estimate.remaining()
                bar.set_postfix(loss=f"{value.item():.4f}", **({"eta": eta} if eta else {}))

        record: dict[str, Any] = {"epoch": epoch + 1, "step": step, "lr": opt.lr_scheduler.get_last_lr()[0]}
        record.update(stats.summary(topo.sum if topo.world_size > 1 else None))
        train_min += (time.time() - epoch_start) / 60
        record["train_min"] = train_min  # training time only (no evaluation), summed over resumes
        record["wall_min"] = (time.time() - start_time) / 60

        is_last = epoch + 1 == epochs
        ck_every = int(tr.checkpoint_every_epochs)
        do_ckpt = (ck_every and (epoch + 1) % ck_every == 0) or is_last or epoch + 1 == stop_epoch
        do_eval = _eval_due(tr, epoch + 1, epochs)
        last = record
        if not main:  # logs, rollouts and checkpoints are the main process's; wait for it
            if do_ckpt:
                topo.barrier()
            continue
        if do_ckpt:  # before the evaluation: a failing evaluation loses no training
            save_training(
                run_dir,
                step,
                model=model,
                opt=opt,
                config={**config_record, "pending": {"record": record, "evaluate": do_eval}},
                epoch=epoch + 1,
                normalizer=normalizer.to_dict(),
                keep_last=tr.keep_last,
            )
            topo.barrier()
        if do_eval:
            tick = time.time()
            evaluate(record)
            note(estimate.evaluated("evaluation", time.time() - tick))
        last = logger.log(record)
        report(record)
    if main and logger.jsonl_path.exists():
        plot_curves(
            logger.jsonl_path, run_dir / "curves.png", x="epoch", title=f"{task.name} / {cfg.assigner.name}"
        )
    return last
