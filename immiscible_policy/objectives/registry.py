"""The objectives' registry: entry-point group ``immiscible_policy.objectives``, the assigners' rules.

A :class:`~immiscible_policy.registry.Registry` (the assigners' machinery, not a copy of it): names
listed from package metadata without importing anything, a plugin imported only when selected, an
unknown name a one-line "did you mean" error listing the available ones, two distributions claiming one
name an error naming both, a broken plugin listed with its error and failing only when selected,
``module.path:ClassName`` accepted without registration, ``IMMISCIBLE_DISABLE_PLUGINS=1`` keeping the
built-ins only. The built-ins are registered in this package's ``pyproject.toml`` like any plugin's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from immiscible_policy.objectives.base import Objective
from immiscible_policy.registry import Entry, Registry, RegistryErrors, one_line

GROUP = "immiscible_policy.objectives"


class ObjectiveError(ValueError):
    """Base of the objective registry's one-line errors (a ValueError, so the CLIs print one line)."""


class UnknownObjectiveError(ObjectiveError):
    pass


class DuplicateObjectiveError(ObjectiveError):
    pass


class ObjectiveImportError(ObjectiveError):
    pass


def _check_objective(cls: type, label: str) -> None:
    """What ``issubclass`` does not catch, caught when the class is loaded instead of mid-training."""
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise ObjectiveError(
            f"Objective '{label}' does not implement {missing} (see Objective's docstrings)."
        )
    samplers = cls.samplers
    if not isinstance(samplers, tuple) or not samplers or not all(isinstance(s, str) for s in samplers):
        raise ObjectiveError(
            f"Objective '{label}' declares samplers={samplers!r}; declare a non-empty tuple of sampler "
            "names (trainer.sampler), its default first."
        )


REGISTRY = Registry(
    GROUP,
    "objective",
    Objective,
    "immiscible_policy.objectives.Objective",
    RegistryErrors(ObjectiveError, UnknownObjectiveError, DuplicateObjectiveError, ObjectiveImportError),
    "An objective not registered can be given as 'module.path:ClassName'.",
    check=_check_objective,
)


def available() -> dict[str, Entry]:
    """All known objective names -> their entry (origin distribution, version); imports nothing."""
    return REGISTRY.available()


def register(name: str | None = None) -> Callable[[type], type]:
    """Class decorator registering an in-process objective (tests, notebooks); refuses a taken name."""
    return REGISTRY.register(name)


def unregister(name: str) -> None:
    """Remove an in-process registration (for tests)."""
    REGISTRY.unregister(name)


def refresh() -> None:
    """Forget cached objective entry points (:func:`immiscible_policy.registry.refresh`: every kind)."""
    REGISTRY.refresh()


def check_name(name: str) -> None:
    """A registered objective or a ``module:Class`` path, else the one-line unknown-name error; imports
    nothing."""
    REGISTRY.check_name(name)


def get_class(name: str) -> type[Objective]:
    """The objective class for a registered name or a ``module:Class`` path (imported on first use)."""
    return REGISTRY.get_class(name)


def create(
    name: str, *, num_train_timesteps: int, beta_schedule: str, params: Mapping[str, Any] | None = None
) -> Objective:
    """The objective ``trainer.objective=name`` selects, built from the trainer's noise settings
    (:meth:`Objective.from_trainer`) and its own settings ``params`` (``trainer.objective_params``); its
    :attr:`~Objective.name` is ``name``, so the core, the records and the sampler checks all see the name
    the config gave."""
    cls = get_class(name)
    try:
        objective = cls.from_trainer(
            name,
            num_train_timesteps=int(num_train_timesteps),
            beta_schedule=str(beta_schedule),
            **dict(params or {}),
        )
    except ObjectiveError:
        raise
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise ObjectiveError(
            f"Objective '{name}' could not be built (num_train_timesteps={num_train_timesteps!r}, "
            f"beta_schedule={beta_schedule!r}, objective_params={dict(params or {})!r}): "
            f"{one_line(exc).rstrip('.')}."
        ) from exc
    if not isinstance(objective, Objective):
        raise ObjectiveError(
            f"Objective '{name}': {cls.__qualname__}.from_trainer returned {type(objective).__name__}, "
            "not an Objective."
        )
    objective.name = name
    return objective


def origin_of(name: str) -> dict[str, str | None]:
    """``{"distribution", "version"}`` providing objective ``name`` (None for a ``module:Class`` path)."""
    return REGISTRY.origin(name)
