"""PushT windows: diffusion_policy's sampler padding, the seeded episode split, obs layouts."""

from pathlib import Path

import numpy as np
import pytest
import torch

from immiscible_policy.policy.dataset import (
    EMBEDDED,
    PushTLowdimDataset,
    SequenceSampler,
    default_pusht_zarr,
    downsample_mask,
    get_val_mask,
    pusht_obs,
)

PUSHT_ZARR = Path(default_pusht_zarr())
#: the full store when present, else the same arrays embedded in the package (these tests need no frames)
PUSHT_DEMOS = str(PUSHT_ZARR) if PUSHT_ZARR.exists() else EMBEDDED


def _reference_windows(episode_ends, horizon, pad_before, pad_after, mask):
    """diffusion_policy's create_indices + sample_sequence, written as its loop (brute force)."""
    out = []
    for i, end in enumerate(episode_ends):
        if not mask[i]:
            continue
        start = 0 if i == 0 else episode_ends[i - 1]
        length = end - start
        for idx in range(-pad_before, length - horizon + pad_after + 1):
            b0, b1 = max(idx, 0) + start, min(idx + horizon, length) + start
            s0 = b0 - (idx + start)
            s1 = horizon - ((idx + horizon + start) - b1)
            window = np.zeros(horizon, dtype=np.int64)
            window[s0:s1] = np.arange(b0, b1)
            window[:s0] = b0
            window[s1:] = b1 - 1
            out.append(window)
    return np.array(out)


@pytest.mark.parametrize(
    "horizon,pad_before,pad_after", [(16, 1, 7), (4, 1, 3), (4, 0, 0), (5, 9, 9), (1, 0, 0), (30, 1, 7)]
)
def test_sampler_matches_diffusion_policy_loop(horizon, pad_before, pad_after):
    ends = np.array([5, 12, 40, 41, 70])
    mask = np.array([True, True, False, True, True])
    sampler = SequenceSampler(ends, horizon, pad_before, pad_after, episode_mask=mask)
    pb, pa = min(pad_before, horizon - 1), min(pad_after, horizon - 1)
    ref = _reference_windows(ends, horizon, pb, pa, mask)
    np.testing.assert_array_equal(sampler.indices, ref.reshape(-1, horizon))
    assert not np.isin(sampler.indices, np.arange(12, 40)).any(), "masked episode leaked"


def test_sampler_edge_padding_at_both_ends():
    ends = np.array([10, 25])
    s = SequenceSampler(ends, horizon=16, pad_before=1, pad_after=7)
    data = {"x": np.arange(25) * 10}
    first = s.sample_sequence(data, 0)["x"]  # episode 0, starts one step before its first frame
    np.testing.assert_array_equal(first[:2], [0, 0])  # start repeated once (pad_before = 1)
    np.testing.assert_array_equal(first[2:10], np.arange(1, 9) * 10)
    np.testing.assert_array_equal(first[10:], [90] * 6)  # short episode: end repeated
    ep1 = s.indices[s.window_episode == 1]
    np.testing.assert_array_equal(ep1[0, :2], [10, 10])
    np.testing.assert_array_equal(ep1[-1], [*range(16, 25)] + [24] * 7)  # end repeated pad_after = 7 times
    assert (ep1 >= 10).all() and (ep1 < 25).all(), "windows never cross episodes"
    assert len(ep1) == 15 - 16 + 7 + 1 + 1


def test_val_mask_and_downsample_are_seeded_and_disjoint():
    val = get_val_mask(206, 0.02, seed=42)
    assert val.sum() == 4
    np.testing.assert_array_equal(val, get_val_mask(206, 0.02, seed=42))
    assert not np.array_equal(val, get_val_mask(206, 0.02, seed=43))
    assert get_val_mask(5, 0.0).sum() == 0 and get_val_mask(3, 0.99).sum() == 2  # keeps one train episode
    train = downsample_mask(~val, 10, seed=42)
    assert train.sum() == 10 and not (train & val).any()
    np.testing.assert_array_equal(train, downsample_mask(~val, 10, seed=42))
    np.testing.assert_array_equal(downsample_mask(~val, None), ~val)


def test_dataset_split_windows_and_layout():
    ds = PushTLowdimDataset(PUSHT_DEMOS, obs_type="keypoints")
    val = ds.get_validation_dataset()
    assert len(ds.episodes) == 202 and len(val.episodes) == 4
    assert set(ds.episodes).isdisjoint(val.episodes)
    assert sorted([*ds.episodes, *val.episodes]) == list(range(206))
    lengths = ds.buffer.episode_lengths
    # per episode: length - horizon + pad_after + pad_before + 1 windows = length - 7
    assert len(ds) == int((lengths[ds.episodes] - 7).sum())
    assert len(val) == int((lengths[val.episodes] - 7).sum())
    assert set(np.unique(ds.sampler.window_episode)) == set(ds.episodes)

    item = ds[123]
    assert item["obs"].shape == (16, 20) and item["action"].shape == (16, 2)
    assert item["obs"].dtype == torch.float32 and item["action"].dtype == torch.float32
    rows = ds.sampler.indices[123]
    kp, state = ds.buffer["keypoint"][rows], ds.buffer["state"][rows]
    np.testing.assert_array_equal(item["obs"][:, :18].numpy(), kp.reshape(16, 18))
    np.testing.assert_array_equal(item["obs"][:, 18:].numpy(), state[:, :2])
    np.testing.assert_array_equal(item["action"].numpy(), ds.buffer["action"][rows])

    windows = ds.all_windows()
    assert windows["obs"].shape == (len(ds), 16, 20) and windows["action"].shape == (len(ds), 16, 2)
    torch.testing.assert_close(windows["obs"][123], item["obs"])

    # a different seed gives a different split
    other = PushTLowdimDataset(PUSHT_DEMOS, seed=0)
    assert not np.array_equal(other.val_mask, ds.val_mask)


def test_dataset_state_obs_and_max_train_episodes():
    ds = PushTLowdimDataset(PUSHT_DEMOS, obs_type="state", max_train_episodes=12, seed=3)
    assert len(ds.episodes) == 12 and not (ds.train_mask & ds.val_mask).any()
    assert ds.obs_dim == 6 and ds[0]["obs"].shape == (16, 6)
    state = ds.buffer["state"]
    np.testing.assert_allclose(ds.obs[:, :4], state[:, :4])
    np.testing.assert_allclose(ds.obs[:, 4], np.sin(state[:, 4]), atol=1e-6)
    np.testing.assert_allclose(ds.obs[:, 5], np.cos(state[:, 4]), atol=1e-6)
    assert set(np.unique(ds.sampler.window_episode)) == set(ds.episodes)
    # the normaliser sees only the 12 training episodes
    norm = ds.get_normalizer()
    rows = np.concatenate(
        [np.arange(*ds.buffer.episode_slice(e).indices(ds.buffer.n_steps)) for e in ds.episodes]
    )
    np.testing.assert_allclose(norm.params["action"]["max"], ds.action[rows].max(0))


def test_unknown_obs_type_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown obs_type 'pixels'; valid: \['keypoints', 'state'\]"):
        pusht_obs(np.zeros((1, 5)), None, "pixels")
    with pytest.raises(ValueError, match="unknown obs_type"):
        PushTLowdimDataset("/nonexistent", obs_type="image")
