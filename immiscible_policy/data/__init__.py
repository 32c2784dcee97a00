"""Episode storage: a zarr replay buffer in diffusion_policy's v2 layout, read and written with zarr 3."""

from immiscible_policy.data.replay_buffer import ReplayBuffer, ReplayBufferError

__all__ = ["ReplayBuffer", "ReplayBufferError"]
