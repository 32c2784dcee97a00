"""The image diffusion trainer, top to bottom: its data, model, loss, cadence and evaluation.

One step: batch of images in [-1, 1] (B, C, H, W) -> noising core (the assigner pairs noise) ->
UNet2DModel -> MSE (float32) -> AdamW (+ warm-up, grad clip) -> EMA. Step-based: budget and cadences
count steps. The loop itself, with the rules that make ``resume=true`` continue exactly where an
uninterrupted run would be, is :func:`immiscible_policy.fit.fit`, shared with the policy trainer. Every ``sample_every_steps`` the EMA model draws a
PNG grid, every ``eval_every_steps`` it is scored by FID/KID on a fixed number of seeded samples
(``trainer.fid``; ``fid.only_at_end`` keeps the costly Inception FID to the last step) and/or by the fast
classifier Fréchet distance (``trainer.cfd``, :mod:`immiscible_policy.metrics.classifier_fd`). At the last
step the CFD is also taken at each of ``trainer.final_steps`` sampling steps (record keys
``cfd_steps_<n>``; minibatch OT is said to help most at few steps).
A checkpoint due at the same step is written first (a failing FID or grid loses no training;
``resume=true`` redoes that snapshot and logs its record).
Under ``accelerate launch`` / ``torchrun`` each rank trains on its slice of every global batch (rules in
:mod:`immiscible_policy.parallel`); logging, sampling, FID and checkpoints happen on the main process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from immiscible_policy.ema import ema_module
from immiscible_policy.fit import Due, Trainer, every, fit, stop_at
from immiscible_policy.image.data import load_dataset
from immiscible_policy.image.diffusion import build_image_diffusion
from immiscible_policy.image.evaluate import cfd_eval, classifier_metric, fid_kid, final_step_key
from immiscible_policy.image.model import count_params
from immiscible_policy.image.sampling import save_grid
from immiscible_policy.training import TrainingRun, preserve_rng, training_run


def use_bf16(mode: str, device: torch.device) -> bool:
    """bf16 autocast on CUDA only: ``auto`` picks it there; asking for it on the CPU is an error."""
    if mode not in ("auto", "bf16", "no"):
        raise ValueError(f"trainer.mixed_precision={mode!r} is not supported; use auto, bf16 or no.")
    if mode == "bf16" and device.type != "cuda":
        raise ValueError("trainer.mixed_precision=bf16 needs CUDA; use auto or no on the CPU.")
    return mode != "no" and device.type == "cuda"


# (record key, printed name, format) of the scores an evaluation prints
SCORES = (("fid", "FID", ".2f"), ("kid", "KID", ".4f"), ("cfd", "CFD", ".3f"))


def train_image(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train (or resume) an image diffusion model into ``run_dir``; returns the last logged record.

    The config is checked before any data is loaded, ``resume`` against the run dir, which the run then
    holds locked (:func:`~immiscible_policy.training.training_run`).
    """
    with training_run(cfg, run_dir, "image") as run:
        return _train_image(cfg, run)


def cfd_enabled(tr: Any) -> bool:
    """``trainer.cfd.enabled`` (a config from before the key existed has no ``cfd`` section: off)."""
    return bool((tr.get("cfd") or {}).get("enabled", False))


