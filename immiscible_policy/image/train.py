"""The image diffusion training loop, top to bottom (nanoGPT style).

One step: batch of images in [-1, 1] (B, C, H, W) -> noising core (the assigner pairs noise) ->
UNet2DModel -> MSE (float32) -> AdamW (+ warm-up, grad clip) -> EMA. Step-based: the data order of
epoch e is a function of (seed, e), the noise of step s of (seed, rank, s), and the global RNG (dropout)
is checkpointed, so ``resume=true`` continues exactly where an uninterrupted run would be (the shared
rules live in :mod:`immiscible_policy.training`). Every ``sample_every_steps`` the EMA model draws a
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

import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor
from tqdm.auto import tqdm

from immiscible_policy.ema import ema_module
from immiscible_policy.image.data import load_dataset, to_unit
from immiscible_policy.image.evaluate import cfd_eval, classifier_metric, fid_kid, final_step_key
from immiscible_policy.image.model import build_unet, count_params, predict
from immiscible_policy.image.sampling import generate, save_grid
from immiscible_policy.noising import build_core, resolve_sampler
from immiscible_policy.pair_ahead import PairAhead
from immiscible_policy.training import (
    RunEstimate,
    StepStats,
    TrainingRun,
    epoch_order,
    optimizer_step,
    preserve_rng,
    training_run,
)


def use_bf16(mode: str, device: torch.device) -> bool:
    """bf16 autocast on CUDA only: ``auto`` picks it there; asking for it on the CPU is an error."""
    if mode not in ("auto", "bf16", "no"):
        raise ValueError(f"trainer.mixed_precision={mode!r} is not supported; use auto, bf16 or no.")
    if mode == "bf16" and device.type != "cuda":
        raise ValueError("trainer.mixed_precision=bf16 needs CUDA; use auto or no on the CPU.")
    return mode != "no" and device.type == "cuda"


# (record key, printed name, format) of the scores an evaluation prints
SCORES = (("fid", "FID", ".2f"), ("kid", "KID", ".4f"), ("cfd", "CFD", ".3f"))


def every(step: int, n: Any) -> bool:
    return bool(n) and step % int(n) == 0


def train_image(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train (or resume) an image diffusion model into ``run_dir``; returns the last logged record.

    The config is checked before any data is loaded, ``resume`` against the run dir, which the run then
    holds locked (:func:`~immiscible_policy.training.training_run`).
    """
    with training_run(cfg, run_dir, "image") as run:
        return _train_image(cfg, run)


