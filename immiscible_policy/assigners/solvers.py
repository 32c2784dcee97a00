"""Exact linear assignment solvers behind ``linear`` and ``c2ot`` (the ``solver`` option).

Why a choice: the exact solve is what makes batch assignment expensive (the papers' argument for KNN),
and ``scipy.optimize.linear_sum_assignment`` (what the official code, torchcfm and we used) is not the
fastest exact solver. The Jonker-Volgenant solver ``lapjvr`` (Rust core) of the ``lapx`` package
returned the same optimal total cost several times faster than scipy for every batch size measured, ties
and duplicate samples included (the numbers, with the machine: docs/results.md, "Exact solvers"). Both are exact, so the choice changes speed, never the optimal cost;
with a unique optimum (continuous data: almost surely) it does not change the permutation either.

* ``scipy``: ``scipy.optimize.linear_sum_assignment`` (always installed).
* ``lapjv``: ``lap.lapjvr`` from ``lapx`` (a dependency of this project; an error naming the pip
  command when it is missing).
* ``auto`` (default): ``lapjv`` when ``lapx`` imports, else ``scipy``; the assigner's repr says which.

Why ``lapx`` and not ``lap`` (both install the import name ``lap``): ``lap`` 0.5.13's ``lapjv`` (whose
internal "infinity" is 1e6) returned non-optimal assignments for 5 of 20 random 6x6 matrices with costs
in [0, 1e8], and ``c2ot`` with a large ``weight`` builds such matrices; ``lapx`` was exact on them and
adds ``lapjvr``. If ``import lap`` finds ``lap`` rather than ``lapx`` (no ``lapjvr``), ``auto`` uses scipy.

Inputs are made what every wrapper accepts: a square, C-contiguous float64 matrix. Non-finite costs
(NaN from a NaN sample, or an overflow) are refused by both solvers with the same one-line error:
``lapjvr`` documents their result as undefined, scipy rejects NaN but accepts +inf.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from types import ModuleType

import numpy as np
from scipy.optimize import linear_sum_assignment

SOLVERS = ("auto", "lapjv", "scipy")
#: what ``pyproject.toml`` requires (``lapjvr`` is new in 0.11); quoted in the missing-package error
LAPX_REQUIREMENT = "lapx>=0.11.1,<0.12"


@functools.cache
def _lapx() -> tuple[ModuleType | None, str]:
    """(the ``lap`` module of ``lapx``, "") or (None, why it is unusable); imported once."""
    try:
        import lap
    except ImportError as exc:
        return None, f"lapx is not installed ({exc})"
    if not hasattr(lap, "lapjvr"):
        version = getattr(lap, "__version__", "?")
        return None, f"'import lap' found lap {version} without lapjvr (the 'lap' package, or lapx < 0.11)"
    return lap, ""


def lapjv_available() -> bool:
    """True when ``solver: lapjv`` can run (``lapx`` >= 0.11 importable as ``lap``)."""
    return _lapx()[0] is not None


def check_solver(solver: str, who: str) -> str:
    """The solver that ``solver`` resolves to (``lapjv`` or ``scipy``); one-line errors otherwise.

    ``auto`` falls back to scipy when lapx is missing; ``lapjv`` without it is an error naming the fix.
    """
    if solver not in SOLVERS:
        raise ValueError(f"{who}: solver must be one of {SOLVERS}, got {solver!r}.")
    if solver == "scipy":
        return "scipy"
    module, why = _lapx()
    if module is not None:
        return "lapjv"
    if solver == "auto":
        return "scipy"
    raise ValueError(
        f"{who}: solver 'lapjv' needs lapx, but {why}; install it with "
        f"`pip install '{LAPX_REQUIREMENT}'` or set solver: scipy (or auto)."
    )


def solver_repr(base: str, solver: str, used: str) -> str:
    """An assigner's repr with the solver ``auto`` resolved to, so a run's log shows a scipy fallback."""
    return base if solver == used else f"{base[:-1]}, solver_used={used!r})"


def _square_float64(cost: np.ndarray) -> np.ndarray:
    c = np.ascontiguousarray(cost, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"linear assignment needs a square (B, B) cost matrix, got shape {c.shape}.")
    if not np.isfinite(c).all():
        raise ValueError(
            "linear assignment: the cost matrix has NaN or infinite entries; check x0 and noise for NaN/inf."
        )
    return c


def solve(cost: np.ndarray, solver: str) -> np.ndarray:
    """Optimal ``perm`` (B,) int64 minimising ``sum_i cost[i, perm[i]]``; ``solver``: lapjv | scipy."""
    c = _square_float64(cost)
    n = c.shape[0]
    if n <= 1:
        return np.zeros(n, dtype=np.int64)
    if solver == "lapjv":
        module = _lapx()[0]
        if module is None:  # an instance built where lapx was installed, used where it is not
            raise ValueError(
                f"solver 'lapjv' needs lapx; install it with `pip install '{LAPX_REQUIREMENT}'`."
            )
        rows, cols = module.lapjvr(c, return_cost=False)
    elif solver == "scipy":
        rows, cols = linear_sum_assignment(c)
    else:
        raise ValueError(f"solve: solver must be 'lapjv' or 'scipy' (resolved), got {solver!r}.")
    perm = np.empty(n, dtype=np.int64)
    perm[rows] = cols
    return perm


def solve_blocks(cost: np.ndarray, groups: Sequence[np.ndarray], solver: str) -> np.ndarray:
    """Optimal permutation of the rows of ``cost`` (B, B) that keeps each group of rows within itself.

    Row ``i`` of group ``g`` is paired with a column of ``g`` minimising that block's total (the blocks
    are independent problems). One solve per block: ``lapx``'s batched ``lapjvr_batch`` needs equal
    shapes, and the blocks padded to one size (forbidden entries between real and dummy rows) and solved
    in one call were no faster than this loop (docs/results.md, "Exact solvers"); single-row blocks keep their own column without a solve.
    """
    c = np.asarray(cost)
    perm = np.arange(c.shape[0], dtype=np.int64)
    for rows in groups:
        if len(rows) > 1:
            perm[rows] = rows[solve(c[np.ix_(rows, rows)], solver)]
    return perm


def label_groups(labels: np.ndarray) -> list[np.ndarray]:
    """Row indices of each distinct label (ascending label order, rows ascending within a label)."""
    order = np.argsort(labels, kind="stable")
    ordered = labels[order]
    cuts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1  # not np.diff: it refuses bool labels
    return [g for g in np.split(order, cuts) if len(g)]
