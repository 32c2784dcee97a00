"""ReplayBuffer: the real PushT store, write->read round-trip, and every bad-input error by its text."""

import json
from pathlib import Path

import numpy as np
import pytest

from immiscible_policy.data import ReplayBuffer, ReplayBufferError
from immiscible_policy.data.replay_buffer import _import_zarr
from immiscible_policy.policy.dataset import default_pusht_zarr  # noqa: E402

zarr = _import_zarr()  # without numcodecs' crc32c DeprecationWarning, as the package imports it

PUSHT_ZARR = Path(default_pusht_zarr())
needs_pusht = pytest.mark.skipif(
    not PUSHT_ZARR.exists(), reason=f"PushT store not found at {PUSHT_ZARR} (set IMMISCIBLE_PUSHT_ZARR)"
)


def _raw_store(path, data, episode_ends=None, zarr_format=2):
    """Write a store with zarr directly, bypassing ReplayBuffer's validation (to build bad stores)."""
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    for key, values in data.items():
        arr = root.create_array(f"data/{key}", shape=values.shape, dtype=values.dtype)
        arr[...] = values
    if episode_ends is not None:
        ends = np.asarray(episode_ends, dtype=np.int64)
        arr = root.create_array("meta/episode_ends", shape=ends.shape, dtype=ends.dtype)
        arr[...] = ends
    else:
        root.create_group("meta")
    return path


def _good_data(n=10):
    rng = np.random.default_rng(0)
    return {"state": rng.normal(size=(n, 5)).astype(np.float32), "action": rng.normal(size=(n, 2))}


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ReplayBufferError) as info:
        fn(*args, **kwargs)
    err = info.value
    assert isinstance(err, ValueError)
    msg = str(err)
    assert "\n" not in msg, f"message must be one line: {msg!r}"
    assert err.__cause__ is None, "zarr tracebacks must not be chained"
    return msg


@needs_pusht
def test_real_store_counts_and_access():
    buf = ReplayBuffer.open(PUSHT_ZARR, keys=["state", "action", "keypoint"])
    assert buf.n_episodes == 206
    assert buf.n_steps == 25_650
    assert buf.episode_ends.dtype == np.int64
    assert buf.keys() == ["state", "action", "keypoint"]
    assert buf["state"].shape == (25_650, 5) and buf["keypoint"].shape == (25_650, 9, 2)
    assert isinstance(buf["action"], np.ndarray)
    assert buf.episode_lengths.sum() == 25_650
    sl = buf.episode_slice(1)
    assert (sl.start, sl.stop) == (int(buf.episode_ends[0]), int(buf.episode_ends[1]))
    ep = buf.get_episode(-1, keys=["action"])
    assert list(ep) == ["action"] and len(ep["action"]) == buf.episode_lengths[-1]


@needs_pusht
def test_real_store_lazy_matches_memory():
    lazy = ReplayBuffer.open(PUSHT_ZARR, lazy=True)
    assert set(lazy.keys()) == {"action", "state", "keypoint", "img", "n_contacts"}
    assert not isinstance(lazy["img"], np.ndarray)  # stays on disk
    mem = ReplayBuffer.open(PUSHT_ZARR, keys=["state"])
    np.testing.assert_array_equal(lazy.get_episode(5, ["state"])["state"], mem.get_episode(5)["state"])
    assert lazy.get_episode(5, ["img"])["img"].shape == (int(lazy.episode_lengths[5]), 96, 96, 3)


def test_round_trip(tmp_path):
    data = {
        "state": np.arange(30, dtype=np.float32).reshape(10, 3),
        "img": np.random.default_rng(1).integers(0, 255, size=(10, 4, 4, 3), dtype=np.uint8),
        "flag": np.arange(10) % 2 == 0,
    }
    written = ReplayBuffer.create(tmp_path / "rt.zarr", data, episode_ends=[3, 7, 10])
    for buf in (
        written,
        ReplayBuffer.open(tmp_path / "rt.zarr"),
        ReplayBuffer.open(tmp_path / "rt.zarr", lazy=True),
    ):
        assert sorted(buf.keys()) == ["flag", "img", "state"]
        assert buf.n_episodes == 3 and buf.n_steps == 10
        np.testing.assert_array_equal(buf.episode_ends, [3, 7, 10])
        for key, values in data.items():
            np.testing.assert_array_equal(np.asarray(buf[key][:]), values)
            assert buf[key].dtype == values.dtype
        np.testing.assert_array_equal(buf.get_episode(1)["state"], data["state"][3:7])
    # zarr v2 on disk, so diffusion_policy's zarr-2 tooling can read it
    assert (tmp_path / "rt.zarr" / ".zgroup").exists()
    assert json.loads((tmp_path / "rt.zarr" / "data" / "state" / ".zarray").read_text())["zarr_format"] == 2


