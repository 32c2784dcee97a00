"""robomimic low-dim training windows: the hdf5 reader feeding PushT's sequence sampler and normaliser.

Same code as PushT's windows (both subclass :class:`~immiscible_policy.policy.dataset.LowdimWindowDataset`)
and diffusion_policy's ``RobomimicReplayLowdimDataset`` conventions: windows of ``horizon`` steps padded by ``n_obs_steps - 1`` before and
``n_action_steps - 1`` after each demo with edge repetition, a seeded ``val_ratio`` split by episode, a
min-max normaliser fitted on the train episodes. Observations are the concatenation of ``obs_keys``
(diffusion_policy's Lift set gives 10 + 3 + 4 + 2 = 19 numbers); actions are the 7 OSC_POSE deltas.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from immiscible_policy.data.robomimic_hdf5 import load_robomimic
from immiscible_policy.policy.dataset import LowdimWindowDataset

__all__ = ["RobomimicLowdimDataset"]


class RobomimicLowdimDataset(LowdimWindowDataset):
    """``dataset[i]`` -> {"obs": (horizon, obs_dim), "action": (horizon, A)} float32, env units."""

    def __init__(
        self,
        hdf5_path: str | os.PathLike,
        obs_keys: Sequence[str],
        *,
        horizon: int = 16,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        val_ratio: float = 0.02,
        seed: int = 42,
        max_train_episodes: int | None = None,
        filter_key: str | None = None,
    ):
        self.path, self.obs_keys, self.filter_key = str(hdf5_path), tuple(obs_keys), filter_key
        self.data = load_robomimic(hdf5_path, self.obs_keys, filter_key=filter_key)
        buf = self.data.buffer
        self._init_windows(
            buf["obs"],
            buf["action"],
            buf.episode_ends,
            horizon=horizon,
            n_obs_steps=n_obs_steps,
            n_action_steps=n_action_steps,
            val_ratio=val_ratio,
            seed=seed,
            max_train_episodes=max_train_episodes,
        )

    @property
    def env_args(self) -> dict:
        return self.data.env_args

    def __repr__(self) -> str:
        return (
            f"RobomimicLowdimDataset({self.path!r}, obs_keys={list(self.obs_keys)}, "
            f"episodes={len(self.episodes)}, windows={len(self)}, horizon={self.horizon})"
        )
