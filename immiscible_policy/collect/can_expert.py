"""Scripted PickPlaceCan: top grasp of the can in the left bin, carry it over its target compartment of
the right bin, drop it from a few centimetres, move the gripper away.

Why the last move: the task's success check also needs the gripper away from the can (reach reward
< 0.6, i.e. ~7 cm), so an expert that only opens its fingers never "succeeds". The carry height
clears the bin walls; the drop height keeps the can upright enough to land inside the compartment.
"""

from __future__ import annotations

import numpy as np

from immiscible_policy.collect.waypoints import CLOSE, OPEN, WaypointExpert

__all__ = ["CanExpert"]


class CanExpert(WaypointExpert):
    PHASES = ("approach", "descend", "grasp", "lift", "carry", "lower", "release", "retreat")
    HOVER = 0.10
    GRASP_STEPS = 10
    CARRY_Z = 1.02  # world z while carrying (bins' floor at 0.8)
    DROP_Z = 0.94  # gripper z at release
    RELEASE_STEPS = 8

    def plan(self, raw):
        can = np.asarray(raw["Can_pos"], dtype=np.float64)
        eef = np.asarray(raw["robot0_eef_pos"], dtype=np.float64)
        goal = np.asarray(self.env.robosuite_env.target_bin_placements[self.env.robosuite_env.object_id])
        name = self.phase_name
        if name == "approach":
            target = can + self.offset + [0.0, 0.0, self.HOVER]
            err = target - eef
            return target, OPEN, np.linalg.norm(err[:2]) < 0.01 and abs(err[2]) < 0.02
        if name == "descend":
            target = can + self.offset + [0.0, 0.0, 0.01]
            return target, OPEN, abs(target[2] - eef[2]) < 0.008 or self.phase_steps > 30
        if name == "grasp":
            if self.phase_steps == 0:
                self.hold = eef.copy()
            return self.hold, CLOSE, self.phase_steps >= self.GRASP_STEPS
        if name == "lift":
            target = np.array([self.hold[0], self.hold[1], self.CARRY_Z])
            return target, CLOSE, abs(target[2] - eef[2]) < 0.02
        if name == "carry":
            target = np.array([goal[0], goal[1], self.CARRY_Z]) + self.offset * [1, 1, 0]
            return target, CLOSE, np.linalg.norm((target - eef)[:2]) < 0.015
        if name == "lower":
            target = np.array([goal[0], goal[1], self.DROP_Z]) + self.offset * [1, 1, 0]
            return target, CLOSE, abs(target[2] - eef[2]) < 0.015
        if name == "release":
            if self.phase_steps == 0:
                self.hold = eef.copy()
            return self.hold, OPEN, self.phase_steps >= self.RELEASE_STEPS
        return self.hold + [0.0, 0.0, 0.12], OPEN, False
