"""FID resize modes: ``torch`` is pytorch-fid's preprocessing, ``tf1`` stays the default, the mode is recorded.

No Inception weights needed: the network is replaced by a cheap stand-in where one is involved.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from immiscible_policy.cli import fid as fid_cli
from immiscible_policy.image import evaluate
from immiscible_policy.metrics import fid


def _uint8_images(n: int, c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, h, w), dtype=np.uint8)


def _to_unit(u8: np.ndarray) -> torch.Tensor:
    """uint8 -> [-1, 1], as the CLI and the image datasets do."""
    return torch.from_numpy(u8).float().div(127.5).sub(1.0)


def _pytorch_fid_reference(u8: np.ndarray) -> torch.Tensor:
    """pytorch-fid on PNGs of these pixels: PIL ``convert('RGB')`` (grey repeated) -> ``ToTensor`` (u / 255)
    -> ``InceptionV3(resize_input=True, normalize_input=True)``: bilinear, align_corners=False, then 2x - 1."""
    x = torch.from_numpy(u8).float() / 255
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return 2 * x - 1


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 3, 20, 13), (1, 3, 299, 299), (1, 3, 320, 310)])
def test_torch_resize_matches_pytorch_fid_preprocessing(shape):
    u8 = _uint8_images(*shape)
    ours = fid.preprocess(_to_unit(u8), resize="torch")
    assert ours.shape == (shape[0], 3, 299, 299) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, _pytorch_fid_reference(u8), atol=1e-6, rtol=0)


def test_tf1_stays_the_default_and_differs_from_torch():
    images = _to_unit(_uint8_images(2, 1, 28, 28))
    tf1 = fid.preprocess(images)
    torch.testing.assert_close(fid.preprocess(images, resize="tf1"), tf1, atol=0, rtol=0)
    assert fid.DEFAULT_RESIZE == "tf1"
    assert (fid.preprocess(images, resize="torch") - tf1).abs().max() > 0.05  # half-pixel shift, other scale


def test_bad_resize_is_a_one_line_error_naming_option_and_choices(capsys):
    for call, option in (
        (lambda: fid.check_resize("bilinear", "--resize"), "--resize"),
        (lambda: fid.preprocess(torch.zeros(1, 3, 8, 8), resize="TF1"), "resize"),
        (lambda: evaluate.fid_resize(OmegaConf.create({"resize": "pil"})), "trainer.fid.resize"),
    ):
        with pytest.raises(ValueError) as info:
            call()
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(option) and "tf1, torch" in msg, msg
    # the CLI refuses before reading any image (so the paths need not exist) and prints one line
    assert fid_cli.main(["missing_a", "missing_b", "--resize", "bilinear"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --resize must be one of tf1, torch; got 'bilinear'\n", err


def test_trainer_key_default_and_null_mean_tf1():
    assert evaluate.fid_resize(OmegaConf.create({})) == "tf1"
    assert evaluate.fid_resize(OmegaConf.create({"resize": None})) == "tf1"
    assert evaluate.fid_resize(OmegaConf.create({"resize": "torch"})) == "torch"


class _StubModel(torch.nn.Module):
    """Stands in for the Inception: (N, 3, 299, 299) -> (N, 2048) pooled pixels."""

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, (32, 64)).mean(1).flatten(1)


def test_extractor_feeds_the_chosen_preprocessing_and_names_it(monkeypatch):
    monkeypatch.setattr(fid, "load_inception", lambda weights, device: (_StubModel(), "ab" * 32))
    images = _to_unit(_uint8_images(3, 1, 28, 28))
    ids = {}
    for mode in ("tf1", "torch"):
        ex = fid.InceptionFeatures(batch_size=2, resize=mode)
        assert ex.resize == mode
        ids[mode] = ex.preprocessing_id
        np.testing.assert_allclose(ex(images), _StubModel()(fid.preprocess(images, resize=mode)).double())
    assert ids == {
        "tf1": "q8-tfbilinear299-grey3",
        "torch": "q8-torchbilinear299-grey3",
    }  # tf1's id unchanged
    with pytest.raises(ValueError, match="tf1, torch"):
        fid.InceptionFeatures(resize="nearest")


class _Features:
    """Cheap extractor with a resize mode: (N, C, H, W) -> (N, 12)."""

    weights_id = "fake0000"

    def __init__(self, resize=None):
        if resize is not None:
            self.resize = resize
        self.preprocessing_id = f"pool-{resize}"

    def __call__(self, images):
        return F.adaptive_avg_pool2d(images.float().expand(-1, 3, -1, -1), 2).flatten(1).double().numpy()


def test_evaluate_images_records_the_resize_mode(tmp_path):
    g = torch.Generator().manual_seed(0)
    real, fake = torch.rand(12, 1, 8, 8, generator=g) * 2 - 1, torch.rand(10, 1, 8, 8, generator=g) * 2 - 1
    res = fid.evaluate_images(fake, real, extractor=_Features("torch"), kid_subsets=2)
    assert res["resize"] == "torch"
    assert (
        fid.evaluate_images(fake, real, extractor=_Features(), kid_subsets=2, resize="tf1")["resize"] == "tf1"
    )
    assert fid.evaluate_images(fake, real, extractor=_Features(), kid_subsets=2)["resize"] is None
    with pytest.raises(ValueError, match="extractor preprocesses with 'torch'"):
        fid.evaluate_images(fake, real, extractor=_Features("torch"), resize="tf1")


@pytest.mark.parametrize("mode", ["tf1", "torch"])
def test_cli_passes_and_reports_the_mode(tmp_path, monkeypatch, capsys, mode):
    seen = []

    def fake_get_extractor(weights, device, batch_size, quantize, resize):
        seen.append(resize)
        return _Features(resize)

    monkeypatch.setattr(fid, "get_extractor", fake_get_extractor)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        np.savez(tmp_path / f"{name}.npz", images=rng.integers(0, 256, (5, 8, 8), dtype=np.uint8))
    extra = [] if mode == "tf1" else ["--resize", mode]  # tf1 is the default
    a, b = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
    assert fid_cli.main([a, b, "--json", "--kid-subset-size", "3", *extra]) == 0
    assert json.loads(capsys.readouterr().out)["resize"] == mode
    assert fid_cli.main([a, b, "--kid-subset-size", "3", *extra]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"resize {mode})")
    assert seen == [mode, mode]


class _Dataset:
    channels, image_size, ref_key = 1, 8, "stub-train-8"

    def __init__(self, n=6):
        self.images = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def __len__(self):
        return len(self.images)

    def all_images(self):
        return self.images


def _fid_cfg(**kw):
    base = dict(n_samples=4, n_real=6, seed=0, kid_subsets=2, kid_subset_size=3, cache_dir=None)
    return OmegaConf.create(base | kw)


def test_trainer_metrics_record_the_mode(monkeypatch):
    calls = []

    def fake_samples(diffusion, section, **kw):
        n = int(section.n_samples)
        calls.append(n)
        return torch.zeros(n, 1, 8, 8)

    def fake_evaluate_images(fake, real, **kw):
        calls.append(kw["resize"])
        return {"fid": 1.0, "kid": 0.1, "kid_std": 0.0, "n_fake": len(fake), "n_real": len(real), **kw}

    monkeypatch.setattr(evaluate, "seeded_samples", fake_samples)
    monkeypatch.setattr(fid, "evaluate_images", fake_evaluate_images)
    kw = dict(steps=1, sampler="ddim", batch_size=4, device="cpu")
    for cfg, mode in ((_fid_cfg(), "tf1"), (_fid_cfg(resize="torch"), "torch")):
        metrics, _ = evaluate.fid_kid(None, _Dataset(), cfg, **kw)
        assert metrics["fid_resize"] == mode and json.loads(json.dumps(metrics))["fid_resize"] == mode
    assert calls == [4, "tf1", 4, "torch"]
    with pytest.raises(ValueError, match=r"^trainer\.fid\.resize must be one of tf1, torch; got 'x'$"):
        evaluate.fid_kid(None, _Dataset(), _fid_cfg(resize="x"), **kw)
    assert calls == [4, "tf1", 4, "torch"]  # refused before sampling
