"""Image sampling helpers shared by training (grids, FID) and ``immiscible-sample``: grids and the former
function API over :class:`~immiscible_policy.image.diffusion.ImageDiffusion`.

The sampling itself (objective, sampler, class labels, batches, seeding) is
:meth:`ImageDiffusion.sample <immiscible_policy.image.diffusion.ImageDiffusion.sample>`; :func:`generate` and
:func:`load_image_model` are the calls of the image trainer and of older code, kept as thin uses of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from immiscible_policy.checkpoint import Checkpoint
from immiscible_policy.image.data import to_uint8
from immiscible_policy.image.diffusion import ImageDiffusion, load_image_diffusion, sample_labels
from immiscible_policy.noising import (
    OBJECTIVES,
    SAMPLERS,
    NoisingCore,
    build_core,
    resolve_sampler,
)

__all__ = [
    "OBJECTIVES",
    "SAMPLERS",
    "build_core",
    "generate",
    "load_image_model",
    "resolve_sampler",
    "sample_labels",
    "save_grid",
]


def generate(
    model: nn.Module,
    core: NoisingCore,
    n: int,
    *,
    channels: int,
    image_size: int,
    steps: int,
    sampler: str,
    seed: int,
    batch_size: int = 64,
    num_classes: int = 0,
    bf16: bool = False,
) -> Tensor:
    """(n, C, S, S) float32 samples in [-1, 1] on the CPU: ``ImageDiffusion(model, core, ...).sample(n, ...)``.

    The image trainer's call until it holds an :class:`ImageDiffusion` (then call its ``sample``)."""
    diffusion = ImageDiffusion(
        model, core, num_classes=num_classes, channels=channels, image_size=image_size, bf16=bf16
    )
    return diffusion.sample(n, steps, sampler, seed=seed, batch_size=batch_size)


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write (N, C, H, W) images in [-1, 1] as one PNG grid (1-pixel gaps); returns the path."""
    from PIL import Image

    u8 = to_uint8(images).numpy()
    n, c, h, w = u8.shape
    nrow = nrow or max(1, int(np.ceil(np.sqrt(n))))
    rows = int(np.ceil(n / nrow))
    canvas = np.zeros((rows * (h + 1) + 1, nrow * (w + 1) + 1, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = u8[
            i
        ].transpose(1, 2, 0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas[..., 0] if c == 1 else canvas).save(path)
    return path


def load_image_model(
    checkpoint: str | Path, device: str = "auto", use_ema: bool = True, allow_import: bool | None = None
) -> tuple[nn.Module, NoisingCore, Any, Checkpoint]:
    """(model, core, cfg, checkpoint) of an image checkpoint, the pieces of
    :func:`~immiscible_policy.image.diffusion.load_image_diffusion`'s model (kept for older callers; new
    code: ``ImageDiffusion.from_checkpoint`` or ``load_image_diffusion``)."""
    diffusion, cfg, ck = load_image_diffusion(
        checkpoint, device=device, use_ema=use_ema, allow_import=allow_import
    )
    return diffusion.net, diffusion.core, cfg, ck
