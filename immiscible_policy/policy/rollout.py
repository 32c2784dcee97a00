"""Closed-loop PushT evaluation: diffusion_policy's receding-horizon protocol over parallel envs.

Why: a policy's training loss says little about how well it pushes the T; the paper's metric is the
rollout score on fixed test starts (seeds 100000..100049, "legacy_test"): per step
score = min(coverage / 0.95, 1), an episode's score is its maximum over at most 300 steps, and success
means coverage >= 0.95 at some step (the episode then terminates).

Receding horizon: the policy sees the last ``n_obs_steps`` observations (the history is padded at reset by
repeating the first observation), returns ``n_action_steps`` target positions (pixels), all of them are
executed, then it is queried again. One :class:`ActionChunkWrapper` step executes one action chunk, so a
vector env exchanges one message per chunk, not per step.

Policy contract::

    policy_fn(obs_history: np.ndarray (n, n_obs_steps, obs_dim) float32) -> np.ndarray (n, n_action_steps, 2)

where n is the number of still-running episodes (it shrinks as episodes finish).
"""

from __future__ import annotations

import functools
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["ActionChunkWrapper", "evaluate", "make_pusht_env"]

PolicyFn = Callable[[np.ndarray], np.ndarray]


class ActionChunkWrapper(gym.Wrapper):
    """Executes an action chunk per step and returns the observation history (diffusion_policy's
    MultiStepWrapper, minus its reward aggregation quirks).

    Observation: (n_obs_steps, obs_dim) float32, oldest first. Action: (n_action_steps, A) (PushT: A=2
    pixels; robomimic: A=7 OSC_POSE deltas). Reward: the
    maximum step score within the chunk. ``info["max_score"]`` is the episode's running maximum,
    ``info["n_steps"]`` the env steps taken; with ``record_video`` set, ``info["frames"]`` lists the rgb
    frames rendered after each executed step (and the reset frame on the first chunk).
    """

    def __init__(self, env: gym.Env, n_obs_steps: int = 2, n_action_steps: int = 8):
        super().__init__(env)
        self.n_obs_steps, self.n_action_steps = n_obs_steps, n_action_steps
        obs_space = env.observation_space
        self.observation_space = spaces.Box(
            low=np.repeat(obs_space.low[None], n_obs_steps, axis=0),
            high=np.repeat(obs_space.high[None], n_obs_steps, axis=0),
            dtype=np.float32,
        )
        act_space = env.action_space
        self.action_space = spaces.Box(
            low=np.repeat(act_space.low[None], n_action_steps, axis=0),
            high=np.repeat(act_space.high[None], n_action_steps, axis=0),
            dtype=np.float32,
        )
        self.record_video = False
        self._history: deque[np.ndarray] = deque(maxlen=n_obs_steps)
        self._pending_frames: list[np.ndarray] = []
        self._max_score = 0.0
        self._n_steps = 0

    def _stacked(self) -> np.ndarray:
        return np.stack(self._history).astype(np.float32)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._history.clear()
        self._history.extend([obs] * self.n_obs_steps)
        self._max_score, self._n_steps = 0.0, 0
        self._pending_frames = [self.env.render()] if self.record_video else []
        return self._stacked(), {**info, "max_score": 0.0, "n_steps": 0}

    def step(self, action):
        actions = np.asarray(action, dtype=np.float64).reshape(-1, *self.env.action_space.shape)
        frames, self._pending_frames = self._pending_frames, []
        chunk_best, terminated, truncated, info = 0.0, False, False, {}
        for a in actions:
            obs, reward, terminated, truncated, info = self.env.step(a)
            self._history.append(obs)
            self._n_steps += 1
            chunk_best = max(chunk_best, float(reward))
            if self.record_video:
                frames.append(self.env.render())
            if terminated or truncated:
                break
        self._max_score = max(self._max_score, chunk_best)
        info = {**info, "max_score": self._max_score, "n_steps": self._n_steps}
        if self.record_video:
            info["frames"] = frames
        return self._stacked(), chunk_best, terminated, truncated, info


def make_pusht_env(
    obs_type: str,
    n_obs_steps: int = 2,
    n_action_steps: int = 8,
    max_steps: int = 300,
    render_size: int = 256,
) -> ActionChunkWrapper:
    """One evaluation env: ``immiscible/PushT-v0`` with a ``max_steps`` time limit, chunked actions."""
    import immiscible_envs  # noqa: F401  (registers the env id)
    from immiscible_envs import PUSHT_ENV_ID

    env = gym.make(
        PUSHT_ENV_ID,
        obs_type=obs_type,
        render_size=render_size,
        max_episode_steps=max_steps,
        disable_env_checker=True,
    )
    return ActionChunkWrapper(env, n_obs_steps=n_obs_steps, n_action_steps=n_action_steps)


def _write_video(path: str | os.PathLike, frames: list[np.ndarray], fps: int = 10) -> None:
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        iio.imwrite(path, np.stack(frames), duration=1000 / fps, loop=0)
    else:  # mp4 etc. need imageio-ffmpeg (or pyav)
        iio.imwrite(path, np.stack(frames), fps=fps)


