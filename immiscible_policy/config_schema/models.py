"""``model.*``: the policy networks (ConditionalUnet1D, its image encoder) and the image UNet2DModel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from immiscible_policy.config_schema.fields import MISSING, section, setting

# ------------------------------------------------------------------------------------------------ models


@dataclass(kw_only=True)
class VisionConfig:
    """``model.vision``: the image encoder of image-observation policies (policy/vision.py): a ResNet with
    GroupNorm and a spatial-softmax head. The defaults are ResNet-18's (diffusion_policy's PushT image
    policy, ``model=dp_image``)."""

    what: ClassVar[str] = "the image encoder"
    open: ClassVar[bool] = False

    channels: list[int] = setting([64, 128, 256, 512], "one entry per ResNet stage", lo=1, optional=True)
    blocks: list[int] = setting([2, 2, 2, 2], "basic blocks per stage", lo=1, optional=True)
    group_size: int = setting(16, "channels per GroupNorm group", lo=1, optional=True)
    num_keypoints: int = setting(
        32, "spatial-softmax keypoints (features = 2 x keypoints before the head)", lo=1, optional=True
    )
    feature_dim: int = setting(
        64, "per frame, concatenated with the agent xy per obs step", lo=1, optional=True
    )
    crop: int = setting(
        84, "random crops of this side in training, the centre crop in evaluation", lo=1, optional=True
    )


@dataclass(kw_only=True)
class PolicyModelConfig:
    """``model.*`` of a policy: Diffusion Policy's ConditionalUnet1D. A preset (``model=unet1d_cpu``) names
    an architecture: ``down_dims`` and ``diffusion_step_embed_dim`` have no default."""

    what: ClassVar[str] = "the policy model"
    open: ClassVar[bool] = False

    name: str = setting(
        MISSING, "the preset's name (recorded with the run)", optional=True, example="unet1d_cpu"
    )
    down_dims: list[int] = setting(MISSING, "U-Net channels per level", lo=1, example=[64, 128, 256])
    kernel_size: int = setting(5, "1-D convolution kernel", lo=1)
    n_groups: int = setting(8, "GroupNorm groups", lo=1)
    diffusion_step_embed_dim: int = setting(MISSING, "timestep embedding width", lo=1, example=128)
    cond_predict_scale: bool = setting(True, "FiLM conditioning predicts a scale as well as a bias")
    vision: VisionConfig | None = section(
        VisionConfig,
        "the image encoder, which task.obs_type=image needs; absent (or null) for low-dim observations. An "
        "image preset composes VisionConfig's defaults into it (/schema/policy_vision@vision)",
        default=None,
        optional=True,
        composed=False,
    )


@dataclass(kw_only=True)
class ImageModelConfig:
    """``model.*`` of an image task: diffusers' UNet2DModel (image size and channels come from the task).
    A preset (``model=unet2d_small``) names an architecture: its levels have no default."""

    what: ClassVar[str] = "the image model"
    open: ClassVar[bool] = False

    name: str = setting(
        MISSING, "the preset's name (recorded with the run)", optional=True, example="unet2d_small"
    )
    block_out_channels: list[int] = setting(MISSING, "channels per level", lo=1, example=[32, 64, 64])
    down_block_types: list[str] = setting(
        MISSING, "diffusers down block per level", example=["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"]
    )
    up_block_types: list[str] = setting(
        MISSING, "diffusers up block per level", example=["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]
    )
    layers_per_block: int = setting(MISSING, "residual blocks per level", lo=1, example=1)
    attention_head_dim: int | None = setting(
        None, "channels per attention head", lo=1, optional=True, note="null = diffusers' default", example=8
    )
    norm_num_groups: int | None = setting(
        None, "GroupNorm groups", lo=1, optional=True, note="null = diffusers' default", example=8
    )
    dropout: float = setting(0.0, "dropout in the residual blocks", lo=0, hi=1, optional=True)