def test_create_refuses_to_overwrite(tmp_path):
    ReplayBuffer.create(tmp_path / "s.zarr", _good_data(), [10])
    msg = _error(ReplayBuffer.create, tmp_path / "s.zarr", _good_data(), [10])
    assert "already exists" in msg and "overwrite=True" in msg
    buf = ReplayBuffer.create(tmp_path / "s.zarr", _good_data(4), [2, 4], overwrite=True)
    assert buf.n_steps == 4


def test_error_missing_path(tmp_path):
    msg = _error(ReplayBuffer.open, tmp_path / "nope.zarr")
    assert str(tmp_path / "nope.zarr") in msg and "no such path" in msg


def test_error_not_a_zarr_group(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("hello")
    msg = _error(ReplayBuffer.open, tmp_path / "plain")
    assert "not a zarr group" in msg and "plain" in msg
    (tmp_path / "file.zarr").write_text("not zarr")
    assert "not a zarr group" in _error(ReplayBuffer.open, tmp_path / "file.zarr")


def test_error_missing_keys_lists_available(tmp_path):
    _raw_store(tmp_path / "s.zarr", _good_data(), [4, 10])
    msg = _error(ReplayBuffer.open, tmp_path / "s.zarr", keys=["state", "keypoint"])
    assert "missing data key(s) ['keypoint']" in msg
    assert "available: ['action', 'state']" in msg
    buf = ReplayBuffer.open(tmp_path / "s.zarr")
    assert "unknown key 'img'" in _error(buf.__getitem__, "img")


def test_error_missing_episode_ends(tmp_path):
    _raw_store(tmp_path / "s.zarr", _good_data(), None)
    assert "missing meta/episode_ends" in _error(ReplayBuffer.open, tmp_path / "s.zarr")


def test_error_episode_ends_not_increasing(tmp_path):
    _raw_store(tmp_path / "s.zarr", _good_data(), [4, 4, 10])
    msg = _error(ReplayBuffer.open, tmp_path / "s.zarr")
    assert "strictly increasing" in msg and "position 1" in msg
    msg = _error(ReplayBuffer.create, tmp_path / "t.zarr", _good_data(), [6, 3, 10])
    assert "strictly increasing" in msg
    assert not (tmp_path / "t.zarr").exists(), "validation must happen before writing"


def test_error_episode_ends_not_matching_length(tmp_path):
    _raw_store(tmp_path / "s.zarr", _good_data(), [4, 9])
    msg = _error(ReplayBuffer.open, tmp_path / "s.zarr")
    assert "episode_ends[-1] = 9 does not match the data length 10" in msg
    assert "does not match the data length 10" in _error(
        ReplayBuffer.create, tmp_path / "t.zarr", _good_data(), [4, 12]
    )


def test_error_arrays_of_different_lengths(tmp_path):
    data = _good_data()
    data["action"] = data["action"][:7]
    _raw_store(tmp_path / "s.zarr", data, [10])
    msg = _error(ReplayBuffer.open, tmp_path / "s.zarr")
    assert "different lengths" in msg and "state=10" in msg and "action=7" in msg
    assert "different lengths" in _error(ReplayBuffer.create, tmp_path / "t.zarr", data, [10])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_error_nan_inf(tmp_path, bad):
    data = _good_data()
    data["action"][6, 1] = bad
    _raw_store(tmp_path / "s.zarr", data, [5, 10])
    msg = _error(ReplayBuffer.open, tmp_path / "s.zarr")
    assert "data/action has NaN/Inf values (first at index 6)" in msg
    # lazy mode checks what it reads: episode 1 covers steps 5..9
    lazy = ReplayBuffer.open(tmp_path / "s.zarr", lazy=True)
    assert lazy.get_episode(0)["action"].shape == (5, 2)
    assert "first at index 6" in _error(lazy.get_episode, 1)
    assert "first at index 6" in _error(ReplayBuffer.create, tmp_path / "t.zarr", data, [5, 10])


def test_error_unreadable_chunk_is_wrapped(tmp_path):
    _raw_store(tmp_path / "s.zarr", _good_data(), [10])
    chunk = next(p for p in (tmp_path / "s.zarr" / "data" / "state").iterdir() if not p.name.startswith("."))
    chunk.write_bytes(b"garbage, not a compressed chunk")
    msg = _error(ReplayBuffer.open, tmp_path / "s.zarr")
    assert "failed to read store" in msg


def test_episode_index_out_of_range(tmp_path):
    buf = ReplayBuffer.create(tmp_path / "s.zarr", _good_data(), [4, 10])
    assert "out of range; the buffer has 2 episodes" in _error(buf.episode_slice, 2)
