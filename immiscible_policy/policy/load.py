"""Loading a trained policy with its run: :func:`load_policy` (the policy, the run's config and the
checkpoint record).

``DiffusionPolicy.from_checkpoint(path).predict_action(obs_history)`` is the user-facing entry point; the
evaluation CLI and the analyses use :func:`load_policy`, which also returns the run's config (its task, to
roll out) and the checkpoint record (path, step, assigner). Both read the checkpoint with
``DiffusionPolicy.from_checkpoint_run`` (policy/model.py); this module only names the result.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from torch import nn

from immiscible_policy.checkpoint import Checkpoint
from immiscible_policy.policy.model import DiffusionPolicy, Policy

__all__ = ["LoadedPolicy", "Policy", "load_policy"]


class LoadedPolicy(NamedTuple):
    """What :func:`load_policy` returns. ``model`` is ``policy.net``, first so that the former
    ``model, policy, cfg, ck = load_policy(...)`` keeps unpacking."""

    model: nn.Module
    policy: DiffusionPolicy
    cfg: Any
    checkpoint: Checkpoint


def load_policy(
    checkpoint: str | os.PathLike,
    device: str = "auto",
    use_ema: bool = True,
    allow_import: bool | None = None,
    *,
    seed: int = 0,
) -> LoadedPolicy:
    """(model, policy, config, checkpoint) of a checkpoint, the policy in eval mode on ``device``; the EMA
    weights by default (what training evaluates); ``seed`` seeds the policy's sampling generator.

    The config is checked before anything is built (one-line errors). A ``module:Class`` assigner in the
    checkpoint's config is imported only with ``allow_import=True`` (``None``: when
    ``IMMISCIBLE_ALLOW_IMPORT=1``); registered names always load."""
    policy, cfg, ck = DiffusionPolicy.from_checkpoint_run(
        checkpoint, device=device, use_ema=use_ema, seed=seed, allow_import=allow_import
    )
    return LoadedPolicy(policy.net, policy, cfg, ck)
