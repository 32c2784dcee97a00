"""``c2ot``: condition-aware batch assignment (C2OT; Cheng & Schwing 2025, arXiv 2503.10636).

Why: plain minibatch OT (``linear``) pairs each sample with the noise nearest to it. In a conditional
model the sample depends on the condition, so the *paired* noise does too: p(noise | cond) is no longer
N(0, I), while at inference the sampler starts from N(0, I) whatever the condition. The model is
trained on a prior it never meets (measured on PushT: ``linear`` never learns the task).

The fix: give noise row j the condition of row j before pairing (noise is independent of the data, so
this costs nothing and keeps p(noise | cond) = N(0, I) for the unpaired batch), then solve
``linear_sum_assignment`` on ``cost(i, j) = distance(x0_i, noise_j) + weight * penalty(cond_i, cond_j)``
so that a sample only takes noise that came with a condition like its own.

* Discrete conditions (``cond`` (B,) integer/bool labels): assignment only within a label. Exact: the
  noise of each label group is a permutation of that group's own noise.
* Continuous conditions (``cond`` (B, ...) float, e.g. a policy's normalised observation history):
  ``penalty`` is the cosine distance ``1 - cos(cond_i, cond_j)`` (``condition_cost="cosine"``, the paper's
  choice for embeddings) or the squared L2 distance (``"sqeuclidean"``, the paper's choice for scalar
  conditions). ``weight=None`` picks the weight per batch by the paper's adaptive rule: the smallest
  weight at which a fraction ``target_r`` of all (i, j) entries is no more expensive than the noise
  row j started with (``cost(i, j) <= distance(x0_j, noise_j)``); ``weight=0`` is exactly ``linear``
  with the same ``cost``; a very large weight keeps every row's own noise (vanilla) when the conditions
  are distinct.

Options: ``cost`` (``l2`` | ``sqeuclidean``, as ``linear``), ``standardize`` (as ``linear``: the samples
standardised over the batch in the distance term), ``weight``, ``target_r``, ``condition_cost``,
``space``, ``quantize``, ``distributed`` (``local`` | ``global``), ``solver`` (``auto`` | ``lapjv`` |
``scipy``, as ``linear``: exact either way; with labels, one solve per label block).
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from immiscible_policy.assigners.base import Assigner, Pairing, check_same_batch, mean_l2
from immiscible_policy.assigners.distributed import permute_globally, world_size
from immiscible_policy.assigners.linear import assignment_cost, check_matching_options, solve_assignment
from immiscible_policy.assigners.solvers import label_groups, solve_blocks, solver_repr
from immiscible_policy.assigners.space import pairwise_sq_dist

CONDITION_COSTS = ("cosine", "sqeuclidean")


def is_discrete(cond: Tensor) -> bool:
    """Labels (integer or bool dtype) are paired exactly within a label; float conditions by cost."""
    return not (cond.is_floating_point() or cond.is_complex())


def condition_cost(cond: Tensor, kind: str) -> Tensor:
    """(B, B) penalty between the rows' conditions: cosine distance in [0, 2] or squared L2."""
    c = cond.reshape(cond.shape[0], -1).float()
    if kind == "cosine":
        unit = c / c.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (1.0 - unit @ unit.T).clamp_min_(0)
    return pairwise_sq_dist(c, c)


def adaptive_weight(m: Tensor, c: Tensor, target_r: float, *, max_iter: int = 40, tol: float = 1e-3) -> float:
    """The paper's rule: w such that mean_{i,j}[m_ij + w c_ij <= m_jj] is about ``target_r``.

    The fraction falls as w grows (c >= 0, c_jj = 0), from its value at w = 0 (about half for an
    unpaired batch) to the diagonal's 1/B. Exponential search for an upper bound, then bisection.
    Returns 0 when even w = 0 gives a fraction below the target (then plain OT is already that tight).
    """
    diag = torch.diagonal(m)[None, :]

    def fraction(w: float) -> float:
        return float(((m + w * c) <= diag).float().mean())

    if fraction(0.0) <= target_r:
        return 0.0
    scale = float(m.abs().mean()) / max(float(c.mean()), 1e-12)
    lo, hi = 0.0, max(scale, 1e-12)
    for _ in range(max_iter):
        if fraction(hi) <= target_r:
            break
        lo, hi = hi, hi * 2.0
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        r = fraction(mid)
        if abs(r - target_r) <= tol:
            return mid
        lo, hi = (mid, hi) if r > target_r else (lo, mid)
    return hi


