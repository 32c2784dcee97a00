"""Before training: how much a pairing recipe leaks the observation into a policy's training noise.

Why: a sampler draws its first noise from N(0, I) whatever the observation. Pairing that ignores the
observation makes the paired training noise depend on the action chunk, and so on the observation; the
model then meets at inference a prior it was never trained on, and can learn to read its action off the
noise. On PushT (30-epoch policies, benchmarks/pusht_modes.py) the published full-batch matching leaks
a held-out R^2 of ~0.06 and breaks the policy (score 0.95 -> 0.12), the same matching on half of each batch
leaks ~0.014 and keeps most of the score. The trainers log the same number (``condition_leak``) while
training; this computes it from the data alone, in seconds, for any recipe (a registered strategy, its
options and its pairing schedule at full share) so a recipe can be checked before a run is spent on it.

Measured per recipe over ``rows`` training rows (batches of ``batch`` random windows, fresh N(0, I) noise
each): ``condition_leak`` (held-out ridge R^2 of the paired noise regressed on the observation, as the
trainers compute it: ~0 for independent noise), the trainers' noise statistics (``pair_l2``: mean L2
distance between a chunk and its noise, how much the recipe pairs at all; ``noise_proj_x0``: the noise's
mean projection on its own chunk's direction, 0 for independent noise; ``noise_norm_ratio``: 1 for
N(0, I)) and ``paired_share``. ``+neighbour_batches=k`` draws the batches as the policy trainer's neighbour
batches (policy/neighbour_batches.py) and pairs a condition-aware strategy within their groups.

Read the leak beside ``noise_proj_x0``: a linear probe underestimates the leak for continuous conditions.
``c2ot`` leaks ~0 by this probe on PushT, yet trained from step 0 it broke the policies of the PushT grid
(docs/results.md), with its noise still pointing at its chunk; ``knn`` (k=4) changes the noise's norm too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["parse_recipe", "recipe_leak"]


def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_recipe(spec: str) -> tuple[str, dict]:
    """``"linear+standardize=true+fraction=0.5"`` -> ("linear", {"standardize": True, "fraction": 0.5}):
    a strategy name, then ``+key=value`` options (the strategy's own and the schedule's ``start_epoch`` /
    ``fraction`` / ``ramp_epochs``)."""
    name, *options = spec.strip().split("+")
    if not name:
        raise ValueError(f"recipe {spec!r}: start with a strategy name, e.g. linear+standardize=true.")
    settings = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise ValueError(f"recipe {spec!r}: option {option!r} is not key=value.")
        settings[key] = _value(value)
    return name, settings


def recipe_leak(
    spec: str,
    actions: Tensor,
    cond: Tensor,
    *,
    batch: int,
    rows: int,
    seed: int = 0,
    episodes: Tensor | None = None,
) -> dict:
    """``spec``'s condition leak and pair distance on (N, horizon, A) normalised ``actions`` with their
    (N, C) ``cond`` (the trainers' pairing condition), at the recipe's full share (its start epoch plus its
    ramp). ``+neighbour_batches=k`` draws the batches as the trainer's neighbour batches (groups of a random
    window and its k - 1 nearest from other demos, ``episodes`` (N,) naming each window's demo) and pairs a
    condition-aware strategy within the groups."""
    from immiscible_policy.noising import condition_leak, noise_stats
    from immiscible_policy.pairing import NoisePairer
    from immiscible_policy.policy.neighbour_batches import group_labels, grouped_rows, neighbour_table

    name, settings = parse_recipe(spec)
    k = settings.pop("neighbour_batches", 1)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1 or batch % k:
        raise ValueError(
            f"recipe {spec!r}: neighbour_batches={k!r}; use a whole number >= 1 dividing batch={batch}."
        )
    if k > 1 and episodes is None:
        raise ValueError(f"recipe {spec!r}: neighbour batches need each window's demo (episodes=).")
    n = actions.shape[0]
    if n < 2 or cond.shape[0] != n:
        raise ValueError(
            f"recipe_leak needs >= 2 windows with one condition each, got {n} and {cond.shape[0]}."
        )
    if not 2 <= batch <= n:
        raise ValueError(f"batch={batch}: use 2 to {n} (the number of windows).")
    if rows < max(batch, 64):
        raise ValueError(f"rows={rows}: use at least {max(batch, 64)} (one batch, and 64 rows for the fit).")
    pairer = NoisePairer(name, **settings)
    epoch = pairer.schedule.start_epoch + pairer.schedule.ramp_epochs
    table = neighbour_table(cond, episodes, k) if k > 1 else None
    g = torch.Generator().manual_seed(seed)
    conds, noises, stats, shares = [], [], [], []
    for _ in range((rows + batch - 1) // batch):
        if table is None:
            idx, within = torch.randint(0, n, (batch,), generator=g), None
        else:  # the trainer's layout: whole groups, labelled for a condition-aware strategy
            anchors = torch.randint(0, n, (batch // k,), generator=g)
            idx, within = grouped_rows(table, anchors), group_labels(batch, k)
        x0, c = actions[idx], cond[idx]
        noise = torch.randn(x0.shape, generator=g)
        paired = pairer.scheduled.pair(
            x0, noise, epoch=epoch, generator=g, cond=c if within is None else within
        )
        conds.append(c)
        noises.append(paired.noise.flatten(1))
        stats.append(noise_stats(paired.x0, paired.noise))
        shares.append(paired.info["paired_share"])
    out = {
        "condition_leak": condition_leak(torch.cat(conds)[:rows], torch.cat(noises)[:rows]),
        **{k: float(torch.stack([st[k] for st in stats]).mean()) for k in stats[0]},
    }
    if not all(math.isfinite(v) for v in out.values()):
        raise ValueError(
            f"recipe {spec!r}: a non-finite leak or noise statistic (non-finite data?); nothing is reported."
        )
    return {
        "recipe": spec,
        "strategy": name,
        "settings": settings,
        "neighbour_batches": k,
        **out,
        "paired_share": float(sum(shares) / len(shares)),
        "batch": batch,
        "rows": rows,
    }
