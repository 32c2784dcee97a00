"""The former path of the waypoint machinery and the experts registry, kept importable.

Why a module of re-exports: ``from immiscible_policy.collect.base import WaypointExpert, make_expert``
worked before the machinery moved to :mod:`immiscible_policy.collect.waypoints` and the registry to the
package. Nothing in the package imports this module, so it can sit above both without a cycle (the
experts import ``waypoints``, the package imports the experts, this module imports the package).
"""

from __future__ import annotations

from immiscible_policy.collect import EXPERTS, make_expert
from immiscible_policy.collect.waypoints import CLOSE, OPEN, POS_SCALE, WaypointExpert

__all__ = ["CLOSE", "EXPERTS", "OPEN", "POS_SCALE", "WaypointExpert", "make_expert"]
