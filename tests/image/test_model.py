"""UNet2DModel builders: parameter budget of the CPU model, the DDPM CIFAR-10 size, conditioning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from immiscible_policy.image.model import build_unet, count_params, predict

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"


def test_small_model_is_cpu_sized_and_conditional():
    cfg = OmegaConf.load(CONFIGS / "unet2d_small.yaml")
    model = build_unet(cfg, image_size=32, channels=1)
    assert 1.0e6 <= count_params(model) <= 2.0e6
    cond = build_unet(cfg, image_size=16, channels=3, num_classes=10)
    out = predict(cond, torch.randn(2, 3, 16, 16), torch.tensor([1, 999]), torch.tensor([0, 9]))
    assert out.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="not divisible by 4"):
        build_unet(cfg, image_size=10, channels=1)


def test_ddpm_cifar10_matches_the_paper_size():
    model = build_unet(OmegaConf.load(CONFIGS / "ddpm_cifar10.yaml"), image_size=32, channels=3)
    assert 35.0e6 <= count_params(model) <= 36.5e6  # Ho et al. report 35.7M
