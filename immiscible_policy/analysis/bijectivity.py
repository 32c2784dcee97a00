"""Bijectivity and diversity of a trained checkpoint: does pairing noise with data keep the map one-to-one?

Immiscible pairing changes which noise the model learns to send to which sample. The paper argues the
deterministic (DDIM) denoising map stays a bijection, so generative diversity is preserved. Two checks:

* **bijectivity**: sample deterministically from N fixed noises, invert the samples, and report the
  relative noise reconstruction error ||z_rec - z|| / ||z|| per sample (0 for an exact bijection; a
  model that maps many noises to one sample cannot give them back) and the relative re-sample error
  ||x(z_rec) - x|| / ||x|| (small while z_rec != z means two noises give one sample);
* **diversity**: for each sample (after the assigner's ``decode``) its nearest training example (L2 in
  data space: pixels for images, normalised action chunks for policies); the number of *distinct*
  nearest examples among N samples (N = every sample is different, 1 = mode collapse) and, with labels,
  the entropy / coverage of the nearest examples' classes next to the same numbers for N random real
  images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from immiscible_policy.analysis.inversion import round_trip


def relative_errors(recovered: Tensor, noise: Tensor) -> Tensor:
    """(B,) per-sample ||recovered - noise|| / ||noise||."""
    return (recovered - noise).flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1).clamp_min(1e-12)


@torch.no_grad()
def nearest_indices(samples: Tensor, train: Tensor, chunk: int = 8192, to_float=None) -> Tensor:
    """(N,) index of each sample's nearest row of ``train`` (M, ...) in L2, scanning ``train`` in chunks.

    ``to_float`` maps a chunk of ``train`` to float rows (e.g. uint8 images -> [-1, 1]), so a large set
    never needs a float copy in memory.
    """
    q = samples.flatten(1).float()
    best_d = torch.full((q.shape[0],), float("inf"))
    best_i = torch.zeros(q.shape[0], dtype=torch.long)
    for start in range(0, train.shape[0], chunk):
        block = train[start : start + chunk]
        block = (to_float(block) if to_float is not None else block).flatten(1).float()
        d, i = torch.cdist(q, block).min(dim=1)
        better = d < best_d
        best_d[better], best_i[better] = d[better], i[better] + start
    return best_i


def entropy_bits(counts: Tensor) -> float:
    """Shannon entropy (bits) of a histogram."""
    p = counts.double() / counts.sum().clamp_min(1)
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


def label_stats(labels: Tensor, num_classes: int) -> dict:
    """Class histogram, entropy (bits) and number of classes covered of a set of labels."""
    counts = torch.bincount(labels, minlength=num_classes)
    return {
        "class_counts": counts.tolist(),
        "class_entropy_bits": entropy_bits(counts),
        "classes_covered": int((counts > 0).sum()),
    }


def diversity(nearest: Tensor, labels: Tensor | None, num_classes: int) -> dict:
    """Distinct nearest training examples among the samples (+ class statistics of those examples)."""
    out = {"distinct_nearest": int(torch.unique(nearest).numel()), "n_samples": int(nearest.numel())}
    if labels is not None and num_classes:
        out.update(label_stats(labels[nearest], num_classes))
    return out


@torch.no_grad()
def image_bijectivity(
    model_fn: Callable[[Tensor, Tensor, Tensor | None], Tensor],
    core,
    train_u8: Tensor,
    labels: Tensor | None,
    *,
    n: int,
    steps: int,
    seed: int = 0,
    batch_size: int = 64,
    num_classes: int = 0,
    conditional: bool = False,
    device: torch.device | str = "cpu",
    fixed_point_iters: int = 0,
) -> tuple[dict, Tensor, Tensor]:
    """Round-trip N fixed noises through an image model; (result, decoded samples, nearest indices).

    Args:
        model_fn: ``model_fn(x_t, t, labels_or_None)`` -> the model's prediction.
        train_u8: (M, C, H, W) uint8 training images (the nearest-neighbour pool).
        labels: (M,) class labels or None.
        conditional: the model takes class labels (they cycle 0..K-1 over the samples).
    """
    from immiscible_policy.image.data import to_unit

    c, h, w = train_u8.shape[1:]
    noise = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(int(seed)))
    errs, re_errs, decoded = [], [], []
    for start in range(0, n, batch_size):
        z = noise[start : start + batch_size].to(device)
        lab = (torch.arange(start, start + z.shape[0]) % num_classes) if conditional else None

        def fn(x, t, lab=lab):
            return model_fn(x, t, lab)

        sample, back, again = round_trip(core, fn, z, steps, fixed_point_iters)
        errs.append(relative_errors(back, z).cpu())
        re_errs.append(relative_errors(again, sample).cpu())
        decoded.append(core.decode(sample).clamp(-1, 1).cpu())
    err = torch.cat(errs)
    samples = torch.cat(decoded)
    nearest = nearest_indices(samples, train_u8, to_float=to_unit)
    result = {
        "relative_noise_reconstruction_error": float(err.mean()),
        "relative_noise_reconstruction_error_median": float(err.median()),
        "relative_resample_error": float(torch.cat(re_errs).mean()),
        **diversity(nearest, labels, num_classes),
    }
    if labels is not None and num_classes:  # the same statistics for N random real images
        pick = torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(int(seed)))[:n]
        ref = label_stats(labels[pick], num_classes)
        result["reference_real_images"] = {k: v for k, v in ref.items() if k != "class_counts"}
    return result, samples, nearest


@torch.no_grad()
def policy_bijectivity(
    policy, dataset, *, n: int, conditions: int, steps: int, fixed_point_iters: int = 0
) -> dict:
    """Round-trip N fixed noises per observation for ``conditions`` validation windows of a policy.

    Diversity: distinct nearest training action chunks (normalised action space, after ``decode``) among
    the N samples of one observation, averaged over the observations. ``dataset`` should be the run's
    own (its train/validation split); a run trained without validation episodes (``val_ratio=0``) takes
    its observations from the training windows and says so (``condition_split: "train"``).
    """
    train = dataset.all_windows()
    val, split = dataset.conditioning_windows()
    if val["obs"].shape[0] == 0:
        raise ValueError(
            "the run's dataset has no windows to condition on (no train or validation episodes)."
        )
    train_act = policy.normalizer.normalize("action", train["action"])
    device, net = policy.device, policy.net
    pick = torch.linspace(0, val["obs"].shape[0] - 1, conditions).long()
    errs, re_errs, distinct = [], [], []
    for j in pick.tolist():
        obs = policy.normalizer.normalize("obs", val["obs"][j : j + 1]).to(device)
        cond = policy.global_cond(obs).expand(n, -1)
        noise = torch.randn(n, policy.horizon, policy.action_dim, generator=torch.Generator().manual_seed(j))
        noise = noise.to(device)
        fn = lambda x, t, c=cond: net(x, t, c)  # noqa: E731
        sample, back, again = round_trip(policy.core, fn, noise, steps, fixed_point_iters)
        errs.append(relative_errors(back, noise).cpu())
        re_errs.append(relative_errors(again, sample).cpu())
        nearest = nearest_indices(policy.core.decode(sample).cpu(), train_act)
        distinct.append(int(torch.unique(nearest).numel()))
    err = torch.cat(errs)
    return {
        "relative_noise_reconstruction_error": float(err.mean()),
        "relative_noise_reconstruction_error_median": float(err.median()),
        "relative_resample_error": float(torch.cat(re_errs).mean()),
        "distinct_nearest_train_chunks_per_condition": sum(distinct) / len(distinct),
        "samples_per_condition": n,
        "conditions": conditions,
        **({"condition_split": split} if split != "validation" else {}),
    }
