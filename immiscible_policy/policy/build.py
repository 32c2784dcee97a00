"""Building a diffusion policy from a resolved config: the network, the noising core, the sampler, in one
:class:`~immiscible_policy.policy.model.DiffusionPolicy` (:func:`make_policy`).

Shared by the training loop (:mod:`immiscible_policy.policy.train`) and checkpoint loading
(:mod:`immiscible_policy.policy.load`), so a checkpoint rebuilds exactly the model that was trained.
"""

from __future__ import annotations

from typing import Any

from immiscible_policy.config_schema import VisionConfig, defaults_of
from immiscible_policy.noising import build_core, resolve_sampler
from immiscible_policy.policy.model import DiffusionPolicy, ImageConditionedUnet
from immiscible_policy.policy.normalizer import MinMaxNormalizer
from immiscible_policy.policy.unet1d import ConditionalUnet1D
from immiscible_policy.policy.vision import ImageEncoder

__all__ = ["build_encoder", "build_model", "build_policy", "image_obs", "make_policy", "policy_sampler"]


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
    v = {**defaults_of(VisionConfig), **dict(vision_cfg)}  # absent keys: ResNet-18 (config_schema.py)
    return ImageEncoder(
        channels=tuple(v["channels"]),
        blocks=tuple(v["blocks"]),
        group_size=int(v["group_size"]),
        num_keypoints=int(v["num_keypoints"]),
        feature_dim=int(v["feature_dim"]),
        crop=int(v["crop"]),
    )


def policy_sampler(tr: Any, objective: str) -> str:
    """The policy's sampler: ``trainer.sampler`` (``auto`` = DDPM for diffusion objectives, as
    Diffusion Policy, and Euler for flow), checked against the objective."""
    return resolve_sampler(objective, tr.get("sampler"), diffusion_default="ddpm")


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


def make_policy(
    cfg: Any, normalizer: MinMaxNormalizer, obs_dim: int, action_dim: int, *, seed: int = 0
) -> DiffusionPolicy:
    """The :class:`DiffusionPolicy` of a resolved config (untrained network, CPU); shared by training and
    checkpoint loading. ``seed`` seeds the policy's sampling generator (``predict_action``)."""
    task, tr = cfg.task, cfg.trainer
    core = build_core(tr, cfg.assigner)
    image = image_obs(task)
    net = build_model(cfg.model, action_dim, obs_dim, int(task.n_obs_steps), image=image)
    size = int(task.get("image_size", 96))
    return DiffusionPolicy(
        net,
        core,
        normalizer,
        horizon=int(task.horizon),
        n_obs_steps=int(task.n_obs_steps),
        n_action_steps=int(task.n_action_steps),
        action_dim=action_dim,
        num_inference_steps=int(tr.num_inference_steps),
        sampler=policy_sampler(tr, core.objective),
        image_shape=(3, size, size) if image else None,
        crop=net.encoder.crop if image else None,
        seed=seed,
    )


def build_policy(
    cfg: Any, normalizer: MinMaxNormalizer, obs_dim: int, action_dim: int
) -> tuple[ConditionalUnet1D | ImageConditionedUnet, DiffusionPolicy]:
    """TRAINERS' CALL until they use :func:`make_policy`: ``(policy.net, policy)``, the network that
    ``policy/train.py`` optimises beside the policy that owns it."""
    policy = make_policy(cfg, normalizer, obs_dim, action_dim)
    return policy.net, policy