def _train_image(cfg: DictConfig, run: TrainingRun) -> dict:
    task, tr, topo, device, main = cfg.task, cfg.trainer, run.topo, run.device, run.main
    bf16 = use_bf16(str(tr.mixed_precision), device)

    # ---- data: the whole set as uint8 on the device; batches are indexed and scaled to [-1, 1]
    ds = load_dataset(task)
    conditional = bool(task.get("class_conditional", False))
    if conditional and ds.labels is None:
        raise ValueError(f"task.class_conditional=true but {ds.ref_key} has no labels; set it to false.")
    num_classes = ds.num_classes if conditional else 0
    images = ds.images.to(device)
    labels = ds.labels.to(device) if conditional else None
    n, batch = len(ds), topo.global_batch
    run.check_batch(n, "images")
    steps_per_epoch = n // batch  # drop_last: every step sees a full global batch

    # ---- model (network, noising core, sampler), optimiser, schedule, EMA, resume (the lr scheduler
    # before any state is loaded)
    diffusion = build_image_diffusion(
        cfg, image_size=ds.image_size, channels=ds.channels, num_classes=num_classes
    )
    diffusion.bf16 = bf16  # the network under bf16 autocast on CUDA, the loss in float32
    net, core = diffusion.net, diffusion.core  # the optimiser, EMA and checkpoints hold the network
    max_steps = int(tr.max_steps)
    # the training forward is the model's (DDP-wrapped under several processes: gradients all-reduced)
    train_forward, _, step = run.prepare(
        net,
        core.assigner,
        forward=diffusion,
        total_steps=max_steps,
        steps_per_epoch=steps_per_epoch,
        image={
            "channels": ds.channels,
            "image_size": ds.image_size,
            "num_classes": num_classes,
            "ref_key": ds.ref_key,
            "n_images": n,
        },
    )
    opt, run_dir = run.opt, run.run_dir
    stop = stop_at(tr, "step", step, max_steps)
    if main:
        print(
            f"[immiscible] task={task.name} ({ds.ref_key}, {n} images {ds.channels}x{ds.image_size}^2"
            f"{f', {num_classes} classes' if num_classes else ''}) assigner={core.assigner!r} "
            f"objective={core.objective} sampler={diffusion.sampler} params={count_params(net) / 1e6:.2f}M "
            f"device={device}{' bf16' if bf16 else ''} {topo.describe()} steps={step}->{stop}/{max_steps} "
            f"run_dir={run_dir}",
            flush=True,
        )

    use_fid, fid_at_end_only = bool(tr.fid.enabled), bool(tr.fid.get("only_at_end", False))
    final_steps = [int(k) for k in (tr.get("final_steps") or [])]
    metric = None  # the fast metric (its feature network is trained once per dataset, then cached)
    if cfd_enabled(tr) and main:
        with preserve_rng():
            metric = classifier_metric(ds, tr.cfd, str(device))

    def evaluate(record: dict[str, Any], due: Due) -> dict[str, Any]:
        """EMA model: FID/KID and/or CFD (+ grid of its first samples) or just a grid, into ``record``;
        the global RNG untouched. Returns the grid for the dashboards."""
        step, with_eval = int(record["step"]), due.evaluate
        out: dict[str, Any] = {}
        samples = None
        steps = int(tr.num_inference_steps)
        batch_size = int(tr.sample_batch_size)
        with preserve_rng():
            ema = diffusion.with_net(ema_module(opt.ema, net))  # the EMA weights, the model's settings
            if with_eval and use_fid and (step == max_steps or not fid_at_end_only):
                out, samples = fid_kid(
                    ema, ds, tr.fid, device=str(device), steps=steps, batch_size=batch_size
                )
            if with_eval and metric is not None:
                got, fake = cfd_eval(ema, metric, tr.cfd, steps=steps, batch_size=batch_size)
                out.update(got)
                samples = fake if samples is None or len(samples) < len(fake) else samples
                for k in final_steps if step == max_steps else ():  # the same noise at k steps
                    same = k == steps
                    at_k = got if same else cfd_eval(ema, metric, tr.cfd, steps=k, batch_size=batch_size)[0]
                    out[final_step_key(k)] = at_k["cfd"]
            if samples is None or len(samples) < int(tr.n_grid):  # the grid always shows n_grid images
                samples = ema.sample(int(tr.n_grid), steps, seed=int(tr.fid.seed), batch_size=batch_size)
        grid = run_dir / "samples" / f"step_{step:08d}.png"
        save_grid(samples[: int(tr.n_grid)], grid)
        record.update(out)
        return {"samples": grid}

    log_every, eval_every = int(tr.get("log_every_steps") or 0), int(tr.get("eval_every_steps") or 0)
    grid_every, ck_every = int(tr.get("sample_every_steps") or 0), int(tr.get("checkpoint_every_steps") or 0)
    evaluates, eval_at_end = use_fid or cfd_enabled(tr), bool(tr.eval_at_end)

    def due_at(step: int) -> Due:
        """A record every ``log_every_steps``; FID/CFD every ``eval_every_steps``; a grid every
        ``sample_every_steps`` and at the last step (read once: :func:`fit` asks at every step)."""
        end = step == max_steps
        return Due(
            log=every(step, log_every),
            checkpoint=every(step, ck_every),
            evaluate=evaluates and (every(step, eval_every) or (end and eval_at_end)),
            grid=every(step, grid_every) or end,
        )

    def prepare(idx: Tensor, gens: list[torch.Generator]) -> Any:
        """The rows' training pair and labels (the class labels are the condition; None without them)."""
        batch = {"images": images[idx]}  # uint8, scaled to [-1, 1] by the model
        if labels is not None:
            batch["labels"] = labels[idx]
        return diffusion.prepare(batch, gens)

    def loss(prepared: Any) -> tuple[Tensor, Tensor, Any]:
        """MSE in float32 of the (bf16-autocast on CUDA) prediction, the mean and per sample (B,), through
        the (DDP-wrapped) model's forward, so that the gradients are synchronised."""
        return train_forward(None, prepared=prepared)

    def checkpoint(step: int, epoch: int, pending: dict[str, Any]) -> None:
        run.checkpoint(net, step, epoch=epoch, pending=pending)

    def report(record: dict[str, Any], due: Due) -> None:
        """A line for an evaluated step (its scores); the log has every record."""
        if due.evaluate:
            scores = [f"{name} {record[k]:{fmt}}" for k, name, fmt in SCORES if k in record]
            print(f"step {record['step']}: loss {record['train_loss']:.4f} {' '.join(scores)}", flush=True)

    trainer = Trainer(
        unit="step",
        total=max_steps,
        rows=n,
        steps_per_epoch=steps_per_epoch,
        core=core,
        model=net,
        prepare=prepare,
        loss=loss,
        due=due_at,
        checkpoint=checkpoint,
        evaluate=evaluate,
        report=report,
    )
    last = fit(run, trainer, at=step, step=step)
    run.plot(
        x="step",
        panels=(("train_loss",), ("fid",), ("kid",)) + ((("cfd",),) if cfd_enabled(tr) else ()),
        title=f"{task.name} / {cfg.assigner.name}",
    )
    return last
