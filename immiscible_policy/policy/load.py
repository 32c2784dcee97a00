"""Loading a trained policy from a checkpoint: :func:`load_policy` and the ready-to-act :class:`Policy`.

``Policy.from_checkpoint(path).predict_action(obs_history)`` is the user-facing entry point; the
evaluation CLI and the analyses use :func:`load_policy` for the pieces (network, DiffusionPolicy, config).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from immiscible_policy.checkpoint import (
    Checkpoint,
    check_assigner,
    check_config,
    load_checkpoint,
    load_weights,
)
from immiscible_policy.host import resolve_device
from immiscible_policy.noising import rename_legacy_objective
from immiscible_policy.policy.build import build_policy
from immiscible_policy.policy.model import DiffusionPolicy
from immiscible_policy.policy.normalizer import MinMaxNormalizer

__all__ = ["Policy", "load_policy"]


def load_policy(
    checkpoint: str | os.PathLike,
    device: str = "auto",
    use_ema: bool = True,
    allow_import: bool | None = None,
) -> tuple[nn.Module, DiffusionPolicy, Any, Checkpoint]:
    """(model, policy, config, checkpoint) from a checkpoint; the EMA weights by default (what training
    evaluates).

    A ``module:Class`` assigner in the checkpoint's config is imported only with ``allow_import=True``
    (``None``: when ``IMMISCIBLE_ALLOW_IMPORT=1``); registered names always load."""
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
    model, policy = build_policy(cfg, normalizer, int(meta["obs_dim"]), int(meta["action_dim"]))
    load_weights(model, *ck.select_weights(use_ema))
    model.to(resolve_device(device)).eval()
    return model, policy, cfg, ck


class Policy:
    """A trained policy ready to act: ``Policy.from_checkpoint(path).predict_action(obs_history)``.

    Holds the (EMA) network, the normaliser and the sampler; sampling noise comes from its own seeded
    generator so a rollout is repeatable.
    """

    def __init__(self, model: nn.Module, diffusion: DiffusionPolicy, seed: int = 0) -> None:
        self.model, self.diffusion = model.eval(), diffusion
        device = next(model.parameters()).device
        self.generator = torch.Generator(device=device).manual_seed(int(seed))

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str = "auto",
        use_ema: bool = True,
        seed: int = 0,
        allow_import: bool | None = None,
    ) -> Policy:
        """The policy of a checkpoint (a run dir, its ``checkpoints/`` or one step dir), via :func:`load_policy`."""
        model, diffusion, _, _ = load_policy(path, device=device, use_ema=use_ema, allow_import=allow_import)
        return cls(model, diffusion, seed=seed)

    @property
    def n_obs_steps(self) -> int:
        return self.diffusion.n_obs_steps

    def predict_action(self, obs_history: np.ndarray | Tensor) -> np.ndarray:
        """(n_obs_steps, obs_dim) -> (n_action_steps, A); batched (n, n_obs_steps, obs_dim) -> (n, n_action_steps, A).

        Observations and actions are in env units (PushT: pixels).
        """
        obs = np.asarray(obs_history, dtype=np.float32)
        single = obs.ndim == 2
        actions = self.diffusion.predict_action(self.model, obs[None] if single else obs, self.generator)
        return actions[0] if single else actions
