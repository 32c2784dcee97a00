"""diffusers ``UNet2DModel`` built from a model config (``configs/model/unet2d_small.yaml``, ``ddpm_cifar10.yaml``).

The image size and channels come from the dataset, not the model config, so one model config serves
Fashion-MNIST (1 channel) and CIFAR-10 (3 channels). ``num_class_embeds`` is set when the task trains
class-conditionally; the class embedding is added to the timestep embedding (diffusers' default).
"""

from __future__ import annotations

from typing import Any

from diffusers import UNet2DModel
from torch import Tensor, nn

MODEL_KEYS = (
    "block_out_channels",
    "down_block_types",
    "up_block_types",
    "layers_per_block",
    "attention_head_dim",
    "norm_num_groups",
    "dropout",
)


def build_unet(model_cfg: Any, *, image_size: int, channels: int, num_classes: int = 0) -> UNet2DModel:
    """A ``UNet2DModel`` for (B, channels, image_size, image_size) inputs; ``num_classes > 0`` adds labels.

    The number of resolution levels is ``len(block_out_channels)``; the image size must be divisible
    by 2 ** (levels - 1).
    """
    blocks = tuple(int(c) for c in model_cfg.block_out_channels)
    down, up = tuple(model_cfg.down_block_types), tuple(model_cfg.up_block_types)
    if not (len(blocks) == len(down) == len(up)):
        raise ValueError(
            f"model: block_out_channels ({len(blocks)}), down_block_types ({len(down)}) and up_block_types "
            f"({len(up)}) must have the same length."
        )
    factor = 2 ** (len(blocks) - 1)
    if image_size % factor:
        raise ValueError(
            f"image size {image_size} is not divisible by {factor} (the model has {len(blocks)} levels); "
            "set task.image_size to a multiple of it."
        )
    extra = {
        k: model_cfg[k] for k in ("attention_head_dim", "norm_num_groups") if model_cfg.get(k) is not None
    }
    return UNet2DModel(
        sample_size=int(image_size),
        in_channels=int(channels),
        out_channels=int(channels),
        block_out_channels=blocks,
        down_block_types=down,
        up_block_types=up,
        layers_per_block=int(model_cfg.layers_per_block),
        dropout=float(model_cfg.get("dropout", 0.0)),
        num_class_embeds=int(num_classes) if num_classes else None,
        **extra,
    )


def predict(model: nn.Module, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
    """The U-Net's prediction (B, C, H, W) for noised ``x`` (B, C, H, W) at timesteps ``t`` (B,).

    diffusers' calling convention in one place: :class:`~immiscible_policy.image.diffusion.ImageDiffusion`
    calls the network through it (``ImageDiffusion.predict`` adds the autocast)."""
    return model(x, t, class_labels=labels).sample


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
