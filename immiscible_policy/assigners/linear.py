"""``linear``: batch linear assignment (Immiscible Diffusion, NeurIPS 2024).

Within a batch, permute the noise so the total sample-to-noise distance is minimal (an exact
Jonker-Volgenant solve: ``lapx``'s ``lapjvr`` or ``scipy.optimize.linear_sum_assignment``, the ``solver``
option, see :mod:`~immiscible_policy.assigners.solvers`). Because the noise is only permuted, the
batch's noise marginal stays exactly N(0, I): the sampler at inference starts from the same distribution
the model was trained on. Cost: an (B, B) distance matrix on the device, then a CPU solve that grows
roughly cubically with B (the cost matrix is the only thing that leaves the device).

Options:
    cost: "l2" (default; the plain L2 distance, as the paper's official code assigns with
        ``torch.linalg.vector_norm``) or "sqeuclidean" (squared L2: the W2 coupling torchcfm's OT-CFM uses).
    standardize: False (default) or True: measure the cost from the batch's samples standardised per
        coordinate (minus the batch mean, over the batch's population std clamped at 1e-6) to the raw
        noise, as *Immiscible Diffusion Policy* (arXiv 2610.09369) does. Only the permutation depends on
        it: the samples and the noise that get noised are unchanged.
    space: "full" or "pool:N" (distances in a pooled feature space).
    quantize: None or "fp16": compute the distance matrix in half precision (the paper's "quantized
        assignment"); bf16 on CPU, where fp16 matmul is slow.
    distributed: "local" (each rank solves its own sub-batch) or "global" (with torch.distributed
        initialised: gather every rank's batch, solve once on rank 0, send each rank its noise).
    solver: "auto" (default: "lapjv" when the lapx package is installed, else "scipy"), "lapjv" or
        "scipy". Every solver is exact: the choice changes the time of the solve, not the optimal cost.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from immiscible_policy.assigners.base import Assigner, Pairing, check_same_batch, mean_l2
from immiscible_policy.assigners.distributed import check_distributed, permute_globally, world_size
from immiscible_policy.assigners.solvers import check_solver, solve, solver_repr
from immiscible_policy.assigners.space import check_cost, features, pairwise_cost, parse_space

QUANTIZE = (None, "fp16")


def check_quantize(quantize: str | None, who: str) -> str | None:
    """One-line error unless ``quantize`` is None or ``fp16``."""
    if quantize not in QUANTIZE:
        raise ValueError(f"{who}: quantize must be one of {QUANTIZE}, got {quantize!r}.")
    return quantize


def check_standardize(standardize: bool, who: str) -> bool:
    """One-line error unless ``standardize`` is a bool."""
    if not isinstance(standardize, bool):
        raise ValueError(f"{who}: standardize must be true or false, got {standardize!r}.")
    return standardize


def check_matching_options(
    who: str, *, cost: str, space: str, quantize: str | None, distributed: str, standardize: bool, solver: str
) -> str:
    """The options ``linear`` and ``c2ot`` share, each checked with its one-line error; returns the solver
    ``solver`` resolves to (``auto``: lapjv when installed, else scipy)."""
    check_cost(cost, who)
    parse_space(space)
    check_quantize(quantize, who)
    check_distributed(distributed, who)
    check_standardize(standardize, who)
    return check_solver(solver, who)


def standardized(features: Tensor, eps: float = 1e-6) -> Tensor:
    """(B, F) features minus their batch mean over their population std per coordinate (clamped at ``eps``).

    Constant coordinates (and a batch of one) become 0 rather than NaN."""
    mean = features.mean(dim=0, keepdim=True)
    std = features.std(dim=0, unbiased=False, keepdim=True).clamp_min(eps)
    return (features - mean) / std


def assignment_cost(
    x0: Tensor, noise: Tensor, *, space: str, quantize: str | None, cost: str, standardize: bool = False
) -> Tensor:
    """(B, B) sample-to-noise cost in ``space`` (``quantize="fp16"``: half-precision distances;
    ``standardize``: the samples' features standardised over the batch, the noise's left raw)."""
    dtype = None
    if quantize == "fp16":
        dtype = torch.float16 if x0.device.type == "cuda" else torch.bfloat16
    fx, fn = features(x0.float(), space), features(noise.float(), space)
    if standardize:
        fx = standardized(fx)
    return pairwise_cost(fx, fn, cost, dtype=dtype)


def solve_assignment(cost: Tensor, solver: str = "auto") -> Tensor:
    """Optimal permutation ``perm`` (B,) minimising sum_i cost[i, perm[i]] (cost moved to the CPU).

    ``solver``: ``auto`` | ``lapjv`` | ``scipy`` (:mod:`~immiscible_policy.assigners.solvers`)."""
    c = cost.detach().float().cpu().double().numpy()
    return torch.from_numpy(solve(c, check_solver(solver, "solve_assignment"))).to(cost.device)


class LinearAssigner(Assigner):
    """Permute the batch's noise to minimise the total sample-to-noise distance (``cost``)."""

    name = "linear"
    scope = "batch"
    description = "Batch linear assignment (exact; lapx or scipy): permute noise to minimise total L2 or squared L2 (keeps noise Gaussian)."
    preserves_noise_multiset = True

    def __init__(
        self,
        cost: str = "l2",
        space: str = "full",
        quantize: str | None = None,
        distributed: str = "local",
        standardize: bool = False,
        solver: str = "auto",
    ) -> None:
        self.solver_used = check_matching_options(  # what auto resolved to, shown in the repr
            "linear",
            cost=cost,
            space=space,
            quantize=quantize,
            distributed=distributed,
            standardize=standardize,
            solver=solver,
        )
        super().__init__()
        self.cost, self.space, self.quantize, self.distributed = cost, space, quantize, distributed
        self.standardize, self.solver = standardize, solver

    def __repr__(self) -> str:
        return solver_repr(super().__repr__(), self.solver, self.solver_used)

    def _cost(self, x0: Tensor, noise: Tensor) -> Tensor:
        return assignment_cost(
            x0, noise, space=self.space, quantize=self.quantize, cost=self.cost, standardize=self.standardize
        )

    def _solve(self, cost: Tensor) -> Tensor:
        return solve_assignment(cost, self.solver_used)

    def pair(self, x0: Tensor, noise: Tensor, *, generator: torch.Generator | None = None) -> Pairing:
        check_same_batch(x0, noise, "linear")
        start = time.perf_counter()
        if self.distributed == "global" and world_size() > 1:  # one solve of the gathered batch
            paired = permute_globally(lambda gx, gn: self._solve(self._cost(gx, gn)), x0, noise)
        else:
            paired = noise[self._solve(self._cost(x0, noise))]
        solver_ms = (time.perf_counter() - start) * 1e3
        info = {"l2_before": mean_l2(x0, noise), "l2_after": mean_l2(x0, paired), "solver_ms": solver_ms}
        return Pairing(x0=x0, noise=paired, info=info)
