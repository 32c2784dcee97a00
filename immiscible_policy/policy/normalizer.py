"""Per-dimension min-max normalisation to [-1, 1], fitted on training data and saved beside checkpoints.

Why: diffusion policies predict in a normalised space where every action/observation dimension spans
[-1, 1] (diffusion_policy's ``LinearNormalizer(mode="limits")``); noise at scale 1 then means the same thing
for every dimension. Dimensions that are (almost) constant in the data (range < ``range_eps``) would blow
up when divided by their range; like diffusion_policy they get scale 1 and are centred, so the
constant value maps to 0.

For each key and each feature dimension d (the last axis):

    normalize(x)[..., d]   = (x[..., d] - center[d]) * scale[d]      center = (min + max) / 2
    unnormalize(y)[..., d] = y[..., d] / scale[d] + center[d]         scale = 2 / (max - min)

(Subtracting the centre first, rather than diffusion_policy's x * scale + offset, keeps float32 precise when
a dimension's range is small next to its magnitude; the map is the same.)

Works on numpy arrays and torch tensors of any leading shape and on any device; the state is plain lists so
``json.dump(normalizer.to_dict())`` saves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["MinMaxNormalizer"]


class MinMaxNormalizer:
    """Per-key, per-dimension affine map of the fitted [min, max] onto [-1, 1]."""

    def __init__(self, range_eps: float = 1e-4):
        self.range_eps = float(range_eps)
        # key -> dict(scale, center, min, max), each (dim,) float64
        self.params: dict[str, dict[str, np.ndarray]] = {}

    # ------------------------------------------------------------------ fitting
    def fit(self, data: Mapping[str, Any]) -> MinMaxNormalizer:
        """Fit each key on its values (..., dim): statistics are taken over all leading axes."""
        for key, values in data.items():
            x = _to_numpy(values).astype(np.float64)
            if x.ndim == 0 or x.size == 0:
                raise ValueError(f"cannot fit normaliser key {key!r} on empty/scalar data of shape {x.shape}")
            flat = x.reshape(-1, x.shape[-1])
            if not np.isfinite(flat).all():
                raise ValueError(f"cannot fit normaliser key {key!r}: data contains NaN/Inf")
            lo, hi = flat.min(axis=0), flat.max(axis=0)
            self.params[key] = _limits_params(lo, hi, self.range_eps)
        return self

    @classmethod
    def from_data(cls, data: Mapping[str, Any], range_eps: float = 1e-4) -> MinMaxNormalizer:
        return cls(range_eps=range_eps).fit(data)

    # ------------------------------------------------------------------ applying
    def keys(self) -> list[str]:
        return list(self.params)

    def __contains__(self, key: str) -> bool:
        return key in self.params

    def _get(self, key: str) -> dict[str, np.ndarray]:
        try:
            return self.params[key]
        except KeyError:
            raise KeyError(f"normaliser has no key {key!r}; fitted keys: {sorted(self.params)}") from None

    def normalize(self, key: str, x):
        """x (..., dim) numpy or torch -> same type/device/dtype, in [-1, 1] on the fitted range."""
        p = self._get(key)
        scale, center = _like(p["scale"], x, key), _like(p["center"], x, key)
        return (x - center) * scale

    def unnormalize(self, key: str, x):
        """Inverse of :meth:`normalize`."""
        p = self._get(key)
        scale, center = _like(p["scale"], x, key), _like(p["center"], x, key)
        return x / scale + center

    # ------------------------------------------------------------------ state
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (plain floats in lists)."""
        return {
            "type": "minmax",
            "range_eps": self.range_eps,
            "params": {k: {n: v.tolist() for n, v in p.items()} for k, p in self.params.items()},
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> MinMaxNormalizer:
        if state.get("type", "minmax") != "minmax":
            raise ValueError(f"not a MinMaxNormalizer state: type={state.get('type')!r}, expected 'minmax'")
        norm = cls(range_eps=state.get("range_eps", 1e-4))
        for key, p in state["params"].items():
            norm.params[key] = {n: np.asarray(v, dtype=np.float64) for n, v in p.items()}
        return norm

    def __repr__(self) -> str:
        dims = {k: len(p["scale"]) for k, p in self.params.items()}
        return f"MinMaxNormalizer({dims})"


def _limits_params(lo: np.ndarray, hi: np.ndarray, range_eps: float) -> dict[str, np.ndarray]:
    """diffusion_policy's 'limits' mode: map [lo, hi] -> [-1, 1]; near-constant dims -> 0."""
    rng = hi - lo
    ignore = rng < range_eps
    scale = 2.0 / np.where(ignore, 2.0, rng)  # scale 1 for constant dims: no division by ~0
    center = (hi + lo) / 2.0  # the (near-)constant value maps to ~0
    return {"scale": scale, "center": center, "min": lo, "max": hi}


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _like(v: np.ndarray, x, key: str):
    """Cast a (dim,) parameter to x's library/dtype/device; check the feature dimension."""
    if x.shape[-1] != v.shape[0]:
        raise ValueError(
            f"normaliser key {key!r} was fitted on dim {v.shape[0]}, got input with last dim {x.shape[-1]}"
        )
    if hasattr(x, "detach"):  # torch tensor
        import torch

        dtype = x.dtype if x.is_floating_point() else torch.float32
        return torch.as_tensor(v, dtype=dtype, device=x.device)
    dtype = x.dtype if np.issubdtype(np.asarray(x).dtype, np.floating) else np.float64
    return v.astype(dtype)
