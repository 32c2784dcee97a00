"""Miscibility metric: how much the noised versions of different samples overlap, per timestep.

For a batch of clean samples x0_i, each paired with noise by an assigner and noised to x_t_i, compute the
posterior weight of the sample's own x0 among all candidates {x0_j} (the batch, plus optional held-out
data) under the scheduler's Gaussian q(x_t | x0) = N(sqrt(a_t) x0, (1 - a_t) I):

    w_ii = softmax_j( -||x_t_i - sqrt(a_t) x0_j||^2 / (2 (1 - a_t)) )_i
    mixing(t) = 1 - mean_i w_ii

0 means every noised sample still points unambiguously at its own x0; 1 - 1/N means complete mixing.
Two far-apart points give ~0 at small t and ~0.5 as t -> T (tested). No model is needed: this measures
the data + assigner, i.e. how hard the denoising target is, not how well a model fits it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from immiscible_policy.assigners.base import Assigner


@torch.no_grad()
def own_posterior_weight(x_t: Tensor, x0: Tensor, candidates: Tensor, alpha_bar: float) -> Tensor:
    """(B,) weight of each row's own x0 among ``candidates`` (N, D) (first B rows must be ``x0``)."""
    a = float(alpha_bar)
    xt, cand = x_t.flatten(1).double(), candidates.flatten(1).double()
    d2 = torch.cdist(xt, a**0.5 * cand).pow(2)  # (B, N)
    logits = -d2 / (2.0 * max(1.0 - a, 1e-12))
    logw = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    b = x0.shape[0]
    return logw[torch.arange(b), torch.arange(b)].exp()


@torch.no_grad()
def mixing_curve(
    x0: Tensor,
    assigner: Assigner,
    alphas_cumprod: Tensor,
    timesteps: list[int],
    *,
    held_out: Tensor | None = None,
    repeats: int = 4,
    seed: int = 0,
) -> list[dict]:
    """Mixing (1 - mean own-posterior weight) at each timestep for one assigner.

    Args:
        x0: (B, ...) clean (normalised) batch.
        alphas_cumprod: (T,) the scheduler's cumulative alphas.
        timesteps: which t to evaluate.
        held_out: optional (M, ...) extra clean samples used only as competing candidates.
        repeats: independent noise draws averaged per timestep.
    """
    out = []
    for t in timesteps:
        a = float(alphas_cumprod[t])
        vals = []
        for r in range(repeats):
            g = torch.Generator(device=x0.device).manual_seed(seed * 1000 + r)
            noise = torch.randn(x0.shape, generator=g, device=x0.device, dtype=x0.dtype)
            p = assigner.pair(x0, noise, generator=g)
            x_t = a**0.5 * p.x0 + (1 - a) ** 0.5 * p.noise
            cands = p.x0 if held_out is None else torch.cat([p.x0, assigner.pair(held_out, held_out).x0])
            vals.append(float(1.0 - own_posterior_weight(x_t, p.x0, cands, a).mean()))
        out.append({"t": int(t), "alpha_bar": a, "mixing": sum(vals) / len(vals)})
    return out
