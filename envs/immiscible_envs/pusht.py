"""PushT for evaluation: gym-pusht's physics with diffusion_policy's observations, starts and scoring.

Why a wrapper and not gym-pusht directly:

* observations must equal the training data's: ``"keypoints"`` (9 block keypoints flattened + agent xy,
  (20,)), ``"state"`` (agent xy, block xy, sin, cos of the block angle, (6,)) or ``"image"`` (the 96x96
  RGB camera frame as the demos recorded it in ``data/img``, CHW values 0..255 flattened, then the agent
  xy: (3 * 96 * 96 + 2,)), float32 (one flat vector so the rollout loop's history and vector envs treat
  every obs type alike; the policy splits it, ``DiffusionPolicy.split_image_obs``);
* the test starts must be diffusion_policy's ("legacy_test"): for seed s,
  ``rs = np.random.RandomState(s)``; agent = (rs.randint(50, 450), rs.randint(50, 450));
  block = (rs.randint(100, 400), rs.randint(100, 400)); angle = rs.randn() * 2 * pi - pi; set the block
  position, then the angle. gym-pusht's own seeding draws different starts;
* ``reset(options={"reset_to_state": [ax, ay, bx, by, angle]})`` must reproduce a recorded demo state. gym-pusht
  sets the position and then the angle, and pymunk rotates about the centre of gravity (local (0, 45)),
  which moves the body origin by up to 90 px. The demos' states are body-origin poses, so we shift the
  position we pass by (-45 sin(theta), 45 (cos(theta) - 1)) to land the origin exactly on (bx, by);
* score = min(coverage / 0.95, 1) per step, success = coverage >= 0.95 (episode terminates), and ``info``
  carries ``coverage``, ``score`` and ``success``. Time limit (300 steps) comes from the registration;
* ``info`` also carries what the mode metrics need (docs/modes.md), so that a vector env of rollouts
  reports them without a trajectory: ``net_rotation`` (rad, the block's angle now minus at reset; pymunk's
  body angle is never wrapped, so this counts whole turns and needs no per-step unwrapping; positive =
  clockwise on screen, since pygame's y points down and gym-pusht draws without flipping) and
  ``contact_local_x`` (the agent's x in the block's start frame at the first step the block moved by more
  than ``CONTACT_TOL``; NaN until then);
* ``reset(seed=s, options={"starts": "symmetric"})`` starts from ``SYMMETRIC_STARTS[s % K]``: starts on the
  goal T's mirror axis, upside down, where turning either way is equally good (docs/modes.md).

Geometry: ``keypoints = R(theta) @ KEYPOINTS_LOCAL + block_xy`` with R(theta) = [[cos, -sin], [sin, cos]] and
block_xy the pymunk body origin (the recorded ``state[:, 2:4]``).
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = [
    "BLOCK_COG",
    "CONTACT_TOL",
    "GOAL_POSE",
    "KEYPOINTS_LOCAL",
    "PUSHT_ENV_ID",
    "START_SETS",
    "SYMMETRIC_STARTS",
    "PushTEnv",
    "block_frame_x",
    "block_keypoints",
    "block_moved",
    "legacy_test_start",
    "register_envs",
]

PUSHT_ENV_ID = "immiscible/PushT-v0"
IMAGE_SIZE = 96  #: the camera frame's side (diffusion_policy's PushT image task)
IMAGE_PIXELS = 3 * IMAGE_SIZE * IMAGE_SIZE
OBS_DIMS = {"keypoints": 20, "state": 6, "image": IMAGE_PIXELS + 2}
SUCCESS_COVERAGE = 0.95
MAX_EPISODE_STEPS = 300
#: The T's centre of gravity in its body frame (gym-pusht: mean of the two rectangles' centroids).
BLOCK_COG = (0.0, 45.0)
#: The goal pose (body origin x, y, angle), gym-pusht's ``goal_pose``. The goal T's mirror axis (its stem,
#: the body frame's y axis turned by pi/4) is the line y = 512 - x.
GOAL_POSE = (256.0, 256.0, np.pi / 4)
#: A block pose change (px or rad) above this means the agent has touched the block (it only moves when
#: touched): the first such step is the *first contact* of docs/modes.md.
CONTACT_TOL = 1e-3
#: Where ``reset(seed=s, options={"starts": ...})`` starts: ``standard``, diffusion_policy's seeded
#: ("legacy_test") starts, also what a plain ``reset(seed=s)`` does, or ``symmetric``,
#: ``SYMMETRIC_STARTS[s % K]``.
START_SETS = ("standard", "symmetric")

#: (5, 5) body-origin states [agent x, y, block x, y, angle] on the goal T's mirror axis y = 512 - x, the
#: block upside down (angle 5 pi / 4: pi from the goal's pi / 4 turning either way), so that turning the T
#: clockwise and anticlockwise are equally good and a policy that keeps both modes should split about
#: evenly. Each maps to itself under the reflection in that axis, (ax, ay, bx, by, theta) ->
#: (512 - ay, 512 - ax, 512 - by, 512 - bx, pi/2 - theta) (``immiscible_policy.data.pusht_mirror``).
#: Block origins at (256 + k, 256 - k) for k = 0, 16, 32: the bar's back edge on the goal's (k = 0) or
#: beyond it, so the block starts off the goal (coverage 0: the score is all the policy's doing) with its
#: stem pointing away from the goal. The agent is on the axis too, 51 px (36 px along x) behind the bar,
#: between block and goal, or 50 px beyond the stem's end (120 px along x from the block origin): about
#: 35 px of free space to the block, at least 48.9 px from every keypoint. docs/modes.md has the table.
SYMMETRIC_STARTS = np.array(
    [
        [220.0, 292.0, 256.0, 256.0, 5 * np.pi / 4],
        [376.0, 136.0, 256.0, 256.0, 5 * np.pi / 4],
        [236.0, 276.0, 272.0, 240.0, 5 * np.pi / 4],
        [392.0, 120.0, 272.0, 240.0, 5 * np.pi / 4],
        [252.0, 260.0, 288.0, 224.0, 5 * np.pi / 4],
    ]
)

#: (9, 2) keypoints in the block's body frame (pixels). Derived by least squares from the PushT demos
#: (pusht_cchi_v7_replay.zarr): L_k = mean over frames of R(theta)^T (keypoint_k - block_xy), using every
#: frame from each episode's 5th step on (the first steps lag the recorded pose). Residual over those
#: frames: max 0.122 px, mean 0.0026 px. tests/envs re-derives these numbers from the data.
KEYPOINTS_LOCAL = np.array(
    [
        [9.269736, 90.041060],
        [-60.983455, -1.186696],
        [60.912773, -1.393239],
        [-0.270506, 25.543704],
        [-14.065003, 122.815922],
        [39.002730, 32.857513],
        [-39.966422, 32.729705],
        [-16.824375, 62.863246],
        [23.541479, -1.700191],
    ]
)


def block_keypoints(block_xy: np.ndarray, angle: np.ndarray | float) -> np.ndarray:
    """Block keypoints from its pose: block_xy (..., 2), angle (...) -> (..., 9, 2) float64."""
    block_xy = np.asarray(block_xy, dtype=np.float64)
    angle = np.asarray(angle, dtype=np.float64)
    c, s = np.cos(angle)[..., None], np.sin(angle)[..., None]
    lx, ly = KEYPOINTS_LOCAL[:, 0], KEYPOINTS_LOCAL[:, 1]
    x = c * lx - s * ly + block_xy[..., None, 0]
    y = s * lx + c * ly + block_xy[..., None, 1]
    return np.stack([x, y], axis=-1)


def block_moved(pose: np.ndarray, start_pose: np.ndarray, tol: float = CONTACT_TOL) -> np.ndarray:
    """Whether the block pose(s) (..., 3) [x, y, angle] differ from ``start_pose`` (3,) by more than ``tol``
    in any coordinate: the first-contact test, shared by the env's tracking and
    ``immiscible_policy.metrics.pusht_modes.approach_side`` (one definition)."""
    return np.abs(np.asarray(pose, np.float64) - np.asarray(start_pose, np.float64)).max(axis=-1) > tol


def block_frame_x(point_xy: np.ndarray, block_pose: np.ndarray) -> np.ndarray | float:
    """The x coordinate of point(s) (..., 2) in the frame of the block at ``block_pose`` (3,): the x part of
    R(angle)^T (point - origin). The T is mirror-symmetric about this frame's y axis (its stem), so the sign
    says which half of the T the point is on."""
    point_xy, (x0, y0, theta) = np.asarray(point_xy, np.float64), np.asarray(block_pose, np.float64)
    return np.cos(theta) * (point_xy[..., 0] - x0) + np.sin(theta) * (point_xy[..., 1] - y0)


def legacy_test_start(seed: int) -> np.ndarray:
    """diffusion_policy's legacy test start for ``seed``: (5,) [agent x, y, block x, y, angle].

    The block pose is what is *passed to* position-then-angle setting (as diffusion_policy's legacy env
    did), so after reset the body origin sits at (bx, by) + (45 sin(angle), 45 (1 - cos(angle))).
    """
    rs = np.random.RandomState(seed)
    return np.array(
        [
            rs.randint(50, 450),
            rs.randint(50, 450),
            rs.randint(100, 400),
            rs.randint(100, 400),
            rs.randn() * 2 * np.pi - np.pi,
        ],
        dtype=np.float64,
    )


def register_envs() -> None:
    """Register ``immiscible/PushT-v0`` with gymnasium (idempotent)."""
    if PUSHT_ENV_ID not in gym.registry:
        gym.register(
            id=PUSHT_ENV_ID,
            entry_point="immiscible_envs.pusht:PushTEnv",
            max_episode_steps=MAX_EPISODE_STEPS,
            kwargs={"obs_type": "keypoints"},
        )


class PushTEnv(gym.Env):
    """Headless PushT with diffusion_policy's low-dim observations, test starts and scoring.

    Observation: float32 (20,) for ``"keypoints"``, (6,) for ``"state"``, (27650,) for ``"image"`` (frame
    CHW 0..255 then agent xy). Action: target agent position (2,) in pixels [0, 512]. Reward: per-step
    score min(coverage / 0.95, 1). ``render()`` for ``"image"`` shows the camera frame (nearest-neighbour
    upscaled) to the right of the usual view, so a rollout video shows what the policy saw.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self, obs_type: str = "keypoints", render_mode: str | None = "rgb_array", render_size: int = 256
    ):
        if obs_type not in OBS_DIMS:
            raise ValueError(f"unknown obs_type {obs_type!r}; valid: {sorted(OBS_DIMS)}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(
                f"unknown render_mode {render_mode!r}; valid: 'rgb_array' or None (headless only)"
            )
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        from gym_pusht.envs.pusht import PushTEnv as _GymPushT

        self.obs_type = obs_type
        self.render_mode = render_mode
        self._sim = _GymPushT(
            obs_type="state",
            render_mode="rgb_array",
            visualization_width=render_size,
            visualization_height=render_size,
            observation_width=IMAGE_SIZE,
            observation_height=IMAGE_SIZE,
        )
        self._camera: np.ndarray | None = None  # the last observed frame (image obs)
        if obs_type == "keypoints":
            low, high = np.zeros(20), np.full(20, 512.0)
        elif obs_type == "image":
            low = np.zeros(IMAGE_PIXELS + 2)
            high = np.concatenate([np.full(IMAGE_PIXELS, 255.0), [512.0, 512.0]])
        else:
            low = np.array([0, 0, 0, 0, -1, -1], dtype=np.float64)
            high = np.array([512, 512, 512, 512, 1, 1], dtype=np.float64)
        self.observation_space = spaces.Box(
            low=low.astype(np.float32), high=high.astype(np.float32), dtype=np.float32
        )
        self.action_space = spaces.Box(low=0.0, high=512.0, shape=(2,), dtype=np.float32)
        self.start_seed: int | None = None
        # mode tracking (docs/modes.md): the block pose at reset and the agent's x in that pose's frame at
        # the first contact (NaN until the block moves)
        self._start_pose = np.zeros(3)
        self._contact_x = float("nan")

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> np.ndarray:
        """(5,) float64 [agent x, y, block origin x, y, block angle] (angle not wrapped)."""
        sim = self._sim
        return np.array([*sim.agent.position, *sim.block.position, sim.block.angle], dtype=np.float64)

    def camera(self) -> np.ndarray:
        """(96, 96, 3) uint8: the frame as the demos recorded it (``data/img``): the 512x512 scene drawn by
        pygame, resized by OpenCV, no action marker (diffusion_policy's PushTImageEnv observation)."""
        return self._sim._render(visualize=False)

    def _obs(self) -> np.ndarray:
        s = self.state
        if self.obs_type == "image":
            self._camera = self.camera()
            pixels = self._camera.transpose(2, 0, 1).reshape(-1)
            return np.concatenate([pixels, s[:2]]).astype(np.float32)
        if self.obs_type == "keypoints":
            kp = block_keypoints(s[2:4], s[4]).reshape(-1)
            return np.concatenate([kp, s[:2]]).astype(np.float32)
        return np.array([s[0], s[1], s[2], s[3], np.sin(s[4]), np.cos(s[4])], dtype=np.float32)

    def _coverage(self) -> float:
        return float(self._sim._get_coverage())

    def _block_pose(self) -> np.ndarray:
        block = self._sim.block
        return np.array([block.position[0], block.position[1], block.angle], dtype=np.float64)

    def _track_contact(self) -> None:
        """After a step: note the agent's x in the start frame if the block has just moved for the first time
        (a few float operations per step; the physics step costs far more)."""
        if self._contact_x != self._contact_x and block_moved(self._block_pose(), self._start_pose):
            self._contact_x = float(block_frame_x(np.asarray(self._sim.agent.position), self._start_pose))

    def _info(self, coverage: float) -> dict[str, Any]:
        score = float(min(coverage / SUCCESS_COVERAGE, 1.0))
        success = bool(coverage >= SUCCESS_COVERAGE)
        return {
            "coverage": coverage,
            "score": score,
            "success": success,
            "is_success": success,
            "seed": -1 if self.start_seed is None else self.start_seed,
            "net_rotation": float(self._sim.block.angle - self._start_pose[2]),
            "contact_local_x": self._contact_x,
        }

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """``seed`` -> diffusion_policy's test start for that seed; ``options["reset_to_state"]`` -> a demo
        state (body-origin pose), placed exactly; ``options["starts"] = "symmetric"`` -> symmetric start
        ``seed % K`` (``SYMMETRIC_STARTS``), placed exactly (a vector env passes the same ``options`` to every
        env and a different seed to each). Without a seed, one is drawn from ``self.np_random``."""
        super().reset(seed=seed)
        options = options or {}
        starts = options.get("starts", "standard")
        if starts not in START_SETS:
            raise ValueError(f"unknown options['starts']={starts!r}; valid: {', '.join(START_SETS)}")
        target = options.get("reset_to_state")
        if target is not None and starts != "standard":
            raise ValueError("pass options['reset_to_state'] or options['starts'], not both")
        symmetric_seed = None
        if starts == "symmetric":
            symmetric_seed = int(self.np_random.integers(0, 2**31 - 1)) if seed is None else int(seed)
            target = SYMMETRIC_STARTS[symmetric_seed % len(SYMMETRIC_STARTS)]
        if target is not None:
            target = np.asarray(target, dtype=np.float64)
            if target.shape != (5,):
                raise ValueError(
                    f"reset_to_state must be (5,) [agent x, y, block x, y, angle], got {target.shape}"
                )
            theta = target[4]
            passed = target.copy()
            # gym-pusht rotates about the centre of gravity c after placing the origin; pre-shift so that
            # the origin ends at target: p' = p - c + R(theta) c, with c = (0, 45) in PushT.
            cx, cy = BLOCK_COG
            passed[2] += -cx + (np.cos(theta) * cx - np.sin(theta) * cy)
            passed[3] += -cy + (np.sin(theta) * cx + np.cos(theta) * cy)
            self.start_seed = symmetric_seed
        else:
            if seed is None:
                seed = int(self.np_random.integers(0, 2**31 - 1))
            self.start_seed = int(seed)
            passed = legacy_test_start(seed)
        self._sim.reset(options={"reset_to_state": passed})
        self._start_pose, self._contact_x = self._block_pose(), float("nan")
        return self._obs(), self._info(self._coverage())

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(2)
        _, _, _, _, sim_info = self._sim.step(action)
        self._track_contact()
        coverage = float(sim_info["coverage"])
        info = self._info(coverage)
        return self._obs(), info["score"], info["success"], False, info

    def render(self) -> np.ndarray | None:
        """(render_size, render_size, 3) uint8 frame (goal in green, last action as a red cross)."""
        if self.render_mode is None:
            return None
        view = self._sim.render()
        if self.obs_type != "image":
            return view
        import cv2  # gym-pusht's own dependency

        cam = self._camera if self._camera is not None else self.camera()
        cam = cv2.resize(cam, (view.shape[1], view.shape[0]), interpolation=cv2.INTER_NEAREST)
        return np.concatenate([view, cam], axis=1)

    def close(self) -> None:
        self._sim.close()
