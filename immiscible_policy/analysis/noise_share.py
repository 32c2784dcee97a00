"""How much of a policy's action comes from its sampling noise instead of its observation.

Why: immiscible pairing that ignores the observation pairs each action chunk with noise close to it, so
during training the noise carries part of the action (the trainers' ``condition_leak`` measures that on
the training noise). A model can learn to read the action off the noise. At inference the noise is drawn
independently of the observation, and an action read off it is a random action: the policy scatters where
it should act. This measures that on the trained policy, with no environment and no pairing involved.

For each of ``n`` observations, draw ``samples`` actions (the executed chunk, env units) with independent
noises and split their variance by the law of total variance:

    noise_share = mean over observations of the within-observation variance / the variance over all draws

(per coordinate summed, unbiased estimators). 0: the action is a function of the observation; 1: it
ignores the observation. A state where the demos hold two ways to act has some within-observation spread
on its own, so compare policies on the same observations rather than against 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

__all__ = ["noise_share"]


def noise_share(
    predict: Callable[[Tensor, torch.Generator], np.ndarray],
    obs: Tensor,
    *,
    samples: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict:
    """``predict(obs_batch, generator) -> actions`` (a policy's ``predict_action``) on each observation in
    ``obs`` (n, n_obs_steps, obs_dim) ``samples`` times, in one batch (noise from a generator on ``device`` seeded with ``seed``): the noise share of the action's
    variance, and the within- and between-observation standard deviations (env units, root mean square
    over the chunk's coordinates)."""
    n = int(obs.shape[0])
    if n < 2:
        raise ValueError(f"noise_share needs at least 2 observations, got {n}.")
    if samples < 2:
        raise ValueError(f"noise_share needs at least 2 samples per observation, got samples={samples}.")
    actions = predict(obs.repeat_interleave(samples, 0), torch.Generator(device=device).manual_seed(seed))
    a = torch.as_tensor(np.asarray(actions), dtype=torch.float64).reshape(n, samples, -1)
    if not torch.isfinite(a).all():
        raise ValueError("the policy sampled a non-finite action; no noise share is reported.")
    within = a.var(1, unbiased=True).sum(-1)  # per observation
    total = a.reshape(n * samples, -1).var(0, unbiased=True).sum()
    between = a.mean(1).var(0, unbiased=True).sum()
    d = a.shape[-1]
    return {
        "noise_share": float(within.mean() / total.clamp_min(1e-12)),
        "within_obs_std": float((within.mean() / d).sqrt()),
        "between_obs_std": float((between / d).sqrt()),
        "observations": n,
        "samples_per_observation": int(samples),
    }
