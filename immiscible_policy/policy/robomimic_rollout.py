"""Closed-loop robomimic evaluation: receding-horizon rollouts on fixed seeds, episodes in lockstep.

Why not gymnasium's vector envs (as PushT uses): robosuite steps are expensive (~100/s on a shared core)
and a vector env keeps stepping (and auto-resetting) episodes that already finished, so a wave would
cost its slowest episode times the number of envs. Here the envs of a wave are stepped only while their
episode runs, and the policy is queried once per chunk for all running episodes together (one batched
forward pass, which is where a CPU spends its time). Protocol as diffusion_policy's robomimic runner:
test starts from seeds ``start_seed ..``, at most ``max_steps`` steps (400 for ph data), the policy sees
the last ``n_obs_steps`` observations and executes ``n_action_steps`` actions per query; an episode
succeeds when the task's own check passes at some step (it then ends). ``mean_score`` is the success
rate (robomimic's reward is sparse), so the metrics JSON has PushT's keys.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from immiscible_policy.policy.rollout import ActionChunkWrapper, _write_video

__all__ = ["evaluate_robomimic", "make_robomimic_env"]


def make_robomimic_env(
    env_args: str | Mapping[str, Any],
    obs_keys: Sequence[str],
    *,
    n_obs_steps: int = 2,
    n_action_steps: int = 8,
    max_steps: int = 400,
    render: bool = False,
    render_size: int = 256,
    camera: str = "agentview",
) -> ActionChunkWrapper:
    """One evaluation env: ``immiscible/Robomimic-v0`` with a ``max_steps`` time limit, chunked actions."""
    import immiscible_envs  # noqa: F401  (registers the env id)
    from immiscible_envs import ROBOMIMIC_ENV_ID

    env = gym.make(
        ROBOMIMIC_ENV_ID,
        env_args=json.loads(env_args) if isinstance(env_args, str) else dict(env_args),
        obs_keys=list(obs_keys),
        render_mode="rgb_array" if render else None,
        render_size=render_size,
        camera=camera,
        max_episode_steps=max_steps,
        disable_env_checker=True,
    )
    return ActionChunkWrapper(env, n_obs_steps=n_obs_steps, n_action_steps=n_action_steps)


def evaluate_robomimic(
    policy_fn: Callable[[np.ndarray], np.ndarray],
    *,
    env_args: str | Mapping[str, Any],
    obs_keys: Sequence[str],
    n_episodes: int = 50,
    start_seed: int = 100000,
    n_obs_steps: int = 2,
    n_action_steps: int = 8,
    max_steps: int = 400,
    n_envs: int | None = None,
    video_path: str | Path | None = None,
    n_video_episodes: int = 2,
    render_size: int = 256,
    camera: str = "agentview",
    progress: bool = True,
) -> dict[str, Any]:
    """Roll ``policy_fn`` ((n, n_obs_steps, obs_dim) -> (n, n_action_steps, A)) out on seeds
    ``start_seed .. start_seed + n_episodes - 1``, ``n_envs`` episodes at a time (default: all).

    Returns {"mean_score", "success_rate", "scores", "seeds", "success", "n_steps", "n_episodes",
    "seconds", "video_path"}.
    """
    from tqdm.auto import tqdm

    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    n_envs = n_episodes if n_envs is None else max(1, min(int(n_envs), n_episodes))
    n_video = min(n_video_episodes, n_envs) if video_path is not None else 0
    seeds = [start_seed + i for i in range(n_episodes)]
    common = dict(
        n_obs_steps=n_obs_steps,
        n_action_steps=n_action_steps,
        max_steps=max_steps,
        render_size=render_size,
        camera=camera,
    )
    envs = [make_robomimic_env(env_args, obs_keys, render=j < n_video, **common) for j in range(n_envs)]
    act_shape = envs[0].action_space.shape  # (n_action_steps, A)

    success = np.zeros(n_episodes, dtype=bool)
    n_steps = np.zeros(n_episodes, dtype=np.int64)
    video: list[np.ndarray] = []
    bar = tqdm(total=n_episodes, desc="eval robomimic", disable=not progress, leave=False)
    t0 = time.perf_counter()
    try:
        for wave_start in range(0, n_episodes, n_envs):
            wave = seeds[wave_start : wave_start + n_envs]
            obs = np.zeros((len(wave), *envs[0].observation_space.shape), dtype=np.float32)
            for j, seed in enumerate(wave):
                envs[j].record_video = wave_start == 0 and j < n_video
                obs[j], _ = envs[j].reset(seed=seed)
            frames: list[list[np.ndarray]] = [[] for _ in wave]
            active = np.ones(len(wave), dtype=bool)
            while active.any():
                idx = np.nonzero(active)[0]
                out = policy_fn(obs[idx])
                if hasattr(out, "detach"):
                    out = out.detach().cpu().numpy()
                out = np.asarray(out)
                if out.shape != (len(idx), *act_shape):
                    raise ValueError(
                        f"policy_fn returned shape {out.shape}; expected ({len(idx)}, {act_shape[0]}, "
                        f"{act_shape[1]}) (n running episodes, n_action_steps, action_dim)"
                    )
                for row, j in enumerate(idx):
                    obs[j], _, terminated, truncated, info = envs[j].step(out[row])
                    e = wave_start + j
                    success[e] |= info["max_score"] >= 1.0
                    n_steps[e] = info["n_steps"]
                    if envs[j].record_video:
                        frames[j].extend(info.get("frames", []))
                    if terminated or truncated:
                        active[j] = False
                        bar.update(1)
            # every 2nd frame at 10 fps: GIF encoding of 20 Hz renders costs more than the rollout
            video.extend(f for j in range(min(n_video, len(wave))) for f in frames[j][::2])
    finally:
        for env in envs:
            env.close()
        bar.close()
    seconds = time.perf_counter() - t0
    if video_path is not None and video:
        _write_video(video_path, video, fps=10)
    return {
        "mean_score": float(success.mean()),
        "success_rate": float(success.mean()),
        "scores": success.astype(float).tolist(),
        "seeds": seeds,
        "success": success.tolist(),
        "n_steps": n_steps.tolist(),
        "n_episodes": n_episodes,
        "seconds": seconds,
        "video_path": str(video_path) if video_path is not None and video else None,
    }
