"""What both trainers (policy and image) share: device, optimiser/schedule/EMA, resume, checkpoints, stats.

Why one module: exact resume depends on a handful of conventions that must not drift between trainers:

* the lr scheduler is built *before* the optimiser state is loaded (``get_scheduler`` writes the initial
  lr into the optimiser's param groups; loading afterwards restores the saved lr);
* noise for step ``s`` comes from ``noise_generator(seed, rank, s)`` (in :mod:`immiscible_policy.noising`);
* the data order of epoch ``e`` comes from :func:`epoch_order` ``(seed, e)``;
* the global RNG (dropout) is saved in the checkpoint, and evaluation runs inside :func:`preserve_rng` so
  that evaluating (e.g. KID subset draws) never changes what training draws next.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
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
from immiscible_policy.ema import EMAModel, ema_resume_state, ema_state_dict_for_model, make_ema, restore_ema
from immiscible_policy.noising import NoisingCore, TrainingPair, noise_stats
from immiscible_policy.run_log import RunLogger


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available else cpu; a one-line error for cuda on a machine without it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.device={name!r} but CUDA is not available here; use trainer.device=cpu.")
    return torch.device(name)


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


def optimizer_step(model: nn.Module, opt: Optimization, loss: Tensor, grad_clip: float | None) -> None:
    """backward, optional grad-norm clip, AdamW step, lr schedule step, EMA update (in that order)."""
    opt.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
    opt.optimizer.step()
    opt.lr_scheduler.step()
    opt.ema.step(model.parameters())


def restore_training(run_dir: Path, model: nn.Module, opt: Optimization, *, batch: int) -> tuple[int, int]:
    """Load the newest checkpoint of ``run_dir`` into model/optimiser/schedule/EMA/global RNG.

    Returns ``(epoch, step)`` it was saved at, or ``(0, 0)`` when the run has no checkpoint yet (so
    ``resume=true`` on a fresh run dir simply starts). Warns when the topology differs.
    """
    if find_latest(run_dir) is None:
        return 0, 0
    ck = load_checkpoint(run_dir)
    model.load_state_dict(ck.model_state)
    opt.optimizer.load_state_dict(ck.training_state["optimizer"])
    opt.lr_scheduler.load_state_dict(ck.training_state["lr_scheduler"])
    restore_ema(opt.ema, model, resume_state=ck.training_state["ema"], ema_model_state=ck.ema_state)
    set_rng_state(ck.training_state["rng"])
    if ck.config.get("world_size", 1) != 1 or ck.config.get("per_rank_batch") != batch:
        print(f"warning: resuming with world size 1 and batch {batch}, checkpoint had {ck.config}")
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


def run_record(cfg: Any, assigner: Any, *, batch: int, steps_per_epoch: int, **meta: Any) -> dict[str, Any]:
    """What ``config.json`` records for a run: resolved config, assigner config and scope, topology.

    ``meta`` holds the trainer's own shape facts (e.g. ``policy={"obs_dim": ...}``) that a checkpoint
    needs to rebuild the model.
    """
    from omegaconf import OmegaConf

    return {
        "cfg": OmegaConf.to_container(cfg, resolve=True),
        **meta,
        "assigner": assigner.config,
        "assigner_scope": assigner.scope,
        "world_size": 1,
        "per_rank_batch": int(batch),
        "steps_per_epoch": int(steps_per_epoch),
    }


def open_run_log(run_dir: Path, *, resume: bool, step: int, config_record: Mapping[str, Any]) -> RunLogger:
    """The run's JSONL/CSV logger (records after ``step`` dropped on resume) and ``run_dir/config.json``."""
    logger = RunLogger(run_dir, resume=resume)
    if resume:
        logger.truncate_after(step)
    (Path(run_dir) / "config.json").write_text(json.dumps(dict(config_record), indent=2))
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

    ``add`` costs one host sync per step (the loss) like the trainers always did; bucket sums stay on the
    device. ``summary()`` returns ``train_loss``, ``noise_norm_ratio``, ``noise_proj_x0``, ``pair_l2``,
    ``assign_ms`` and ``loss_t0..loss_t{n-1}`` and resets.
    """

    KEYS = ("loss", "noise_norm_ratio", "noise_proj_x0", "pair_l2", "assign_ms")

    def __init__(self, n_buckets: int, device: torch.device) -> None:
        self.n_buckets, self.device = int(n_buckets), device
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.sums = dict.fromkeys(self.KEYS, 0.0)
        self.buckets = torch.zeros(self.n_buckets, device=self.device)
        self.bucket_n = torch.zeros_like(self.buckets)

    def add(self, loss: Tensor, per_sample: Tensor, tp: TrainingPair, core: NoisingCore) -> float:
        """Accumulate one step; returns the step's loss as a float."""
        b = core.bucket_losses(per_sample, tp.timesteps, self.n_buckets)
        seen = ~torch.isnan(b)
        self.buckets += torch.where(seen, b, 0.0)
        self.bucket_n += seen.float()
        value = loss.item()
        self.sums["loss"] += value
        for k, v in noise_stats(tp.x0, tp.noise).items():
            self.sums[k] += float(v)
        self.sums["assign_ms"] += tp.info["assign_ms"]
        self.n += 1
        return value

    def summary(self) -> dict[str, float]:
        n = max(self.n, 1)
        out = {"train_loss": self.sums["loss"] / n}
        out.update({k: self.sums[k] / n for k in self.KEYS if k != "loss"})
        means = (self.buckets / self.bucket_n.clamp_min(1)).tolist()
        out.update({f"loss_t{j}": float(v) for j, v in enumerate(means)})
        self.reset()
        return out