class C2OTAssigner(Assigner):
    """Permute noise to minimise sample-to-noise distance plus a condition penalty (labels: exact)."""

    name = "c2ot"
    scope = "batch"
    description = (
        "Condition-aware OT (C2OT): linear assignment within a label, or with a condition penalty; "
        "keeps p(noise | cond) Gaussian."
    )
    preserves_noise_multiset = True
    uses_cond = True

    def __init__(
        self,
        cost: str = "l2",
        weight: float | None = None,
        target_r: float = 0.05,
        condition_cost: str = "cosine",
        space: str = "full",
        quantize: str | None = None,
        distributed: str = "local",
        standardize: bool = False,
        solver: str = "auto",
    ) -> None:
        solver_used = check_matching_options(
            "c2ot",
            cost=cost,
            space=space,
            quantize=quantize,
            distributed=distributed,
            standardize=standardize,
            solver=solver,
        )
        if condition_cost not in CONDITION_COSTS:
            raise ValueError(
                f"c2ot: condition_cost must be 'cosine' or 'sqeuclidean', got {condition_cost!r}."
            )
        if weight is not None and (not isinstance(weight, int | float) or weight < 0):
            raise ValueError(f"c2ot: weight must be a number >= 0 or null (adaptive), got {weight!r}.")
        if not isinstance(target_r, int | float) or not 0.0 < target_r < 1.0:
            raise ValueError(f"c2ot: target_r must be in (0, 1), got {target_r!r}.")
        self.solver_used = solver_used  # what auto resolved to, shown in the repr
        super().__init__()
        self.cost, self.space, self.quantize, self.distributed = cost, space, quantize, distributed
        self.weight = None if weight is None else float(weight)
        self.target_r, self.condition_cost = float(target_r), condition_cost
        self.standardize, self.solver = standardize, solver

    def __repr__(self) -> str:
        return solver_repr(super().__repr__(), self.solver, self.solver_used)

    def permutation(self, x0: Tensor, noise: Tensor, cond: Tensor) -> tuple[Tensor, float]:
        """(perm (B,), weight used): row i takes ``noise[perm[i]]``."""
        m = assignment_cost(
            x0, noise, space=self.space, quantize=self.quantize, cost=self.cost, standardize=self.standardize
        ).float()
        if is_discrete(cond):
            labels = cond.reshape(cond.shape[0], -1)
            if labels.shape[1] != 1:
                raise ValueError(
                    f"c2ot: discrete conditions must be one label per row (B,), got shape {tuple(cond.shape)}."
                )
            # one transfer to the host, then one exact solve per label block (solvers.solve_blocks; each
            # block becomes float64 there, so the whole matrix is never converted)
            groups = label_groups(labels[:, 0].cpu().numpy())
            perm = solve_blocks(m.detach().cpu().numpy(), groups, self.solver_used)
            return torch.from_numpy(perm).to(x0.device), float("inf")
        c = condition_cost(cond, self.condition_cost)
        w = self.weight if self.weight is not None else adaptive_weight(m, c, self.target_r)
        return solve_assignment(m + w * c if w else m, self.solver_used), w

    def pair(
        self,
        x0: Tensor,
        noise: Tensor,
        *,
        generator: torch.Generator | None = None,
        cond: Tensor | None = None,
    ) -> Pairing:
        check_same_batch(x0, noise, "c2ot")
        if cond is None:
            raise ValueError(
                "c2ot pairs noise within conditions but got cond=None: use it on a conditional task "
                "(policies pass the observation history; image tasks need class labels), or use 'linear'."
            )
        if cond.shape[0] != x0.shape[0]:
            raise ValueError(
                f"c2ot: cond has {cond.shape[0]} rows but x0 has {x0.shape[0]}; give one condition per row."
            )
        cond = cond.to(x0.device)
        start = time.perf_counter()
        if self.distributed == "global" and world_size() > 1:
            used = {"w": float("nan")}  # the weight is chosen on rank 0; other ranks report NaN

            def solve(gx: Tensor, gn: Tensor, gc: Tensor) -> Tensor:
                perm, used["w"] = self.permutation(gx, gn, gc)
                return perm

            paired, w = permute_globally(solve, x0, noise, cond), used["w"]
        else:
            perm, w = self.permutation(x0, noise, cond)
            paired = noise[perm]
        info = {
            "l2_before": mean_l2(x0, noise),
            "l2_after": mean_l2(x0, paired),
            "solver_ms": (time.perf_counter() - start) * 1e3,
        }
        if w != float("inf"):
            info["c2ot_weight"] = w
        return Pairing(x0=x0, noise=paired, info=info)
