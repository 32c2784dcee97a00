"""Properties of the built-in assigners: optimality, permutation, k=1 identity, round-trips."""

from __future__ import annotations

import itertools

import pytest
import torch

from immiscible_policy import create
from immiscible_policy.assigners.knn_pool import greedy_match
from immiscible_policy.assigners.space import features
from immiscible_policy.testing import AssignerConformance, ConformanceError, check_assigner


def _cost(x0, noise, cost="sqeuclidean"):
    d2 = (x0 - noise).flatten(1).pow(2).sum(1)
    return (d2 if cost == "sqeuclidean" else d2.sqrt()).sum().item()


def brute_force_best(x0, noise, cost="sqeuclidean"):
    b = x0.shape[0]
    return min(_cost(x0, noise[list(p)], cost) for p in itertools.permutations(range(b)))


@pytest.mark.parametrize("b", [2, 3, 5, 7])
@pytest.mark.parametrize("quantize", [None, "fp16"])
@pytest.mark.parametrize("cost", ["l2", "sqeuclidean"])
def test_linear_is_optimal_against_brute_force(b, quantize, cost):
    lin = create("linear", quantize=quantize, cost=cost)
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        x0, noise = torch.randn(b, 4, 2, generator=g), torch.randn(b, 4, 2, generator=g)
        got = _cost(x0, lin.pair(x0, noise).noise, cost)
        best = brute_force_best(x0, noise, cost)
        tol = 1e-4 if quantize is None else 0.02 * best  # bf16 cost may tie-break differently
        assert got <= best + tol, (seed, got, best)


@pytest.mark.parametrize("name,params", [("linear", {}), ("linear", {"space": "pool:2"})])
def test_batch_level_returns_permutation(name, params):
    a = create(name, **params)
    x0, noise = torch.randn(33, 3, 8, 8), torch.randn(33, 3, 8, 8)
    out = a.pair(x0, noise).noise
    # each output row is exactly one input row, each used once
    match = (out.flatten(1)[:, None, :] == noise.flatten(1)[None, :, :]).all(-1)
    assert match.sum(1).eq(1).all() and match.sum(0).eq(1).all()


def test_linear_reduces_total_distance():
    x0, noise = torch.randn(64, 16, 2), torch.randn(64, 16, 2)
    out = create("linear").pair(x0, noise)
    assert _cost(x0, out.noise) < _cost(x0, noise)
    assert out.info["l2_after"] < out.info["l2_before"]


def test_knn_k1_bit_identical_to_vanilla():
    x0 = torch.randn(16, 16, 2)
    noise = torch.randn(16, 16, 2)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    v = create("vanilla").pair(x0, noise, generator=g1)
    k = create("knn", k=1).pair(x0, noise, generator=g2)
    assert torch.equal(v.noise, k.noise) and torch.equal(v.x0, k.x0)
    # and the generator was not advanced differently
    assert torch.equal(torch.randn(4, generator=g1), torch.randn(4, generator=g2))


@pytest.mark.parametrize("k", [2, 4, 64])
@pytest.mark.parametrize("space", ["full", "pool:4"])
def test_knn_never_increases_distance(k, space):
    x0, noise = torch.randn(50, 16, 2), torch.randn(50, 16, 2)
    out = create("knn", k=k, space=space).pair(x0, noise, generator=torch.Generator().manual_seed(0))
    fx = features(x0, 4 if space != "full" else None)
    d_before = (features(noise, 4 if space != "full" else None) - fx).norm(dim=1)
    d_after = (features(out.noise, 4 if space != "full" else None) - fx).norm(dim=1)
    assert (d_after <= d_before + 1e-6).all()
    assert (d_after < d_before).any()


