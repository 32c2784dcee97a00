"""Building a diffusion policy from a resolved config: :func:`make_policy`, the network, the noising core and
the sampler in one :class:`~immiscible_policy.policy.model.DiffusionPolicy`.

The construction itself is ``DiffusionPolicy.from_config`` over the networks of
:mod:`~immiscible_policy.policy.networks` (re-exported here), so a checkpoint rebuilds exactly the model that
was trained, and loading one needs nothing of this module.
"""

from __future__ import annotations

from typing import Any

from immiscible_policy.config_schema import trainer_sampler
from immiscible_policy.policy.model import DiffusionPolicy
from immiscible_policy.policy.networks import build_encoder, build_model, image_obs
from immiscible_policy.policy.normalizer import MinMaxNormalizer

__all__ = ["build_encoder", "build_model", "image_obs", "make_policy", "policy_sampler"]


def policy_sampler(tr: Any, objective: str) -> str:
    """The policy's sampler: ``trainer.sampler`` as the policy trainer's schema reads it (``auto`` = DDPM
    for diffusion objectives, as Diffusion Policy, and the objective's own, Euler, for flow), checked
    against the objective (:func:`~immiscible_policy.config_schema.trainer_sampler`)."""
    return trainer_sampler(tr, objective, "policy")


def make_policy(
    cfg: Any, normalizer: MinMaxNormalizer, obs_dim: int, action_dim: int, *, seed: int = 0
) -> DiffusionPolicy:
    """The :class:`DiffusionPolicy` of a resolved config (untrained network, CPU); shared by training and
    checkpoint loading (``DiffusionPolicy.from_config``). ``seed`` seeds the policy's sampling generator
    (``predict_action``)."""
    return DiffusionPolicy.from_config(cfg, normalizer, obs_dim, action_dim, seed=seed)
