"""The exact solvers behind ``linear`` and ``c2ot``: optimal on adversarial matrices (brute force and
scipy), the ``solver`` option, its fallback and one-line errors, and label exactness under both solvers."""

from __future__ import annotations

import itertools
import sys
import tomllib
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from immiscible_policy import registry
from immiscible_policy.assigners import solvers
from immiscible_policy.assigners.linear import assignment_cost, solve_assignment
from immiscible_policy.assigners.solvers import (
    LAPX_REQUIREMENT,
    check_solver,
    label_groups,
    lapjv_available,
    solve,
    solve_blocks,
)

needs_lapx = pytest.mark.skipif(
    not lapjv_available(), reason=f"lapx not installed: pip install '{LAPX_REQUIREMENT}'"
)
EXACT = [pytest.param("lapjv", marks=needs_lapx), "scipy"]


def total(cost: np.ndarray, perm: np.ndarray) -> float:
    return float(np.asarray(cost, dtype=np.float64)[np.arange(len(perm)), perm].sum())


def is_permutation(perm: np.ndarray) -> bool:
    return sorted(perm.tolist()) == list(range(len(perm)))


def brute_force(cost: np.ndarray) -> float:
    n = len(cost)
    perms = np.array(list(itertools.permutations(range(n))))
    return float(cost[np.arange(n), perms].sum(axis=1).min())


