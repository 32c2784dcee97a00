"""Scripted Lift: above the cube, down, close, lift (~50 steps at 20 Hz).

Why these numbers: the cube is ~0.042 m wide and the Panda fingers open to 0.08 m, so a top grasp at the
cube centre works for any yaw; success is the cube's centre > table + 0.04 m, so lifting the gripper
0.15 m above its grasp height is comfortably past it.
"""

from __future__ import annotations

import numpy as np

from immiscible_policy.collect.waypoints import CLOSE, OPEN, WaypointExpert

__all__ = ["LiftExpert"]


class LiftExpert(WaypointExpert):
    PHASES = ("approach", "descend", "grasp", "lift")
    HOVER = 0.08  # m above the cube centre
    GRASP_STEPS = 8
    LIFT = 0.15

    def plan(self, raw):
        cube = np.asarray(raw["cube_pos"], dtype=np.float64)
        eef = np.asarray(raw["robot0_eef_pos"], dtype=np.float64)
        name = self.phase_name
        if name == "approach":
            target = cube + self.offset + [0.0, 0.0, self.HOVER]
            err = target - eef
            return target, OPEN, np.linalg.norm(err[:2]) < 0.01 and abs(err[2]) < 0.02
        if name == "descend":
            target = cube + self.offset
            return target, OPEN, abs(target[2] - eef[2]) < 0.008 or self.phase_steps > 30
        if name == "grasp":
            if self.phase_steps == 0:
                self.hold = eef.copy()
            return self.hold, CLOSE, self.phase_steps >= self.GRASP_STEPS
        return self.hold + [0.0, 0.0, self.LIFT], CLOSE, False
