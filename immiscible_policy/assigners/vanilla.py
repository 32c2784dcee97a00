"""``vanilla``: the identity pairing, i.e. standard diffusion training. The baseline everything is measured against."""

from __future__ import annotations

import torch
from torch import Tensor

from immiscible_policy.assigners.base import Assigner, Pairing, check_same_batch


class VanillaAssigner(Assigner):
    """Each sample keeps the noise it was drawn with."""

    name = "vanilla"
    scope = "sample"
    description = "Identity pairing: standard diffusion training (the baseline)."
    preserves_noise_multiset = True

    def __init__(self) -> None:
        super().__init__()

    def pair(self, x0: Tensor, noise: Tensor, *, generator: torch.Generator | None = None) -> Pairing:
        check_same_batch(x0, noise, "vanilla")
        return Pairing(x0=x0, noise=noise, info={})
