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
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor
from tqdm.auto import tqdm

from immiscible_policy.ema import ema_module
from immiscible_policy.pair_ahead import PairAhead
from immiscible_policy.policy.build import build_model, build_policy, policy_sampler
from immiscible_policy.policy.dataset import describe_source
from immiscible_policy.policy.evaluate import rollout, validation_loss
from immiscible_policy.policy.load import load_policy
from immiscible_policy.policy.tasks import rolls_out, task_env
from immiscible_policy.training import (
    RunEstimate,
    StepStats,
    TrainingRun,
    epoch_order,
    optimizer_step,
    preserve_rng,
    resolve_device,
    training_run,
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

    The config is checked before any data is loaded, ``resume`` against the run dir, which the run then
    holds locked (:func:`~immiscible_policy.training.training_run`).
    """
    with training_run(cfg, run_dir, "policy") as run:
        return _train_policy(cfg, run)


def _eval_due(tr: Any, epoch: int, epochs: int) -> bool:
    """Whether the epoch that just ended (1-based ``epoch``) evaluates."""
    every = int(tr.eval_every_epochs)
    return bool((every and epoch % every == 0) or (epoch == epochs and tr.eval_at_end))


def _train_policy(cfg: DictConfig, run: TrainingRun) -> dict:
    task, tr, topo, device, main = cfg.task, cfg.trainer, run.topo, run.device, run.main

    # ---- data: the whole train split as normalised tensors on the device (PushT is ~35 MB)
    dataset = task_env(task).make_dataset(task)
    # PushT: which demos were read (the zarr path, or the embedded copy and its sha256): config.json + log
    source = getattr(dataset, "data_source", None)
    normalizer = dataset.get_normalizer()
    windows = dataset.all_windows()
    obs_all = normalizer.normalize("obs", windows["obs"]).to(device)
    act_all = normalizer.normalize("action", windows["action"]).to(device)
    frame_rows = windows.get("image_rows")  # image observations: (N, n_obs_steps) rows of dataset.images
    if frame_rows is not None:  # the frames stay uint8 (PushT: 0.7 GB); gathered per batch
        frame_rows, frames = frame_rows.to(device), torch.from_numpy(dataset.images).to(device)
    n_windows, batch = act_all.shape[0], topo.global_batch
    run.check_batch(n_windows, "windows")

    # ---- model, optimiser, schedule, EMA, resume (the lr scheduler exists before any state is loaded)
    model, policy = build_policy(cfg, normalizer, dataset.obs_dim, dataset.action_dim)
    steps_per_epoch = n_windows // batch  # drop_last: every step sees a full global batch
    if tr.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, int(tr.max_steps_per_epoch))
    epochs = int(tr.epochs)
    train_model, start_epoch, step = run.prepare(
        model,
        policy.core.assigner,
        total_steps=epochs * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        policy={"obs_dim": dataset.obs_dim, "action_dim": dataset.action_dim},
        **({"data_source": source} if source else {}),
    )
    opt, logger = run.opt, run.logger

    n_params = sum(p.numel() for p in model.parameters())
    if main:
        print(
            f"[immiscible] task={task.name} assigner={policy.core.assigner!r} "
            f"objective={policy.core.objective} sampler={policy.sampler}/{policy.num_inference_steps} "
            f"params={n_params / 1e6:.2f}M "
            f"device={device} windows={n_windows} {topo.describe()} steps/epoch={steps_per_epoch} "
            f"epochs={start_epoch}->{epochs} run_dir={run.run_dir}"
            + (f" data={describe_source(source)}" if source else ""),
            flush=True,
        )

    video = tr.get("eval_video")  # mp4 | gif | None (no video)

    def evaluate(record: dict[str, Any]) -> dict[str, str]:
        """Roll out the EMA model on the fixed test seeds into ``record``; the global RNG is untouched.
        Returns the dashboards' media: the rollout video (``trainer.eval_video``) of the first
        ``task.eval.n_video_episodes`` episodes, in ``run_dir/videos/epoch_NNNN.<format>``. PushT adds the
        rotation modes (``modes_*``) and, with ``task.eval.symmetric_rollouts`` > 0, the symmetric starts'
        score and modes (``sym_*``; docs/modes.md)."""
        from immiscible_policy.analysis.modes import flat_modes

        if not rolls_out(task):  # task=lerobot task.eval_env=none: no env, the validation loss instead
            record.update(validation_loss(policy, ema_module(opt.ema, model), dataset, seed=int(tr.seed)))
            return {}
        kw: dict[str, Any] = {}
        if video:
            kw["video_path"] = run.run_dir / "videos" / f"epoch_{int(record['epoch']):04d}.{video}"
            kw["n_video_episodes"] = int(task.eval.get("n_video_episodes", 2))
        with preserve_rng():
            metrics = rollout(
                policy, ema_module(opt.ema, model), task, seed=int(tr.seed), progress=bool(tr.progress), **kw
            )
        record.update(mean_score=metrics["mean_score"], success_rate=metrics["success_rate"])
        record["eval_seconds"] = metrics["seconds"]
        if "modes" in metrics:  # PushT: which way the T turned, flat for the loggers (docs/modes.md)
            record.update(flat_modes(metrics["modes"], "modes_"))
        n_symmetric = int(task.eval.get("symmetric_rollouts", 0) or 0)
        if n_symmetric:  # task.eval.symmetric_rollouts: the same policy from the symmetric starts, no video
            with preserve_rng():
                sym = rollout(
                    policy,
                    ema_module(opt.ema, model),
                    task,
                    seed=int(tr.seed),
                    progress=bool(tr.progress),
                    starts="symmetric",
                    n_episodes=n_symmetric,
                )
            record.update(sym_mean_score=sym["mean_score"], sym_success_rate=sym["success_rate"])
            record.update(flat_modes(sym["modes"], "sym_modes_"), sym_eval_seconds=sym["seconds"])
        return {"rollout": metrics["video_path"]} if metrics.get("video_path") else {}

    def report(record: dict[str, Any]) -> None:
        from immiscible_policy.analysis.modes import mode_line

        score = (
            f" score {record['mean_score']:.3f} success {record['success_rate']:.2f}"
            if "mean_score" in record
            else ""
        )
        score += mode_line(record, "modes_")
        if "sym_mean_score" in record:
            score += (
                f" | symmetric score {record['sym_mean_score']:.3f} success {record['sym_success_rate']:.2f}"
                + mode_line(record, "sym_modes_")
            )
        if "val_loss" in record:
            score += f" val_loss {record['val_loss']:.4f}"
        print(f"epoch {record['epoch']}: loss {record['train_loss']:.4f}{score}", flush=True)

    stop_epoch = epochs
    if tr.get("max_epochs_this_run"):
        stop_epoch = min(epochs, start_epoch + int(tr.max_epochs_this_run))
    pending = run.pending(step)  # the resumed checkpoint's record, when it never reached the log
    n_evals = sum(_eval_due(tr, e, epochs) for e in range(start_epoch + 1, stop_epoch + 1))
    estimate = RunEstimate(
        steps=(stop_epoch - start_epoch) * steps_per_epoch,
        device=device,
        evaluations={"evaluation": n_evals + bool(pending and pending.get("evaluate"))},
        steps_per_epoch=steps_per_epoch,
        epochs=stop_epoch - start_epoch,
    )

    last: dict = {}
    policy.core.set_epoch(max(start_epoch - 1, 0))  # a replayed evaluation pairs as its epoch did
    if pending is not None:
        record, media = dict(pending["record"]), {}
        if pending.get("evaluate"):
            print(
                f"[immiscible] evaluating epoch {record['epoch']} (its checkpoint was saved, its evaluation was not)"
            )
            tick = time.time()
            media = evaluate(record)
            run.note(estimate.evaluated("evaluation", time.time() - tick))
        last = logger.log(record, media)
        report(record)

    # ---- the loop
    start_time = time.time()
    train_min = run.train_minutes()
    stats = StepStats(int(tr.n_loss_buckets), device)

    def prepare(order: Tensor, i: int, step: int) -> tuple[Tensor, Any]:
        """Batch i's rows (this process's slice) and training pair, from step's noise streams."""
        idx = topo.rows(order, i)
        gens = topo.generators(int(tr.seed), step)  # one stream per rank: (seed, rank, step)
        images = None if frame_rows is None else frames[frame_rows[idx]]
        return idx, policy.prepare(obs_all[idx], act_all[idx], gens, images=images)

    ahead = PairAhead(bool(tr.get("pair_ahead", False)))  # trainer.pair_ahead
    for epoch in range(start_epoch, stop_epoch):
        model.train()
        policy.core.set_epoch(epoch)  # the pairing schedule's share for this epoch
        order = epoch_order(n_windows, int(tr.seed), epoch).to(device)
        epoch_start = time.time()
        show = bool(tr.progress) and main
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", disable=not show, leave=False)
        estimate.skip()
        for i in bar:
            more = i + 1 < steps_per_epoch  # trainer.pair_ahead: batch i + 1 is paired while i trains
            nxt = partial(prepare, order, i + 1, step + 1) if more else None
            idx, pair = ahead.get(step, partial(prepare, order, i, step), step + 1, nxt)
            loss, per_sample, tp = policy.loss(train_model, obs_all[idx], act_all[idx], None, prepared=pair)
            grad_norm = optimizer_step(model, opt, loss, tr.grad_clip)
            step += 1
            run.after_step(step, loss, grad_norm)  # a non-finite loss stops the run (finite.py)
            value = stats.add(loss, per_sample, tp, policy.core)
            run.note(estimate.tick())
            if show and i % 10 == 0:  # the only host sync of a step, and only with a progress bar
                eta = estimate.remaining()
                bar.set_postfix(loss=f"{value.item():.4f}", **({"eta": eta} if eta else {}))

        run.check_finite(model, step)  # before the record and the checkpoint: never log or save nan
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "lr": opt.lr_scheduler.get_last_lr()[0],
        }
        record.update(run.summary(stats))
        train_min += (time.time() - epoch_start) / 60
        record["train_min"] = train_min  # training time only (no evaluation), summed over resumes
        record["wall_min"] = (time.time() - start_time) / 60

        is_last = epoch + 1 == epochs
        ck_every = int(tr.checkpoint_every_epochs)
        do_ckpt = (ck_every and (epoch + 1) % ck_every == 0) or is_last or epoch + 1 == stop_epoch
        do_eval = _eval_due(tr, epoch + 1, epochs)
        last = record
        if do_ckpt:  # before the evaluation (a failing one loses no training); every process waits for it
            run.checkpoint(
                model,
                step,
                epoch=epoch + 1,
                pending={"record": record, "evaluate": do_eval},
                normalizer=normalizer.to_dict(),
            )
        if not main:  # logs and rollouts are the main process's
            continue
        media = {}
        if do_eval:
            tick = time.time()
            media = evaluate(record)
            run.note(estimate.evaluated("evaluation", time.time() - tick))
        last = logger.log(record, media)
        report(record)
    ahead.close()
    run.plot(x="epoch", title=f"{task.name} / {cfg.assigner.name}")
    return last
