"""Shared helpers: a small real image task for the trainer tests, and Hydra composition in-process.

Imported by name (tests/ has no packages): pytest puts this folder on sys.path for the image tests;
tests elsewhere (tests/metrics/test_classifier_fd.py) insert it themselves.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from immiscible_policy.cli._hydra import config_dir
from immiscible_policy.image.data import default_fashion_mnist_dir

FMNIST = default_fashion_mnist_dir()
HAVE_FMNIST = (FMNIST / "t10k-images-idx3-ubyte.gz").is_file()
HAVE_SKLEARN = importlib.util.find_spec("sklearn") is not None

# Tiny but real: 16x16 images, 64-image batches, 3-step DDIM sampling, no progress bars.
TINY = [
    "task.image_size=16",
    "task.resize_mode=resize",
    "task.max_images=256",
    "trainer.batch_size=32",
    "trainer.warmup_steps=2",
    "trainer.num_inference_steps=3",
    "trainer.n_grid=16",
    "trainer.sample_batch_size=16",
    "trainer.progress=false",
    "trainer.fid.enabled=false",
]


@pytest.fixture
def small_task() -> list[str]:
    """Overrides selecting a small real image set: Fashion-MNIST's test split, else sklearn digits."""
    if HAVE_FMNIST:
        return ["task=fashion_mnist", "task.split=test", *TINY]
    if HAVE_SKLEARN:
        return ["task=digits", *TINY]
    pytest.skip(f"no small image set: Fashion-MNIST absent at {FMNIST} and scikit-learn not installed")


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return compose("train", overrides=overrides)


def last_ckpt(run: Path) -> Path:
    return run / "checkpoints" / "last"
