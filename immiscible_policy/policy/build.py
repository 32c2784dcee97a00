"""Building a diffusion policy from a resolved config: the network, the noising core, the sampler.

Shared by the training loop (:mod:`immiscible_policy.policy.train`) and checkpoint loading
(:mod:`immiscible_policy.policy.load`), so a checkpoint rebuilds exactly the model that was trained.
"""

from __future__ import annotations

from typing import Any

from immiscible_policy.noising import build_core, resolve_sampler
from immiscible_policy.policy.model import DiffusionPolicy
from immiscible_policy.policy.normalizer import MinMaxNormalizer
from immiscible_policy.policy.unet1d import ConditionalUnet1D

__all__ = ["build_model", "build_policy", "policy_sampler"]


def policy_sampler(tr: Any, objective: str) -> str:
    """The policy's sampler: ``trainer.sampler`` (``auto`` = DDPM for diffusion objectives, as
    Diffusion Policy, and Euler for flow), checked against the objective."""
    return resolve_sampler(objective, tr.get("sampler"), diffusion_default="ddpm")


def build_model(model_cfg: Any, action_dim: int, obs_dim: int, n_obs_steps: int) -> ConditionalUnet1D:
    """The ConditionalUnet1D of ``model_cfg`` for (action_dim, obs_dim x n_obs_steps) conditions."""
    return ConditionalUnet1D(
        input_dim=action_dim,
        global_cond_dim=obs_dim * n_obs_steps,
        diffusion_step_embed_dim=int(model_cfg.diffusion_step_embed_dim),
        down_dims=tuple(model_cfg.down_dims),
        kernel_size=int(model_cfg.kernel_size),
        n_groups=int(model_cfg.n_groups),
        cond_predict_scale=bool(model_cfg.cond_predict_scale),
    )


def build_policy(
    cfg: Any, normalizer: MinMaxNormalizer, obs_dim: int, action_dim: int
) -> tuple[ConditionalUnet1D, DiffusionPolicy]:
    """(model, DiffusionPolicy) from a resolved config; shared by training and ``immiscible-eval``."""
    task, tr = cfg.task, cfg.trainer
    core = build_core(tr, cfg.assigner)
    model = build_model(cfg.model, action_dim, obs_dim, int(task.n_obs_steps))
    policy = DiffusionPolicy(
        core,
        normalizer,
        horizon=int(task.horizon),
        n_obs_steps=int(task.n_obs_steps),
        n_action_steps=int(task.n_action_steps),
        action_dim=action_dim,
        num_inference_steps=int(tr.num_inference_steps),
        sampler=policy_sampler(tr, core.objective),
    )
    return model, policy
