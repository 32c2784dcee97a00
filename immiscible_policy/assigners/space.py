"""Feature spaces in which assigners measure sample-to-noise distance.

``space="full"`` compares flattened samples. ``space="pool:N"`` first average-pools the spatial dims to
N (1-D sequences such as action chunks (B, T, A) pool T; images (B, C, H, W) pool to N x N; volumes to
N x N x N). This is the paper's "reduce miscibility at any layer": a coarser space makes distance
computation cheaper for large images while still separating samples.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def parse_space(space: str) -> int | None:
    """Return None for "full", N for "pool:N"; one-line error otherwise."""
    if space == "full":
        return None
    if isinstance(space, str) and space.startswith("pool:"):
        try:
            n = int(space.split(":", 1)[1])
        except ValueError:
            n = 0
        if n >= 1:
            return n
    raise ValueError(f"Invalid space {space!r}: use 'full' or 'pool:N' with N >= 1 (e.g. 'pool:8').")


def features(x: Tensor, space: str | int | None) -> Tensor:
    """Map a batch (B, ...) to distance features (B, F) in ``space`` (already parsed or a string)."""
    pool = parse_space(space) if isinstance(space, str) else space
    if pool is None:
        return x.flatten(1)
    if x.dim() == 3:  # (B, T, A): pool the time axis
        return F.adaptive_avg_pool1d(x.transpose(1, 2), pool).flatten(1)
    if x.dim() == 4:  # (B, C, H, W)
        return F.adaptive_avg_pool2d(x, pool).flatten(1)
    if x.dim() == 5:  # (B, C, D, H, W)
        return F.adaptive_avg_pool3d(x, pool).flatten(1)
    raise ValueError(
        f"space='pool:{pool}' needs spatial dims (B, T, A), (B, C, H, W) or (B, C, D, H, W); "
        f"got shape {tuple(x.shape)}. Use space='full'."
    )


def pairwise_sq_dist(a: Tensor, b: Tensor, dtype=None) -> Tensor:
    """Squared L2 distances (Na, Nb) between rows of a (Na, F) and b (Nb, F), via one matmul."""
    if dtype is not None:
        a, b = a.to(dtype), b.to(dtype)
    d = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1)[None, :] - 2.0 * (a @ b.T)
    return d.clamp_min_(0)


COSTS = ("l2", "sqeuclidean")


def check_cost(cost: str, who: str) -> str:
    """One-line error unless ``cost`` is ``l2`` (the 2024 paper's code) or ``sqeuclidean`` (W2 / torchcfm)."""
    if cost not in COSTS:
        raise ValueError(f"{who}: cost must be 'l2' or 'sqeuclidean', got {cost!r}.")
    return cost


def pairwise_cost(a: Tensor, b: Tensor, cost: str, dtype=None) -> Tensor:
    """(Na, Nb) assignment cost between rows: plain L2 distance (``l2``) or its square (``sqeuclidean``).

    The two give different optimal permutations: the square weighs far pairs more (the W2 coupling),
    the plain distance is what the Immiscible Diffusion code assigns on.
    """
    d = pairwise_sq_dist(a, b, dtype=dtype)
    return d if cost == "sqeuclidean" else d.float().sqrt()
