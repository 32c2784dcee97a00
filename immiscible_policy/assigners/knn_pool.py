"""``knn-pool``: a batch-level KNN approximation of linear assignment for large B and D.

Draw a pool of M = ratio * B noises (the input noise plus (ratio - 1) * B fresh draws), find each
sample's ``n_neighbors`` nearest pool noises with faiss (a GPU index when faiss-gpu and CUDA are present;
exact torch search on CUDA otherwise; faiss CPU for CPU tensors), then match greedily without conflicts
so every pool noise is used at most once: in rounds, each unmatched sample proposes to its nearest still
free candidate and the closest proposer wins; samples whose candidates all went elsewhere take the
remaining free noises in order. No O(B^3) solve and no (B, B) matrix, so it scales to B in the
thousands; distances can be taken in a pooled space (``space="pool:8"``) to make the search cheaper.

Output noise is a selection from the pool, not a permutation of the input noise (documented exception
to the multiset property); like ``knn`` it is biased towards the data when ratio > 1.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor

from immiscible_policy.assigners.base import Assigner, Pairing, check_same_batch, mean_l2
from immiscible_policy.assigners.space import features, pairwise_sq_dist, parse_space


def nearest_pool_indices(fx: Tensor, fpool: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(B, n) squared distances and indices of each row of ``fx`` among ``fpool``, nearest first."""
    import faiss

    n = min(n, fpool.shape[0])
    if fx.device.type == "cuda":
        if hasattr(faiss, "StandardGpuResources"):  # faiss-gpu: search on the device, torch in and out
            import faiss.contrib.torch_utils  # noqa: F401  (lets faiss indexes take torch CUDA tensors)

            index = faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), fpool.shape[1])
            index.add(fpool.float().contiguous())
            d, i = index.search(fx.float().contiguous(), n)
            return d, i.long()
        d = pairwise_sq_dist(fx.float(), fpool.float())
        return torch.topk(d, n, dim=1, largest=False)
    index = faiss.IndexFlatL2(fpool.shape[1])
    index.add(np.ascontiguousarray(fpool.detach().float().numpy()))
    d, i = index.search(np.ascontiguousarray(fx.detach().float().numpy()), n)
    return torch.from_numpy(d), torch.from_numpy(i).long()


def greedy_match(dist: Tensor, cand: Tensor, pool_size: int) -> Tensor:
    """Conflict-free matching from nearest-candidate lists.

    Args:
        dist: (B, n) distances to each sample's candidates, ascending per row.
        cand: (B, n) candidate pool indices.
        pool_size: M >= B.
    Returns:
        (B,) pool index per sample, all distinct.
    """
    b, n = cand.shape
    device = cand.device
    match = torch.full((b,), -1, dtype=torch.long, device=device)
    used = torch.zeros(pool_size, dtype=torch.bool, device=device)
    rows = torch.arange(b, device=device)
    inf = torch.tensor(float("inf"), device=device)
    for _ in range(n):
        free = ~used[cand] & (match < 0)[:, None]  # (B, n) candidates still available
        has = free.any(dim=1)
        if not bool(has.any()):
            break
        first = torch.where(free, torch.arange(n, device=device)[None, :], n).min(dim=1).values
        first = first.clamp(max=n - 1)
        prop = cand[rows, first]
        pd = torch.where(has, dist[rows, first].float(), inf)
        best = torch.full((pool_size,), float("inf"), device=device).scatter_reduce(
            0, prop[has], pd[has], reduce="amin"
        )
        # Winner per pool noise: the proposer whose distance equals the minimum; ties -> lowest row.
        win = has & (pd == best[prop])
        winner_row = torch.full((pool_size,), b, dtype=torch.long, device=device).scatter_reduce(
            0, prop[win], rows[win], reduce="amin"
        )
        ok = win & (winner_row[prop] == rows)
        match[ok] = prop[ok]
        used[prop[ok]] = True
    left = match < 0
    if bool(left.any()):
        spare = torch.nonzero(~used).flatten()[: int(left.sum())]
        match[left] = spare
    return match


class KNNPoolAssigner(Assigner):
    """Greedy conflict-free matching of samples to their nearest noises from an oversampled pool."""

    name = "knn-pool"
    scope = "batch"
    description = "Scalable batch KNN: faiss search in a ratio*B noise pool + greedy conflict-free matching."
    preserves_noise_multiset = False

    def __init__(self, ratio: int = 2, n_neighbors: int = 8, space: str = "full") -> None:
        if int(ratio) != ratio or int(ratio) < 1:
            raise ValueError(f"knn-pool: ratio must be an integer >= 1, got {ratio!r}.")
        if int(n_neighbors) < 1:
            raise ValueError(f"knn-pool: n_neighbors must be >= 1, got {n_neighbors!r}.")
        self._pool = parse_space(space)
        super().__init__(ratio=int(ratio), n_neighbors=int(n_neighbors), space=space)
        self.ratio, self.n_neighbors, self.space = int(ratio), int(n_neighbors), space

    def pair(self, x0: Tensor, noise: Tensor, *, generator: torch.Generator | None = None) -> Pairing:
        check_same_batch(x0, noise, "knn-pool")
        b = x0.shape[0]
        pool = noise
        if self.ratio > 1:
            extra = torch.randn(
                ((self.ratio - 1) * b, *noise.shape[1:]),
                generator=generator,
                device=noise.device,
                dtype=noise.dtype,
            )
            pool = torch.cat([noise, extra])
        start = time.perf_counter()
        fx, fp = features(x0.float(), self._pool), features(pool.float(), self._pool)
        d, idx = nearest_pool_indices(fx, fp, self.n_neighbors)
        match = greedy_match(d.to(x0.device), idx.to(x0.device), pool.shape[0])
        solver_ms = (time.perf_counter() - start) * 1e3
        paired = pool[match]
        info = {"l2_before": mean_l2(x0, noise), "l2_after": mean_l2(x0, paired), "solver_ms": solver_ms}
        return Pairing(x0=x0, noise=paired, info=info)