def test_knn_chunking_does_not_change_result():
    x0, noise = torch.randn(37, 16, 2), torch.randn(37, 16, 2)
    big = create("knn", k=8).pair(x0, noise, generator=torch.Generator().manual_seed(1)).noise
    # with a tiny cap every row is its own chunk; draws happen in the same order, so results agree
    small = create("knn", k=8, max_chunk_elements=1).pair(
        x0, noise, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(big, small.noise)


def test_knn_batch_size_one_and_images():
    a = create("knn", k=16)
    out = a.pair(torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    assert out.noise.shape == (1, 3, 8, 8)


def test_knn_pool_unique_and_closer():
    x0, noise = torch.randn(128, 3, 8, 8), torch.randn(128, 3, 8, 8)
    out = create("knn-pool", ratio=4, n_neighbors=8).pair(
        x0, noise, generator=torch.Generator().manual_seed(0)
    )
    rows = out.noise.flatten(1)
    assert torch.unique(rows, dim=0).shape[0] == 128  # no pool noise used twice
    assert out.info["l2_after"] < out.info["l2_before"]


def test_greedy_match_resolves_conflicts_and_prefers_nearest():
    # two samples both nearest to pool item 0; sample 1 is closer so it wins, sample 0 takes its 2nd choice
    dist = torch.tensor([[1.0, 2.0], [0.5, 3.0], [0.1, 0.2]])
    cand = torch.tensor([[0, 1], [0, 2], [3, 4]])
    m = greedy_match(dist, cand, pool_size=6)
    assert m.tolist() == [1, 0, 3]
    # everyone wants item 0 and has no other candidate: leftovers take the free items
    m = greedy_match(torch.ones(4, 1), torch.zeros(4, 1, dtype=torch.long), pool_size=4)
    assert sorted(m.tolist()) == [0, 1, 2, 3]


def test_scale_round_trip_and_bad_value():
    s = create("scale", s=3.0)
    x0 = torch.randn(4, 3, 8, 8)
    out = s.pair(x0, torch.randn_like(x0))
    assert torch.allclose(out.x0, 3.0 * x0)
    assert torch.allclose(s.decode(out.x0), x0)
    with pytest.raises(ValueError, match="s must be a finite number > 0"):
        create("scale", s=0)


def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        create("knn", k=0)
    with pytest.raises(ValueError, match="Invalid space 'pool8'"):
        create("knn", space="pool8")
    with pytest.raises(ValueError, match="quantize must be one of"):
        create("linear", quantize="int8")
    with pytest.raises(ValueError, match="x0 shape .* and noise shape .* differ"):
        create("linear").pair(torch.randn(4, 2), torch.randn(5, 2))
    with pytest.raises(ValueError, match="pool:4' needs spatial dims"):
        create("knn", k=2, space="pool:4").pair(torch.randn(4, 8), torch.randn(4, 8))


def test_conformance_kit_catches_broken_strategy():
    from immiscible_policy.assigners.base import Assigner, Pairing

    class InPlace(Assigner):
        name = "inplace"

        def pair(self, x0, noise, *, generator=None):
            noise.mul_(0.5)
            return Pairing(x0, noise)

    class FakePermutation(Assigner):
        name = "fakeperm"
        scope = "batch"
        preserves_noise_multiset = True

        def pair(self, x0, noise, *, generator=None):
            return Pairing(x0, noise * 0.9)

    with pytest.raises(ConformanceError, match="modified its inputs in place"):
        check_assigner(InPlace())
    with pytest.raises(ConformanceError, match="not a permutation"):
        check_assigner(FakePermutation())


class TestVanillaConformance(AssignerConformance):
    def make_assigner(self):
        return create("vanilla")


class TestLinearConformance(AssignerConformance):
    def make_assigner(self):
        return create("linear")


class TestKNNConformance(AssignerConformance):
    def make_assigner(self):
        return create("knn", k=8)


class TestKNNPoolConformance(AssignerConformance):
    def make_assigner(self):
        return create("knn-pool", ratio=2, n_neighbors=4)


class TestScaleConformance(AssignerConformance):
    def make_assigner(self):
        return create("scale", s=2.0)
