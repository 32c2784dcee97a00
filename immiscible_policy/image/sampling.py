"""Image sampling shared by training (grids, FID) and ``immiscible-sample``: core, generate, grid, load.

Objectives (``trainer.objective``, the factory in :mod:`immiscible_policy.noising`): ``epsilon``,
``v_prediction`` and ``sample`` use a diffusers ``DDPMScheduler`` and sample with DDIM (n steps) or DDPM;
``flow`` is rectified flow and samples with Euler or Heun steps. Sampling ends
in the assigner's ``decode`` (inside :meth:`NoisingCore.sample`), so e.g. ``scale`` is undone.
"""

from __future__ import annotations

from pathlib import Path
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
from immiscible_policy.image.data import to_uint8
from immiscible_policy.image.model import build_unet, predict
from immiscible_policy.noising import (
    OBJECTIVES,
    SAMPLERS,
    NoisingCore,
    build_core,
    rename_legacy_objective,
    resolve_sampler,
)

__all__ = [
    "OBJECTIVES",
    "SAMPLERS",
    "build_core",
    "generate",
    "load_image_model",
    "resolve_sampler",
    "save_grid",
]


def sample_labels(n: int, num_classes: int) -> Tensor | None:
    """(n,) class labels cycling 0..K-1 (balanced classes for FID), or None for an unconditional model."""
    return torch.arange(n) % num_classes if num_classes else None


@torch.no_grad()
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
    """(n, C, S, S) float32 samples in [-1, 1] on the CPU, decoded by the assigner.

    One generator seeded by ``seed`` draws the starting noise of every batch in turn, so the same
    (seed, n, batch_size) gives the same images; labels cycle through the classes when conditional.
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    labels = sample_labels(n, num_classes)
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        lab = None if labels is None else labels[start : start + b].to(device)

        def model_fn(x: Tensor, t: Tensor, lab=lab) -> Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                return predict(model, x, t, lab).float()

        x = core.sample(
            model_fn,
            (b, channels, image_size, image_size),
            num_inference_steps=steps,
            sampler=sampler,
            generator=gen,
            device=device,
        )
        out.append(x.clamp(-1, 1).float().cpu())
    return torch.cat(out)


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
    """(model, core, cfg, checkpoint) from an image checkpoint; the EMA weights by default.

    The config is checked before anything is built (one-line errors for a foreign or incomplete
    config.json, an unregistered ``module:Class`` assigner unless ``allow_import``, weights that do not
    fit the recorded model)."""
    ck = load_checkpoint(checkpoint)
    check_config(ck.config, ck.path, "image")
    check_assigner(ck.config, ck.path, allow_import)
    cfg = rename_legacy_objective(OmegaConf.create(ck.config["cfg"]))  # trainer.prediction_type: objective
    meta = ck.config["image"]
    model = build_unet(
        cfg.model, image_size=meta["image_size"], channels=meta["channels"], num_classes=meta["num_classes"]
    )
    load_weights(model, *ck.select_weights(use_ema))
    model.to(resolve_device(device)).eval()
    return model, build_core(cfg.trainer, cfg.assigner), cfg, ck
