"""Evaluating a diffusion policy: closed-loop rollouts of its (EMA) network on the task's test seeds.

The task family (``task.env``: PushT, robomimic) owns the env and the scoring
(:mod:`immiscible_policy.policy.tasks`); this module only turns a network into a seeded ``policy_fn``.
"""

from __future__ import annotations

from typing import Any

import torch

from immiscible_policy.policy.model import DiffusionPolicy
from immiscible_policy.policy.tasks import task_env

__all__ = ["rollout"]


def rollout(policy: DiffusionPolicy, model: torch.nn.Module, task: Any, seed: int, **kw: Any) -> dict:
    """Roll the (EMA) model out on the task's fixed test seeds; sampling noise seeded for repeatability.

    ``kw`` goes to the family's ``evaluate`` (``n_episodes``, ``video_path``, ``progress``, ...)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    return task_env(task).evaluate(lambda obs: policy.predict_action(model, obs, generator=gen), task, **kw)
