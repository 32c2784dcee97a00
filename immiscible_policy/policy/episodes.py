"""The one closed-loop rollout loop of every task family: observation history, action chunks, episode
ends, video frames and per-step scoring, over fixed test seeds.

Why one loop: PushT and robomimic evaluate with the same receding-horizon protocol (diffusion_policy's
runners). The policy sees the last ``n_obs_steps`` observations (the history is padded at reset by
repeating the first one), returns ``n_action_steps`` actions, all of them are executed
(:class:`ActionChunkWrapper`: one env step per chunk), then it is queried again, for all running episodes
of a wave together (one batched forward pass). An episode ends when its env terminates or truncates.
What differs between families is only

* how the envs of a wave are stepped (:class:`VectorEnvs`: a gymnasium vector env, every env steps and
  the finished ones hold still; :class:`LockstepEnvs`: a list of envs, only the running episodes step,
  for simulators where a step is expensive), and
* how a step scores (an :class:`EpisodeScore`: it sees each running episode's chunk ``info`` and
  returns the family's metrics).

Policy contract::

    policy_fn(obs_history: np.ndarray (n, n_obs_steps, obs_dim) float32) -> (n, n_action_steps, A)

where n is the number of still-running episodes of the wave (it shrinks as episodes finish).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from immiscible_policy.video import check_video_path, write_video

__all__ = [
    "ActionChunkWrapper",
    "EnvBatch",
    "EpisodePlan",
    "EpisodeScore",
    "LockstepEnvs",
    "PolicyFn",
    "VectorEnvs",
    "plan_episodes",
    "run_episodes",
    "write_video",
]

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


# ------------------------------------------------------------------------------------------ env batches


class EnvBatch(Protocol):
    """The envs of one wave of episodes, as the loop drives them.

    ``reset`` starts episode j of the wave on env j with ``seeds[j]`` (rgb frames when ``record[j]``)
    and returns the (k, n_obs_steps, obs_dim) observations; ``step`` executes one action chunk for
    the running episodes ``idx`` and returns the wave's observations, each running episode's ``info``
    (in ``idx`` order) and whether it ended (terminated or truncated).
    """

    n_envs: int
    action_shape: tuple[int, ...]  # (n_action_steps, A)
    action_meaning: str  # for the error on a policy_fn of the wrong shape

    def reset(self, seeds: Sequence[int], record: Sequence[bool]) -> np.ndarray: ...

    def step(
        self, idx: np.ndarray, actions: np.ndarray
    ) -> tuple[np.ndarray, list[Mapping[str, Any]], np.ndarray]: ...

    def close(self) -> None: ...


class VectorEnvs:
    """A gymnasium vector env (``SyncVectorEnv`` or ``AsyncVectorEnv``): one message per chunk for all envs.

    A vector env steps every env, so the finished episodes of a wave (and the spare envs of a short last
    wave, which re-run its last seed) get ``idle_action(obs)`` (e.g. hold the agent where it is) and
    their outputs are ignored. ``reset_options`` go to every env's ``reset`` with its seed (gymnasium's
    vector envs pass one ``options`` to all), e.g. PushT's ``{"starts": "symmetric"}``.
    """

    def __init__(
        self,
        venv: gym.vector.VectorEnv,
        idle_action: Callable[[np.ndarray], np.ndarray],
        action_meaning: str = "action_dim",
        reset_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.venv, self.idle_action, self.action_meaning = venv, idle_action, action_meaning
        self.reset_options = None if reset_options is None else dict(reset_options)
        self.n_envs = int(venv.num_envs)
        self.action_shape = tuple(venv.single_action_space.shape)
        self._obs: np.ndarray | None = None

    def reset(self, seeds: Sequence[int], record: Sequence[bool]) -> np.ndarray:
        seeds, pad = list(seeds), self.n_envs - len(seeds)
        self.venv.set_attr("record_video", list(record) + [False] * pad)
        options = None if self.reset_options is None else dict(self.reset_options)
        self._obs, _ = self.venv.reset(seed=seeds + [seeds[-1]] * pad, options=options)
        return self._obs[: len(seeds)]

    def step(self, idx: np.ndarray, actions: np.ndarray):
        chunk = np.zeros((self.n_envs, *self.action_shape), dtype=np.float32)
        chunk[:] = self.idle_action(self._obs)
        chunk[idx] = actions
        self._obs, _, terminated, truncated, info = self.venv.step(chunk)
        arrays = {k: v for k, v in info.items() if not k.startswith("_") and isinstance(v, np.ndarray)}
        infos = [{k: v[j] for k, v in arrays.items()} for j in idx]
        return self._obs, infos, (terminated | truncated)[idx]

    def close(self) -> None:
        self.venv.close()


class LockstepEnvs:
    """A list of :class:`ActionChunkWrapper` envs stepped one by one, only while their episode runs.

    Why not a vector env for expensive simulators (robosuite: ~100 steps/s on a shared core): a vector
    env keeps stepping (and auto-resetting) episodes that already finished, so a wave would cost its
    slowest episode times the number of envs.
    """

    def __init__(self, envs: Sequence[ActionChunkWrapper], action_meaning: str = "action_dim") -> None:
        self.envs, self.action_meaning = list(envs), action_meaning
        self.n_envs = len(self.envs)
        self.action_shape = tuple(self.envs[0].action_space.shape)
        self._obs = np.zeros((self.n_envs, *self.envs[0].observation_space.shape), dtype=np.float32)

    def reset(self, seeds: Sequence[int], record: Sequence[bool]) -> np.ndarray:
        for j, seed in enumerate(seeds):
            self.envs[j].record_video = bool(record[j])
            self._obs[j], _ = self.envs[j].reset(seed=seed)
        return self._obs[: len(seeds)]

    def step(self, idx: np.ndarray, actions: np.ndarray):
        infos, done = [], np.zeros(len(idx), dtype=bool)
        for row, j in enumerate(idx):
            self._obs[j], _, terminated, truncated, info = self.envs[j].step(actions[row])
            infos.append(info)
            done[row] = terminated or truncated
        return self._obs, infos, done

    def close(self) -> None:
        for env in self.envs:
            env.close()


# ------------------------------------------------------------------------------------------------ loop


class EpisodeScore(Protocol):
    """A family's scoring: ``update`` sees each running episode's chunk ``info`` (episode index into the
    seeds), ``metrics`` returns ``mean_score``, ``success_rate``, ``scores`` (per episode), ``success``
    and the family's own keys."""

    def update(self, episode: int, info: Mapping[str, Any]) -> None: ...

    def metrics(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class EpisodePlan:
    """Which seeds run, how many envs at a time, how many episodes of the first wave are filmed."""

    seeds: list[int]
    n_envs: int
    n_video: int


def plan_episodes(
    n_episodes: int,
    start_seed: int,
    n_envs: int | None,
    video_path: str | os.PathLike | None,
    n_video_episodes: int,
) -> EpisodePlan:
    """Seeds ``start_seed .. start_seed + n_episodes - 1``, ``n_envs`` at a time (default: all at once, so
    the policy sees one batch), the first ``n_video_episodes`` filmed when there is a ``video_path``
    (``.mp4`` or ``.gif``, checked here, before any episode runs)."""
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    if video_path is not None and n_video_episodes > 0:
        check_video_path(video_path)
    n_envs = n_episodes if n_envs is None else max(1, min(int(n_envs), n_episodes))
    n_video = min(n_video_episodes, n_envs) if video_path is not None else 0
    return EpisodePlan([start_seed + i for i in range(n_episodes)], n_envs, n_video)


def _checked(out: Any, n: int, envs: EnvBatch) -> np.ndarray:
    """The policy's actions as numpy, checked: the right shape, and finite (NaN actions used to reach the
    simulator, which failed in its own tracebacks, and the evaluation still reported a score)."""
    if hasattr(out, "detach"):  # a torch tensor, possibly on an accelerator
        out = out.detach().cpu().numpy()
    out = np.asarray(out)
    if out.shape != (n, *envs.action_shape):
        expected = ", ".join(str(d) for d in (n, *envs.action_shape))
        raise ValueError(
            f"policy_fn returned shape {out.shape}; expected ({expected}) "
            f"(n running episodes, n_action_steps, {envs.action_meaning})"
        )
    if out.dtype.kind in "fc" and not np.isfinite(out).all():  # never a score for a broken policy
        rows = ~np.isfinite(out.reshape(n, -1)).all(axis=1)
        raise ValueError(
            f"the policy returned non-finite actions ({out[~np.isfinite(out)].flat[0]} in {int(rows.sum())} of "
            f"{n} running episodes), so the evaluation stops without a score; its weights or normaliser hold "
            "nan/inf or it diverged: evaluate an earlier checkpoint."
        )
    return out


def run_episodes(
    policy_fn: PolicyFn,
    envs: EnvBatch,
    plan: EpisodePlan,
    score: EpisodeScore,
    *,
    video_path: str | os.PathLike | None = None,
    video_stride: int = 1,
    desc: str = "eval",
    progress: bool = True,
) -> dict[str, Any]:
    """Roll ``policy_fn`` out on ``plan.seeds``, a wave of ``envs.n_envs`` episodes at a time; closes ``envs``.

    Returns the score's metrics (``mean_score``, ``success_rate``, ``scores``, ..., ``success``) with
    ``seeds``, ``n_steps`` (env steps per episode), ``n_episodes``, ``seconds`` and ``video_path`` (the
    filmed episodes' frames, every ``video_stride``-th, at 10 fps, as MP4 or GIF by the path's suffix;
    None without frames).
    """
    from tqdm.auto import tqdm

    seeds = plan.seeds
    n_steps = np.zeros(len(seeds), dtype=np.int64)
    video: list[np.ndarray] = []
    bar = tqdm(total=len(seeds), desc=desc, disable=not progress, leave=False)
    t0 = time.perf_counter()
    try:
        for wave_start in range(0, len(seeds), envs.n_envs):
            wave = seeds[wave_start : wave_start + envs.n_envs]
            record = [wave_start == 0 and j < plan.n_video for j in range(len(wave))]
            obs = envs.reset(wave, record)
            frames: list[list[np.ndarray]] = [[] for _ in wave]
            active = np.ones(len(wave), dtype=bool)
            while active.any():
                idx = np.nonzero(active)[0]
                out = _checked(policy_fn(obs[idx].astype(np.float32)), len(idx), envs)
                obs, infos, done = envs.step(idx, out)
                for j, info in zip(idx, infos):
                    e = wave_start + j
                    score.update(e, info)
                    n_steps[e] = info["n_steps"]
                    if record[j] and info.get("frames") is not None and len(info["frames"]):
                        frames[j].extend(info["frames"])
                if done.any():
                    bar.update(int(done.sum()))
                active[idx[done]] = False
            video.extend(f for j in range(min(plan.n_video, len(wave))) for f in frames[j][::video_stride])
    finally:
        envs.close()
        bar.close()
    seconds = time.perf_counter() - t0
    if video_path is not None and video:
        write_video(video_path, video, fps=10)
    metrics = score.metrics()
    head = {k: metrics.pop(k) for k in ("mean_score", "success_rate", "scores")}
    return {
        **head,
        "seeds": seeds,
        **metrics,
        "n_steps": n_steps.tolist(),
        "n_episodes": len(seeds),
        "seconds": seconds,
        "video_path": str(video_path) if video_path is not None and video else None,
    }
