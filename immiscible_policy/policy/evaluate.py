"""Evaluating a diffusion policy: closed-loop rollouts of its (EMA) network on the task's test seeds.

The task family (``task.env``: PushT, robomimic) owns the env and the scoring
(:mod:`immiscible_policy.policy.tasks`); this module only turns a network into a seeded ``policy_fn``.
"""

from __future__ import annotations

from typing import Any

import torch

from immiscible_policy.policy.model import DiffusionPolicy
from immiscible_policy.policy.tasks import task_env

__all__ = ["rollout", "validation_loss"]


def rollout(policy: DiffusionPolicy, model: torch.nn.Module, task: Any, seed: int, **kw: Any) -> dict:
    """Roll the (EMA) model out on the task's fixed test seeds; sampling noise seeded for repeatability.

    ``kw`` goes to the family's ``evaluate`` (``n_episodes``, ``video_path``, ``progress``, ...)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    return task_env(task).evaluate(lambda obs: policy.predict_action(model, obs, generator=gen), task, **kw)


@torch.no_grad()
def validation_loss(
    policy: DiffusionPolicy, model: torch.nn.Module, dataset: Any, seed: int, batch_size: int = 256
) -> dict:
    """{"val_loss", "val_windows"}: the training loss of the (EMA) model on the validation episodes' windows.

    What a task without a rollout env (``task=lerobot task.eval_env=none``) reports instead of a score. The
    noise, timesteps and pairing come from one generator seeded by ``seed``, so every evaluation of a run
    scores the same noisy batches and the numbers compare across epochs.
    """
    windows = dataset.get_validation_dataset().all_windows()
    n = len(windows["action"])
    if n == 0:
        raise ValueError(
            "no validation windows: set task.val_ratio > 0 (episodes too short for the horizon?)"
        )
    device = next(model.parameters()).device
    obs = policy.normalizer.normalize("obs", windows["obs"]).to(device)
    act = policy.normalizer.normalize("action", windows["action"]).to(device)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    for lo in range(0, n, batch_size):
        _, per_sample, _ = policy.loss(model, obs[lo : lo + batch_size], act[lo : lo + batch_size], gen)
        total += per_sample.double().sum()
    model.train(was_training)
    return {"val_loss": float(total / n), "val_windows": n}
