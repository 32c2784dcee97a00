"""FID/KID of a model's samples against the training set (``immiscible_policy.metrics.fid``).

The reference is a fixed random subset of the dataset (permutation seeded by 0, independent of the
training seed, so every run and every assigner is measured against the same images); its ``ref_key``
extends the dataset's (which already names dataset, split, size and resize mode) by the subset size,
so the FID module can cache the reference statistics once per preprocessing.

``trainer.fid.resize`` picks the 299px resize (``tf1``, the default and the paper's, or ``torch``,
pytorch-fid's; docs/fid.md) and every metrics record carries it as ``fid_resize``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from immiscible_policy.image.data import ImageDataset
from immiscible_policy.image.diffusion import ImageDiffusion

REFERENCE_SEED = 0


def reference_images(ds: ImageDataset, n_real: int | None) -> tuple[Tensor, str]:
    """((n, C, H, W) float in [-1, 1], ref_key) for the first ``n_real`` of a seed-0 permutation."""
    n = len(ds) if not n_real else min(int(n_real), len(ds))
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(REFERENCE_SEED))[:n]
    return ds.all_images()[idx] if n < len(ds) else ds.all_images(), f"{ds.ref_key}-ref{n}s{REFERENCE_SEED}"


def fid_resize(fid_cfg: Any) -> str:
    """``fid_cfg.resize`` checked (absent or null = ``tf1``); a bad value is a one-line error naming the key."""
    from immiscible_policy.metrics.fid import DEFAULT_RESIZE, check_resize

    return check_resize(fid_cfg.get("resize") or DEFAULT_RESIZE, "trainer.fid.resize")


def seeded_samples(
    diffusion: ImageDiffusion,
    cfg: Any,
    *,
    steps: int | None = None,
    sampler: str | None = None,
    batch_size: int = 64,
) -> Tensor:
    """``cfg.n_samples`` samples of ``diffusion``, noise seeded by ``cfg.seed`` (``trainer.fid`` / ``.cfd``).

    Why one place: both metrics draw their samples this way, so a given section and seed always scores the
    same noise (common random numbers between evaluations and rows). ``steps`` / ``sampler``: default the
    model's own.
    """
    return diffusion.sample(int(cfg.n_samples), steps, sampler, seed=int(cfg.seed), batch_size=batch_size)


def fid_kid(
    diffusion: ImageDiffusion,
    ds: ImageDataset,
    fid_cfg: Any,
    *,
    steps: int | None = None,
    sampler: str | None = None,
    batch_size: int = 64,
    device: str = "cpu",
) -> tuple[dict[str, Any], Tensor]:
    """(metrics, samples): FID/KID of ``fid_cfg.n_samples`` seeded samples of ``diffusion`` vs the reference
    images of ``ds`` (:func:`reference_images`).

    metrics: ``fid``, ``kid``, ``kid_std``, ``fid_n_fake``, ``fid_n_real``, ``fid_resize``, ``fid_seconds``,
    ``sample_seconds``. The samples (N, C, H, W) are returned so the caller can grid them. ``steps`` /
    ``sampler``: default the model's own (:func:`seeded_samples`).
    """
    from immiscible_policy.metrics.fid import evaluate_images  # built alongside; imported only when used

    resize = fid_resize(fid_cfg)  # checked before sampling, not after it
    t0 = time.time()
    fake = seeded_samples(diffusion, fid_cfg, steps=steps, sampler=sampler, batch_size=batch_size)
    t1 = time.time()
    real, ref_key = reference_images(ds, fid_cfg.n_real)
    res = evaluate_images(
        fake,
        real,
        ref_key=ref_key,
        cache_dir=fid_cfg.get("cache_dir"),
        weights=fid_cfg.get("weights"),
        device=str(fid_cfg.get("device") or device),
        kid_subsets=int(fid_cfg.kid_subsets),
        kid_subset_size=fid_cfg.get("kid_subset_size"),
        resize=resize,
    )
    metrics = {
        "fid": float(res["fid"]),
        "kid": float(res["kid"]),
        "kid_std": float(res["kid_std"]),
        "fid_n_fake": int(res["n_fake"]),
        "fid_n_real": int(res["n_real"]),
        "fid_resize": str(res["resize"]),
        "sample_seconds": t1 - t0,
        "fid_seconds": time.time() - t1,
    }
    return metrics, fake


# ------------------------------------------------------------------------- classifier Fréchet distance


def classifier_metric(ds: ImageDataset, cfd_cfg: Any, device: str) -> Any:
    """The fast metric for ``ds`` (:class:`~immiscible_policy.metrics.classifier_fd.ClassifierFD`).

    Its feature network is trained on ``ds``' own images and labels (cached by recipe + data hash; the
    first call trains it), its reference is the same seeded subset of ``cfd_cfg.n_real`` images FID uses.
    """
    from immiscible_policy.metrics.classifier_fd import ClassifierFD, ClassifierRecipe, load_or_train

    if ds.labels is None:
        raise ValueError(
            f"trainer.cfd.enabled=true needs class labels to train its feature network; {ds.ref_key} has "
            "none (set trainer.cfd.enabled=false)."
        )
    dev = str(cfd_cfg.get("device") or device)
    extractor = load_or_train(
        ds.images,
        ds.labels,
        ds.num_classes,
        ClassifierRecipe(),
        cache_dir=cfd_cfg.get("cache_dir"),
        device=dev,
    )
    real, _ = reference_images(ds, cfd_cfg.get("n_real"))
    return ClassifierFD(extractor, real)


def cfd_eval(
    diffusion: ImageDiffusion,
    metric: Any,
    cfd_cfg: Any,
    *,
    steps: int | None = None,
    sampler: str | None = None,
    batch_size: int = 64,
) -> tuple[dict[str, Any], Tensor]:
    """(metrics, samples): CFD of ``cfd_cfg.n_samples`` seeded samples at ``steps`` sampling steps.

    metrics: ``cfd``, ``cfd_n_fake``, ``cfd_n_real``, ``cfd_seconds`` (features + distance),
    ``cfd_sample_seconds`` (sampling).
    """
    t0 = time.time()
    fake = seeded_samples(diffusion, cfd_cfg, steps=steps, sampler=sampler, batch_size=batch_size)
    out = metric(fake)
    out["cfd_sample_seconds"] = time.time() - t0 - out["cfd_seconds"]
    return out, fake


def final_step_key(steps: int) -> str:
    """The record key of the final checkpoint's CFD at ``steps`` sampling steps (flat: the CSV log)."""
    return f"cfd_steps_{int(steps)}"
