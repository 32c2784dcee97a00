"""Scripted experts and the robomimic-format demo writer behind ``immiscible-collect``.

Why: no robomimic dataset can be downloaded here, so the pipeline (hdf5 reader -> trainer -> robosuite
rollouts) is exercised end to end on demonstrations written by small waypoint experts.

The registry of experts lives here, above them: ``waypoints.py`` (the waypoint machinery) knows no
expert, each expert imports only ``waypoints.py``; ``base.py`` re-exports both for the former path.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from immiscible_policy.collect.can_expert import CanExpert
from immiscible_policy.collect.lift_expert import LiftExpert
from immiscible_policy.collect.waypoints import WaypointExpert

__all__ = ["EXPERTS", "WaypointExpert", "make_expert"]

#: robosuite task name -> its scripted expert
_EXPERTS: dict[str, type[WaypointExpert]] = {"Lift": LiftExpert, "PickPlaceCan": CanExpert}
EXPERTS = tuple(_EXPERTS)


def make_expert(env_name: str, rng: np.random.Generator, **kw: Any) -> WaypointExpert:
    """The scripted expert for a robosuite task name; one-line error for tasks without one."""
    if env_name not in _EXPERTS:
        raise ValueError(f"no scripted expert for env {env_name!r}; available: {', '.join(sorted(_EXPERTS))}")
    return _EXPERTS[env_name](rng, **kw)
