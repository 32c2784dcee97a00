"""``sinkhorn``: entropic optimal transport between a batch and its noise, rounded to a permutation.

Why: ``linear`` solves the exact assignment with a cubic CPU solve (scipy), which means moving the cost
matrix to the host every step and a cost that grows like B^3. Entropic OT (Cuturi 2013) replaces the
exact problem with a smoothed one whose solution, the plan P = diag(e^u) K diag(e^v) with
K = exp(-C / epsilon), is found by alternating row/column normalisations: each iteration is two
logsumexp reductions over the (B, B) cost, O(B^2) work that runs as a handful of kernels on the device
and is differentiable in spirit (every step is smooth in C). As epsilon -> 0 the plan concentrates on
the optimal permutation, so rounding it recovers (near-)optimal linear assignment without a CPU solver.

Steps, all on the input's device (nothing moves to the CPU):

1. cost C (B, B): squared L2 between every sample and every noise (optionally in a pooled space);
2. C <- (C - min C) / mean(C - min C): subtracting a constant leaves the OT problem unchanged, and the
   division makes ``epsilon`` scale-free. Dividing by the raw mean would not be enough in high
   dimension, where all distances are ~2D with a relative spread ~1/sqrt(D): the same epsilon would
   be much blurrier for images than for action chunks. The shifted mean measures the spread that the
   plan actually has to resolve;
3. log-domain Sinkhorn with uniform marginals: u <- -logsumexp(v - C/eps, rows), v <- -logsumexp(u - C/eps,
   cols). Working with log potentials never forms exp(-C/eps), which under/overflows for small eps;
4. rounding: rows propose their highest-plan free column, each column goes to its best proposer, the
   rest try again; after ``max_rounds`` rounds any leftover rows take the free columns in order.

Because the noise is only permuted, the batch's noise stays exactly N(0, I) (like ``linear``).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
from immiscible_policy.assigners.base import Assigner, Pairing, check_same_batch, mean_l2
from immiscible_policy.assigners.distributed import check_distributed, pair_globally, world_size
from immiscible_policy.assigners.space import features, pairwise_sq_dist, parse_space
from torch import Tensor

DEFAULT_MAX_ROUNDS = 32


def normalised_cost(cost: Tensor) -> Tensor:
    """(B, B) cost shifted to min 0 and divided by its mean, so epsilon is free of scale and offset."""
    shifted = cost - cost.min()
    return shifted / shifted.mean().clamp_min(torch.finfo(shifted.dtype).tiny)


def sinkhorn_log(cost: Tensor, epsilon: float, n_iters: int) -> Tensor:
    """Log of the entropic OT plan (B, B) between uniform marginals, up to an additive constant.

    Args:
        cost: (B, B) cost, ideally normalised (see :func:`normalised_cost`).
        epsilon: entropic regularisation in units of the cost; smaller is sharper and needs more iterations.
        n_iters: Sinkhorn iterations (each: one row and one column logsumexp, O(B^2)).

    Returns:
        (B, B) ``u_i + v_j - C_ij / epsilon``. With uniform marginals the constant log(1/B) terms only
        shift the result, which does not matter for rounding.
    """
    log_k = -cost / epsilon
    u = torch.zeros(cost.shape[0], dtype=cost.dtype, device=cost.device)
    v = torch.zeros(cost.shape[1], dtype=cost.dtype, device=cost.device)
    for _ in range(n_iters):
        u = -torch.logsumexp(log_k + v[None, :], dim=1)
        v = -torch.logsumexp(log_k + u[:, None], dim=0)
    return log_k + u[:, None] + v[None, :]


def round_to_permutation(log_plan: Tensor, max_rounds: int = DEFAULT_MAX_ROUNDS) -> tuple[Tensor, int]:
    """Turn a (B, B) plan into a permutation ``perm`` (B,) by row-argmax with conflict resolution.

    Each round, every unassigned row proposes its highest-plan free column; a column proposed by several
    rows goes to the proposer with the highest plan value (ties: lowest row index). At least one row is
    assigned per round, and with a sharp plan nearly all are assigned in the first. After ``max_rounds``
    rounds, leftover rows take the remaining free columns in index order (bounded work for a blurry plan).

    Returns ``(perm, rounds)``; row i is paired with column ``perm[i]``. Everything stays on the device;
    each round costs one host sync (the "all assigned?" check).
    """
    b = log_plan.shape[0]
    device = log_plan.device
    rows = torch.arange(b, device=device)
    perm = torch.full((b,), -1, dtype=torch.long, device=device)
    col_taken = torch.zeros(b, dtype=torch.bool, device=device)
    neg_inf = torch.tensor(float("-inf"), dtype=log_plan.dtype, device=device)
    rounds = 0
    while rounds < max_rounds:
        open_rows = perm < 0
        if not bool(open_rows.any()):
            break
        rounds += 1
        masked = torch.where(col_taken[None, :], neg_inf, log_plan)
        value, choice = masked.max(dim=1)
        value = torch.where(open_rows, value, neg_inf)
        # best proposal per column, then the lowest row index among the proposers that reach it; closed
        # rows carry -inf / index b so that no boolean indexing (a hidden host sync on CUDA) is needed
        best = torch.full((b,), float("-inf"), dtype=log_plan.dtype, device=device)
        best = best.scatter_reduce(0, choice, value, reduce="amax")
        is_best = open_rows & (value == best[choice])
        winner = torch.full((b,), b, dtype=torch.long, device=device)
        winner = winner.scatter_reduce(0, choice, torch.where(is_best, rows, b), reduce="amin")
        won = is_best & (winner[choice] == rows)
        perm = torch.where(won, choice, perm)
        taken_now = torch.zeros(b, dtype=torch.long, device=device).scatter_reduce(
            0, choice, won.long(), reduce="amax"
        )
        col_taken = col_taken | taken_now.bool()
    left = perm < 0
    if bool(left.any()):
        perm[left] = torch.nonzero(~col_taken).squeeze(1)
    return perm, rounds


class SinkhornAssigner(Assigner):
    """Permute the batch's noise by rounding an entropic OT plan computed on the device.

    Options:
        epsilon: entropic regularisation relative to the normalised cost (see module docstring); smaller
            is closer to exact linear assignment but needs more iterations. Default 0.05.
        n_iters: Sinkhorn iterations, each O(B^2). Default 50.
        space: "full" or "pool:N" (distances in a pooled feature space, as for ``linear``).
        distributed: under DDP, "local" (each rank permutes its own batch) or "global" (gather the
            global batch, solve once on rank 0, each rank keeps its rows; immiscible_policy's generic
            ``pair_globally``). This option is how a plugin declares that it supports both modes.
    """

    name = "sinkhorn"
    scope = "batch"
    description = (
        "Entropic OT (log-domain Sinkhorn) on the device, rounded to a noise permutation; no CPU solve."
    )
    preserves_noise_multiset = True

    def __init__(
        self, epsilon: float = 0.05, n_iters: int = 50, space: str = "full", distributed: str = "local"
    ) -> None:
        if (
            isinstance(epsilon, bool)
            or not isinstance(epsilon, Real)
            or not (math.isfinite(epsilon) and epsilon > 0)
        ):
            raise ValueError(
                f"sinkhorn: epsilon must be a positive finite number (e.g. 0.05), got {epsilon!r}."
            )
        if isinstance(n_iters, bool) or not isinstance(n_iters, Integral) or n_iters < 1:
            raise ValueError(f"sinkhorn: n_iters must be an integer >= 1 (e.g. 50), got {n_iters!r}.")
        try:
            parse_space(space)
        except ValueError as exc:
            raise ValueError(f"sinkhorn: {exc}") from None
        check_distributed(distributed, "sinkhorn")
        super().__init__(epsilon=float(epsilon), n_iters=int(n_iters), space=space, distributed=distributed)
        self.epsilon, self.n_iters, self.space = float(epsilon), int(n_iters), space
        self.distributed = distributed

    def cost(self, x0: Tensor, noise: Tensor) -> Tensor:
        """Squared L2 cost (B, B) between samples (rows) and noises (columns), float32 or float64."""
        dtype = torch.float64 if x0.dtype == torch.float64 else torch.float32
        return pairwise_sq_dist(features(x0.to(dtype), self.space), features(noise.to(dtype), self.space))

    def permutation(self, x0: Tensor, noise: Tensor) -> tuple[Tensor, int]:
        """``(perm, rounds)``: noise ``perm[i]`` is paired with sample i."""
        log_plan = sinkhorn_log(normalised_cost(self.cost(x0, noise)), self.epsilon, self.n_iters)
        return round_to_permutation(log_plan)

    def pair(self, x0: Tensor, noise: Tensor, *, generator: torch.Generator | None = None) -> Pairing:
        check_same_batch(x0, noise, "sinkhorn")
        if self.distributed == "global" and world_size() > 1:
            return pair_globally(self._pair_local, x0, noise, generator=generator)
        return self._pair_local(x0, noise, generator=generator)

    def _pair_local(self, x0: Tensor, noise: Tensor, *, generator: torch.Generator | None = None) -> Pairing:
        with torch.no_grad():
            perm, rounds = self.permutation(x0, noise)
        paired = noise[perm]
        info = {
            "l2_before": mean_l2(x0, noise),
            "l2_after": mean_l2(x0, paired),
            "iters": self.n_iters,
            "rounds": rounds,
        }
        return Pairing(x0=x0, noise=paired, info=info)