def evaluate(
    policy_fn: PolicyFn,
    *,
    obs_type: str,
    n_episodes: int = 50,
    start_seed: int = 100000,
    n_obs_steps: int = 2,
    n_action_steps: int = 8,
    max_steps: int = 300,
    n_envs: int | None = None,
    vector: str = "sync",
    video_path: str | os.PathLike | None = None,
    n_video_episodes: int = 2,
    render_size: int = 256,
    progress: bool = True,
) -> dict[str, Any]:
    """Roll ``policy_fn`` out on test seeds ``start_seed .. start_seed + n_episodes - 1``.

    Episodes run ``n_envs`` at a time (default: all at once, so the policy sees one batch) in a gymnasium
    ``SyncVectorEnv`` (``vector="sync"``, the default: faster on 2 cores, where the simulation is cheap next
    to the per-chunk IPC of ``AsyncVectorEnv``) or ``AsyncVectorEnv`` (``vector="async"``).

    Returns: {"mean_score", "success_rate", "scores" (list, per episode), "seeds", "final_coverage",
    "max_coverage", "success", "n_steps", "n_episodes", "seconds", "video_path"}.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    if vector not in ("sync", "async"):
        raise ValueError(f"unknown vector {vector!r}; valid: 'async', 'sync'")
    n_envs = n_episodes if n_envs is None else max(1, min(int(n_envs), n_episodes))
    seeds = [start_seed + i for i in range(n_episodes)]
    make = functools.partial(
        make_pusht_env,
        obs_type,
        n_obs_steps=n_obs_steps,
        n_action_steps=n_action_steps,
        max_steps=max_steps,
        render_size=render_size,
    )
    vec_cls = gym.vector.SyncVectorEnv if vector == "sync" else gym.vector.AsyncVectorEnv
    venv = vec_cls([make] * n_envs)

    scores = np.zeros(n_episodes)
    final_cov = np.zeros(n_episodes)
    max_cov = np.zeros(n_episodes)
    n_steps = np.zeros(n_episodes, dtype=np.int64)
    video_frames: list[list[np.ndarray]] = []
    n_video = min(n_video_episodes, n_envs) if video_path is not None else 0

    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_episodes, desc=f"eval {obs_type}", disable=not progress, leave=False)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        bar = None
    t0 = time.perf_counter()
    try:
        for wave_start in range(0, n_episodes, n_envs):
            wave = seeds[wave_start : wave_start + n_envs]
            k = len(wave)
            # a short last wave re-runs its last seed in the spare envs and ignores them
            padded = wave + [wave[-1]] * (n_envs - k)
            record = [wave_start == 0 and j < n_video for j in range(n_envs)]
            venv.set_attr("record_video", record)
            obs, _ = venv.reset(seed=padded)
            frames: list[list[np.ndarray]] = [[] for _ in range(n_envs)]
            active = np.zeros(n_envs, dtype=bool)
            active[:k] = True
            while active.any():
                actions = np.zeros((n_envs, n_action_steps, 2), dtype=np.float32)
                actions[:] = obs[:, -1:, -2:] if obs_type == "keypoints" else obs[:, -1:, :2]
                idx = np.nonzero(active)[0]
                out = policy_fn(obs[idx].astype(np.float32))
                if hasattr(out, "detach"):  # a torch tensor, possibly on an accelerator
                    out = out.detach().cpu().numpy()
                out = np.asarray(out)
                if out.shape != (len(idx), n_action_steps, 2):
                    raise ValueError(
                        f"policy_fn returned shape {out.shape}; expected ({len(idx)}, {n_action_steps}, 2) "
                        "(n running episodes, n_action_steps, xy in pixels)"
                    )
                actions[idx] = out
                obs, _, terminated, truncated, info = venv.step(actions)
                for j in idx:
                    e = wave_start + j
                    scores[e] = info["max_score"][j]
                    final_cov[e] = info["coverage"][j]
                    max_cov[e] = max(max_cov[e], info["coverage"][j])
                    n_steps[e] = info["n_steps"][j]
                    if record[j] and info.get("frames") is not None and info["frames"][j]:
                        frames[j].extend(info["frames"][j])
                done = active & (terminated | truncated)
                if bar is not None and done.any():
                    bar.update(int(done.sum()))
                active &= ~done
            video_frames.extend(frames[j] for j in range(n_video))
    finally:
        venv.close()
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0

    if video_path is not None and video_frames:
        _write_video(video_path, [f for ep in video_frames for f in ep])
    success = max_cov >= 0.95
    return {
        "mean_score": float(scores.mean()),
        "success_rate": float(success.mean()),
        "scores": scores.tolist(),
        "seeds": seeds,
        "final_coverage": final_cov.tolist(),
        "max_coverage": max_cov.tolist(),
        "success": success.tolist(),
        "n_steps": n_steps.tolist(),
        "n_episodes": n_episodes,
        "seconds": seconds,
        "video_path": str(video_path) if video_path is not None and video_frames else None,
    }
