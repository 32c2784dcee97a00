"""``knn``: KNN noise selection (Improved Immiscible Diffusion, 2025).

For every sample, take k noise candidates (the input noise is candidate 1; k - 1 more are drawn) and keep
the one nearest to the sample. Per-sample, so it works at batch size 1, needs no communication under
DDP, and costs O(B k D) on the device instead of linear assignment's O(B^2 D) + CPU solve.

Caveat measured in this project (see README): the kept noise is no longer N(0, I) -- it is biased towards
x0 and slightly shorter. At inference the sampler starts from exactly N(0, I), so with small D (e.g. a
(16, 2) action chunk) and large k the model is trained on a noise distribution it never sees at test time.

Options:
    k: candidates per sample (k=1 is exactly vanilla).
    space: "full" or "pool:N" (distances in a pooled feature space).
    max_chunk_elements: cap on B_chunk * (k - 1) * D elements drawn at once, bounding peak memory.
"""

from __future__ import annotations

import torch
from torch import Tensor

from immiscible_policy.assigners.base import Assigner, Pairing, check_same_batch, mean_l2
from immiscible_policy.assigners.space import features, parse_space


class KNNAssigner(Assigner):
    """Per sample, keep the nearest of k Gaussian candidates."""

    name = "knn"
    scope = "sample"
    description = "KNN noise selection: per sample keep the nearest of k Gaussian candidates."
    preserves_noise_multiset = False

    def __init__(self, k: int = 4, space: str = "full", max_chunk_elements: int = 2**20) -> None:
        if int(k) != k or int(k) < 1:
            raise ValueError(f"knn: k must be an integer >= 1, got {k!r}.")
        if int(max_chunk_elements) < 1:
            raise ValueError(f"knn: max_chunk_elements must be >= 1, got {max_chunk_elements!r}.")
        self._pool = parse_space(space)
        super().__init__()
        self.k, self.space, self.max_chunk_elements = int(k), space, int(max_chunk_elements)

    def pair(self, x0: Tensor, noise: Tensor, *, generator: torch.Generator | None = None) -> Pairing:
        check_same_batch(x0, noise, "knn")
        if self.k == 1:
            return Pairing(x0=x0, noise=noise, info={})
        b, sample_shape = x0.shape[0], x0.shape[1:]
        d = x0[0].numel()
        rows = max(1, self.max_chunk_elements // ((self.k - 1) * d))
        chosen = []
        for lo in range(0, b, rows):
            hi = min(b, lo + rows)
            chosen.append(self._select(x0[lo:hi], noise[lo:hi], sample_shape, generator))
        paired = torch.cat(chosen) if len(chosen) > 1 else chosen[0]
        info = {"l2_before": mean_l2(x0, noise), "l2_after": mean_l2(x0, paired)}
        return Pairing(x0=x0, noise=paired, info=info)

    def _select(self, x0: Tensor, noise: Tensor, sample_shape, generator) -> Tensor:
        """Nearest of [noise, k-1 fresh draws] for each row of a chunk; returns (b, ...)."""
        b = x0.shape[0]
        extra = torch.randn(
            (b, self.k - 1, *sample_shape), generator=generator, device=noise.device, dtype=noise.dtype
        )
        fx = features(x0, self._pool)  # (b, F)
        f0 = features(noise, self._pool)  # (b, F)
        fc = features(extra.flatten(0, 1), self._pool).view(b, self.k - 1, -1)  # (b, k-1, F)
        d0 = torch.linalg.vector_norm((f0 - fx).float(), dim=1)  # (b,)
        dc = torch.linalg.vector_norm((fc - fx[:, None]).float(), dim=2)  # (b, k-1)
        best_d, best_j = dc.min(dim=1)
        take_extra = best_d < d0  # ties keep the input noise, so k=1 and equal distances stay vanilla
        picked = extra[torch.arange(b, device=noise.device), best_j]
        mask = take_extra.view(b, *([1] * len(sample_shape)))
        return torch.where(mask, picked, noise)
