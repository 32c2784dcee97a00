"""Sinusoidal embedding of the diffusion step (Transformer positional encoding applied to ``t``).

Why: the denoiser must know the noise level; sin/cos at geometric frequencies give a smooth, bounded code
that an MLP can read, for integer or fractional ``t`` alike.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalPosEmb(nn.Module):
    """``t (B,) -> (B, dim)``: ``[sin(t * f_0..f_{h-1}), cos(t * f_0..f_{h-1})]``, ``f_i = 10000 ** (-i / (h-1))``.

    ``dim`` must be even and at least 4 (``h = dim // 2 >= 2``).
    """

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"embedding dim must be even and >= 4, got {dim}")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(
            torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000.0) / (half - 1))
        )
        angles = t.to(torch.float32)[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)
