"""c2ot: limits (weight 0 == linear, huge weight == vanilla), brute-force optimality, label exactness,
the cond seam of the noising core (old plugin signature), condition leak, and the legacy checkpoint."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from immiscible_policy import create
from immiscible_policy.assigners.base import Assigner, Pairing
from immiscible_policy.assigners.c2ot import condition_cost
from immiscible_policy.noising import NoisingCore, RectifiedFlow, condition_leak
from immiscible_policy.testing import check_assigner


def _batch(b, seed, d_cond=6):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, 4, 2, generator=g),
        torch.randn(b, 4, 2, generator=g),
        torch.randn(b, d_cond, generator=g),
    )


@pytest.mark.parametrize("cost", ["l2", "sqeuclidean"])
def test_weight_zero_is_exactly_linear(cost):
    for seed in range(5):
        x0, noise, cond = _batch(32, seed)
        a = create("c2ot", weight=0.0, cost=cost).pair(x0, noise, cond=cond).noise
        b = create("linear", cost=cost).pair(x0, noise).noise
        assert torch.equal(a, b)


def test_huge_weight_is_identity_when_conditions_distinct():
    for seed in range(5):
        x0, noise, cond = _batch(16, seed)
        out = create("c2ot", weight=1e9).pair(x0, noise, cond=cond)
        assert torch.equal(out.noise, noise)


@pytest.mark.parametrize("cost", ["l2", "sqeuclidean"])
@pytest.mark.parametrize("weight", [0.5, 3.0])
def test_optimal_against_brute_force(cost, weight):
    for seed in range(4):
        x0, noise, cond = _batch(6, seed)
        d2 = (x0[:, None] - noise[None]).flatten(2).pow(2).sum(-1)
        m = d2 if cost == "sqeuclidean" else d2.sqrt()
        total = m + weight * condition_cost(cond, "cosine")
        best = min(sum(total[i, p[i]].item() for i in range(6)) for p in itertools.permutations(range(6)))
        out = create("c2ot", weight=weight, cost=cost).pair(x0, noise, cond=cond)
        perm = [int(torch.nonzero((noise == out.noise[i]).all(-1).all(-1))[0]) for i in range(6)]
        got = sum(total[i, perm[i]].item() for i in range(6))
        assert got <= best + 1e-4


def test_labels_are_exact_within_group():
    x0, noise, _ = _batch(40, 0)
    labels = torch.randint(0, 4, (40,), generator=torch.Generator().manual_seed(1))
    out = create("c2ot").pair(x0, noise, cond=labels)
    for k in labels.unique():
        rows = labels == k
        got = sorted(map(tuple, out.noise[rows].flatten(1).tolist()))
        assert got == sorted(map(tuple, noise[rows].flatten(1).tolist()))
    assert not torch.equal(out.noise, noise)  # it did pair within groups


def test_adaptive_weight_is_between_linear_and_vanilla():
    x0, noise, cond = _batch(128, 3)
    out = create("c2ot").pair(x0, noise, cond=cond)
    lin = create("linear").pair(x0, noise)
    assert 0 < out.info["c2ot_weight"] < 1e8
    assert lin.info["l2_after"] <= out.info["l2_after"] <= out.info["l2_before"]


def test_conformance_with_cond_and_errors():
    check_assigner(create("c2ot"))
    x0, noise, _ = _batch(8, 0)
    with pytest.raises(ValueError, match="c2ot pairs noise within conditions but got cond=None"):
        create("c2ot").pair(x0, noise)
    with pytest.raises(ValueError, match="c2ot: weight must be a number >= 0"):
        create("c2ot", weight=-1)
    with pytest.raises(ValueError, match="c2ot: cost must be 'l2' or 'sqeuclidean'"):
        create("c2ot", cost="cosine")


class OldSignature(Assigner):
    """A plugin written before ``cond`` existed: pair(x0, noise, *, generator)."""

    name = "old-style"

    def pair(self, x0, noise, *, generator=None):
        return Pairing(x0=x0, noise=noise.flip(0))


def test_core_passes_cond_only_to_strategies_that_declare_it():
    x0, _, cond = _batch(8, 0)
    tp = NoisingCore(RectifiedFlow(), OldSignature()).training_pair(x0, torch.Generator(), cond=cond)
    assert tp.noise.shape == x0.shape
    with pytest.raises(ValueError, match="'c2ot' pairs noise by condition .* gives no condition"):
        NoisingCore(RectifiedFlow(), create("c2ot")).training_pair(x0, torch.Generator())


def test_condition_leak_separates_linear_from_c2ot_and_vanilla():
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(2048, 4, generator=g)
    x0 = (cond @ torch.randn(4, 8, generator=g)).reshape(2048, 4, 2) + 0.1 * torch.randn(
        2048, 4, 2, generator=g
    )
    leaks = {}
    for name in ("vanilla", "linear", "c2ot"):
        rows_c, rows_n = [], []
        for i in range(0, 2048, 256):
            noise = torch.randn(256, 4, 2, generator=g)
            a = create(name)
            kw = {"cond": cond[i : i + 256]} if a.uses_cond else {}
            rows_c.append(cond[i : i + 256])
            rows_n.append(a.pair(x0[i : i + 256], noise, **kw).noise)
        leaks[name] = condition_leak(torch.cat(rows_c), torch.cat(rows_n))
    assert abs(leaks["vanilla"]) < 0.03
    assert leaks["linear"] > 0.1
    assert leaks["c2ot"] < leaks["linear"] / 2


def test_label_leak_is_zero_for_label_exact_c2ot():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (2048,), generator=g)
    x0 = (labels.float()[:, None, None] - 2) + 0.1 * torch.randn(2048, 4, 2, generator=g)
    noise = torch.cat(
        [
            create("c2ot")
            .pair(x0[i : i + 256], torch.randn(256, 4, 2, generator=g), cond=labels[i : i + 256])
            .noise
            for i in range(0, 2048, 256)
        ]
    )
    assert abs(condition_leak(labels, noise)) < 0.03


def test_legacy_policy_checkpoint_predicts_as_before():
    """A checkpoint written before trainer.objective existed (prediction_type only) acts identically."""
    from immiscible_policy.policy import DiffusionPolicy

    fixture = Path(__file__).parent / "fixtures" / "legacy_policy_ckpt"
    expected = json.loads((fixture / "expected_actions.json").read_text())
    policy = DiffusionPolicy.from_checkpoint(fixture, device="cpu", seed=0)
    got = policy.predict_action(np.asarray(expected["obs"], dtype=np.float32))
    np.testing.assert_allclose(got, np.asarray(expected["actions"]), rtol=1e-4, atol=1e-3)
