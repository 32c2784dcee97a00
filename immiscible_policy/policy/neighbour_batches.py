"""Neighbour batches: each training batch made of groups of windows with nearly the same observation.

Why: condition-aware pairing (``c2ot``) keeps p(noise | condition) Gaussian only when the noise is
exchanged among rows that share their condition. With class labels a random batch holds many rows of
each label; with a policy's continuous observation it holds almost none, so ``c2ot`` either barely pairs
or pairs across different observations (and leaks them into the noise, docs/analysis.md). Here a batch
of B rows is B / k groups: an anchor window, drawn at random, and its k - 1 nearest windows *from other
demos* (L2 in the normalised observation history the network sees; windows of the anchor's own demo are
left out because they repeat its action, so they could not show a second way to act). A condition-aware
strategy then pairs exactly within each group (the trainer hands it the group labels as its condition):
the noise is permuted only among rows with nearly the same observation, so where the demos disagree on
what to do from that observation (the two ways to turn the T) the noise picks the way, and where they
agree the permutation changes little.

Before the pairing starts (``assigner.start_epoch``) the batches are the plain random ones, so a warm-up
is bit-identical to vanilla. The order of an epoch is a function of (seed, epoch) and of the data, like
:func:`~immiscible_policy.training.state.epoch_order`, so a resumed run replays it. ``trainer.neighbour_batches``
sets k (docs/pairing_schedule.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from immiscible_policy.training import epoch_order

__all__ = ["NeighbourOrder", "group_labels", "grouped_rows", "neighbour_table"]


def neighbour_table(cond: Tensor, episode: Tensor, k: int, *, chunk: int = 2048) -> Tensor:
    """(N, k - 1) long: for each row of ``cond`` (N, C), its k - 1 nearest rows (L2) whose ``episode`` (N,)
    differs, nearest first. Exact (chunked all-pairs distances, ~20 s for PushT's 48k mirrored windows on
    one core)."""
    n = int(cond.shape[0])
    if k < 2:
        raise ValueError(f"neighbour_table: k={k}; use k >= 2 (k = 1 is a plain random batch).")
    episode = torch.as_tensor(episode).reshape(-1)
    if episode.shape[0] != n:
        raise ValueError(f"neighbour_table: {n} conditions but {episode.shape[0]} episode ids.")
    others = n - int(torch.bincount(torch.unique(episode, return_inverse=True)[1]).max())
    if others < k - 1:
        raise ValueError(
            f"neighbour batches of {k} need {k - 1} windows from other demos for every window; the largest "
            f"demo leaves {others}. Use a smaller trainer.neighbour_batches."
        )
    flat = cond.reshape(n, -1).float()
    out = torch.empty(n, k - 1, dtype=torch.long)
    for a in range(0, n, chunk):
        d = torch.cdist(flat[a : a + chunk], flat)
        d[episode[a : a + chunk, None] == episode[None, :]] = float("inf")
        out[a : a + chunk] = d.topk(k - 1, dim=1, largest=False, sorted=True).indices
    return out


def grouped_rows(table: Tensor, anchors: Tensor) -> Tensor:
    """(len(anchors) * k,) rows: each anchor followed by its ``table`` neighbours, group after group."""
    return torch.cat([anchors[:, None], table[anchors]], dim=1).reshape(-1)


def group_labels(batch: int, k: int, device: torch.device | str = "cpu") -> Tensor:
    """(batch,) long: row i belongs to group i // k (the layout :class:`NeighbourOrder` makes)."""
    return torch.arange(batch, device=device) // k


class NeighbourOrder:
    """An epoch's data order of anchor-plus-neighbours groups, from ``start_epoch`` on (plain random before).

    Call as ``order(n, seed, epoch)``, like :func:`epoch_order`: n // k anchors in a random order drawn
    from (seed, epoch), each followed by its ``table`` neighbours. Consecutive batches of a size divisible
    by k therefore hold whole groups.
    """

    def __init__(self, table: Tensor, start_epoch: int = 0) -> None:
        self.table, self.k, self.start_epoch = table, int(table.shape[1]) + 1, int(start_epoch)

    def __call__(self, n: int, seed: int, epoch: int) -> Tensor:
        if epoch < self.start_epoch:
            return epoch_order(n, seed, epoch)
        if n != self.table.shape[0]:
            raise ValueError(f"NeighbourOrder: the table has {self.table.shape[0]} rows, the data {n}.")
        return grouped_rows(self.table, epoch_order(n, seed, epoch)[: n // self.k])
