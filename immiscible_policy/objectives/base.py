"""The :class:`Objective` interface: what a model learns to predict, and how to sample with it.

An objective owns everything of one step that depends on what the model predicts and nothing that
depends on how the noise was paired (docs/objectives.md)::

    t      = objective.draw_timesteps(B, device, generator)   # after the assigner's pairing
    x_t    = objective.add_noise(x0, noise, t)
    target = objective.target(x0, noise, t)                   # noise | v | x0 | noise - x0 | ...
    loss   = mse(model(x_t, objective.model_timesteps(t), cond), target)

and, at inference, the loop from x_T ~ N(0, I) to a sample (:meth:`Objective.sample`). The noising core
(:class:`~immiscible_policy.noising.NoisingCore`) holds one objective, one assigner and a pairing
schedule and never asks which objective it holds: a strategy never knows the objective, an objective
never knows the strategy (torchcfm keeps pairing and objective apart the same way), so any registered
objective trains with any registered assigner.

Built-ins: :class:`~immiscible_policy.objectives.ddpm.DDPMObjective` (``epsilon``, ``v_prediction``,
``sample``) and :class:`~immiscible_policy.objectives.flow.RectifiedFlow` (``flow``). Others come from
the entry-point group ``immiscible_policy.objectives`` (:mod:`immiscible_policy.objectives.registry`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

#: ``model_fn(x_t, model_timesteps) -> prediction``: the model with its condition bound, one batch
ModelFn = Callable[[Tensor, Tensor], Tensor]


class Objective(ABC):
    """What the model predicts for a noised batch, and the samplers that turn its predictions into data.

    Why an abstract base and not a protocol: the registry checks a plugin by ``issubclass`` when it is
    loaded (a wrong entry point is one line at selection time, not an ``AttributeError`` mid-training),
    and the base supplies the parts most objectives share (sampler choice, identity model timesteps).

    Class attributes:
        name: the objective's registered name (``trainer.objective``); the registry sets it on the
            instance it creates, so a class serving several names (DDPM) knows which one was selected.
        names: the registered names this class serves (informative; the built-ins' tables come from it).
        samplers: the samplers it accepts (``trainer.sampler``); the first is its default.

    Subclasses implement :meth:`draw_timesteps`, :meth:`add_noise`, :meth:`target`,
    :meth:`timestep_fraction` and :meth:`sample`; :meth:`sample_deterministic` and :meth:`invert` only
    when the inversion (bijectivity) analysis should run on them.
    """

    name: str = ""
    names: ClassVar[tuple[str, ...]] = ()
    samplers: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_trainer(
        cls, name: str, *, num_train_timesteps: int, beta_schedule: str, **params: Any
    ) -> Objective:
        """The objective ``trainer.objective=name`` selects, built from the trainer's noise settings.

        Why a classmethod and not the constructor: one class may serve several names (DDPM's prediction
        types) and the trainer's settings mean different things per objective (a DDPM schedule's length,
        a flow's timestep scale); each objective reads what it needs. ``params`` are the objective's own
        settings (``trainer.objective_params``). The default passes them to the constructor.
        """
        return cls(**params)

    # ----------------------------------------------------------------------------------- training
    @abstractmethod
    def draw_timesteps(self, batch: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        """(batch,) training timesteps, drawn from ``generator`` after the pairing (never from it)."""

    @abstractmethod
    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """(B, ...) x_t from the paired x0 and noise; ``t`` as :meth:`draw_timesteps` returns it."""

    @abstractmethod
    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """(B, ...) what the model regresses at x_t (noise, velocity, x0, ...), from the same pair."""

    def model_timesteps(self, t: Tensor) -> Tensor:
        """What the model's timestep embedding is fed for ``t`` (the identity unless overridden, e.g. a
        flow's t in [0, 1] scaled to the range a DDPM-tuned network expects)."""
        return t

    @abstractmethod
    def timestep_fraction(self, t: Tensor) -> Tensor:
        """``t`` mapped to [0, 1) in noise-level order (0 = clean), for the per-bucket loss curves."""

    # ----------------------------------------------------------------------------------- sampling
    @classmethod
    def default_sampler(cls, prefer: str | None = None) -> str:
        """The sampler ``trainer.sampler=auto`` means: ``prefer`` when this objective accepts it (the
        policy trainer prefers ddpm and the image trainer ddim, for any objective that takes those),
        else its first sampler."""
        if not cls.samplers:
            raise NotImplementedError(f"{cls.__qualname__} declares no samplers.")
        return prefer if prefer in cls.samplers else cls.samplers[0]

    @classmethod
    def resolve_sampler(cls, objective: str, sampler: str | None, prefer: str | None = None) -> str:
        """``sampler`` checked for ``objective`` (a name this class serves, for the message): ``auto`` or
        None -> :meth:`default_sampler`; one it does not accept is a one-line error, never a silent
        substitution."""
        if sampler in (None, "auto"):
            return cls.default_sampler(prefer)
        if sampler not in cls.samplers:
            raise ValueError(
                f"sampler={sampler!r} does not fit objective {objective!r}; use {' or '.join(cls.samplers)}."
            )
        return sampler

    @abstractmethod
    def sample(
        self,
        model_fn: ModelFn,
        noise: Tensor,
        *,
        num_inference_steps: int | None,
        sampler: str,
        generator: torch.Generator | None = None,
        data_range: Callable[[float], float] | None = None,
    ) -> Tensor:
        """x_T = ``noise`` (B, ...) -> a sample in the model's space (before the assigner's ``decode``).

        ``sampler`` is one of :attr:`samplers` (already resolved); ``num_inference_steps`` None means the
        objective's default; ``generator`` feeds stochastic samplers. ``data_range(r)`` is how far the
        training data reaches when unpaired data reaches ``r`` (the assigner's
        :meth:`~immiscible_policy.assigners.base.Assigner.data_range`), for objectives that clip samples.

        Why x_T comes in rather than a shape: the core draws the N(0, I) noise in training (where the
        assigner pairs it) and at inference alike, so the prior the model meets is the core's, one draw
        from the caller's generator, whatever the objective.
        """

    # ---------------------------------------------------------------------------------- inversion
    def sample_deterministic(self, model_fn: ModelFn, noise: Tensor, steps: int) -> Tensor:
        """Noise -> sample with a deterministic, exactly invertible sampler (no clipping), the forward
        half of the bijectivity analysis (:func:`~immiscible_policy.analysis.inversion.round_trip`)."""
        raise NotImplementedError(
            f"objective {self.name!r} has no deterministic sampler; the inversion analysis needs "
            "sample_deterministic and invert."
        )

    def invert(self, model_fn: ModelFn, sample: Tensor, steps: int, *, fixed_point_iters: int = 0) -> Tensor:
        """Sample -> the noise :meth:`sample_deterministic` would map to it (its steps run backwards);
        ``fixed_point_iters`` refines each step where the objective supports it."""
        raise NotImplementedError(
            f"objective {self.name!r} has no inversion; the inversion analysis needs sample_deterministic "
            "and invert."
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def broadcast(t: Tensor, like: Tensor) -> Tensor:
    """(B,) per-sample values as (B, 1, ..., 1) in ``like``'s dtype, to scale a (B, ...) batch."""
    return t.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def refuse_params(name: str, params: dict[str, Any]) -> None:
    """An objective without settings of its own refuses ``trainer.objective_params`` (never ignores it)."""
    if params:
        raise ValueError(f"objective {name!r} takes no objective_params (got {', '.join(sorted(params))})")
