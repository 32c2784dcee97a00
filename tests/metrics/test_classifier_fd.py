"""The fast metric (metrics/classifier_fd.py): sensitivity, zero on identical sets, cache by hash, trainer use.

Why these properties: CFD replaces Inception FID during training in the image benchmark, so it must rise
with every degradation a generator shows (noise, blur) and be ~0 between samples of one distribution;
its feature network is cached, so a changed recipe or dataset must never reuse a stale one. The fast
tests use a tiny recipe (2000 images, 1 epoch: ~1-2 s); the default recipe's accuracy is a slow test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from immiscible_policy.metrics.classifier_fd import (
    ClassifierFD,
    ClassifierRecipe,
    accuracy,
    feature_stats,
    frechet,
    load_or_train,
    recipe_key,
)

# tests/ has no packages: the image tests' helpers are imported by name from their folder
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "image"))
from image_helpers import HAVE_FMNIST, TINY, compose_cfg  # noqa: E402

pytestmark = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST (dataset-fashion-mnist) not installed")
TINY_RECIPE = ClassifierRecipe(epochs=3, batch_size=64, holdout=500, max_train=2000)  # ~90 steps


@pytest.fixture(scope="module")
def fmnist_test():
    from immiscible_policy.image.data import load_fashion_mnist

    return load_fashion_mnist(split="test")


@pytest.fixture(scope="module")
def tiny(fmnist_test, tmp_path_factory):
    """(extractor, held-apart real images in [-1, 1]) : trained on the first 5000 test images."""
    ds = fmnist_test
    ext = load_or_train(
        ds.images[:5000],
        ds.labels[:5000],
        10,
        TINY_RECIPE,
        cache_dir=tmp_path_factory.mktemp("cfd"),
        verbose=False,
    )
    return ext, ds.images[5000:].float() / 127.5 - 1


def blur(x: torch.Tensor, k: int) -> torch.Tensor:
    return x if k == 1 else F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)


def test_tiny_classifier_learns(tiny, fmnist_test):
    ext, _ = tiny
    assert ext.info["holdout_accuracy"] > 0.6  # 10 classes: chance is 0.1
    assert accuracy(ext.model, fmnist_test.images[5000:7000], fmnist_test.labels[5000:7000]) > 0.6


def test_identical_sets_give_zero_and_halves_are_small(tiny):
    ext, real = tiny
    a = feature_stats(real[:2000], ext)
    assert abs(frechet(a, a)) < 1e-6 * float(a.cov.trace())
    halves = frechet(feature_stats(real[:2500], ext), feature_stats(real[2500:], ext))
    # the finite-sample bias (128-d, 2500 vs 2500: ~0.5 here) is small against a visible degradation
    noisy = frechet(feature_stats((real[:2500] + 0.2 * torch.randn_like(real[:2500])).clamp(-1, 1), ext), a)
    assert 0 < halves < 0.25 * noisy, (halves, noisy)


def test_noise_and_blur_raise_it_monotonically(tiny):
    ext, real = tiny
    metric = ClassifierFD(ext, real[:2500])
    x = real[2500:3500]
    g = torch.Generator().manual_seed(0)
    z = torch.randn(x.shape, generator=g)
    by_noise = [metric((x + s * z).clamp(-1, 1))["cfd"] for s in (0.0, 0.1, 0.2, 0.4)]
    by_blur = [metric(blur(x, k))["cfd"] for k in (1, 3, 5, 7)]
    assert all(b > a for a, b in zip(by_noise, by_noise[1:])), by_noise
    assert all(b > a for a, b in zip(by_blur, by_blur[1:])), by_blur
    out = metric(x)
    assert out["cfd_n_fake"] == 1000 and out["cfd_n_real"] == 2500


def test_cache_is_keyed_by_recipe_and_data(tiny, fmnist_test, tmp_path, monkeypatch):
    ds = fmnist_test
    imgs, labels = ds.images[:300], ds.labels[:300]
    recipe = ClassifierRecipe(epochs=1, holdout=50)
    state = torch.random.get_rng_state()
    first = load_or_train(imgs, labels, 10, recipe, cache_dir=tmp_path, verbose=False)
    assert torch.equal(torch.random.get_rng_state(), state)  # training leaves the global RNG alone
    assert json.loads((tmp_path / f"{first.key}.json").read_text())["recipe"]["holdout"] == 50

    import immiscible_policy.metrics.classifier_fd as mod

    def no_training(*a, **k):
        raise AssertionError("trained again although cached")

    monkeypatch.setattr(mod, "train_classifier", no_training)
    again = load_or_train(imgs, labels, 10, recipe, cache_dir=tmp_path, verbose=False)
    assert again.key == first.key
    x = imgs[:50].float() / 127.5 - 1
    assert (again(x) == first(x)).all()
    changed = imgs.clone()
    changed[0, 0, 0, 0] ^= 1
    digest = mod.data_digest
    assert recipe_key(recipe, digest(changed, labels), 10) != first.key
    assert recipe_key(ClassifierRecipe(epochs=2, holdout=50), digest(imgs, labels), 10) != first.key
    with pytest.raises(AssertionError, match="trained again"):
        load_or_train(changed, labels, 10, recipe, cache_dir=tmp_path, verbose=False)
    with pytest.raises(ValueError, match="needs class labels"):
        load_or_train(imgs, None, 10, recipe, cache_dir=tmp_path)


def test_trainer_scores_cfd_and_final_steps(tmp_path):
    """The image trainer with trainer.cfd: a CFD per evaluation and one per final sampling-step count."""
    from immiscible_policy.image.train import train_image

    run = tmp_path / "run"
    base = [
        "task=fashion_mnist",  # Fashion-MNIST's test split, tiny (image_helpers.TINY)
        "task.split=test",
        *TINY,
        "task.class_conditional=true",
        "assigner=c2ot",
        "trainer.objective=flow",
        "trainer.max_steps=2",
        "model=unet2d_tiny",
    ]
    cfd = [
        "trainer.cfd.enabled=true",
        "trainer.cfd.n_samples=16",
        "trainer.cfd.n_real=32",
        f"trainer.cfd.cache_dir={tmp_path / 'cfd'}",
    ]
    rec = train_image(compose_cfg([*base, *cfd, "trainer.final_steps=[1,3]", f"run_dir={run}"]), run)
    assert rec["step"] == 2 and rec["cfd"] > 0 and rec["cfd_n_fake"] == 16
    assert rec["cfd_steps_3"] == rec["cfd"]  # 3 = trainer.num_inference_steps: the same samples
    assert rec["cfd_steps_1"] > 0 and rec["cfd_steps_1"] != rec["cfd"]
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["cfd_steps_1"] == rec["cfd_steps_1"]
    with pytest.raises(ValueError, match=r"trainer.final_steps=\[1\] .*trainer.cfd.enabled=true"):
        train_image(compose_cfg([*base, "trainer.final_steps=[1]"]), tmp_path / "b")
    with pytest.raises(ValueError, match="trainer.cfd.n_sample is not a setting"):
        train_image(compose_cfg([*base, *cfd, "+trainer.cfd.n_sample=3"]), tmp_path / "c")


@pytest.mark.slow  # trains the default recipe on 55000 images: ~30 s on a free core, minutes on a busy one
def test_default_classifier_accuracy(tmp_path):
    from immiscible_policy.image.data import load_fashion_mnist

    train, test = load_fashion_mnist(split="train"), load_fashion_mnist(split="test")
    ext = load_or_train(train.images, train.labels, 10, cache_dir=tmp_path, verbose=False)
    assert ext.info["holdout_accuracy"] > 0.85
    assert accuracy(ext.model, test.images, test.labels) > 0.85
