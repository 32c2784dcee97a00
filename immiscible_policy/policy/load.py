"""Loading a trained policy from a checkpoint: :func:`load_policy` (the policy with its run's config and
checkpoint record), which ``DiffusionPolicy.from_checkpoint`` calls.

``DiffusionPolicy.from_checkpoint(path).predict_action(obs_history)`` is the user-facing entry point; the
evaluation CLI and the analyses use :func:`load_policy`, which also returns the run's config (its task, to
roll out) and the checkpoint record (path, step, assigner). Importing this module registers the loader with
:class:`~immiscible_policy.policy.model.DiffusionPolicy` (model.py cannot import it: this module builds
through :mod:`~immiscible_policy.policy.build`, which imports model.py).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from omegaconf import OmegaConf
from torch import nn

from immiscible_policy.checkpoint import (
    Checkpoint,
    check_assigner,
    check_config,
    load_checkpoint,
    load_weights,
)
from immiscible_policy.host import resolve_device
from immiscible_policy.noising import rename_legacy_objective
from immiscible_policy.policy.build import make_policy
from immiscible_policy.policy.model import DiffusionPolicy, Policy
from immiscible_policy.policy.normalizer import MinMaxNormalizer

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
    ck = load_checkpoint(checkpoint)
    check_config(ck.config, ck.path, "policy")
    check_assigner(ck.config, ck.path, allow_import)
    cfg = rename_legacy_objective(OmegaConf.create(ck.config["cfg"]))  # trainer.prediction_type: objective
    if ck.normalizer is None:
        raise ValueError(
            f"Checkpoint {ck.path} has no normalizer.json; it was not written by the policy trainer."
        )
    normalizer = MinMaxNormalizer.from_dict(ck.normalizer)
    meta = ck.config["policy"]
    policy = make_policy(cfg, normalizer, int(meta["obs_dim"]), int(meta["action_dim"]), seed=seed)
    load_weights(policy.net, *ck.select_weights(use_ema))  # the checkpoint holds the network's state dict
    policy.to(resolve_device(device)).eval()
    return LoadedPolicy(policy.net, policy, cfg, ck)


def _from_checkpoint(
    path: str | os.PathLike, *, device: str, use_ema: bool, seed: int, allow_import: bool | None
) -> DiffusionPolicy:
    return load_policy(path, device=device, use_ema=use_ema, allow_import=allow_import, seed=seed).policy


DiffusionPolicy._checkpoint_loader = _from_checkpoint
