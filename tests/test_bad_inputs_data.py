"""Bad data stores give one actionable line: missing chunks, corrupt chunks, and no import-time noise.

Stores are tiny synthetic zarr stores in tmp_path (many small chunks, so that zarr reads them concurrently
as it does the PushT store); the PushT copy test needs the shared store and skips without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from immiscible_policy.data import ReplayBuffer, ReplayBufferError
from immiscible_policy.data.replay_buffer import _import_zarr
from immiscible_policy.policy.dataset import PushTLowdimDataset, default_pusht_zarr

PUSHT_ZARR = Path(default_pusht_zarr())
needs_pusht = pytest.mark.skipif(
    not PUSHT_ZARR.exists(), reason=f"PushT store not found at {PUSHT_ZARR} (set IMMISCIBLE_PUSHT_ZARR)"
)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _store(path: Path, n: int = 200, chunk: int = 10, zarr_format: int = 2) -> Path:
    """A PushT-shaped store (state, action, keypoint; 4 episodes) with ``chunk`` rows per chunk file."""
    zarr = _import_zarr()
    rng = np.random.default_rng(0)
    data = {
        "state": rng.normal(size=(n, 5)).astype(np.float32),
        "action": rng.normal(size=(n, 2)).astype(np.float32),
        "keypoint": rng.normal(size=(n, 9, 2)).astype(np.float32),
    }
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    every = {"write_empty_chunks": True}
    for key, values in data.items():
        arr = root.create_array(
            f"data/{key}",
            shape=values.shape,
            dtype=values.dtype,
            chunks=(chunk, *values.shape[1:]),
            config=every,
        )
        arr[...] = values
    ends = np.linspace(n // 4, n, 4).astype(np.int64)
    meta = root.create_array("meta/episode_ends", shape=ends.shape, dtype=np.int64, chunks=(2,), config=every)
    meta[...] = ends
    return path


def _chunk_file(store: Path, array: str, index: int, zarr_format: int = 2) -> Path:
    arr_dir = store / array
    if zarr_format == 2:
        return arr_dir / ".".join([str(index)] + ["0"] * (_ndim(store, array) - 1))
    return arr_dir / "c" / "/".join([str(index)] + ["0"] * (_ndim(store, array) - 1))


def _ndim(store: Path, array: str) -> int:
    return {"data/state": 2, "data/action": 2, "data/keypoint": 3, "meta/episode_ends": 1}[array]


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ReplayBufferError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, f"message must be one line: {msg!r}"
    assert info.value.__cause__ is None, "zarr tracebacks must not be chained"
    return msg


# ------------------------------------------------------------------------------------ missing chunks


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_missing_action_chunks_refused_at_open(tmp_path, zarr_format):
    store = _store(tmp_path / "s.zarr", zarr_format=zarr_format)
    for i in (3, 7):
        _chunk_file(store, "data/action", i, zarr_format).unlink()
    for lazy in (False, True):
        msg = _error(ReplayBuffer.open, store, lazy=lazy)
        assert "store is incomplete or corrupt: data/action is missing 2 of 20 chunk file(s)" in msg
        assert "(rows 30-39)" in msg and "(rows 70-79)" in msg
        assert "fill value" in msg and "Re-copy" in msg
    # only the arrays that are read are checked
    assert ReplayBuffer.open(store, keys=["state"]).n_steps == 200


@pytest.mark.parametrize("array", ["data/state", "data/keypoint", "meta/episode_ends"])
def test_missing_chunk_of_any_read_array_refused(tmp_path, array):
    store = _store(tmp_path / "s.zarr")
    _chunk_file(store, array, 1).unlink()
    msg = _error(ReplayBuffer.open, store)
    assert f"store is incomplete or corrupt: {array} is missing 1 of" in msg


def test_many_missing_chunks_are_summarised(tmp_path):
    store = _store(tmp_path / "s.zarr")
    for i in range(2, 12):
        _chunk_file(store, "data/action", i).unlink()
    msg = _error(ReplayBuffer.open, store)
    assert (
        "missing 10 of 20 chunk file(s): 2.0 (rows 20-29), 3.0 (rows 30-39), 4.0 (rows 40-49) and 7 more"
        in msg
    )


def test_create_writes_fill_value_chunks(tmp_path):
    """zarr 3 skips all-fill chunks by default; ReplayBuffer.create writes them, so its stores reopen."""
    data = {"action": np.zeros((30, 2), dtype=np.float32), "state": np.ones((30, 5), dtype=np.float32)}
    buf = ReplayBuffer.create(tmp_path / "z.zarr", data, [10, 30])
    assert buf.n_steps == 30 and not buf["action"].any()


@needs_pusht
def test_pusht_copy_with_deleted_action_chunks_refused(tmp_path):
    """The issue's case: two action chunks deleted used to train on 322 zeroed rows, exit 0."""
    copy = tmp_path / "pusht.zarr"
    (copy / "data").mkdir(parents=True)
    for name in (".zgroup", ".zattrs"):
        if (PUSHT_ZARR / name).exists():
            shutil.copy(PUSHT_ZARR / name, copy / name)
        if (PUSHT_ZARR / "data" / name).exists():
            shutil.copy(PUSHT_ZARR / "data" / name, copy / "data" / name)
    shutil.copytree(PUSHT_ZARR / "meta", copy / "meta")
    for key in ("state", "action", "keypoint"):
        shutil.copytree(PUSHT_ZARR / "data" / key, copy / "data" / key)
    (copy / "data" / "action" / "3.0").unlink()
    (copy / "data" / "action" / "7.0").unlink()
    msg = _error(PushTLowdimDataset, copy)
    assert (
        "store is incomplete or corrupt: data/action is missing 2 of 160 chunk file(s): "
        "3.0 (rows 483-643), 7.0 (rows 1127-1287)"
    ) in msg


