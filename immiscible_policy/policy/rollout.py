"""Closed-loop PushT evaluation: diffusion_policy's receding-horizon protocol over parallel envs.

Why: a policy's training loss says little about how well it pushes the T; the paper's metric is the
rollout score on fixed test starts (seeds 100000..100049, "legacy_test"): per step
score = min(coverage / 0.95, 1), an episode's score is its maximum over at most 300 steps, and success
means coverage >= 0.95 at some step (the episode then terminates).

The loop (observation history, action chunks, episode ends, video) is every family's
(:func:`immiscible_policy.policy.episodes.run_episodes`); PushT brings its env, a gymnasium vector env
(the simulation is cheap next to a policy query), and its scoring (:class:`PushTScore`).

Policy contract::

    policy_fn(obs_history: np.ndarray (n, n_obs_steps, obs_dim) float32) -> np.ndarray (n, n_action_steps, 2)

where n is the number of still-running episodes (it shrinks as episodes finish). With
``obs_type="image"`` obs_dim is 3 * 96 * 96 + 2 (the camera frame CHW, 0..255, then the agent xy; the
image policy splits it) and the video shows the camera frame beside the usual view.

Every evaluation also reports which way each rollout turned the T and which half it touched first
(``modes``; definitions in :mod:`immiscible_policy.metrics.pusht_modes`, docs/modes.md), from the env's own
per-step tracking (``info["net_rotation"]``, ``info["contact_local_x"]``): no trajectory is kept.
``starts="symmetric"`` rolls out from the symmetric starts instead of the legacy test starts.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from immiscible_policy.policy.episodes import (
    ActionChunkWrapper,
    PolicyFn,
    VectorEnvs,
    plan_episodes,
    run_episodes,
)

__all__ = ["STARTS", "ActionChunkWrapper", "PushTScore", "evaluate", "make_pusht_env"]

SUCCESS_COVERAGE = 0.95
#: ``evaluate(starts=...)``: the legacy test starts (seed s -> diffusion_policy's start s) or the symmetric
#: ones (seed s -> ``immiscible_envs.pusht.SYMMETRIC_STARTS[s % K]``).
STARTS = ("standard", "symmetric")


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


class PushTScore:
    """Per episode: the best step score (``max_score``), the final and the best coverage; success is
    coverage >= 0.95 at some step. Modes: the latest ``net_rotation`` and ``contact_local_x`` the env
    reported (both are running values: the rotation so far, the contact point once there was one), so the
    last chunk of an episode gives its whole-episode numbers."""

    def __init__(
        self, n_episodes: int, *, rotation_threshold_deg: float | None = None, margin: float = 10.0
    ) -> None:
        from immiscible_policy.metrics.pusht_modes import ROTATION_THRESHOLD_DEG

        self.scores = np.zeros(n_episodes)
        self.final_cov = np.zeros(n_episodes)
        self.max_cov = np.zeros(n_episodes)
        self.rotation = np.zeros(n_episodes)
        self.contact_x = np.full(n_episodes, np.nan)
        self.threshold_deg = (
            ROTATION_THRESHOLD_DEG if rotation_threshold_deg is None else rotation_threshold_deg
        )
        self.margin = margin

    def update(self, episode: int, info: Mapping[str, Any]) -> None:
        self.scores[episode] = info["max_score"]
        self.final_cov[episode] = info["coverage"]
        self.max_cov[episode] = max(self.max_cov[episode], info["coverage"])
        self.rotation[episode] = info["net_rotation"]
        self.contact_x[episode] = info["contact_local_x"]

    def metrics(self) -> dict[str, Any]:
        from immiscible_policy.metrics.pusht_modes import mode_summary, rotation_mode, side_of

        success = self.max_cov >= SUCCESS_COVERAGE
        sides = [side_of(float(x), self.margin) for x in self.contact_x]
        return {
            "mean_score": float(self.scores.mean()),
            "success_rate": float(success.mean()),
            "scores": self.scores.tolist(),
            "final_coverage": self.final_cov.tolist(),
            "max_coverage": self.max_cov.tolist(),
            "success": success.tolist(),
            "rotation": self.rotation.tolist(),
            "rotation_mode": [rotation_mode(r, self.threshold_deg) for r in self.rotation],
            "approach_side": sides,
            "modes": mode_summary(self.rotation, sides, self.threshold_deg),
        }


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
    starts: str = "standard",
) -> dict[str, Any]:
    """Roll ``policy_fn`` out on test seeds ``start_seed .. start_seed + n_episodes - 1``.

    ``starts="standard"``: seed s starts from diffusion_policy's legacy test start s; ``"symmetric"``: from
    ``SYMMETRIC_STARTS[s % K]`` (K = 5; the default start_seed 100000 is 0 mod 5, so n episodes cycle
    through the starts in order), where turning the T either way is equally good and only the sampling
    noise differs between the rollouts of one start.

    Episodes run ``n_envs`` at a time (default: all at once, so the policy sees one batch) in a gymnasium
    ``SyncVectorEnv`` (``vector="sync"``, the default: faster on 2 cores, where the simulation is cheap next
    to the per-chunk IPC of ``AsyncVectorEnv``) or ``AsyncVectorEnv`` (``vector="async"``). Finished
    episodes hold the agent where it is until their wave ends.

    Returns: {"mean_score", "success_rate", "scores" (list, per episode), "seeds", "final_coverage",
    "max_coverage", "success", "rotation" (net rotation, rad, + = clockwise on screen), "rotation_mode"
    (cw | ccw | none), "approach_side" (left | center | right | none), "modes" (their summary:
    :func:`immiscible_policy.metrics.pusht_modes.mode_summary`), "starts", "n_steps", "n_episodes", "seconds",
    "video_path"} (lists per episode).
    """
    if starts not in STARTS:
        raise ValueError(f"unknown starts {starts!r}; valid: {', '.join(STARTS)}")
    plan = plan_episodes(n_episodes, start_seed, n_envs, video_path, n_video_episodes)
    if vector not in ("sync", "async"):
        raise ValueError(f"unknown vector {vector!r}; valid: 'async', 'sync'")
    make = functools.partial(
        make_pusht_env,
        obs_type,
        n_obs_steps=n_obs_steps,
        n_action_steps=n_action_steps,
        max_steps=max_steps,
        render_size=render_size,
    )
    vec_cls = gym.vector.SyncVectorEnv if vector == "sync" else gym.vector.AsyncVectorEnv
    # the agent's xy in an observation: last for keypoints and image (after the CHW frame), first for state
    agent = slice(0, 2) if obs_type == "state" else slice(-2, None)
    envs = VectorEnvs(
        vec_cls([make] * plan.n_envs),
        idle_action=lambda obs: obs[:, -1:, agent],  # hold still: target the agent's current position
        action_meaning="xy in pixels",
        reset_options={"starts": "symmetric"} if starts == "symmetric" else None,
    )
    metrics = run_episodes(
        policy_fn,
        envs,
        plan,
        PushTScore(n_episodes),
        video_path=video_path,
        desc=f"eval {obs_type}" + (" symmetric" if starts == "symmetric" else ""),
        progress=progress,
    )
    return {**metrics, "starts": starts}
