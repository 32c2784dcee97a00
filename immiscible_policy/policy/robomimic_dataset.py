"""robomimic low-dim training windows: the hdf5 reader feeding PushT's sequence sampler and normaliser.

Same conventions as :class:`~immiscible_policy.policy.dataset.PushTLowdimDataset` (diffusion_policy's
``RobomimicReplayLowdimDataset``): windows of ``horizon`` steps padded by ``n_obs_steps - 1`` before and
``n_action_steps - 1`` after each demo with edge repetition, a seeded ``val_ratio`` split by episode, a
min-max normaliser fitted on the train episodes. Observations are the concatenation of ``obs_keys``
(diffusion_policy's Lift set gives 10 + 3 + 4 + 2 = 19 numbers); actions are the 7 OSC_POSE deltas.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from immiscible_policy.data.robomimic_hdf5 import RobomimicData, load_robomimic
from immiscible_policy.policy.dataset import SequenceSampler, downsample_mask, get_val_mask
from immiscible_policy.policy.normalizer import MinMaxNormalizer

__all__ = ["RobomimicLowdimDataset"]


class RobomimicLowdimDataset(torch.utils.data.Dataset):
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
        _data: RobomimicData | None = None,
        _episode_mask: np.ndarray | None = None,
    ):
        self.path, self.obs_keys, self.filter_key = str(hdf5_path), tuple(obs_keys), filter_key
        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        self.val_ratio, self.seed, self.max_train_episodes = val_ratio, seed, max_train_episodes
        self.data = _data or load_robomimic(hdf5_path, self.obs_keys, filter_key=filter_key)
        buf = self.data.buffer
        self.obs, self.action = buf["obs"], buf["action"]
        self.val_mask = get_val_mask(buf.n_episodes, val_ratio, seed)
        self.train_mask = downsample_mask(~self.val_mask, max_train_episodes, seed)
        self.episode_mask = self.train_mask if _episode_mask is None else _episode_mask
        self.sampler = SequenceSampler(
            buf.episode_ends,
            horizon=horizon,
            pad_before=n_obs_steps - 1,
            pad_after=n_action_steps - 1,
            episode_mask=self.episode_mask,
        )

    @property
    def env_args(self) -> dict:
        return self.data.env_args

    @property
    def obs_dim(self) -> int:
        return int(self.obs.shape[-1])

    @property
    def action_dim(self) -> int:
        return int(self.action.shape[-1])

    @property
    def episodes(self) -> np.ndarray:
        return np.nonzero(self.episode_mask)[0]

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        rows = self.sampler.indices[idx]
        return {"obs": torch.from_numpy(self.obs[rows]), "action": torch.from_numpy(self.action[rows])}

    def all_windows(self) -> dict[str, torch.Tensor]:
        """Every window at once (low-dim robomimic sets are small: ~10k windows for 200 Lift demos)."""
        rows = self.sampler.indices
        return {"obs": torch.from_numpy(self.obs[rows]), "action": torch.from_numpy(self.action[rows])}

    def get_validation_dataset(self) -> RobomimicLowdimDataset:
        return RobomimicLowdimDataset(
            self.path,
            self.obs_keys,
            horizon=self.horizon,
            n_obs_steps=self.n_obs_steps,
            n_action_steps=self.n_action_steps,
            val_ratio=self.val_ratio,
            seed=self.seed,
            max_train_episodes=self.max_train_episodes,
            filter_key=self.filter_key,
            _data=self.data,
            _episode_mask=self.val_mask,
        )

    def get_normalizer(self) -> MinMaxNormalizer:
        """Min-max normaliser for "obs" and "action", fitted on the train episodes' steps only."""
        ends = self.data.buffer.episode_ends
        starts = np.concatenate([[0], ends[:-1]])
        rows = np.concatenate([np.arange(starts[e], ends[e]) for e in np.nonzero(self.train_mask)[0]])
        return MinMaxNormalizer().fit({"obs": self.obs[rows], "action": self.action[rows]})

    def __repr__(self) -> str:
        return (
            f"RobomimicLowdimDataset({self.path!r}, obs_keys={list(self.obs_keys)}, "
            f"episodes={len(self.episodes)}, windows={len(self)}, horizon={self.horizon})"
        )
