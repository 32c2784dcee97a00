"""Waypoint experts for OSC_POSE delta control: move the gripper to targets, open/close, in phases.

Why waypoints: Lift and PickPlaceCan are solved by a few straight moves (above the object, down, close,
up, over the goal, open), and a proportional controller on the end-effector position is all that
robosuite's operational-space controller needs: ``action[:3] = clip(gain * (target - eef) / 0.05)``, the
delta being in units of the controller's 0.05 m output scale. Orientation is held (delta rotation 0).

Randomisation (the "small noise" of the demos): per episode a grasp offset and a speed gain, per step
Gaussian action noise on the position channels. An expert is a small state machine; ``act(raw_obs)``
returns the (7,) action and advances the phase.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["CLOSE", "OPEN", "POS_SCALE", "WaypointExpert"]

OPEN, CLOSE = -1.0, 1.0
#: OSC_POSE position output scale (m per unit action) in robomimic's controller config.
POS_SCALE = 0.05


class WaypointExpert:
    """Base class: phase bookkeeping, the proportional move and the noise.

    Subclasses define ``PHASES`` (names, in order) and ``plan(raw_obs) -> (target_xyz, gripper, done)``
    for the current phase; ``done`` advances to the next phase.
    """

    PHASES: tuple[str, ...] = ()

    def __init__(self, rng: np.random.Generator, noise_std: float = 0.05, max_speed: float = 0.6):
        self.rng, self.noise_std, self.max_speed = rng, float(noise_std), float(max_speed)

    def reset(self, env: Any) -> None:
        """Start a new episode on ``env`` (a :class:`RobomimicEnv`): phase 0, fresh random offsets."""
        self.env, self.phase, self.phase_steps = env, 0, 0
        self.gain = float(self.rng.uniform(0.8, 1.2))
        self.offset = self.rng.uniform(-0.005, 0.005, size=3) * np.array([1.0, 1.0, 0.5])

    @property
    def phase_name(self) -> str:
        return self.PHASES[min(self.phase, len(self.PHASES) - 1)]

    def plan(self, raw: dict[str, np.ndarray]) -> tuple[np.ndarray, float, bool]:  # pragma: no cover
        raise NotImplementedError

    def act(self, raw: dict[str, np.ndarray]) -> np.ndarray:
        target, gripper, done = self.plan(raw)
        eef = np.asarray(raw["robot0_eef_pos"], dtype=np.float64)
        move = self.gain * (target - eef) / POS_SCALE
        norm = np.linalg.norm(move)
        if norm > self.max_speed:
            move *= self.max_speed / norm
        move += self.rng.normal(0.0, self.noise_std, size=3)
        self.phase_steps += 1
        if done and self.phase < len(self.PHASES) - 1:
            self.phase, self.phase_steps = self.phase + 1, 0
        action = np.zeros(7)
        action[:3] = np.clip(move, -1.0, 1.0)
        action[6] = gripper
        return action
