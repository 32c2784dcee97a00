"""Evaluating a diffusion policy: closed-loop rollouts on the task's test seeds, or its validation loss.

The task family (``task.env``: PushT, robomimic) owns the env and the scoring
(:mod:`immiscible_policy.policy.tasks`); this module only turns a policy into a seeded ``policy_fn``.
"""

from __future__ import annotations

from typing import Any

import torch

from immiscible_policy.policy.model import DiffusionPolicy
from immiscible_policy.policy.tasks import task_env

__all__ = ["rollout", "validation_loss"]


def rollout(policy: DiffusionPolicy, task: Any, *, seed: int, **kw: Any) -> dict:
    """Roll the (EMA) policy out on the task's fixed test seeds; its sampling noise comes from a generator
    seeded by ``seed`` (not the policy's own, so every evaluation of a run draws the same noise).

    ``kw`` goes to the family's ``evaluate`` (``n_episodes``, ``video_path``, ``progress``, ...)."""
    gen = torch.Generator(device=policy.device).manual_seed(int(seed))
    return task_env(task).evaluate(lambda obs: policy.predict_action(obs, generator=gen), task, **kw)


@torch.no_grad()
def validation_loss(policy: DiffusionPolicy, dataset: Any, *, seed: int, batch_size: int = 256) -> dict:
    """{"val_loss", "val_windows"}: the training loss of the (EMA) policy on the validation episodes' windows.

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
    device = policy.device
    obs = policy.normalizer.normalize("obs", windows["obs"]).to(device)
    act = policy.normalizer.normalize("action", windows["action"]).to(device)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    was_training = policy.net.training
    policy.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    for lo in range(0, n, batch_size):
        batch = {"obs": obs[lo : lo + batch_size], "action": act[lo : lo + batch_size]}
        _, per_sample, _ = policy.loss(batch, gen)
        total += per_sample.double().sum()
    policy.train(was_training)
    return {"val_loss": float(total / n), "val_windows": n}
