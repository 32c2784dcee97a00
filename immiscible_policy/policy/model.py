"""``DiffusionPolicy``: a conditional 1-D U-Net over action chunks, trained through the noising core.

Conventions follow Diffusion Policy: the model denoises a whole window of ``horizon`` normalised
actions (B, horizon, A) conditioned on the flattened first ``n_obs_steps`` normalised observations;
at inference the actions ``[n_obs_steps - 1, n_obs_steps - 1 + n_action_steps)`` of the sampled
window are executed (the first one aligned with the latest observation).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from immiscible_policy.noising import NoisingCore, TrainingPair
from immiscible_policy.policy.normalizer import MinMaxNormalizer


class DiffusionPolicy:
    """Training loss and action prediction around a ConditionalUnet1D (no parameters of its own)."""

    def __init__(
        self,
        core: NoisingCore,
        normalizer: MinMaxNormalizer,
        *,
        horizon: int,
        n_obs_steps: int,
        n_action_steps: int,
        action_dim: int,
        num_inference_steps: int = 100,
        sampler: str = "ddpm",
    ) -> None:
        if n_obs_steps - 1 + n_action_steps > horizon:
            raise ValueError(
                f"n_obs_steps - 1 + n_action_steps = {n_obs_steps - 1 + n_action_steps} exceeds horizon "
                f"{horizon}; lower n_action_steps or raise horizon."
            )
        self.core, self.normalizer = core, normalizer
        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        self.action_dim = action_dim
        self.num_inference_steps, self.sampler = num_inference_steps, sampler

    def global_cond(self, obs_norm: Tensor) -> Tensor:
        """(B, >= n_obs_steps, obs_dim) normalised observations -> (B, n_obs_steps * obs_dim)."""
        return obs_norm[:, : self.n_obs_steps].flatten(1)

    def loss(
        self,
        model: nn.Module,
        obs_norm: Tensor,
        action_norm: Tensor,
        generator: torch.Generator | Sequence[torch.Generator] | None,
    ) -> tuple[Tensor, Tensor, TrainingPair]:
        """Mean loss, per-sample loss (B,) and the training pair for a normalised batch.

        A list of generators splits the batch into that many rank slices (one stream each), see
        :meth:`~immiscible_policy.noising.NoisingCore.sharded_training_pair`.
        """
        cond = self.global_cond(obs_norm)  # what the U-Net sees is what a condition-aware pairing sees
        if isinstance(generator, Sequence):
            tp = self.core.sharded_training_pair(action_norm, generator, cond=cond)
        else:
            tp = self.core.training_pair(action_norm, generator=generator, cond=cond)
        pred = model(tp.x_t, tp.model_timesteps, cond)
        per_sample = F.mse_loss(pred, tp.target, reduction="none").flatten(1).mean(1)
        return per_sample.mean(), per_sample, tp

    @torch.no_grad()
    def predict_action(
        self, model: nn.Module, obs_history: np.ndarray | Tensor, generator: torch.Generator | None = None
    ) -> np.ndarray:
        """(n, n_obs_steps, obs_dim) observations in env units -> (n, n_action_steps, A) actions in env units."""
        device = next(model.parameters()).device
        obs = torch.as_tensor(np.asarray(obs_history), dtype=torch.float32, device=device)
        if obs.dim() != 3 or obs.shape[1] < self.n_obs_steps:
            raise ValueError(
                f"obs_history must be (n, {self.n_obs_steps}, obs_dim), got shape {tuple(obs.shape)}."
            )
        cond = self.global_cond(self.normalizer.normalize("obs", obs))
        traj = self.core.sample(
            lambda x, t: model(x, t, cond),
            (obs.shape[0], self.horizon, self.action_dim),
            num_inference_steps=self.num_inference_steps,
            sampler=self.sampler,
            generator=generator,
            device=device,
        )
        actions = self.normalizer.unnormalize("action", traj)
        start = self.n_obs_steps - 1
        return actions[:, start : start + self.n_action_steps].cpu().numpy()


def __getattr__(name: str):
    """``Policy`` lived here before :mod:`immiscible_policy.policy.load`; kept importable from here."""
    if name == "Policy":
        from immiscible_policy.policy.load import Policy

        return Policy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
