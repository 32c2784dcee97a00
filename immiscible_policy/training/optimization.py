"""The optimiser side of training: AdamW, its lr schedule, the EMA, and the order of one optimiser step.

Why its own module: both trainers build the same three objects from the same ``trainer`` keys and step
them in the same order; the checkpoint code (:mod:`.state`) saves and restores exactly these objects, and
nothing here knows about checkpoints, run dirs or processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.optimization import get_scheduler
from torch import Tensor, nn

from immiscible_policy.ema import EMAModel, make_ema


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
    None, for :meth:`~immiscible_policy.training.run.TrainingRun.after_step`'s finite check."""
    opt.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip)) if grad_clip else None
    opt.optimizer.step()
    opt.lr_scheduler.step()
    opt.ema.step(model.parameters())
    return norm
