"""The diffusion-policy trainer, top to bottom: its data, model, loss, cadence and evaluation.

One step: normalised batch -> noising core (assigner pairs noise) -> U-Net -> MSE -> AdamW -> EMA.
Every ``eval_every_epochs`` the EMA model is rolled out on the fixed test seeds; every
``checkpoint_every_epochs`` a checkpoint is written atomically, before that epoch's evaluation (a
failing evaluation loses no training; ``resume=true`` evaluates and logs that epoch first). The loop
itself, with the rules that make ``resume=true`` continue exactly where an uninterrupted run would be,
is :func:`immiscible_policy.fit.fit`, shared with the image trainer; budget and cadences count epochs.
Under ``accelerate launch`` / ``torchrun`` each rank trains on its slice of every global batch (rules in
:mod:`immiscible_policy.parallel`); logging and rollouts happen on the main process.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from immiscible_policy.ema import ema_module
from immiscible_policy.fit import Due, Trainer, every, fit
from immiscible_policy.host import resolve_device
from immiscible_policy.policy.build import build_model, make_policy, policy_sampler
from immiscible_policy.policy.dataset import describe_source
from immiscible_policy.policy.evaluate import rollout, validation_loss
from immiscible_policy.policy.load import load_policy
from immiscible_policy.policy.neighbour_batches import NeighbourOrder, group_labels, neighbour_table
from immiscible_policy.policy.tasks import rolls_out, task_env
from immiscible_policy.training import TrainingRun, epoch_order, preserve_rng, training_run

# the loop is train_policy; the rest is re-exported for code that imported it from here
__all__ = [
    "build_model",
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

    # ---- policy, optimiser, schedule, EMA, resume (the lr scheduler exists before any state is loaded)
    policy = make_policy(cfg, normalizer, dataset.obs_dim, dataset.action_dim)
    net = policy.net  # what the optimiser, the EMA and the checkpoints hold (the keys of every run)
    steps_per_epoch = n_windows // batch  # drop_last: every step sees a full global batch
    if tr.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, int(tr.max_steps_per_epoch))
    epochs = int(tr.epochs)
    # the training forward is the policy's (DDP-wrapped under several processes: gradients all-reduced)
    train_forward, start_epoch, step = run.prepare(
        net,
        policy.core.assigner,
        forward=policy,
        total_steps=epochs * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        policy={"obs_dim": dataset.obs_dim, "action_dim": dataset.action_dim},
        **({"data_source": source} if source else {}),
    )
    opt = run.opt

    n_params = sum(p.numel() for p in net.parameters())
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

    def evaluate(record: dict[str, Any], due: Due) -> dict[str, str]:
        """Roll out the EMA model on the fixed test seeds into ``record``; the global RNG is untouched.
        Returns the dashboards' media: the rollout video (``trainer.eval_video``) of the first
        ``task.eval.n_video_episodes`` episodes, in ``run_dir/videos/epoch_NNNN.<format>``. PushT adds the
        rotation modes (``modes_*``) and, with ``task.eval.symmetric_rollouts`` > 0, the symmetric starts'
        score and modes (``sym_*``; docs/modes.md)."""
        from immiscible_policy.metrics.pusht_modes import flat_modes

        ema_policy = policy.with_net(ema_module(opt.ema, net))  # the EMA weights, the policy's settings
        if not rolls_out(task):  # task=lerobot task.eval_env=none: no env, the validation loss instead
            record.update(validation_loss(ema_policy, dataset, seed=int(tr.seed)))
            return {}
        kw: dict[str, Any] = {}
        if video:
            kw["video_path"] = run.run_dir / "videos" / f"epoch_{int(record['epoch']):04d}.{video}"
            kw["n_video_episodes"] = int(task.eval.get("n_video_episodes", 2))
        with preserve_rng():
            metrics = rollout(ema_policy, task, seed=int(tr.seed), progress=bool(tr.progress), **kw)
        record.update(mean_score=metrics["mean_score"], success_rate=metrics["success_rate"])
        record["eval_seconds"] = metrics["seconds"]
        if "modes" in metrics:  # PushT: which way the T turned, flat for the loggers (docs/modes.md)
            record.update(flat_modes(metrics["modes"], "modes_"))
        n_symmetric = int(task.eval.get("symmetric_rollouts", 0) or 0)
        if n_symmetric:  # task.eval.symmetric_rollouts: the same policy from the symmetric starts, no video
            with preserve_rng():
                sym = rollout(
                    ema_policy,
                    task,
                    seed=int(tr.seed),
                    progress=bool(tr.progress),
                    starts="symmetric",
                    n_episodes=n_symmetric,
                )
            record.update(sym_mean_score=sym["mean_score"], sym_success_rate=sym["success_rate"])
            record.update(flat_modes(sym["modes"], "sym_modes_"), sym_eval_seconds=sym["seconds"])
        return {"rollout": metrics["video_path"]} if metrics.get("video_path") else {}

    def report(record: dict[str, Any], due: Due) -> None:
        """The epoch's line: its loss, and the scores when it was evaluated."""
        from immiscible_policy.metrics.pusht_modes import mode_line

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

    ck_every, eval_every = int(tr.checkpoint_every_epochs), int(tr.eval_every_epochs)
    eval_at_end = bool(tr.eval_at_end)

    def due_at(epoch: int) -> Due:
        """Every epoch (1-based) is logged; rollouts every ``eval_every_epochs`` and at the last epoch."""
        return Due(
            log=True,
            checkpoint=every(epoch, ck_every),
            evaluate=every(epoch, eval_every) or (epoch == epochs and eval_at_end),
        )

    # trainer.neighbour_batches: groups of windows with nearly the condition the network sees
    order, groups = neighbour_batches(tr, cfg.assigner, dataset, obs_all[:, : policy.n_obs_steps], main)

    def prepare(idx: Tensor, gens: list[torch.Generator]) -> Any:
        """The rows' training pair and the network's condition (:meth:`DiffusionPolicy.prepare`)."""
        batch = {"obs": obs_all[idx], "action": act_all[idx]}
        if groups is not None:  # neighbour batches: whole groups of k consecutive rows
            batch["groups"] = groups(len(idx), idx.device)
        if frame_rows is not None:
            batch["images"] = frames[frame_rows[idx]]
        return policy.prepare(batch, gens)

    def loss(pair: Any) -> tuple[Tensor, Tensor, Any]:
        """The loss through the (DDP-wrapped) policy's forward, so that the gradients are synchronised."""
        return train_forward(None, prepared=pair)

    def checkpoint(step: int, epoch: int, pending: dict[str, Any]) -> None:
        """The training state, and the normaliser a loaded policy needs."""
        run.checkpoint(net, step, epoch=epoch, pending=pending, normalizer=normalizer.to_dict())

    trainer = Trainer(
        unit="epoch",
        total=epochs,
        rows=n_windows,
        steps_per_epoch=steps_per_epoch,
        core=policy.core,
        model=net,
        prepare=prepare,
        loss=loss,
        due=due_at,
        checkpoint=checkpoint,
        evaluate=evaluate,
        report=report,
        order=order,
    )
    last = fit(run, trainer, at=start_epoch, step=step)
    run.plot(x="epoch", title=f"{task.name} / {cfg.assigner.name}")
    return last


def neighbour_batches(tr: Any, assigner: Any, dataset: Any, cond: Tensor, main: bool) -> tuple[Any, Any]:
    """(the data order, the group labels of a batch) under ``trainer.neighbour_batches`` = k: groups of an
    anchor window and its k - 1 nearest windows from other demos by ``cond`` (N, n_obs_steps, obs_dim), the
    normalised observations the network sees, from the pairing's start epoch on
    (policy/neighbour_batches.py); (the plain random order, None) for k = 1."""
    k = int(tr.get("neighbour_batches") or 1)
    if k == 1:
        return epoch_order, None
    tick = time.time()
    table = neighbour_table(cond.cpu(), torch.as_tensor(dataset.sampler.window_episode), k)
    start = int(assigner.get("start_epoch", 0) or 0)
    if main:
        print(
            f"[immiscible] neighbour batches: groups of {k} (a window and its {k - 1} nearest from other demos) "
            f"from epoch {start}; table {tuple(table.shape)} in {time.time() - tick:.0f} s",
            flush=True,
        )
    return NeighbourOrder(table, start_epoch=start), lambda b, device: group_labels(b, k, device)
