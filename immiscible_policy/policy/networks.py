"""The policy networks and how a model config builds them: the ConditionalUnet1D of low-dim policies and
the :class:`ImageConditionedUnet` (an image encoder feeding that U-Net) of image policies.

Why its own module, below :mod:`~immiscible_policy.policy.model`: a checkpoint is rebuilt from its recorded
config (``DiffusionPolicy.from_checkpoint``), so the policy module must build its network from a config
itself; with the construction here, model.py (loading) and :mod:`~immiscible_policy.policy.build`
(training) both import it from below, and neither needs the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from immiscible_policy.config_schema import VisionConfig, defaults_of
from immiscible_policy.policy.unet1d import ConditionalUnet1D
from immiscible_policy.policy.vision import ImageEncoder

__all__ = ["ImageConditionedUnet", "build_encoder", "build_model", "image_obs"]


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


def image_obs(task: Any) -> bool:
    """Whether a task config observes images (``task.obs_type=image``)."""
    return str(task.get("obs_type", "")) == "image"


def build_encoder(vision_cfg: Any) -> ImageEncoder:
    """The :class:`~immiscible_policy.policy.vision.ImageEncoder` of ``model.vision``."""
    if vision_cfg is None:
        raise ValueError(
            "task.obs_type=image needs an image encoder: pick model=unet1d_image_cpu (CPU) or "
            "model=dp_image (diffusion_policy's sizes), or add a model.vision section."
        )
    v = {**defaults_of(VisionConfig), **dict(vision_cfg)}  # absent keys: ResNet-18 (config_schema/models.py)
    return ImageEncoder(
        channels=tuple(v["channels"]),
        blocks=tuple(v["blocks"]),
        group_size=int(v["group_size"]),
        num_keypoints=int(v["num_keypoints"]),
        feature_dim=int(v["feature_dim"]),
        crop=int(v["crop"]),
    )


def build_model(
    model_cfg: Any, action_dim: int, obs_dim: int, n_obs_steps: int, image: bool = False
) -> ConditionalUnet1D | ImageConditionedUnet:
    """The ConditionalUnet1D of ``model_cfg`` for (action_dim, obs_dim x n_obs_steps) conditions; with
    ``image`` an :class:`ImageConditionedUnet` (``model.vision``'s encoder, (feature_dim + obs_dim) per step)."""
    if image:
        encoder = build_encoder(model_cfg.get("vision"))
        unet = build_model(model_cfg, action_dim, encoder.feature_dim + obs_dim, n_obs_steps)
        return ImageConditionedUnet(encoder, unet)
    return ConditionalUnet1D(
        input_dim=action_dim,
        global_cond_dim=obs_dim * n_obs_steps,
        diffusion_step_embed_dim=int(model_cfg.diffusion_step_embed_dim),
        down_dims=tuple(model_cfg.down_dims),
        kernel_size=int(model_cfg.kernel_size),
        n_groups=int(model_cfg.n_groups),
        cond_predict_scale=bool(model_cfg.cond_predict_scale),
    )
