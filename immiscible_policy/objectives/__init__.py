"""Training objectives as strategies: one file per objective, found through a registry.

``trainer.objective`` names an :class:`Objective` (base.py): the DDPM family (ddpm.py: ``epsilon``,
``v_prediction``, ``sample``), rectified flow (flow.py: ``flow``), or any class a distribution registers
in the entry-point group ``immiscible_policy.objectives`` (registry.py; docs/objectives.md).
"""

from __future__ import annotations

from typing import Any

from immiscible_policy.objectives.base import ModelFn, Objective
from immiscible_policy.objectives.ddpm import DDPMObjective
from immiscible_policy.objectives.flow import RectifiedFlow
from immiscible_policy.objectives.registry import (
    GROUP,
    DuplicateObjectiveError,
    ObjectiveError,
    ObjectiveImportError,
    UnknownObjectiveError,
    available,
    check_name,
    create,
    get_class,
    origin_of,
    register,
    unregister,
)

#: this package's objective classes (each registered in pyproject.toml under every name it serves)
BUILTINS: tuple[type[Objective], ...] = (DDPMObjective, RectifiedFlow)
#: the built-ins' names and samplers, for callers that list choices without the registry
BUILTIN_NAMES: tuple[str, ...] = tuple(n for cls in BUILTINS for n in cls.names)
BUILTIN_SAMPLERS: dict[str, tuple[str, ...]] = {n: cls.samplers for cls in BUILTINS for n in cls.names}


def as_objective(objective: Any) -> Objective:
    """``objective`` as an :class:`Objective`: an Objective as it is, a diffusers DDPM/DDIM scheduler
    wrapped in :class:`DDPMObjective` (what callers passed the noising core before objectives were
    strategies, and what diffusers users hold)."""
    if isinstance(objective, Objective):
        return objective
    config = getattr(objective, "config", None)
    if config is not None and hasattr(objective, "add_noise") and "prediction_type" in config:
        return DDPMObjective(objective)
    raise TypeError(
        f"expected an immiscible_policy.objectives.Objective or a diffusers DDPM/DDIM scheduler, got "
        f"{type(objective).__name__}."
    )


__all__ = [
    "BUILTINS",
    "BUILTIN_NAMES",
    "BUILTIN_SAMPLERS",
    "DDPMObjective",
    "DuplicateObjectiveError",
    "GROUP",
    "ModelFn",
    "Objective",
    "ObjectiveError",
    "ObjectiveImportError",
    "RectifiedFlow",
    "UnknownObjectiveError",
    "as_objective",
    "available",
    "check_name",
    "create",
    "get_class",
    "origin_of",
    "register",
    "unregister",
]
