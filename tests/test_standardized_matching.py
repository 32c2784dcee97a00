"""``standardize: true`` (Immiscible Diffusion Policy's matching) for linear and c2ot: the cost is the
unsquared L2 from the batch-standardised samples (population std, clamped at 1e-6) to the raw noise, the
solve is optimal (brute force), and only the permutation is used."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from immiscible_policy.registry import create


def published_cost(x0: torch.Tensor, noise: torch.Tensor) -> np.ndarray:
    """The formula, written out in numpy: per coordinate over the batch, std with ddof=0, clamp 1e-6."""
    a = x0.reshape(len(x0), -1).double().numpy()
    n = noise.reshape(len(noise), -1).double().numpy()
    z = (a - a.mean(axis=0)) / np.maximum(a.std(axis=0), 1e-6)
    return np.sqrt(((z[:, None, :] - n[None, :, :]) ** 2).sum(-1))


def brute_force(cost: np.ndarray) -> float:
    b = len(cost)
    return min(sum(cost[i, p[i]] for i in range(b)) for p in itertools.permutations(range(b)))


def total(cost: np.ndarray, x0: torch.Tensor, noise: torch.Tensor, paired: torch.Tensor) -> float:
    perm = [next(j for j in range(len(noise)) if torch.equal(noise[j], paired[i])) for i in range(len(x0))]
    assert sorted(perm) == list(range(len(x0)))  # a permutation of the drawn noise
    return float(sum(cost[i, perm[i]] for i in range(len(x0))))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", ["linear", "c2ot"])
def test_optimal_for_the_published_cost_against_brute_force(seed, name):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(6, 4, 2, generator=g) * torch.tensor([5.0, 0.1]) + 3.0  # scales differ per coordinate
    noise = torch.randn(6, 4, 2, generator=g)
    kw = {"weight": 0.0} if name == "c2ot" else {}
    a = create(name, standardize=True, **kw)
    cond = torch.zeros(6, 3) if name == "c2ot" else None
    out = a.pair(x0, noise, **({"cond": cond} if cond is not None else {}))
    cost = published_cost(x0, noise)
    assert total(cost, x0, noise, out.noise) == pytest.approx(brute_force(cost), rel=1e-9, abs=1e-9)
    assert torch.equal(out.x0, x0)  # the samples are noised unchanged (only the permutation is used)


def test_standardizing_changes_the_matching_when_scales_differ():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 16, 2, generator=g) * torch.tensor([40.0, 0.05])
    noise = torch.randn(64, 16, 2, generator=g)
    plain = create("linear").pair(x0, noise).noise
    std = create("linear", standardize=True).pair(x0, noise).noise
    assert not torch.equal(plain, std)
    # invariant to an affine change of each coordinate (what standardising is for)
    shifted = create("linear", standardize=True).pair(x0 * 3.0 + 7.0, noise).noise
    assert torch.equal(shifted, std)


def test_constant_coordinates_and_a_batch_of_one():
    noise = torch.randn(5, 3, 2)
    x0 = torch.ones(5, 3, 2)  # every coordinate constant: standardised to 0, no NaN
    x0[:, 0, 0] = torch.arange(5.0)
    out = create("linear", standardize=True).pair(x0, noise)
    cost = published_cost(x0, noise)
    assert np.isfinite(cost).all()
    assert total(cost, x0, noise, out.noise) == pytest.approx(brute_force(cost))
    one = create("linear", standardize=True).pair(torch.full((1, 3, 2), 4.0), noise[:1])
    assert torch.equal(one.noise, noise[:1])


def test_c2ot_standardized_with_weight_zero_is_linear_standardized():
    g = torch.Generator().manual_seed(3)
    x0, noise, cond = (
        torch.randn(32, 8, 2, generator=g),
        torch.randn(32, 8, 2, generator=g),
        torch.randn(32, 5),
    )
    a = create("c2ot", standardize=True, weight=0.0).pair(x0, noise, cond=cond).noise
    b = create("linear", standardize=True).pair(x0, noise).noise
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["linear", "c2ot"])
def test_bad_standardize_value_is_one_line(name):
    with pytest.raises(
        ValueError,
        match=rf"{name}: standardize must be true or false, got 'yes'; its options are: .*standardize: bool = False",
    ):
        create(name, standardize="yes")  # the registry names the strategy's options after it
