"""``immiscible-analyze bijectivity`` on tiny image checkpoints: kind detected, JSON/PNGs written, errors."""

from __future__ import annotations

import json

import pytest
import torch
from image_helpers import HAVE_FMNIST, HAVE_SKLEARN, TINY, compose_cfg
from PIL import Image

from immiscible_policy.cli.analyze import checkpoint_kind
from immiscible_policy.cli.analyze import main as analyze
from immiscible_policy.image.train import train_image


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Two 2-step image checkpoints (vanilla, and scale whose decode divides by s) on the small task."""
    if HAVE_FMNIST:
        task = ["task=fashion_mnist", "task.split=test", *TINY]
    elif HAVE_SKLEARN:
        task = ["task=digits", *TINY]
    else:
        pytest.skip("no small image set: Fashion-MNIST absent and scikit-learn not installed")
    root = tmp_path_factory.mktemp("img_analyze")
    for name in ("vanilla", "scale"):
        overrides = [*task, f"assigner={name}", "model=unet2d_tiny", "trainer.max_steps=2"]
        train_image(compose_cfg([*overrides, "trainer.checkpoint_every_steps=2"]), root / name)
    return {name: root / name for name in ("vanilla", "scale")}


def test_image_bijectivity_cli(tiny_runs, tmp_path):
    assert checkpoint_kind(str(tiny_runs["vanilla"]))[0] == "image"
    out = tmp_path / "an"
    ck = f"checkpoint={tiny_runs['vanilla']},{tiny_runs['scale']}"
    assert analyze(["bijectivity", ck, "n=6", "steps=3", "refine=1", "batch=4", f"out={out}"]) == 0
    (path,) = out.glob("bijectivity_*.json")
    payload = json.loads(path.read_text())
    assert payload["kind"] == "image" and set(payload["runs"]) == {"vanilla", "scale"}
    for res in payload["runs"].values():
        assert 1 <= res["distinct_nearest"] <= res["n_samples"] == 6
        assert res["relative_noise_reconstruction_error"] >= 0 and res["relative_resample_error"] >= 0
        assert sum(res["class_counts"]) == 6 and 0 <= res["class_entropy_bits"] <= torch.log2(
            torch.tensor(6.0)
        )
        assert 1 <= res["reference_real_images"]["classes_covered"] <= 6
    assert path.with_suffix(".png").stat().st_size > 1000
    # rows: vanilla samples, their nearest images, scale samples, theirs; 6 columns of 16x16 + 1-px gaps
    assert Image.open(path.with_name(path.stem + "_nearest.png")).size == (6 * 17 + 1, 4 * 17 + 1)


def test_image_bijectivity_bad_inputs(tiny_runs, tmp_path, capsys):
    assert (
        analyze(["bijectivity", f"checkpoint={tiny_runs['vanilla']}", "labels=a,b", f"out={tmp_path}"]) == 2
    )
    assert "labels= has 2 names for 1 checkpoints" in capsys.readouterr().err
    assert (
        analyze(["bijectivity", f"checkpoint={tiny_runs['vanilla']}", "steps=5000", f"out={tmp_path}"]) == 2
    )
    assert "steps=5000 must be between 1" in capsys.readouterr().err
    assert analyze(["modes", f"checkpoint={tiny_runs['vanilla']}", f"out={tmp_path}"]) == 2
    assert "modes needs a PushT policy checkpoint" in capsys.readouterr().err
