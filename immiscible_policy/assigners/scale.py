"""``scale``: image scaling, the improved paper's data-space way to reduce miscibility.

Multiplying the clean data by s > 1 before noising makes samples farther apart relative to the unit
Gaussian noise, so the noised distributions of different samples overlap less at every timestep (less
"mixing"); s < 1 does the opposite. Generated samples live in the scaled space, so :meth:`decode`
divides by s. Noise is untouched, so its marginal stays exactly Gaussian.
"""

from __future__ import annotations

import torch
from torch import Tensor

from immiscible_policy.assigners.base import Assigner, Pairing, check_same_batch


class ScaleAssigner(Assigner):
    """``x0 -> s * x0`` before noising; ``decode`` divides by ``s``."""

    name = "scale"
    scope = "sample"
    description = "Image scaling: noise s*x0 (decode divides by s); s > 1 reduces miscibility."
    preserves_noise_multiset = True

    def __init__(self, s: float = 2.0) -> None:
        s = float(s)
        if not s > 0 or s != s or s == float("inf"):
            raise ValueError(f"scale: s must be a finite number > 0, got {s!r}.")
        super().__init__()
        self.s = s

    def pair(self, x0: Tensor, noise: Tensor, *, generator: torch.Generator | None = None) -> Pairing:
        check_same_batch(x0, noise, "scale")
        return Pairing(x0=x0 * self.s, noise=noise, info={"scale": self.s})

    def decode(self, x0: Tensor) -> Tensor:
        return x0 / self.s

    def data_range(self, r: float) -> float:
        return r * self.s
