"""robomimic tasks (Lift, PickPlaceCan, ...) as gymnasium environments on robosuite 1.5.

Why our own wrapper: the ``robomimic`` package's env code imports ``mujoco_py`` and targets robosuite 1.4,
so it cannot create environments next to robosuite 1.5. Its *dataset format* is the standard, and a
dataset says how its env was made: ``data.attrs["env_args"]`` is JSON
``{"env_name": "Lift", "type": 1, "env_kwargs": {..., "controller_configs": {...}}}``. This module builds
the robosuite env from that dict (converting a robosuite <= 1.4 arm controller config into the 1.5
composite form with robosuite's own converter), or from a task name with robomimic's v1.4.1 settings
(Panda, OSC_POSE delta control at 20 Hz, sparse reward).

* Observation: float32 (obs_dim,), the concatenation of ``obs_keys`` in order, e.g. diffusion_policy's
  low-dim set ``("object", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")`` -> (10+3+4+2,) for
  Lift. ``"object"`` is robosuite's ``"object-state"`` (robomimic's name for it).
* Action: (7,) in [-1, 1]: OSC_POSE delta position (x 0.05 m), delta axis-angle (x 0.5 rad), gripper.
* Reward / success: the task's own ``_check_success()``; reward = 1.0 on success steps, else 0.0. The
  episode terminates on success (``terminate_on_success``); the time limit comes from the registration
  (``max_episode_steps``; diffusion_policy's ph values in :data:`MAX_STEPS`).
* ``reset(seed=s)`` reseeds robosuite's generator (object placement, joint noise) so seed s always gives
  the same start; ``reset(options={"reset_to_state": flat_state})`` restores a dataset's recorded
  ``states`` row (MuJoCo time + qpos + qvel), as robomimic's ``reset_to`` does.
* ``render()``: (render_size, render_size, 3) uint8 from ``camera`` (needs ``render_mode="rgb_array"``,
  which creates robosuite's offscreen renderer; ``MUJOCO_GL=egl`` is used when unset).
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = [
    "DEFAULT_OBS_KEYS",
    "MAX_STEPS",
    "ROBOMIMIC_ENV_ID",
    "RobomimicEnv",
    "default_env_args",
    "make_robosuite_env",
    "parse_env_args",
    "register_envs",
]

ROBOMIMIC_ENV_ID = "immiscible/Robomimic-v0"
#: diffusion_policy's low-dim observation keys for robomimic (its order).
DEFAULT_OBS_KEYS = ("object", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
#: robomimic key -> robosuite observation name.
OBS_KEY_ALIASES = {"object": "object-state"}
#: Rollout length per task for proficient-human (ph) data, as diffusion_policy evaluates them.
MAX_STEPS = {
    "Lift": 400,
    "PickPlaceCan": 400,
    "NutAssemblySquare": 400,
    "TwoArmTransport": 700,
    "ToolHang": 700,
}
DEFAULT_MAX_STEPS = 400
#: robosuite's env type id in robomimic's env_args ("type": 1).
ROBOSUITE_TYPE = 1

# robomimic v1.4.1 datasets' controller: OSC_POSE in the robosuite <= 1.4 (single part) format.
_OSC_POSE_V141 = {
    "type": "OSC_POSE",
    "input_max": 1,
    "input_min": -1,
    "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
    "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5],
    "kp": 150,
    "damping": 1,
    "impedance_mode": "fixed",
    "kp_limits": [0, 300],
    "damping_limits": [0, 10],
    "position_limits": None,
    "orientation_limits": None,
    "uncouple_pos_ori": True,
    "control_delta": True,
    "interpolation": None,
    "ramp_ratio": 0.2,
}
# Keys of env_kwargs we set ourselves: rendering and termination are the wrapper's business.
_OWNED_KWARGS = ("has_renderer", "has_offscreen_renderer", "use_camera_obs", "ignore_done", "render_camera")


def _quiet_robosuite() -> None:
    """robosuite logs macro/robot-model warnings on import; they are noise for a headless evaluator."""
    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)


def _import_robosuite():
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import robosuite
    except ImportError as exc:
        raise ImportError(
            f"robomimic tasks need robosuite 1.5 ({exc}); install the extra: pip install -e '.[robomimic]'"
        ) from None
    _quiet_robosuite()
    return robosuite


def default_env_args(env_name: str) -> dict[str, Any]:
    """robomimic v1.4.1-style ``env_args`` for a robosuite task name (Panda, OSC_POSE, 20 Hz, sparse)."""
    return {
        "env_name": str(env_name),
        "type": ROBOSUITE_TYPE,
        "env_kwargs": {
            "has_renderer": False,
            "has_offscreen_renderer": False,
            "ignore_done": True,
            "use_object_obs": True,
            "use_camera_obs": False,
            "control_freq": 20,
            "controller_configs": copy.deepcopy(_OSC_POSE_V141),
            "robots": ["Panda"],
            "camera_depths": False,
            "camera_heights": 84,
            "camera_widths": 84,
            "reward_shaping": False,
        },
    }


def parse_env_args(env_args: str | Mapping[str, Any]) -> dict[str, Any]:
    """Validate robomimic ``env_args`` (JSON text or dict) -> a fresh dict; one-line errors."""
    if isinstance(env_args, str):
        try:
            env_args = json.loads(env_args)
        except json.JSONDecodeError as exc:
            raise ValueError(f"env_args is not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(env_args, Mapping):
        raise ValueError(f"env_args must be a JSON object, got {type(env_args).__name__}")
    env_args = copy.deepcopy(dict(env_args))
    if "env_name" not in env_args:
        raise ValueError(
            f"env_args lacks 'env_name' (keys: {sorted(env_args)}); expected robomimic's env_args"
        )
    env_type = env_args.get("type", ROBOSUITE_TYPE)
    if env_type != ROBOSUITE_TYPE:
        raise ValueError(
            f"env_args type {env_type!r} is not a robosuite env (type {ROBOSUITE_TYPE}); only robosuite "
            "tasks are supported"
        )
    env_args.setdefault("env_kwargs", {})
    return env_args


def _check_env_name(robosuite, name: str) -> None:
    known = sorted(robosuite.ALL_ENVIRONMENTS)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown robosuite env {name!r}.{hint} Available: {', '.join(known)}")


def make_robosuite_env(env_args: str | Mapping[str, Any], *, render: bool = False, seed: int | None = None):
    """A robosuite env from robomimic ``env_args``; ``render`` adds the offscreen renderer (for videos)."""
    robosuite = _import_robosuite()
    from robosuite.controllers.composite.composite_controller_factory import (
        refactor_composite_controller_config,
    )

    args = parse_env_args(env_args)
    name = str(args["env_name"])
    _check_env_name(robosuite, name)
    kwargs = {k: v for k, v in args["env_kwargs"].items() if k not in _OWNED_KWARGS}
    robots = kwargs.get("robots", ["Panda"])
    robots = [robots] if isinstance(robots, str) else list(robots)
    kwargs["robots"] = robots
    if kwargs.get("controller_configs") is not None:  # robosuite <= 1.4 part config -> 1.5 composite
        kwargs["controller_configs"] = refactor_composite_controller_config(
            kwargs["controller_configs"], robots[0], ["right"]
        )
    kwargs.update(
        has_renderer=False,
        has_offscreen_renderer=bool(render),
        use_camera_obs=False,
        ignore_done=True,
    )
    try:
        return robosuite.make(name, seed=seed, **kwargs)
    except TypeError as exc:  # an env_kwargs key this robosuite version does not know
        raise ValueError(f"robosuite.make({name!r}) rejected env_kwargs: {exc}") from None


def register_envs() -> None:
    """Register ``immiscible/Robomimic-v0`` (idempotent); robosuite is imported only on ``gym.make``."""
    if ROBOMIMIC_ENV_ID not in gym.registry:
        gym.register(
            id=ROBOMIMIC_ENV_ID,
            entry_point="immiscible_envs.robomimic:RobomimicEnv",
            max_episode_steps=DEFAULT_MAX_STEPS,
        )


class RobomimicEnv(gym.Env):
    """A robosuite task with robomimic's low-dim observations and the task's own success check.

    Give ``env_args`` (robomimic's dict/JSON, e.g. from a dataset) or ``env_name`` (e.g. ``"Lift"``; then
    :func:`default_env_args`). ``obs_keys`` picks and orders the observation pieces.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        env_name: str | None = None,
        env_args: str | Mapping[str, Any] | None = None,
        obs_keys: Sequence[str] = DEFAULT_OBS_KEYS,
        render_mode: str | None = None,
        render_size: int = 256,
        camera: str = "agentview",
        terminate_on_success: bool = True,
    ):
        if env_args is None and env_name is None:
            raise ValueError("RobomimicEnv needs env_name (e.g. 'Lift') or env_args (a dataset's env_args)")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"unknown render_mode {render_mode!r}; valid: 'rgb_array' or None")
        args = parse_env_args(env_args) if env_args is not None else default_env_args(str(env_name))
        if env_name is not None and env_args is not None and env_name != args["env_name"]:
            raise ValueError(f"env_name {env_name!r} contradicts env_args env_name {args['env_name']!r}")
        self.env_args = args
        self.env_name = str(args["env_name"])
        self.render_mode, self.render_size, self.camera = render_mode, int(render_size), camera
        self.terminate_on_success = bool(terminate_on_success)
        self._env = make_robosuite_env(args, render=render_mode is not None)
        self.obs_keys = tuple(obs_keys)
        if not self.obs_keys:
            raise ValueError("obs_keys is empty; give at least one observation key, e.g. robot0_eef_pos")
        first = self._env.reset()
        available = sorted(set(first) | set(OBS_KEY_ALIASES))
        unknown = [k for k in self.obs_keys if OBS_KEY_ALIASES.get(k, k) not in first]
        if unknown:
            raise ValueError(f"unknown obs key(s) {unknown} for {self.env_name}; available: {available}")
        self.obs_dims = {k: int(np.asarray(first[OBS_KEY_ALIASES.get(k, k)]).size) for k in self.obs_keys}
        dim = sum(self.obs_dims.values())
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float32)
        low, high = self._env.action_spec
        self.action_space = spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        self.start_seed: int | None = None
        self._last_obs = first

    # ------------------------------------------------------------------ helpers
    @property
    def robosuite_env(self):
        """The underlying robosuite env (for experts and tests)."""
        return self._env

    def raw_obs(self) -> dict[str, np.ndarray]:
        """The last robosuite observation dict (every key, robosuite names)."""
        return self._last_obs

    def flat_obs(self, raw: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.concatenate(
            [np.asarray(raw[OBS_KEY_ALIASES.get(k, k)], dtype=np.float32).reshape(-1) for k in self.obs_keys]
        )

    def get_state(self) -> np.ndarray:
        """(state_dim,) float64 MuJoCo state [time, qpos, qvel]: robomimic's ``states`` row."""
        return np.asarray(self._env.sim.get_state().flatten(), dtype=np.float64)

    def is_success(self) -> bool:
        return bool(self._env._check_success())

    def _info(self, success: bool) -> dict[str, Any]:
        return {
            "success": success,
            "is_success": success,
            "score": float(success),
            "seed": -1 if self.start_seed is None else self.start_seed,
        }

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        target = None if options is None else options.get("reset_to_state")
        if target is None:
            if seed is None:
                seed = int(self.np_random.integers(0, 2**31 - 1))
            self.start_seed = int(seed)
            # in place: the placement sampler holds a reference to this generator
            self._env.rng.bit_generator.state = np.random.default_rng(int(seed)).bit_generator.state
            raw = self._env.reset()
        else:
            state = np.asarray(target, dtype=np.float64).reshape(-1)
            # a fixed pre-reset (seed 0): controller state set at reset then does not depend on history,
            # so replaying recorded actions from a recorded state is repeatable
            self._env.rng.bit_generator.state = np.random.default_rng(0).bit_generator.state
            self._env.reset()
            expected = self.get_state().size
            if state.size != expected:
                raise ValueError(
                    f"reset_to_state has {state.size} numbers but {self.env_name}'s MuJoCo state has "
                    f"{expected}; was the dataset recorded with a different robot or task?"
                )
            self._env.sim.set_state_from_flattened(state)
            self._env.sim.forward()
            if hasattr(self._env, "update_state"):
                self._env.update_state()
            raw = self._env._get_observations(force_update=True)
            self.start_seed = None
        self._last_obs = raw
        return self.flat_obs(raw), self._info(self.is_success())

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(self.action_space.shape)
        raw, _, _, _ = self._env.step(action)
        self._last_obs = raw
        success = self.is_success()
        info = self._info(success)
        return self.flat_obs(raw), float(success), success and self.terminate_on_success, False, info

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        frame = self._env.sim.render(camera_name=self.camera, width=self.render_size, height=self.render_size)
        return np.ascontiguousarray(frame[::-1])  # MuJoCo's offscreen buffer is upside down

    def close(self) -> None:
        self._env.close()
