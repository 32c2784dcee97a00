"""Image sample grids, shared by training (its grids), ``immiscible-sample`` and the analyses.

The sampling itself (objective, sampler, class labels, batches, seeding) is
:meth:`ImageDiffusion.sample <immiscible_policy.image.diffusion.ImageDiffusion.sample>`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from immiscible_policy.image.data import to_uint8

__all__ = ["save_grid"]


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
