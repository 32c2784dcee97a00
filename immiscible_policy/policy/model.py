"""``DiffusionPolicy``: a conditional 1-D U-Net over action chunks, trained through the noising core.

Conventions follow Diffusion Policy: the model denoises a whole window of ``horizon`` normalised
actions (B, horizon, A) conditioned on the flattened first ``n_obs_steps`` normalised observations;
at inference the actions ``[n_obs_steps - 1, n_obs_steps - 1 + n_action_steps)`` of the sampled
window are executed (the first one aligned with the latest observation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from immiscible_policy.noising import NoisingCore, TrainingPair
from immiscible_policy.policy.normalizer import MinMaxNormalizer
from immiscible_policy.policy.unet1d import ConditionalUnet1D
from immiscible_policy.policy.vision import ImageEncoder, centre_offsets, random_offsets

#: Pooling of a frame into the cheap fixed embedding image policies pair with (96x96 -> 8x8).
PAIRING_POOL = 12


class ImageConditionedUnet(nn.Module):
    """A ConditionalUnet1D whose global condition is, per observation step, (encoder(frame), agent xy),
    concatenated over the steps: (B, n_obs_steps * (feature_dim + agent_dim)) as in diffusion_policy.

    The encoder is a submodule, so its weights are in the state dict (checkpoints, EMA, DDP's gradient
    all-reduce); ``forward(x, t, cond)`` takes ``cond = {"image": uint8 (B, To, 3, H, W), "agent_pos":
    normalised (B, To, 2), "crop": (B, To, 2) corners or absent}`` so the encoder runs inside the
    (DDP-wrapped) forward. Sampling encodes once (:meth:`global_cond`) and calls :attr:`unet` per step.
    """

    def __init__(self, encoder: ImageEncoder, unet: ConditionalUnet1D) -> None:
        super().__init__()
        self.encoder, self.unet = encoder, unet

    def global_cond(self, images: Tensor, agent_pos: Tensor, crop: Tensor | None = None) -> Tensor:
        b, steps = images.shape[:2]
        offsets = None if crop is None else crop.flatten(0, 1)
        feats = self.encoder(images.flatten(0, 1), offsets).view(b, steps, -1)  # one encoder, every step
        return torch.cat([feats, agent_pos.to(feats.dtype)], dim=-1).flatten(1)

    def forward(self, sample: Tensor, timestep: Tensor | int | float, cond: Mapping[str, Tensor]) -> Tensor:
        return self.unet(
            sample, timestep, self.global_cond(cond["image"], cond["agent_pos"], cond.get("crop"))
        )


def pairing_embedding(images: Tensor) -> Tensor:
    """The fixed image part of the condition a condition-aware assigner (c2ot) sees for image policies.

    uint8 (B, To, 3, H, W) -> (B, To * 3 * (H/12) * (W/12)): each frame average-pooled 12x12 (96 -> 8x8)
    as "ink" ``1 - pixel / 255`` (0 on the white background, > 0 where the T, the agent and the goal are).
    Why not the encoder's features: they exist only inside the forward pass and change as it trains; a
    pairing needs its condition before the forward, and one that drifts would re-pair the same window
    differently every epoch. Why ink: with raw intensities the white background dominates every vector and
    cosine distances between frames collapse; the ink map is ~0 except where objects are, comparable in
    norm to the two normalised agent coordinates it is concatenated with.
    """
    b, steps = images.shape[:2]
    x = images.flatten(0, 1).float() / 255.0
    ink = 1.0 - F.avg_pool2d(x, PAIRING_POOL)
    return ink.reshape(b, steps, -1).flatten(1)


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
        image_shape: tuple[int, int, int] | None = None,
        crop: int | None = None,
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
        #: image policies (the net is an :class:`ImageConditionedUnet`): frame shape (3, H, W) and crop size
        self.image_shape = None if image_shape is None else tuple(int(d) for d in image_shape)
        self.crop = crop

    def global_cond(self, obs_norm: Tensor) -> Tensor:
        """(B, >= n_obs_steps, obs_dim) normalised observations -> (B, n_obs_steps * obs_dim)."""
        return obs_norm[:, : self.n_obs_steps].flatten(1)

    def pairing_cond(self, obs_norm: Tensor, images: Tensor | None = None) -> Tensor:
        """The condition a condition-aware assigner pairs within: the U-Net's global condition for low-dim
        policies; for image policies the normalised agent xy of the obs steps followed by
        :func:`pairing_embedding` of their frames (B, To * 2 + To * 192 for PushT)."""
        if images is None:
            return self.global_cond(obs_norm)
        steps = self.n_obs_steps
        return torch.cat([self.global_cond(obs_norm), pairing_embedding(images[:, :steps])], dim=1)

    def _train_crops(self, n: int, generator, device) -> Tensor:
        """Random crop corners (n, To, 2) from the step's generator(s): one slice per rank stream, drawn after
        that slice's noise, so an emulated rank crops exactly as a real one."""
        gens = list(generator) if isinstance(generator, Sequence) else [generator]
        sizes = [n // len(gens)] * len(gens)
        hw = self.image_shape[1:]
        parts = [  # drawn where each stream lives (a generator only draws on its own device)
            random_offsets(
                (k, self.n_obs_steps), hw, self.crop, generator=g, device=g.device if g else device
            )
            for k, g in zip(sizes, gens)
        ]
        return torch.cat(parts).to(device)

    def prepare(
        self,
        obs_norm: Tensor,
        action_norm: Tensor,
        generator: torch.Generator | Sequence[torch.Generator] | None,
        images: Tensor | None = None,
    ) -> tuple[TrainingPair, Tensor | dict[str, Tensor]]:
        """A batch's training pair and the network's condition: everything of a step drawn from its
        generator(s), before the forward (the trainer may prepare the next step ahead, ``trainer.pair_ahead``).

        A list of generators splits the batch into that many rank slices (one stream each), see
        :meth:`~immiscible_policy.noising.NoisingCore.sharded_training_pair`. Image policies also take the
        batch's frames, uint8 (B, >= n_obs_steps, 3, H, W); their random crops come from the same streams.
        """
        # low-dim: what the U-Net sees is what a condition-aware pairing sees; image: see pairing_cond
        cond = self.pairing_cond(obs_norm, images)
        if isinstance(generator, Sequence):
            tp = self.core.sharded_training_pair(action_norm, generator, cond=cond)
        else:
            tp = self.core.training_pair(action_norm, generator=generator, cond=cond)
        net_cond: Tensor | dict[str, Tensor] = cond
        if self.image_shape is not None:
            if images is None:
                raise ValueError("an image policy's loss needs the batch's frames (images=...)")
            steps = self.n_obs_steps
            crops = self._train_crops(action_norm.shape[0], generator, action_norm.device)
            net_cond = {"image": images[:, :steps], "agent_pos": obs_norm[:, :steps], "crop": crops}
        return tp, net_cond

    def loss(
        self,
        model: nn.Module,
        obs_norm: Tensor,
        action_norm: Tensor,
        generator: torch.Generator | Sequence[torch.Generator] | None,
        images: Tensor | None = None,
        prepared: tuple[TrainingPair, Tensor | dict[str, Tensor]] | None = None,
    ) -> tuple[Tensor, Tensor, TrainingPair]:
        """Mean loss, per-sample loss (B,) and the training pair for a normalised batch (:meth:`prepare`d
        here, or given as ``prepared``)."""
        tp, net_cond = (
            prepared if prepared is not None else self.prepare(obs_norm, action_norm, generator, images)
        )
        pred = model(tp.x_t, tp.model_timesteps, net_cond)
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
        if self.image_shape is None:
            cond = self.global_cond(self.normalizer.normalize("obs", obs))
            denoise = lambda x, t: model(x, t, cond)  # noqa: E731
        else:
            images, agent = self.split_image_obs(obs[:, : self.n_obs_steps])
            crop = centre_offsets(images.shape[:2], self.image_shape[1:], self.crop, device=device)
            cond = model.global_cond(images, self.normalizer.normalize("obs", agent), crop)  # encoded once
            denoise = lambda x, t: model.unet(x, t, cond)  # noqa: E731
        traj = self.core.sample(
            denoise,
            (obs.shape[0], self.horizon, self.action_dim),
            num_inference_steps=self.num_inference_steps,
            sampler=self.sampler,
            generator=generator,
            device=device,
        )
        actions = self.normalizer.unnormalize("action", traj)
        start = self.n_obs_steps - 1
        return actions[:, start : start + self.n_action_steps].cpu().numpy()

    def split_image_obs(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """A flat image observation (..., 3*H*W + agent_dim), the env's layout (CHW pixels 0..255, then the
        agent xy), -> uint8 frames (..., 3, H, W) and the agent xy (..., agent_dim)."""
        n_pix = int(np.prod(self.image_shape))
        if obs.shape[-1] <= n_pix:
            raise ValueError(
                f"image observations must be (..., {n_pix} + agent_dim) (CHW pixels then the agent xy), got "
                f"{tuple(obs.shape)}; was the env made with obs_type='image'?"
            )
        frames = obs[..., :n_pix].round().clamp(0, 255).to(torch.uint8)
        return frames.reshape(*obs.shape[:-1], *self.image_shape), obs[..., n_pix:]


def __getattr__(name: str):
    """``Policy`` lived here before :mod:`immiscible_policy.policy.load`; kept importable from here."""
    if name == "Policy":
        from immiscible_policy.policy.load import Policy

        return Policy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
