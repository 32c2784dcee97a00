"""Task families of the policy trainer: where the demos come from and how rollouts are scored.

Why a table instead of ``if task == ...`` in the loop: the trainer and ``immiscible-eval`` only need
two things from a task, a dataset of windows (``obs_dim``, ``action_dim``, ``all_windows()``,
``get_normalizer()``) and an ``evaluate(policy_fn) -> metrics`` with ``mean_score`` / ``success_rate``.
``task.env`` in the task config picks the family (``pusht`` when absent, so older PushT checkpoints
still load); adding a family is one class here.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "TASK_ENVS",
    "LeRobotTask",
    "PushTTask",
    "RobomimicTask",
    "is_pusht_task",
    "rolls_out",
    "task_env",
    "task_mirror",
]

PolicyFn = Callable[[np.ndarray], np.ndarray]


class PushTTask:
    """Diffusion Policy's PushT demos (zarr) and its 50-seed rollout protocol."""

    name = "pusht"

    def make_dataset(self, task: Any):
        from immiscible_policy.policy.dataset import PushTImageDataset, PushTLowdimDataset

        image = str(task.obs_type) == "image"  # frames + agent xy (configs/task/pusht_image.yaml)
        extra = {"image_size": int(task.get("image_size", 96))} if image else {}
        return (PushTImageDataset if image else PushTLowdimDataset)(
            task.dataset_path,
            **extra,
            obs_type=str(task.obs_type),
            horizon=int(task.horizon),
            n_obs_steps=int(task.n_obs_steps),
            n_action_steps=int(task.n_action_steps),
            val_ratio=float(task.val_ratio),
            seed=int(task.split_seed),
            max_train_episodes=task.max_train_episodes,
            mirror=task_mirror(task),  # each demo's reflection too (data/pusht_mirror.py)
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

        task_mirror(task)  # refuses task.mirror=true: no mirror is defined for robomimic demos
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
        self.record_env_args(task, dataset.env_args, task.dataset_path)
        return dataset

    @staticmethod
    def record_env_args(task: Any, env_args: dict, source: Any) -> None:
        """Check the recorded env against ``task.env_name``; fill a null ``task.env_args`` from it."""
        env_name = env_args.get("env_name")
        if task.get("env_name") and env_name != task.env_name:
            raise ValueError(
                f"{source} was recorded in {env_name!r} but task.env_name={task.env_name!r}; "
                f"pick the matching task config or set task.env_name={env_name}"
            )
        if task.get("env_args") is None:
            task.env_args = json.dumps(env_args)

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


class LeRobotTask:
    """A local LeRobotDataset folder (``task.root``; low-dim features ``task.obs_keys`` + ``task.action_key``).

    Rollouts come from ``task.eval_env``: ``pusht`` (the PushT env, observation ``task.obs_type``, whose size
    the concatenated ``obs_keys`` must match), ``robomimic`` (robosuite; env obs keys are ``obs_keys`` without
    their ``observation.`` prefix, env from ``task.env_args`` / ``task.env_name`` or the
    ``meta/immiscible.json`` ``immiscible-convert`` writes), or ``none``: no env, and the trainer logs the
    validation loss instead (:func:`~immiscible_policy.policy.evaluate.validation_loss`).
    """

    name = "lerobot"
    EVAL_ENVS = ("pusht", "robomimic", "none")

    def eval_env(self, task: Any) -> str:
        name = str(task.get("eval_env", "none"))
        if name not in self.EVAL_ENVS:
            raise ValueError(
                f"task.eval_env={name!r} is not supported; use one of {' | '.join(self.EVAL_ENVS)}"
            )
        return name

    def rolls_out(self, task: Any) -> bool:
        return self.eval_env(task) != "none"

    def make_dataset(self, task: Any):
        from immiscible_policy.data.lerobot_dataset import read_meta_extra
        from immiscible_policy.policy.dataset import OBS_TYPES
        from immiscible_policy.policy.lerobot_dataset import LeRobotLowdimDataset

        env = self.eval_env(task)
        task_mirror(task)  # refuses task.mirror=true: no mirror is defined for LeRobot folders
        if not task.get("root"):
            raise ValueError("task.root is not set: pass task.root=PATH of a LeRobotDataset folder")
        if env == "none" and float(task.val_ratio) <= 0:
            raise ValueError(
                "task.eval_env=none reports the validation loss, which needs validation episodes: "
                "set task.val_ratio > 0 (e.g. 0.1) or pick task.eval_env=pusht|robomimic"
            )
        dataset = LeRobotLowdimDataset(
            task.root,
            list(task.obs_keys),
            str(task.get("action_key", "action")),
            horizon=int(task.horizon),
            n_obs_steps=int(task.n_obs_steps),
            n_action_steps=int(task.n_action_steps),
            val_ratio=float(task.val_ratio),
            seed=int(task.split_seed),
            max_train_episodes=task.max_train_episodes,
        )
        if env == "pusht":
            want = OBS_TYPES.get(str(task.get("obs_type")))
            if want is None:
                raise ValueError(f"task.obs_type={task.get('obs_type')!r}; use one of {sorted(OBS_TYPES)}")
            if (dataset.obs_dim, dataset.action_dim) != (want, 2):
                raise ValueError(
                    f"task.eval_env=pusht with task.obs_type={task.obs_type} needs {want} observation and 2 "
                    f"action numbers per frame, but task.obs_keys={list(task.obs_keys)} give "
                    f"{dataset.obs_dim} and task.action_key={dataset.action_key!r} gives {dataset.action_dim}"
                )
        if env == "robomimic":
            env_args = read_meta_extra(task.root).get("env_args")
            if env_args:
                RobomimicTask.record_env_args(task, env_args, task.root)
        return dataset

    def _env_task(self, task: Any) -> Any:
        """The task config as the rollout family reads it (robomimic: env obs keys without the prefix)."""
        if self.eval_env(task) != "robomimic":
            return task
        env_task = copy.deepcopy(task)
        env_task.obs_keys = [str(k).removeprefix("observation.") for k in task.obs_keys]
        return env_task

    def evaluate(self, policy_fn: PolicyFn, task: Any, **kw: Any) -> dict:
        env = self.eval_env(task)
        if env == "none":
            raise ValueError(
                "task.eval_env=none: this LeRobot task has no rollout environment; set task.eval_env=pusht or "
                "robomimic to roll out (training with none logs the validation loss instead)"
            )
        return TASK_ENVS[env].evaluate(policy_fn, self._env_task(task), **kw)


TASK_ENVS = {"pusht": PushTTask(), "robomimic": RobomimicTask(), "lerobot": LeRobotTask()}


def rolls_out(task: Any) -> bool:
    """Whether the task's evaluation is a rollout in an env (every family but ``lerobot`` with ``eval_env: none``)."""
    family = task_env(task)
    return bool(getattr(family, "rolls_out", lambda _task: True)(task))


def is_pusht_task(task: Any) -> bool:
    """Whether a task config's evaluation rolls out in the PushT env (``task.env: pusht``, or a LeRobot task
    with ``eval_env: pusht``): where the mode metrics and the symmetric starts exist.

    Why here and not beside the PushT rollout: which env a task rolls out in is its family's answer, and
    this table is above the rollouts (it calls them), so a rollout asking the table would be a cycle."""
    family = task_env(task)
    return family.name == "pusht" or (family.name == "lerobot" and family.eval_env(task) == "pusht")


#: the PushT observation types whose demos can be mirrored (data/pusht_mirror.py recomputes them)
MIRROR_OBS_TYPES = ("keypoints", "state")


def task_mirror(task: Any) -> bool:
    """``task.mirror`` (absent = false): true only for PushT keypoints/state demos; a one-line error elsewhere.

    Why refuse rather than ignore: a mirror that is silently not applied would make a run look augmented
    when it is not. Image observations would need the frames reflected too; robomimic and LeRobot demos
    have no symmetry defined here.
    """
    value = task.get("mirror", False)
    if value is False:
        return False
    if value is not True:
        raise ValueError(f"task.mirror={value} is not true/false; use task.mirror=true or task.mirror=false.")
    family, obs_type = task_env(task).name, task.get("obs_type")
    if family != "pusht" or obs_type not in MIRROR_OBS_TYPES:
        what = f"task.obs_type={obs_type}" if family == "pusht" else f"{family} demos"
        raise ValueError(
            f"task.mirror=true: task {task.get('name')} ({what}) has no mirror; mirroring is defined for "
            "PushT keypoints/state demos: use task=pusht (task.obs_type=keypoints or state) or task.mirror=false."
        )
    return True


def task_env(task: Any):
    """The family object for a task config (``task.env``; ``pusht`` when the key is absent)."""
    name = str(task.get("env", "pusht"))
    if name not in TASK_ENVS:
        raise ValueError(f"unknown task.env={name!r}; valid: {', '.join(sorted(TASK_ENVS))}")
    return TASK_ENVS[name]
