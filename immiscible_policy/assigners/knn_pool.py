"""``knn-pool``: a batch-level KNN approximation of linear assignment for large B and D.

Draw a pool of M = ratio * B noises (the input noise plus (ratio - 1) * B fresh draws), find each
sample's ``n_neighbors`` nearest pool noises (a faiss GPU index when faiss-gpu is installed and the batch
is on CUDA, exact torch search on CUDA otherwise, faiss CPU for CPU tensors), then match greedily
without conflicts so every pool noise is used at most once: in rounds, each unmatched sample proposes to
its nearest still free candidate and the closest proposer wins; samples whose candidates all went
elsewhere take the remaining free noises in order. No O(B^3) solve and no (B, B) matrix, so it scales to
B in the thousands; distances can be taken in a pooled space (``space="pool:8"``) to make the search
cheaper. On CUDA the matching runs without a host sync (fixed rounds, masked scatters).

Output noise is a selection from the pool, not a permutation of the input noise (documented exception
to the multiset property); like ``knn`` it is biased towards the data when ratio > 1.

Under DDP (``distributed``): ``local`` matches each rank's batch in its own pool; ``global`` gathers every
rank's samples and pool (rank r's pool part drawn from rank r's stream; the gathered pool is
[all input noises, all fresh draws] in rank order), matches once on rank 0 and broadcasts the (W * B,)
match indices, so the result equals a single process matching the gathered batch in the gathered pool.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import torch
from torch import Tensor

from immiscible_policy.assigners.base import Assigner, Pairing, check_same_batch, mean_l2
from immiscible_policy.assigners.distributed import (
    all_gather_cat,
    broadcast_from_main,
    check_distributed,
    my_rows,
    rank,
    world_size,
)
from immiscible_policy.assigners.space import features, pairwise_sq_dist, parse_space


@functools.cache
def _faiss_gpu():
    """(faiss, StandardGpuResources) when faiss-gpu is importable, else None (resources made once)."""
    try:
        import faiss
    except ImportError:
        return None
    if not hasattr(faiss, "StandardGpuResources"):
        return None
    import faiss.contrib.torch_utils  # noqa: F401  (lets faiss indexes take torch CUDA tensors)

    return faiss, faiss.StandardGpuResources()


def nearest_pool_indices(fx: Tensor, fpool: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(B, n) squared distances and indices of each row of ``fx`` among ``fpool``, nearest first."""
    n = min(n, fpool.shape[0])
    if fx.device.type == "cuda":
        gpu = _faiss_gpu()
        if gpu is not None:  # faiss-gpu: search on the device, torch in and out
            faiss, resources = gpu
            index = faiss.GpuIndexFlatL2(resources, fpool.shape[1])
            index.add(fpool.float().contiguous())
            d, i = index.search(fx.float().contiguous(), n)
            return d, i.long()
        d = pairwise_sq_dist(fx.float(), fpool.float())
        return torch.topk(d, n, dim=1, largest=False)
    import faiss

    index = faiss.IndexFlatL2(fpool.shape[1])
    index.add(np.ascontiguousarray(fpool.detach().float().numpy()))
    d, i = index.search(np.ascontiguousarray(fx.detach().float().numpy()), n)
    return torch.from_numpy(d), torch.from_numpy(i).long()


