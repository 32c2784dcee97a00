"""Task families of the policy trainer: where the demos come from and how rollouts are scored.

Why a table instead of ``if task == ...`` in the loop: the trainer and ``immiscible-eval`` only need
two things from a task, a dataset of windows (``obs_dim``, ``action_dim``, ``all_windows()``,
``get_normalizer()``) and an ``evaluate(policy_fn) -> metrics`` with ``mean_score`` / ``success_rate``.
``task.env`` in the task config picks the family (``pusht`` when absent, so older PushT checkpoints
still load); adding a family is one class here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["TASK_ENVS", "PushTTask", "RobomimicTask", "task_env"]

PolicyFn = Callable[[np.ndarray], np.ndarray]


class PushTTask:
    """Diffusion Policy's PushT demos (zarr) and its 50-seed rollout protocol."""

    name = "pusht"

    def make_dataset(self, task: Any):
        from immiscible_policy.policy.dataset import PushTLowdimDataset

        return PushTLowdimDataset(
            task.dataset_path,
            obs_type=str(task.obs_type),
            horizon=int(task.horizon),
            n_obs_steps=int(task.n_obs_steps),
            n_action_steps=int(task.n_action_steps),
            val_ratio=float(task.val_ratio),
            seed=int(task.split_seed),
            max_train_episodes=task.max_train_episodes,
        )

    def evaluate(self, policy_fn: PolicyFn, task: Any, **kw: Any) -> dict:
        from immiscible_policy.policy.rollout import evaluate

        ev = task.eval
        return evaluate(
            policy_fn,
            obs_type=str(task.obs_type),
            n_episodes=int(kw.pop("n_episodes", ev.n_episodes)),
            start_seed=int(ev.start_seed),
            n_obs_steps=int(task.n_obs_steps),
            n_action_steps=int(task.n_action_steps),
            max_steps=int(ev.max_steps),
            n_envs=ev.n_envs,
            vector=str(ev.vector),
            **kw,
        )


class RobomimicTask:
    """robomimic hdf5 demos (real or from ``immiscible-collect``) and robosuite 1.5 rollouts.

    ``make_dataset`` records the dataset's ``env_args`` into ``task.env_args`` (JSON text) when the config
    leaves it null, so the run's config.json (and every checkpoint) can rebuild the env without the data.
    """

    name = "robomimic"

    def make_dataset(self, task: Any):
        from immiscible_policy.policy.robomimic_dataset import RobomimicLowdimDataset

        dataset = RobomimicLowdimDataset(
            task.dataset_path,
            list(task.obs_keys),
            horizon=int(task.horizon),
            n_obs_steps=int(task.n_obs_steps),
            n_action_steps=int(task.n_action_steps),
            val_ratio=float(task.val_ratio),
            seed=int(task.split_seed),
            max_train_episodes=task.max_train_episodes,
            filter_key=task.get("filter_key"),
        )
        env_name = dataset.env_args.get("env_name")
        if task.get("env_name") and env_name != task.env_name:
            raise ValueError(
                f"{task.dataset_path} was recorded in {env_name!r} but task.env_name={task.env_name!r}; "
                f"pick the matching task config or set task.env_name={env_name}"
            )
        if task.get("env_args") is None:
            task.env_args = json.dumps(dataset.env_args)
        return dataset

    def env_args(self, task: Any) -> str | dict:
        if task.get("env_args") is not None:
            return str(task.env_args)
        if task.get("env_name"):
            from immiscible_envs.robomimic import default_env_args

            return default_env_args(str(task.env_name))
        raise ValueError("task.env_args and task.env_name are both null; set task.env_name (e.g. Lift)")

    def evaluate(self, policy_fn: PolicyFn, task: Any, **kw: Any) -> dict:
        from immiscible_policy.policy.robomimic_rollout import evaluate_robomimic

        ev = task.eval
        kw.setdefault("render_size", int(ev.get("render_size", 256)))
        return evaluate_robomimic(
            policy_fn,
            env_args=self.env_args(task),
            obs_keys=list(task.obs_keys),
            n_episodes=int(kw.pop("n_episodes", ev.n_episodes)),
            start_seed=int(ev.start_seed),
            n_obs_steps=int(task.n_obs_steps),
            n_action_steps=int(task.n_action_steps),
            max_steps=int(ev.max_steps),
            n_envs=ev.n_envs,
            camera=str(ev.get("camera", "agentview")),
            **kw,
        )


TASK_ENVS = {"pusht": PushTTask(), "robomimic": RobomimicTask()}


def task_env(task: Any):
    """The family object for a task config (``task.env``; ``pusht`` when the key is absent)."""
    name = str(task.get("env", "pusht"))
    if name not in TASK_ENVS:
        raise ValueError(f"unknown task.env={name!r}; valid: {', '.join(sorted(TASK_ENVS))}")
    return TASK_ENVS[name]