# ------------------------------------------------------------------------------------ corrupt chunks


def test_corrupt_chunk_names_array_rows_and_chunk(tmp_path):
    store = _store(tmp_path / "s.zarr")
    _chunk_file(store, "data/action", 5).write_bytes(b"garbage, not a compressed chunk")
    msg = _error(ReplayBuffer.open, store)
    assert "failed to read store: data/action rows 50-59 (chunk 5.0) cannot be read" in msg
    assert "the store is corrupt" in msg
    lazy = ReplayBuffer.open(store, lazy=True)  # lazy: found when the episode is read
    assert lazy.get_episode(0)["action"].shape == (50, 2)
    assert "data/action rows 50-59 (chunk 5.0) cannot be read" in _error(lazy.get_episode, 1)


def test_corrupt_chunk_error_is_the_only_output_and_no_crc32c_warning(tmp_path):
    """A failed chunk used to leave zarr's sibling reads pending (~450 lines of asyncio noise at exit),
    and importing numcodecs printed its crc32c DeprecationWarning; only that warning is dropped."""
    store = _store(tmp_path / "s.zarr", n=4000, chunk=10)
    _chunk_file(store, "data/action", 0).write_bytes(b"garbage")
    proc = subprocess.run(
        [
            sys.executable,
            "-W",
            "default",  # show every DeprecationWarning, so a broad filter of ours would be noticed
            "-c",
            textwrap.dedent(
                f"""
                import warnings
                from immiscible_policy.data import ReplayBuffer, ReplayBufferError
                try:
                    ReplayBuffer.open({str(store)!r})
                except ReplayBufferError as exc:
                    print("error:", exc)
                warnings.warn("some other deprecation", DeprecationWarning)
                """
            ),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    out = proc.stdout.strip().splitlines()
    assert len(out) == 1 and "data/action rows 0-9 (chunk 0.0) cannot be read" in out[0], proc.stdout
    assert "crc32c" not in proc.stderr
    assert "Task was destroyed" not in proc.stderr and "Event loop is closed" not in proc.stderr
    assert "some other deprecation" in proc.stderr  # no broad DeprecationWarning filter was installed
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_train_cli_refuses_missing_chunk_in_one_line(tmp_path):
    """The issue's report: a store with action chunks deleted trained on zeros and exited 0."""
    store = _store(tmp_path / "s.zarr", n=400)
    _chunk_file(store, "data/action", 4).unlink()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from immiscible_policy.cli.train import main; sys.exit(main())",
            f"task.dataset_path={store}",
            f"run_dir={tmp_path / 'run'}",
            "trainer.progress=false",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "data/action is missing 1 of 40 chunk file(s): 4.0 (rows 40-49)" in lines[0]
