"""Deterministic sampling and its inversion (bijectivity), for any objective that provides them.

If the learned denoising map is a bijection between noise and data, inverting a deterministic sample gives
back the noise it came from. Both directions use exactly the same update (no clipping, which would
break invertibility), so with a model whose prediction does not depend on x the round trip is exact
(tested); with a trained model the reconstruction error measures how far the map is from a bijection.
:func:`round_trip` asks the core's objective for the pair
(:meth:`~immiscible_policy.objectives.Objective.sample_deterministic` and
:meth:`~immiscible_policy.objectives.Objective.invert`): epsilon, v_prediction and sample models go
through DDIM via their implied epsilon, rectified flow through Euler.

The DDIM and Euler loops live with their objectives (:mod:`immiscible_policy.objectives.ddpm`,
:mod:`immiscible_policy.objectives.flow`) and are re-exported here, where analyses have imported them.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from immiscible_policy.objectives.ddpm import ddim_invert, ddim_sample, ddim_timesteps, epsilon_model
from immiscible_policy.objectives.flow import euler_invert, euler_sample

__all__ = [
    "ddim_invert",
    "ddim_sample",
    "ddim_timesteps",
    "epsilon_model",
    "euler_invert",
    "euler_sample",
    "round_trip",
]


def round_trip(
    core, model_fn: Callable[[Tensor, Tensor], Tensor], noise: Tensor, steps: int, fixed_point_iters: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """(sample, recovered noise, sample of the recovered noise) for ``core``'s objective.

    Deterministic sampling, its inversion, and sampling again from what the inversion gave: when the
    recovered noise differs from the noise but re-samples to the same point, the map sends two noises to
    one sample (not injective there); when it re-samples elsewhere, the inversion itself is off.
    Samples are in the model's space (before the assigner's ``decode``), which is what inversion needs.
    ``fixed_point_iters`` refines each DDIM inversion step (see :func:`ddim_invert`; Euler inversion
    ignores it). An objective without a deterministic sampler raises ``NotImplementedError``.
    """
    objective = core.objective_impl
    sample = objective.sample_deterministic(model_fn, noise, steps)
    back = objective.invert(model_fn, sample, steps, fixed_point_iters=fixed_point_iters)
    return sample, back, objective.sample_deterministic(model_fn, back, steps)
