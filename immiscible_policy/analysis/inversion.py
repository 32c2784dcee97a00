"""Deterministic DDIM (eta = 0, no clipping) / Euler flow sampling and their inversions (bijectivity).

If the learned denoising map is a bijection between noise and data, inverting a deterministic sample gives
back the noise it came from. Both directions here use exactly the same update (no clipping, which would
break invertibility), so with a model whose prediction does not depend on x the round trip is exact
(tested); with a trained model the reconstruction error measures how far the map is from a bijection.
:func:`round_trip` picks the pair for a :class:`~immiscible_policy.noising.NoisingCore` (epsilon,
v_prediction and sample models go through DDIM via their implied epsilon; rectified flow through Euler).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from immiscible_policy.noising import euler_sample


def ddim_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """Descending timesteps, evenly spaced like diffusers' DDIM 'leading' spacing."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps={steps} must be between 1 and the {num_train_timesteps} training timesteps.")
    ratio = num_train_timesteps // steps
    return [i * ratio for i in range(steps)][::-1]


def _step(x: Tensor, eps: Tensor, a_from: float, a_to: float) -> Tensor:
    x0_hat = (x - (1 - a_from) ** 0.5 * eps) / a_from**0.5
    return a_to**0.5 * x0_hat + (1 - a_to) ** 0.5 * eps


@torch.no_grad()
def ddim_sample(
    model_fn: Callable[[Tensor, Tensor], Tensor], noise: Tensor, alphas_cumprod: Tensor, steps: int
) -> Tensor:
    """Noise (B, ...) -> sample, with an epsilon-predicting ``model_fn(x_t, t)``."""
    ts = ddim_timesteps(len(alphas_cumprod), steps)
    x = noise
    for i, t in enumerate(ts):
        a_to = float(alphas_cumprod[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        eps = model_fn(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        x = _step(x, eps, float(alphas_cumprod[t]), a_to)
    return x


@torch.no_grad()
def ddim_invert(
    model_fn: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    alphas_cumprod: Tensor,
    steps: int,
    fixed_point_iters: int = 0,
) -> Tensor:
    """Sample (B, ...) -> the noise DDIM would map to it (the same steps, run backwards).

    Plain DDIM inversion evaluates the model at the less noisy point (eps(x_{t-1}, t) stands in for
    eps(x_t, t)), an approximation that is poor where alpha_bar changes fast between steps (few steps,
    or the end of a squared-cosine schedule). ``fixed_point_iters`` > 0 refines each step by iterating
    x_t <- inverse_step(x_{t-1}, eps(x_t, t)); at its fixed point the forward DDIM step from x_t gives
    back x_{t-1} exactly, so the remaining error is the map's own non-invertibility (or non-convergence).
    """
    ts = ddim_timesteps(len(alphas_cumprod), steps)[::-1]  # ascending
    x = x0
    for i, t in enumerate(ts):
        a_from = float(alphas_cumprod[ts[i - 1]]) if i > 0 else 1.0
        a_to = float(alphas_cumprod[t])
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        prev = x
        x = _step(prev, model_fn(prev, tt), a_from, a_to)
        for _ in range(fixed_point_iters):
            x = _step(prev, model_fn(x, tt), a_from, a_to)
    return x


def epsilon_model(
    model_fn: Callable[[Tensor, Tensor], Tensor], prediction_type: str, alphas_cumprod: Tensor
) -> Callable[[Tensor, Tensor], Tensor]:
    """Wrap a model predicting ``epsilon | v_prediction | sample`` as an epsilon predictor for DDIM.

    v = sqrt(a) eps - sqrt(1 - a) x0 and x_t = sqrt(a) x0 + sqrt(1 - a) eps give
    eps = sqrt(a) v + sqrt(1 - a) x_t; an x0 prediction gives eps = (x_t - sqrt(a) x0) / sqrt(1 - a).
    """
    if prediction_type == "epsilon":
        return model_fn
    if prediction_type not in ("v_prediction", "sample"):
        raise ValueError(
            f"prediction_type {prediction_type!r} cannot be inverted with DDIM; use epsilon, v_prediction "
            "or sample (rectified flow goes through euler_invert)."
        )

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        a = alphas_cumprod.to(x.device, x.dtype)[t].reshape(-1, *[1] * (x.dim() - 1))
        out = model_fn(x, t)
        if prediction_type == "v_prediction":
            return a.sqrt() * out + (1 - a).sqrt() * x
        return (x - a.sqrt() * out) / (1 - a).sqrt()

    return eps_fn


@torch.no_grad()
def euler_invert(
    velocity_fn: Callable[[Tensor, Tensor], Tensor], x0: Tensor, steps: int, timestep_scale: float
) -> Tensor:
    """The Euler steps of :func:`~immiscible_policy.noising.euler_sample` undone in reverse order (v taken
    at the step's own t)."""
    ts = torch.linspace(1.0, 0.0, steps + 1, device=x0.device)
    x = x0
    for i in reversed(range(steps)):
        x = x - (ts[i + 1] - ts[i]) * velocity_fn(x, ts[i].expand(x.shape[0]) * timestep_scale)
    return x


def round_trip(
    core, model_fn: Callable[[Tensor, Tensor], Tensor], noise: Tensor, steps: int, fixed_point_iters: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """(sample, recovered noise, sample of the recovered noise) for ``core``'s objective.

    Deterministic sampling, its inversion, and sampling again from what the inversion gave: when the
    recovered noise differs from the noise but re-samples to the same point, the map sends two noises to
    one sample (not injective there); when it re-samples elsewhere, the inversion itself is off.
    Samples are in the model's space (before the assigner's ``decode``), which is what inversion needs.
    ``fixed_point_iters`` refines each DDIM inversion step (see :func:`ddim_invert`; Euler inversion
    ignores it).
    """
    if core.is_flow:
        scale = core.scheduler.timestep_scale
        sample = euler_sample(model_fn, noise, steps, scale)
        back = euler_invert(model_fn, sample, steps, scale)
        return sample, back, euler_sample(model_fn, back, steps, scale)
    ac = core.scheduler.alphas_cumprod
    eps_fn = epsilon_model(model_fn, core.objective, ac)
    sample = ddim_sample(eps_fn, noise, ac, steps)
    back = ddim_invert(eps_fn, sample, ac, steps, fixed_point_iters)
    return sample, back, ddim_sample(eps_fn, back, ac, steps)
