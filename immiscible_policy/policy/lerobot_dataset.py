"""LeRobotDataset low-dim training windows: the parquet reader feeding PushT's sequence sampler and normaliser.

Same code as PushT's and robomimic's windows (all subclass
:class:`~immiscible_policy.policy.dataset.LowdimWindowDataset`): ``horizon``-step windows padded by
``n_obs_steps - 1`` / ``n_action_steps - 1`` with edge repetition, a seeded ``val_ratio`` split by episode, a
min-max normaliser fitted on the train episodes. Observations are the concatenation of ``obs_keys`` in the
given order (``[observation.environment_state, observation.state]`` on PushT data written by
``immiscible-convert`` is the zarr task's 20-number ``keypoints`` observation, bit for bit); episodes are the
dataset's ``episode_index`` runs (:mod:`immiscible_policy.data.lerobot_dataset`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from immiscible_policy.data.lerobot_dataset import LeRobotDatasetError, read_lerobot
from immiscible_policy.policy.dataset import LowdimWindowDataset

__all__ = ["LeRobotLowdimDataset"]


class LeRobotLowdimDataset(LowdimWindowDataset):
    """``dataset[i]`` -> {"obs": (horizon, obs_dim), "action": (horizon, A)} float32, dataset units."""

    def __init__(
        self,
        root: str | os.PathLike,
        obs_keys: Sequence[str],
        action_key: str = "action",
        *,
        horizon: int = 16,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        val_ratio: float = 0.02,
        seed: int = 42,
        max_train_episodes: int | None = None,
    ):
        self.root, self.obs_keys, self.action_key = str(root), tuple(obs_keys), str(action_key)
        if not self.obs_keys:
            raise LeRobotDatasetError(
                "task.obs_keys is empty; list the observation features, e.g. [observation.state]"
            )
        if self.action_key in self.obs_keys:
            raise LeRobotDatasetError(f"task.action_key {self.action_key!r} is also in task.obs_keys")
        self.frames = read_lerobot(root, [*self.obs_keys, self.action_key])
        arrays = self.frames.arrays
        self._init_windows(
            np.concatenate([arrays[k] for k in self.obs_keys], axis=-1),
            arrays[self.action_key],
            self.frames.episode_ends,
            horizon=horizon,
            n_obs_steps=n_obs_steps,
            n_action_steps=n_action_steps,
            val_ratio=val_ratio,
            seed=seed,
            max_train_episodes=max_train_episodes,
        )

    def __repr__(self) -> str:
        return (
            f"LeRobotLowdimDataset({self.root!r}, {self.frames.version}, obs_keys={list(self.obs_keys)}, "
            f"action_key={self.action_key!r}, episodes={len(self.episodes)}, windows={len(self)}, "
            f"horizon={self.horizon})"
        )
