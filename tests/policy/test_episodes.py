"""run_episodes(): the one rollout loop, on a toy env, with either way of stepping a wave."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from immiscible_policy.policy.episodes import (
    ActionChunkWrapper,
    LockstepEnvs,
    VectorEnvs,
    plan_episodes,
    run_episodes,
)


class Walk(gym.Env):
    """A point on a line, started at a seeded position, that the action moves; done at the origin."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, max_steps: int = 12):
        self.observation_space = spaces.Box(-10.0, 10.0, (2,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.max_steps = max_steps

    def _obs(self):
        return np.array([self.x, self.t], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.t = float(self.np_random.uniform(2.0, 6.0)), 0
        return self._obs(), {}

    def step(self, action):
        self.x -= float(np.clip(action[0], -1.0, 1.0))
        self.t += 1
        reached = abs(self.x) < 0.5
        return self._obs(), float(1.0 / (1.0 + abs(self.x))), reached, self.t >= self.max_steps, {}

    def render(self):
        return np.full((4, 4, 3), min(255, int(abs(self.x) * 40)), dtype=np.uint8)


class Score:
    def __init__(self, n):
        self.best = np.zeros(n)

    def update(self, episode, info):
        self.best[episode] = info["max_score"]

    def metrics(self):
        success = self.best >= 0.75
        return {
            "mean_score": float(self.best.mean()),
            "success_rate": float(success.mean()),
            "scores": self.best.tolist(),
            "success": success.tolist(),
        }


def make():
    return ActionChunkWrapper(Walk(), n_obs_steps=2, n_action_steps=3)


def policy(calls):
    def fn(obs):  # step towards the origin at a speed set by the distance: episodes end at different times
        calls.append(obs.shape[0])
        x = obs[:, -1, 0]
        return np.repeat((0.35 * np.sign(x) + 0.05 * x)[:, None, None], 3, axis=1)

    return fn


@pytest.mark.parametrize("n_envs", [None, 2])
def test_lockstep_and_vector_envs_give_the_same_rollouts(n_envs):
    plan = plan_episodes(5, 7, n_envs, video_path=None, n_video_episodes=0)
    runs = {}
    for name in ("lockstep", "vector"):
        calls: list[int] = []
        if name == "lockstep":
            envs = LockstepEnvs([make() for _ in range(plan.n_envs)])
        else:
            envs = VectorEnvs(gym.vector.SyncVectorEnv([make] * plan.n_envs), idle_action=lambda o: 0.0)
        res = run_episodes(policy(calls), envs, plan, Score(5), progress=False)
        runs[name] = (res, calls)
    (a, calls_a), (b, calls_b) = runs["lockstep"], runs["vector"]
    a.pop("seconds"), b.pop("seconds")
    assert a == b and calls_a == calls_b
    assert a["seeds"] == [7, 8, 9, 10, 11] and a["n_episodes"] == 5
    assert list(a)[:4] == ["mean_score", "success_rate", "scores", "seeds"]
    assert all(1 <= n <= 12 for n in a["n_steps"]) and len(set(a["n_steps"])) > 1
    assert calls_a[0] == plan.n_envs and min(calls_a) < plan.n_envs  # finished episodes leave the batch


def test_video_frames_first_wave_only_with_stride(monkeypatch):
    plan = plan_episodes(3, 0, 2, video_path="x.gif", n_video_episodes=1)
    written: list[list[np.ndarray]] = []
    monkeypatch.setattr(
        "immiscible_policy.policy.episodes.write_video", lambda path, video, fps: written.append(video)
    )
    for stride in (1, 2):
        envs = LockstepEnvs([make() for _ in range(plan.n_envs)])
        res = run_episodes(
            policy([]), envs, plan, Score(3), video_path="x.gif", video_stride=stride, progress=False
        )
        assert res["video_path"] == "x.gif"
    every, halved = written
    assert len(every) == res["n_steps"][0] + 1  # the one filmed episode: its reset frame + one per env step
    assert [f.tolist() for f in halved] == [f.tolist() for f in every[::2]]


def test_policy_output_of_the_wrong_shape_is_one_line():
    plan = plan_episodes(2, 0, None, video_path=None, n_video_episodes=0)
    with pytest.raises(ValueError, match=r"^policy_fn returned shape \(2, 1\); expected \(2, 3, 1\) "):
        run_episodes(
            lambda o: np.zeros((len(o), 1)), LockstepEnvs([make(), make()]), plan, Score(2), progress=False
        )
    with pytest.raises(ValueError, match="n_episodes must be >= 1, got 0"):
        plan_episodes(0, 0, None, None, 0)
