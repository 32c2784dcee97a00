"""Closed-loop robomimic evaluation: receding-horizon rollouts on fixed seeds, episodes in lockstep.

The loop is every family's (:func:`immiscible_policy.policy.episodes.run_episodes`); robomimic brings
its envs and its scoring. Why not gymnasium's vector envs (as PushT uses): robosuite steps are expensive
(~100/s on a shared core) and a vector env keeps stepping (and auto-resetting) episodes that already
finished, so a wave would cost its slowest episode times the number of envs. Here the envs of a wave
are stepped only while their episode runs (:class:`~immiscible_policy.policy.episodes.LockstepEnvs`),
and the policy is queried once per chunk for all running episodes together (one batched forward pass,
which is where a CPU spends its time). Protocol as diffusion_policy's robomimic runner: test starts
from seeds ``start_seed ..``, at most ``max_steps`` steps (400 for ph data), the policy sees the last
``n_obs_steps`` observations and executes ``n_action_steps`` actions per query; an episode succeeds
when the task's own check passes at some step (it then ends). ``mean_score`` is the success rate
(robomimic's reward is sparse), so the metrics JSON has PushT's keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from immiscible_policy.policy.episodes import ActionChunkWrapper, LockstepEnvs, plan_episodes, run_episodes

__all__ = ["RobomimicScore", "evaluate_robomimic", "make_robomimic_env"]


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


class RobomimicScore:
    """Per episode: success when the task's check passed at some step (a step score of 1); the score
    is the success (robomimic's reward is sparse)."""

    def __init__(self, n_episodes: int) -> None:
        self.success = np.zeros(n_episodes, dtype=bool)

    def update(self, episode: int, info: Mapping[str, Any]) -> None:
        self.success[episode] |= info["max_score"] >= 1.0

    def metrics(self) -> dict[str, Any]:
        return {
            "mean_score": float(self.success.mean()),
            "success_rate": float(self.success.mean()),
            "scores": self.success.astype(float).tolist(),
            "success": self.success.tolist(),
        }


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
    plan = plan_episodes(n_episodes, start_seed, n_envs, video_path, n_video_episodes)
    common = dict(
        n_obs_steps=n_obs_steps,
        n_action_steps=n_action_steps,
        max_steps=max_steps,
        render_size=render_size,
        camera=camera,
    )
    envs = [
        make_robomimic_env(env_args, obs_keys, render=j < plan.n_video, **common) for j in range(plan.n_envs)
    ]
    return run_episodes(
        policy_fn,
        LockstepEnvs(envs),
        plan,
        RobomimicScore(n_episodes),
        video_path=video_path,
        # every 2nd frame at 10 fps: GIF encoding of 20 Hz renders costs more than the rollout
        video_stride=2,
        desc="eval robomimic",
        progress=progress,
    )
