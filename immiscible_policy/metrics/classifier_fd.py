"""A fast, sensitive in-training image metric: Fréchet distance in a small classifier's features (CFD).

Why: on a 2-core CPU the Inception forward is slow (docs/results.md has its cost), so Inception FID can only be taken
on a few hundred samples during training, where its seed-to-seed spread hides any effect of a pairing
(docs/image_benchmark.md). A ~0.1M-parameter CNN trained once on the task's own labelled training images
embeds thousands of 32x32 samples in about a second; the Fréchet distance between the Gaussian fits of its
128-d penultimate features (the same formula as FID, :func:`immiscible_policy.metrics.fid.fid_from_stats`)
then has a small sampling error and reacts to what a generator gets wrong (class structure, noise, blur).
It is a *relative* number for comparing runs on one dataset, not comparable to published FIDs; the real
Inception FID (TF1 resize) stays the number to quote (``trainer.fid``).

The classifier is a function of its :class:`ClassifierRecipe` and of the exact training images and labels:
it is trained (seeded, on the CPU or the given device, global RNG untouched) the first time a (recipe,
data) pair is asked for and cached as safetensors + JSON under ``<cache>/classifier_fd/<hash>`` (cache =
``$IMMISCIBLE_CACHE_DIR``, ``$XDG_CACHE_HOME/immiscible_policy`` or ``~/.cache/immiscible_policy``, or the
``cache_dir`` given). The hash covers the recipe, :data:`ARCH_VERSION` and a SHA-256 of the data, so a
changed recipe or dataset never reuses a stale network. A held-out slice of the training images (never
trained on) gives the recorded ``holdout_accuracy``.

Images follow the trainers' convention: float ``(N, C, H, W)`` in ``[-1, 1]``, quantised to 8 bits first
(the value a PNG of the sample would hold, as the FID module does).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from immiscible_policy.metrics.fid import StreamingStats, fid_from_stats
from immiscible_policy.metrics.inception import cache_dir as default_cache_dir

ARCH_VERSION = 1  # bump when SmallClassifier or the training loop changes: old caches are then ignored


@dataclass(frozen=True)
class ClassifierRecipe:
    """How the feature network is trained; every field is part of the cache hash.

    ``max_train``: train on the first N of the (shuffled) non-held-out images only (None = all; tests use
    a tiny variant). ``holdout``: images (a seeded random subset) kept out of training to measure accuracy.
    """

    width: int = 16
    feature_dim: int = 128
    epochs: int = 2
    batch_size: int = 128
    lr: float = 3e-3
    seed: int = 0
    holdout: int = 5000
    max_train: int | None = 30000  # 2 epochs of 30000: ~0.9 TFLOP, well under a minute on one core


class SmallClassifier(nn.Module):
    """conv(w) -> pool -> conv(2w) -> pool -> conv(4w) -> 4x4 pool -> fc(feature_dim) -> fc(classes).

    ~0.1M parameters at w=16 (32x32 input); any input of at least 8 pixels works (adaptive pooling).
    ``features`` is the pre-activation of the penultimate layer (Gaussian-like, no ReLU zeros).
    """

    def __init__(self, channels: int, num_classes: int, width: int = 16, feature_dim: int = 128):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
        )
        self.fc = nn.Linear(4 * w * 16, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.features(x)))


def to_input(images: Tensor) -> Tensor:
    """uint8 ``(N, C, H, W)`` or float in ``[-1, 1]`` -> float32 in ``[-1, 1]`` on 8-bit levels."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1
    if not images.is_floating_point():
        raise TypeError(f"expected uint8 or float images in [-1, 1], got dtype {images.dtype}")
    u = ((images.float() + 1) * 127.5).clamp(0, 255).round()
    return u / 127.5 - 1