def adversarial(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Small matrices that trip solvers: ties, duplicates, constants, big and negative magnitudes."""
    row, col = rng.random((1, n)), rng.random((n, 1))
    return {
        "random": rng.random((n, n)),
        "ties": rng.integers(0, 3, (n, n)).astype(float),
        "duplicate_rows": np.repeat(row, n, axis=0),
        "constant": np.full((n, n), 1.5),
        "constant_rows": np.repeat(col, n, axis=1),
        "zeros": np.zeros((n, n)),
        "large": rng.random((n, n)) * 1e8,  # lap 0.5's lapjv (internal infinity 1e6) fails these
        "negative_large": rng.integers(-5, 5, (n, n)) * 1e6 + 0.0,
        "offset_tiny_spread": 100.0 + 1e-9 * rng.random((n, n)),
    }


@pytest.mark.parametrize("solver", EXACT)
@pytest.mark.parametrize("n", range(1, 8))
def test_optimal_against_brute_force(solver, n):
    rng = np.random.default_rng(n)
    for _ in range(3):
        for kind, cost in adversarial(n, rng).items():
            perm = solve(cost, solver)
            assert perm.dtype == np.int64 and is_permutation(perm), kind
            assert total(cost, perm) == pytest.approx(brute_force(cost), rel=1e-12, abs=1e-12), kind


@pytest.mark.parametrize("solver", EXACT)
@pytest.mark.parametrize("n", [64, 257])
def test_same_optimal_cost_as_scipy(solver, n):
    rng = np.random.default_rng(n)
    x0 = rng.standard_normal((n, 8))
    x0[n // 2 :] = x0[: n - n // 2]  # duplicate samples: many equal rows
    cases = adversarial(n, rng)
    cases["duplicate_samples_l2"] = np.sqrt(((x0[:, None] - rng.standard_normal((n, 8))[None]) ** 2).sum(-1))
    cases["float32_distances"] = cases["random"].astype(np.float32)
    for kind, cost in cases.items():
        rows, cols = linear_sum_assignment(cost.astype(np.float64))
        want = float(cost.astype(np.float64)[rows, cols].sum())
        perm = solve(cost, solver)
        assert is_permutation(perm), kind
        assert total(cost, perm) == pytest.approx(want, rel=1e-12, abs=1e-9), kind


@needs_lapx
def test_solvers_agree_on_the_permutation_when_the_optimum_is_unique():
    """Continuous costs have a unique optimum (almost surely): switching solver changes no pairing."""
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(300, 16, 2, generator=g) * 2 - 1, torch.randn(300, 16, 2, generator=g)
    for cost in ("l2", "sqeuclidean"):
        c = assignment_cost(x0, noise, space="full", quantize=None, cost=cost)
        assert torch.equal(solve_assignment(c, "lapjv"), solve_assignment(c, "scipy"))
    a = registry.create("linear", solver="lapjv").pair(x0, noise).noise
    b = registry.create("linear", solver="scipy").pair(x0, noise).noise
    assert torch.equal(a, b)


def test_non_finite_and_non_square_costs_are_refused_alike():
    for solver in ("scipy", *(["lapjv"] if lapjv_available() else [])):
        with pytest.raises(ValueError, match="NaN or infinite entries") as exc:
            solve(np.array([[np.nan, 1.0], [1.0, 2.0]]), solver)
        assert "\n" not in str(exc.value)
        with pytest.raises(ValueError, match=r"square \(B, B\)"):
            solve(np.ones((2, 3)), solver)


def test_label_groups_and_blocks_keep_rows_within_their_label():
    labels = np.array([3, 1, 3, 2, 1, 3])
    assert [g.tolist() for g in label_groups(labels)] == [[1, 4], [3], [0, 2, 5]]
    assert [g.tolist() for g in label_groups(np.array([True, False, True]))] == [[1], [0, 2]]
    rng = np.random.default_rng(0)
    cost = rng.random((6, 6))
    perm = solve_blocks(cost, label_groups(labels), "scipy")
    assert is_permutation(perm) and np.array_equal(labels[perm], labels)
    assert perm[3] == 3  # a single-row block keeps its own column
    want = sum(brute_force(cost[np.ix_(g, g)]) for g in label_groups(labels))
    assert total(cost, perm) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("labels_dtype", [torch.long, torch.bool])
def test_c2ot_labels_same_cost_under_both_solvers(labels_dtype):
    g = torch.Generator().manual_seed(1)
    b = 120
    x0, noise = torch.randn(b, 3, 4, 4, generator=g), torch.randn(b, 3, 4, 4, generator=g)
    labels = torch.randint(0, 6, (b,), generator=g).to(labels_dtype)
    m = assignment_cost(x0, noise, space="full", quantize=None, cost="l2").double().numpy()
    perms = {}
    for solver in ("scipy", *(["lapjv"] if lapjv_available() else [])):
        out = registry.create("c2ot", solver=solver).pair(x0, noise, cond=labels)
        perm, _ = registry.create("c2ot", solver=solver).permutation(x0, noise, labels)
        assert torch.equal(out.noise, noise[perm])
        assert torch.equal(labels[perm], labels)  # each row's noise came with its own label
        perms[solver] = perm.numpy()
    # the optimum per label block, solved independently of the assigner
    lab = labels.long().numpy()
    want = 0.0
    for value in np.unique(lab):
        rows = np.flatnonzero(lab == value)
        r, c = linear_sum_assignment(m[np.ix_(rows, rows)])
        want += float(m[np.ix_(rows, rows)][r, c].sum())
    for perm in perms.values():
        assert total(m, perm) == pytest.approx(want, rel=1e-12)
    if "lapjv" in perms:
        assert np.array_equal(perms["lapjv"], perms["scipy"])


@pytest.mark.parametrize("name", ["linear", "c2ot"])
def test_solver_option_is_recorded_and_shown(name):
    assert registry.create(name).config["params"]["solver"] == "auto"
    scipy = registry.create(name, solver="scipy")
    assert scipy.config["params"]["solver"] == "scipy" and scipy.solver_used == "scipy"
    assert repr(scipy).endswith("solver='scipy')")
    auto = registry.create(name)
    assert auto.solver_used == ("lapjv" if lapjv_available() else "scipy")
    assert repr(auto).endswith(f"solver='auto', solver_used='{auto.solver_used}')")


@pytest.mark.parametrize("name", ["linear", "c2ot"])
def test_unknown_solver_is_a_one_line_error(name):
    with pytest.raises(registry.AssignerError, match=rf"{name}: solver must be one of") as exc:
        registry.create(name, solver="hungarian")
    assert "\n" not in str(exc.value) and "'hungarian'" in str(exc.value)


@pytest.fixture
def lap_module(monkeypatch):
    """Replace what ``import lap`` finds (None: the import fails) for one test; the cache is reset."""

    def use(module):
        monkeypatch.setitem(sys.modules, "lap", module)
        solvers._lapx.cache_clear()

    yield use
    solvers._lapx.cache_clear()


@pytest.mark.parametrize("name", ["linear", "c2ot"])
def test_missing_lapx_auto_falls_back_and_lapjv_names_the_pip_command(lap_module, name):
    lap_module(None)
    assert not lapjv_available()
    auto = registry.create(name)
    assert auto.solver_used == "scipy" and "solver_used='scipy'" in repr(auto)
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(12, 4, generator=g), torch.randn(12, 4, generator=g)
    kwargs = {"cond": torch.arange(12) % 3} if name == "c2ot" else {}
    assert auto.pair(x0, noise, **kwargs).noise.shape == noise.shape
    with pytest.raises(registry.AssignerError, match="lapx is not installed") as exc:
        registry.create(name, solver="lapjv")
    msg = str(exc.value)
    assert "\n" not in msg and f"pip install '{LAPX_REQUIREMENT}'" in msg and "solver: scipy" in msg


def test_the_lap_package_without_lapjvr_is_not_taken_for_lapx(lap_module):
    old_lap = types.ModuleType("lap")
    old_lap.__version__ = "0.5.13"
    old_lap.lapjv = lambda *a, **k: None
    lap_module(old_lap)
    assert check_solver("auto", "linear") == "scipy"
    with pytest.raises(ValueError, match="lap 0.5.13 without lapjvr"):
        check_solver("lapjv", "linear")


def test_the_error_quotes_the_requirement_pyproject_installs():
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert LAPX_REQUIREMENT in pyproject["project"]["dependencies"]