def greedy_match(dist: Tensor, cand: Tensor, pool_size: int) -> Tensor:
    """Conflict-free matching from nearest-candidate lists, without a host sync.

    Args:
        dist: (B, n) distances to each sample's candidates, ascending per row.
        cand: (B, n) candidate pool indices.
        pool_size: M >= B.
    Returns:
        (B,) pool index per sample, all distinct.

    Exactly ``n`` rounds (a round in which nobody has a free candidate changes nothing, so no early exit
    and no data-dependent shapes: every step is a fixed-size masked scatter, which CUDA runs without
    waiting for the host).
    """
    b, n = cand.shape
    device = cand.device
    match = torch.full((b,), -1, dtype=torch.long, device=device)
    used = torch.zeros(pool_size, dtype=torch.long, device=device)  # 0/1 (long: scatter_reduce amax)
    rows = torch.arange(b, device=device)
    cols = torch.arange(n, device=device)[None, :]
    for _ in range(n):
        free = (used[cand] == 0) & (match < 0)[:, None]  # (B, n) candidates still available
        has = free.any(dim=1)
        first = torch.where(free, cols, n).min(dim=1).values.clamp(max=n - 1)
        prop = cand[rows, first]
        pd = torch.where(has, dist[rows, first].float(), float("inf"))  # no free candidate: inf
        best = torch.full((pool_size,), float("inf"), device=device).scatter_reduce(
            0, prop, pd, reduce="amin"
        )
        # Winner per pool noise: the proposer whose distance equals the minimum; ties -> lowest row.
        win = has & (pd == best[prop])
        winner_row = torch.full((pool_size,), b, dtype=torch.long, device=device).scatter_reduce(
            0, prop, torch.where(win, rows, b), reduce="amin"
        )
        ok = win & (winner_row[prop] == rows)
        match = torch.where(ok, prop, match)
        used = used.scatter_reduce(0, prop, ok.long(), reduce="amax")
    # Leftover rows (row order) take the free pool noises in index order: free slots sort first.
    left = match < 0
    free_slots = torch.argsort(used, stable=True)
    nth = (torch.cumsum(left.long(), 0) - 1).clamp_min(0)
    return torch.where(left, free_slots[nth], match)


class KNNPoolAssigner(Assigner):
    """Greedy conflict-free matching of samples to their nearest noises from an oversampled pool."""

    name = "knn-pool"
    scope = "batch"
    description = "Scalable batch KNN: faiss search in a ratio*B noise pool + greedy conflict-free matching."
    preserves_noise_multiset = False

    def __init__(
        self, ratio: int = 2, n_neighbors: int = 8, space: str = "full", distributed: str = "local"
    ) -> None:
        if int(ratio) != ratio or int(ratio) < 1:
            raise ValueError(f"knn-pool: ratio must be an integer >= 1, got {ratio!r}.")
        if int(n_neighbors) < 1:
            raise ValueError(f"knn-pool: n_neighbors must be >= 1, got {n_neighbors!r}.")
        self._pool = parse_space(space)
        check_distributed(distributed, "knn-pool")
        super().__init__()
        self.ratio, self.n_neighbors, self.space = int(ratio), int(n_neighbors), space
        self.distributed = distributed

    def draw_extra(self, noise: Tensor, generator: torch.Generator | None) -> Tensor:
        """The (ratio - 1) * B fresh pool noises (drawn after the input noise, from the same stream)."""
        return torch.randn(
            ((self.ratio - 1) * noise.shape[0], *noise.shape[1:]),
            generator=generator,
            device=noise.device,
            dtype=noise.dtype,
        )

    def match(self, x0: Tensor, pool: Tensor) -> Tensor:
        """(B,) distinct pool indices: nearest-neighbour search + greedy conflict-free matching."""
        fx, fp = features(x0.float(), self._pool), features(pool.float(), self._pool)
        d, idx = nearest_pool_indices(fx, fp, self.n_neighbors)
        return greedy_match(d.to(x0.device), idx.to(x0.device), pool.shape[0])

    def pair(self, x0: Tensor, noise: Tensor, *, generator: torch.Generator | None = None) -> Pairing:
        check_same_batch(x0, noise, "knn-pool")
        b = x0.shape[0]
        extra = self.draw_extra(noise, generator) if self.ratio > 1 else noise[:0]
        start = time.perf_counter()
        if self.distributed == "global" and world_size() > 1:
            gx = all_gather_cat(x0)
            pool = torch.cat([all_gather_cat(noise), all_gather_cat(extra)])
            if rank() == 0:
                match = self.match(gx, pool)
            else:
                match = torch.empty(gx.shape[0], dtype=torch.long, device=x0.device)
            match = my_rows(broadcast_from_main(match), b)
        else:
            pool = torch.cat([noise, extra]) if self.ratio > 1 else noise
            match = self.match(x0, pool)
        solver_ms = (time.perf_counter() - start) * 1e3
        paired = pool[match]
        info = {"l2_before": mean_l2(x0, noise), "l2_after": mean_l2(x0, paired), "solver_ms": solver_ms}
        return Pairing(x0=x0, noise=paired, info=info)
