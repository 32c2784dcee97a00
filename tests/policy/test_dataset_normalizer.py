"""MinMaxNormalizer: [-1, 1] on train data, exact round-trips, JSON state, constant dims, errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from immiscible_policy.policy.dataset import default_pusht_zarr  # noqa: E402
from immiscible_policy.policy.normalizer import MinMaxNormalizer

PUSHT_ZARR = Path(default_pusht_zarr())


def test_range_and_round_trip_numpy_and_torch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 7, 3)) * [1.0, 100.0, 0.01] + [0.0, 256.0, -5.0]
    norm = MinMaxNormalizer().fit({"a": x})
    y = norm.normalize("a", x)
    np.testing.assert_allclose(y.reshape(-1, 3).min(0), -1.0, atol=1e-12)
    np.testing.assert_allclose(y.reshape(-1, 3).max(0), 1.0, atol=1e-12)
    np.testing.assert_allclose(norm.unnormalize("a", y), x, rtol=1e-12, atol=1e-9)

    t = torch.as_tensor(x, dtype=torch.float32)
    yt = norm.normalize("a", t)
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float32 and yt.shape == t.shape
    np.testing.assert_allclose(yt.numpy(), y, atol=1e-4)  # float32 input quantisation
    torch.testing.assert_close(norm.unnormalize("a", yt), t, rtol=1e-5, atol=1e-3)
    # any leading shape
    assert norm.normalize("a", t[0, 0]).shape == (3,)


def test_constant_dimension_maps_to_zero_without_blowing_up():
    x = np.stack([np.linspace(0, 1, 20), np.full(20, 7.0), 7.0 + np.linspace(0, 5e-5, 20)], axis=-1)
    norm = MinMaxNormalizer().fit({"a": x})
    y = norm.normalize("a", x)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y[:, 1], 0.0, atol=1e-12)
    assert np.abs(y[:, 2]).max() < 1e-4  # range < 1e-4: scale 1, centred
    np.testing.assert_allclose(norm.unnormalize("a", y), x, atol=1e-12)


def test_json_round_trip_and_unknown_key():
    norm = MinMaxNormalizer().fit({"obs": np.arange(12.0).reshape(4, 3), "action": np.eye(2)})
    state = json.loads(json.dumps(norm.to_dict()))
    again = MinMaxNormalizer.from_dict(state)
    assert again.keys() == ["obs", "action"]
    x = np.random.default_rng(1).normal(size=(5, 3))
    np.testing.assert_array_equal(again.normalize("obs", x), norm.normalize("obs", x))
    with pytest.raises(KeyError, match=r"no key 'actions'; fitted keys: \['action', 'obs'\]"):
        norm.normalize("actions", x)
    with pytest.raises(ValueError, match="fitted on dim 3, got input with last dim 2"):
        norm.normalize("obs", np.zeros((4, 2)))


def test_pusht_train_windows_in_unit_range():
    from immiscible_policy.policy.dataset import EMBEDDED, PushTLowdimDataset

    # the full store when present, else the same arrays embedded in the package
    ds = PushTLowdimDataset(PUSHT_ZARR if PUSHT_ZARR.exists() else EMBEDDED)
    norm = ds.get_normalizer()
    w = ds.all_windows()
    for key in ("obs", "action"):
        y = norm.normalize(key, w[key]).reshape(-1, w[key].shape[-1])
        assert y.min() >= -1 - 1e-5 and y.max() <= 1 + 1e-5
        # every dimension reaches both ends on train data (no constant dims in PushT)
        torch.testing.assert_close(y.amin(0), -torch.ones(y.shape[1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(y.amax(0), torch.ones(y.shape[1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            norm.unnormalize(key, norm.normalize(key, w[key])), w[key], atol=1e-3, rtol=0
        )
