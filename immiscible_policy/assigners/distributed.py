"""The ``distributed`` option of batch-level assigners under DDP: ``local`` or ``global``.

Why an option and not a rule: a batch-level strategy (linear assignment, knn-pool, entropic OT) pairs
better with a bigger batch, but pairing the whole global batch costs communication every step.

* ``local``: each rank pairs its own per-rank batch; no communication, the pairing sees b samples.
* ``global``: every rank gathers the global batch (all ranks' x0 and noise, rank order), the pairing is
  computed once on rank 0 and each rank keeps the rows of its own samples. Equals a single process
  pairing the gathered batch.

Without ``torch.distributed`` initialised (one process) both modes pair the batch they are given.
A plugin declares support by accepting a ``distributed`` constructor option (checked with
:func:`check_distributed`) and, in ``global`` mode, calling :func:`pair_globally` with its own local
``pair`` function; every rank must call with the same per-rank batch size (DDP's contract).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

DISTRIBUTED = ("local", "global")


def check_distributed(value: str, who: str) -> str:
    """One-line error unless ``value`` is ``local`` or ``global``."""
    if value not in DISTRIBUTED:
        raise ValueError(f"{who}: distributed must be 'local' or 'global', got {value!r}.")
    return value


def world_size() -> int:
    """Processes in the default group, 1 when ``torch.distributed`` is not initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def all_gather_cat(t: Tensor) -> Tensor:
    """Concatenate every rank's ``t`` (same shape on all ranks) along dim 0, in rank order."""
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def broadcast_from_main(t: Tensor) -> Tensor:
    """Rank 0's ``t`` on every rank (``t`` must have the same shape and dtype on all ranks)."""
    t = t.contiguous()
    dist.broadcast(t, src=0)
    return t


def my_rows(t: Tensor, per_rank: int) -> Tensor:
    """This rank's rows of a gathered (world * per_rank, ...) tensor."""
    r = rank()
    return t[r * per_rank : (r + 1) * per_rank]


def permute_globally(perm_fn: Callable[..., Tensor], x0: Tensor, noise: Tensor, *extra: Tensor) -> Tensor:
    """``global`` mode of a permutation strategy: this rank's paired noise rows.

    Gathers x0, noise and each ``extra`` tensor (e.g. conditions) from every rank, runs
    ``perm_fn(gx, gn, *gextra) -> perm`` (global rows) on rank 0 only, broadcasts just the permutation
    and returns ``gathered_noise[perm[this rank's rows]]``. Every rank must call with the same per-rank
    batch size (DDP's usual contract).
    """
    b = x0.shape[0]
    gx, gn = all_gather_cat(x0), all_gather_cat(noise)
    gextra = [all_gather_cat(t.to(x0.device)) for t in extra]
    if rank() == 0:
        perm = perm_fn(gx, gn, *gextra)
    else:
        perm = torch.empty(gx.shape[0], dtype=torch.long, device=x0.device)
    perm = broadcast_from_main(perm)
    return gn[my_rows(perm, b)]


def pair_globally(
    pair_fn: Callable[..., object],
    x0: Tensor,
    noise: Tensor,
    *,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
):
    """Generic ``global`` mode for any row-preserving batch strategy (a plugin's escape hatch).

    Gathers x0 and noise (and ``cond`` when given: then ``pair_fn(gx, gn, generator=..., cond=gc)``),
    runs ``pair_fn(gx, gn, generator=generator)`` on rank 0 only (its extra draws, if any, come from
    rank 0's stream), broadcasts the paired x0 and noise, and returns this rank's rows
    as a :class:`~immiscible_policy.assigners.base.Pairing`. Built-ins use cheaper specialised paths
    (``linear`` broadcasts only the permutation).
    """
    from immiscible_policy.assigners.base import Pairing, mean_l2

    b = x0.shape[0]
    gx, gn = all_gather_cat(x0), all_gather_cat(noise)
    extra = {} if cond is None else {"cond": all_gather_cat(cond.to(x0.device))}
    if rank() == 0:
        out = pair_fn(gx, gn, generator=generator, **extra)
        px, pn = out.x0.contiguous(), out.noise.contiguous()
    else:
        px, pn = torch.empty_like(gx), torch.empty_like(gn)
    px, pn = broadcast_from_main(px), broadcast_from_main(pn)
    mx, mn = my_rows(px, b), my_rows(pn, b)
    return Pairing(x0=mx, noise=mn, info={"l2_before": mean_l2(x0, noise), "l2_after": mean_l2(mx, mn)})