def data_digest(images_u8: Tensor, labels: Tensor) -> str:
    """SHA-256 of the training images' and labels' bytes (and shapes): the data part of the cache key."""
    h = hashlib.sha256()
    h.update(str((tuple(images_u8.shape), str(images_u8.dtype), tuple(labels.shape))).encode())
    h.update(images_u8.contiguous().cpu().numpy().tobytes())
    h.update(labels.to(torch.int64).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def recipe_key(recipe: ClassifierRecipe, digest: str, num_classes: int) -> str:
    """The cache key: 16 hex digits of SHA-256 over (arch version, recipe, classes, data digest)."""
    text = json.dumps(
        {"arch": ARCH_VERSION, "recipe": asdict(recipe), "classes": num_classes, "data": digest},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def split_holdout(n: int, recipe: ClassifierRecipe) -> tuple[Tensor, Tensor]:
    """(train indices, held-out indices): a permutation seeded by the recipe's seed."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(recipe.seed))
    hold = min(recipe.holdout, n // 5)
    train = perm[hold:]
    if recipe.max_train is not None:
        train = train[: recipe.max_train]
    return train, perm[:hold]


@torch.no_grad()
def accuracy(model: nn.Module, images_u8: Tensor, labels: Tensor, batch: int = 1000) -> float:
    device = next(model.parameters()).device
    right = 0
    for i in range(0, len(images_u8), batch):
        x = to_input(images_u8[i : i + batch].to(device))
        right += int((model(x).argmax(1).cpu() == labels[i : i + batch]).sum())
    return right / max(1, len(images_u8))


def train_classifier(
    images_u8: Tensor,
    labels: Tensor,
    num_classes: int,
    recipe: ClassifierRecipe = ClassifierRecipe(),
    device: str | torch.device = "cpu",
) -> tuple[SmallClassifier, dict[str, Any]]:
    """Train the feature network from scratch (seeded; the global RNG is left as it was).

    Returns (model in eval mode, info: ``holdout_accuracy``, ``n_train``, ``n_holdout``, ``train_seconds``).
    """
    train_idx, hold_idx = split_holdout(len(images_u8), recipe)
    t0 = time.time()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = SmallClassifier(images_u8.shape[1], num_classes, recipe.width, recipe.feature_dim).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
        steps = recipe.epochs * max(1, len(train_idx) // recipe.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps)
        gen = torch.Generator().manual_seed(recipe.seed + 1)
        x_all, y_all = images_u8[train_idx], labels[train_idx].to(torch.int64)
        model.train()
        for _ in range(recipe.epochs):
            order = torch.randperm(len(train_idx), generator=gen)
            for i in range(len(order) // recipe.batch_size):
                b = order[i * recipe.batch_size : (i + 1) * recipe.batch_size]
                x, y = to_input(x_all[b].to(device)), y_all[b].to(device)
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    model.eval()
    info = {
        "holdout_accuracy": accuracy(model, images_u8[hold_idx], labels[hold_idx]),
        "n_train": len(train_idx),
        "n_holdout": len(hold_idx),
        "train_seconds": time.time() - t0,
    }
    return model, info


class ClassifierFeatures:
    """Callable: images ``(N, C, H, W)`` (``[-1, 1]`` float or uint8) -> ``(N, feature_dim)`` float64.

    ``key`` names the network (recipe + data hash); ``info`` its recorded training facts.
    """

    def __init__(self, model: SmallClassifier, key: str, info: dict[str, Any], batch_size: int = 1000):
        self.model, self.key, self.info, self.batch_size = model.eval(), key, info, batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, images: Tensor) -> np.ndarray:
        if images.ndim != 4:
            raise ValueError(f"expected images (N, C, H, W), got shape {tuple(images.shape)}")
        out = []
        for i in range(0, len(images), self.batch_size):
            x = to_input(images[i : i + self.batch_size].to(self.device))
            out.append(self.model.features(x).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.fc.out_features))


def classifier_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir) if cache_dir else default_cache_dir() / "classifier_fd"


def load_or_train(
    images_u8: Tensor,
    labels: Tensor,
    num_classes: int,
    recipe: ClassifierRecipe = ClassifierRecipe(),
    *,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    verbose: bool = True,
) -> ClassifierFeatures:
    """The cached feature network for (recipe, data), trained and cached first if it is not there yet.

    The cache entry is written to a temporary name and renamed, so concurrent sweep workers that train
    the same network at once each leave a complete file (the last rename wins; they are identical recipes).
    """
    from safetensors.torch import load_file, save_file

    if labels is None:
        raise ValueError(
            "the classifier metric needs class labels; this dataset has none (disable trainer.cfd)."
        )
    if images_u8.dtype != torch.uint8 or images_u8.ndim != 4:
        raise ValueError(
            f"expected uint8 training images (N, C, H, W), got {images_u8.dtype} {tuple(images_u8.shape)}"
        )
    key = recipe_key(recipe, data_digest(images_u8, labels), num_classes)
    folder = classifier_cache_dir(cache_dir)
    weights, meta = folder / f"{key}.safetensors", folder / f"{key}.json"
    if weights.is_file() and meta.is_file():
        with torch.random.fork_rng(devices=[]):  # the init draws are overwritten; the global RNG is kept
            model = SmallClassifier(images_u8.shape[1], num_classes, recipe.width, recipe.feature_dim)
        model.load_state_dict(load_file(str(weights)))
        return ClassifierFeatures(model.to(device), key, json.loads(meta.read_text()))
    if verbose:
        print(
            f"[cfd] training the feature classifier {key} ({len(images_u8)} images) -> {folder}", flush=True
        )
    model, info = train_classifier(images_u8, labels, num_classes, recipe, device=device)
    info = {**info, "key": key, "recipe": asdict(recipe), "arch_version": ARCH_VERSION}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = f".{os.getpid()}.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(weights) + tmp)
    Path(str(meta) + tmp).write_text(json.dumps(info, indent=2))
    os.replace(str(weights) + tmp, weights)
    os.replace(str(meta) + tmp, meta)
    if verbose:
        print(
            f"[cfd] holdout accuracy {info['holdout_accuracy']:.3f} in {info['train_seconds']:.0f} s",
            flush=True,
        )
    return ClassifierFeatures(model, key, info)


def feature_stats(images: Tensor, extractor: ClassifierFeatures) -> StreamingStats:
    return StreamingStats().update(extractor(images))


def frechet(a: StreamingStats, b: StreamingStats) -> float:
    return fid_from_stats(a.mean, a.cov, b.mean, b.cov)


class ClassifierFD:
    """CFD of image sets against fixed reference images (their statistics computed once).

    ``__call__(fake)`` -> ``{"cfd": float, "cfd_n_fake": n, "cfd_n_real": m, "cfd_seconds": s}``.
    """

    def __init__(self, extractor: ClassifierFeatures, real: Tensor):
        self.extractor = extractor
        self.real = feature_stats(real, extractor)

    def __call__(self, fake: Tensor) -> dict[str, Any]:
        t0 = time.time()
        value = frechet(feature_stats(fake, self.extractor), self.real)
        return {
            "cfd": value,
            "cfd_n_fake": len(fake),
            "cfd_n_real": self.real.n,
            "cfd_seconds": time.time() - t0,
        }
