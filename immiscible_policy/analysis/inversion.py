"""Deterministic DDIM (eta = 0, no clipping) and its inversion, for the bijectivity analysis.

If the learned denoising map is a bijection between noise and data, DDIM-inverting a DDIM sample gives
back the noise it came from. Both directions here use exactly the same update (no clipping, which would
break invertibility), so with a model whose prediction does not depend on x the round trip is exact
(tested); with a trained model the reconstruction error measures how far the map is from a bijection.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def ddim_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """Descending timesteps, evenly spaced like diffusers' DDIM 'leading' spacing."""
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
    model_fn: Callable[[Tensor, Tensor], Tensor], x0: Tensor, alphas_cumprod: Tensor, steps: int
) -> Tensor:
    """Sample (B, ...) -> the noise DDIM would map to it (the same steps, run backwards)."""
    ts = ddim_timesteps(len(alphas_cumprod), steps)[::-1]  # ascending
    x = x0
    for i, t in enumerate(ts):
        a_from = float(alphas_cumprod[ts[i - 1]]) if i > 0 else 1.0
        eps = model_fn(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        x = _step(x, eps, a_from, float(alphas_cumprod[t]))
    return x
