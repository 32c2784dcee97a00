"""Scripted experts and the robomimic-format demo writer behind ``immiscible-collect``.

Why: no robomimic dataset can be downloaded here, so the pipeline (hdf5 reader -> trainer -> robosuite
rollouts) is exercised end to end on demonstrations written by small waypoint experts.
"""

from immiscible_policy.collect.base import EXPERTS, WaypointExpert, make_expert

__all__ = ["EXPERTS", "WaypointExpert", "make_expert"]
