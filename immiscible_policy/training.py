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
from collections.abc import Callable, Iterator, Mapping
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
from immiscible_policy.noising import NoisingCore, TrainingPair, condition_leak, noise_stats
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


def restore_training(
    run_dir: Path,
    model: nn.Module,
    opt: Optimization,
    *,
    batch: int,
    topology: Mapping[str, int] | None = None,
) -> tuple[int, int]:
    """Load the newest checkpoint of ``run_dir`` into model/optimiser/schedule/EMA/global RNG.

    Returns ``(epoch, step)`` it was saved at, or ``(0, 0)`` when the run has no checkpoint yet (so
    ``resume=true`` on a fresh run dir simply starts). Warns when the topology (world size, emulated
    ranks, per-rank batch; see :meth:`immiscible_policy.parallel.Topology.record`) differs: the run then
    continues with other global batches than an uninterrupted run would have used.
    """
    if find_latest(run_dir) is None:
        return 0, 0
    ck = load_checkpoint(run_dir)
    model.load_state_dict(ck.model_state)
    opt.optimizer.load_state_dict(ck.training_state["optimizer"])
    opt.lr_scheduler.load_state_dict(ck.training_state["lr_scheduler"])
    restore_ema(opt.ema, model, resume_state=ck.training_state["ema"], ema_model_state=ck.ema_state)
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
    **meta: Any,
) -> dict[str, Any]:
    """What ``config.json`` records for a run: resolved config, assigner config, scope and its
    ``distributed`` mode (None for sample scope), topology (world size, emulated ranks, per-rank and
    global batch; one process with ``batch`` when ``topology`` is None).

    ``meta`` holds the trainer's own shape facts (e.g. ``policy={"obs_dim": ...}``) that a checkpoint
    needs to rebuild the model.
    """
    from omegaconf import OmegaConf

    from immiscible_policy.parallel import assigner_distributed
    from immiscible_policy.registry import origin_of

    topo = dict(topology or {"world_size": 1, "per_rank_batch": int(batch), "global_batch": int(batch)})
    return {
        "cfg": OmegaConf.to_container(cfg, resolve=True),
        **meta,
        "assigner": assigner.config,
        "assigner_origin": origin_of(assigner),
        "assigner_scope": assigner.scope,
        "assigner_distributed": assigner_distributed(assigner),
        **topo,
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

    ``add`` keeps everything on the device (no host sync per step: the GPU never waits for Python);
    ``summary()`` moves the sums to the host once per logged record, summed over processes first when
    given ``reduce`` (:meth:`immiscible_policy.parallel.Topology.sum`), and returns ``train_loss``,
    ``noise_norm_ratio``, ``noise_proj_x0``, ``pair_l2``, ``assign_ms`` and ``loss_t0..loss_t{n-1}`` and
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
        self.n += 1
        return value

    def summary(self, reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """Means since the last summary (over processes too when ``reduce`` sums across them)."""
        extra = torch.tensor([self.assign_ms, self.n], dtype=self.dtype, device=self.device)
        packed = torch.cat([self.sums, extra, self.buckets.to(self.dtype), self.bucket_n.to(self.dtype)])
        if reduce is not None:
            packed = reduce(packed)
        k = len(self.KEYS)
        sums, (assign_ms, n) = packed[:k].tolist(), packed[k : k + 2].tolist()
        buckets = packed[k + 2 : k + 2 + self.n_buckets].float()
        bucket_n = packed[k + 2 + self.n_buckets :].float()
        n = max(n, 1)
        out = {"train_loss": sums[0] / n}
        out.update({key: sums[j] / n for j, key in enumerate(self.KEYS) if key != "loss"})
        out["assign_ms"] = assign_ms / n
        means = (buckets / bucket_n.clamp_min(1)).tolist()
        out.update({f"loss_t{j}": float(v) for j, v in enumerate(means)})
        if self.leak_cond and sum(c.shape[0] for c in self.leak_cond) >= 64:
            out["condition_leak"] = condition_leak(
                torch.cat(self.leak_cond)[-self.leak_rows :], torch.cat(self.leak_noise)[-self.leak_rows :]
            )
        self.reset()
        return out