def _snapshots_due(tr: Any, start: int, stop: int, max_steps: int) -> tuple[int, int]:
    """(evaluations, grid-only snapshots) at steps start+1..stop, by the loop's own rules."""
    fid = bool(tr.fid.enabled) or cfd_enabled(tr)
    steps = {stop} if stop == max_steps else set()
    for n in (tr.eval_every_steps, tr.sample_every_steps):
        if n:
            steps.update(range((start // int(n) + 1) * int(n), stop + 1, int(n)))
    evals = grids = 0
    for s in steps:
        is_end = s == max_steps
        if fid and (every(s, tr.eval_every_steps) or (is_end and tr.eval_at_end)):
            evals += 1
        elif every(s, tr.sample_every_steps) or is_end:
            grids += 1
    return evals, grids


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

    # ---- model, noising core, optimiser, schedule, EMA, resume (the lr scheduler before any state)
    core = build_core(tr, cfg.assigner)
    sampler = resolve_sampler(core.objective, tr.get("sampler"))
    model = build_unet(cfg.model, image_size=ds.image_size, channels=ds.channels, num_classes=num_classes)
    max_steps = int(tr.max_steps)
    train_model, _, step = run.prepare(
        model,
        core.assigner,
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
    opt, logger, run_dir = run.opt, run.logger, run.run_dir
    stop = (
        max_steps if not tr.get("max_steps_this_run") else min(max_steps, step + int(tr.max_steps_this_run))
    )
    if main:
        print(
            f"[immiscible] task={task.name} ({ds.ref_key}, {n} images {ds.channels}x{ds.image_size}^2"
            f"{f', {num_classes} classes' if num_classes else ''}) assigner={core.assigner!r} "
            f"objective={core.objective} sampler={sampler} params={count_params(model) / 1e6:.2f}M "
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

    def snapshot(step: int, with_eval: bool) -> dict[str, Any]:
        """EMA model: FID/KID and/or CFD (+ grid of its first samples) or just a grid; global RNG untouched."""
        out: dict[str, Any] = {}
        samples = None
        steps = int(tr.num_inference_steps)
        with preserve_rng():
            ema_model = ema_module(opt.ema, model)
            kw = dict(
                sampler=sampler, num_classes=num_classes, bf16=bf16, batch_size=int(tr.sample_batch_size)
            )
            if with_eval and use_fid and (step == max_steps or not fid_at_end_only):
                out, samples = fid_kid(ema_model, core, ds, tr.fid, device=str(device), steps=steps, **kw)
            if with_eval and metric is not None:
                got, fake = cfd_eval(ema_model, core, ds, metric, tr.cfd, steps=steps, **kw)
                out.update(got)
                samples = fake if samples is None or len(samples) < len(fake) else samples
                for k in final_steps if step == max_steps else ():  # the same noise at k steps
                    same = k == steps
                    at_k = got if same else cfd_eval(ema_model, core, ds, metric, tr.cfd, steps=k, **kw)[0]
                    out[final_step_key(k)] = at_k["cfd"]
            if samples is None or len(samples) < int(tr.n_grid):  # the grid always shows n_grid images
                samples = generate(
                    ema_model,
                    core,
                    int(tr.n_grid),
                    channels=ds.channels,
                    image_size=ds.image_size,
                    seed=int(tr.fid.seed),
                    steps=steps,
                    **kw,
                )
        save_grid(samples[: int(tr.n_grid)], run_dir / "samples" / f"step_{step:08d}.png")
        return out

    pending = run.pending(step)  # the resumed checkpoint's record, when it never reached the log
    n_evals, n_grids = _snapshots_due(tr, step, stop, max_steps)
    if pending is not None:
        n_evals += bool(pending.get("evaluate"))
        n_grids += bool(pending.get("grid")) and not pending.get("evaluate")
    estimate = RunEstimate(
        steps=stop - step, device=device, evaluations={"evaluation": n_evals, "sample grid": n_grids}
    )
    start_time = time.time()

    def evaluate(record: dict[str, Any], with_fid: bool) -> None:
        """The snapshot of ``record['step']`` into ``record`` (training mode restored), timed."""
        tick = time.time()
        model.eval()
        record.update(snapshot(int(record["step"]), with_fid))
        model.train()
        run.note(estimate.evaluated("evaluation" if with_fid else "sample grid", time.time() - tick))

    def finish(record: dict[str, Any], with_fid: bool) -> dict[str, Any]:
        record["wall_min"] = (time.time() - start_time) / 60
        grid = run_dir / "samples" / f"step_{int(record['step']):08d}.png"  # when this step drew one
        logged = logger.log(record, media={"samples": grid} if grid.exists() else None)
        if with_fid:
            scores = [f"{name} {record[k]:{fmt}}" for k, name, fmt in SCORES if k in record]
            print(f"step {record['step']}: loss {record['train_loss']:.4f} {' '.join(scores)}", flush=True)
        return logged

    last: dict = {}
    if pending is not None:
        record = dict(pending["record"])
        with_fid = bool(pending.get("evaluate"))
        if with_fid or pending.get("grid"):
            print(f"[immiscible] snapshot of step {step} (its checkpoint was saved, its snapshot was not)")
            evaluate(record, with_fid)
        last = finish(record, with_fid)

    # ---- the loop
    stats = StepStats(int(tr.n_loss_buckets), device)
    train_min = run.train_minutes()
    order, order_epoch = None, -1
    show = bool(tr.progress) and main
    bar = tqdm(total=stop, initial=step, desc="steps", disable=not show, leave=False)
    model.train()
    estimate.skip()

    def prepare(order: Tensor, i: int, step: int) -> tuple[Tensor | None, Any]:
        """Batch i's labels (the condition, or None) and training pair, from step's noise streams."""
        idx = topo.rows(order, i)  # this process's slice of global batch i
        cond = None if labels is None else labels[idx]  # the class labels are the condition
        # one noise stream per rank: (seed, rank, step)
        return cond, core.sharded_training_pair(
            to_unit(images[idx]), topo.generators(int(tr.seed), step), cond=cond
        )

    ahead = PairAhead(bool(tr.get("pair_ahead", False)))
    while step < stop:
        tick = time.time()
        epoch, i = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order, order_epoch = epoch_order(n, int(tr.seed), epoch).to(device), epoch
            core.set_epoch(epoch)  # the pairing schedule's share for this epoch
        # trainer.pair_ahead: batch i + 1 of this epoch is paired on a thread while batch i trains
        more = i + 1 < steps_per_epoch and step + 1 < stop
        nxt = partial(prepare, order, i + 1, step + 1) if more else None
        cond, tp = ahead.get(step, partial(prepare, order, i, step), step + 1, nxt)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = predict(train_model, tp.x_t, tp.model_timesteps, cond)
        per_sample = F.mse_loss(pred.float(), tp.target, reduction="none").flatten(1).mean(1)
        loss = per_sample.mean()
        grad_norm = optimizer_step(model, opt, loss, tr.grad_clip)
        step += 1
        run.after_step(step, loss, grad_norm)  # a non-finite loss stops the run (finite.py)
        value = stats.add(loss, per_sample, tp, core)
        run.note(estimate.tick())
        bar.update(1)
        if show and step % 10 == 0:  # the only host sync of a step, and only with a progress bar
            eta = estimate.remaining()
            bar.set_postfix(loss=f"{value.item():.4f}", **({"eta": eta} if eta else {}), refresh=False)
        train_min += (time.time() - tick) / 60

        is_end = step == max_steps
        do_eval = (use_fid or cfd_enabled(tr)) and (
            every(step, tr.eval_every_steps) or (is_end and tr.eval_at_end)
        )
        do_grid = every(step, tr.sample_every_steps) or is_end
        do_ckpt = every(step, tr.checkpoint_every_steps) or step == stop
        if not (every(step, tr.log_every_steps) or do_eval or do_grid or do_ckpt):
            continue
        run.check_finite(model, step)  # before the record and the checkpoint: never log or save nan
        record: dict[str, Any] = {
            "step": step,
            "epoch": step / steps_per_epoch,
            "lr": opt.lr_scheduler.get_last_lr()[0],
        }
        record.update(run.summary(stats))
        record["train_min"] = train_min  # training time only (no sampling/FID), summed over resumes
        if do_ckpt:  # before the snapshot (a failing FID/grid loses no training); every process waits for it
            run.checkpoint(
                model,
                step,
                epoch=step // steps_per_epoch,
                pending={"record": record, "evaluate": do_eval, "grid": do_grid},
            )
        if not main:  # sampling, FID and logs are the main process's
            last = record
            continue
        if do_eval or do_grid:
            evaluate(record, do_eval)
        last = finish(record, do_eval)
        estimate.skip()
    bar.close()
    ahead.close()
    run.plot(
        x="step",
        panels=(("train_loss",), ("fid",), ("kid",)) + ((("cfd",),) if cfd_enabled(tr) else ()),
        title=f"{task.name} / {cfg.assigner.name}",
    )
    return last
