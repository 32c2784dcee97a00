"""The PushT low-dim demos shipped in the package (immiscible_policy/data/pusht_lowdim.npz).

What must hold for the embedded copy to stand in for Diffusion Policy's zarr: its arrays are the zarr's bit
for bit, so the windows, the normaliser and the training losses are exactly the same on either; the file
is the documented one and regenerating it gives the same bytes; the lookup is explicit path ->
$IMMISCIBLE_PUSHT_ZARR -> the shared store -> the embedded copy, and a named path that does not exist is an
error rather than a silent switch to the embedded copy; a run records which source it read; and the
quickstart trains on a machine without the shared store.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from immiscible_policy.cli._hydra import config_dir
from immiscible_policy.data import ReplayBuffer, ReplayBufferError
from immiscible_policy.data.pusht_lowdim import (
    DATA_KEYS,
    EMBEDDED_PUSHT,
    embedded_sha256,
    open_embedded_pusht,
    write_lowdim_npz,
)
from immiscible_policy.policy import dataset as dataset_module
from immiscible_policy.policy.dataset import (
    EMBEDDED,
    PUSHT_ZIP_URL,
    PushTImageDataset,
    PushTLowdimDataset,
    resolve_pusht_source,
)

SHARED = Path(dataset_module.shared_pusht_zarr())
needs_zarr = pytest.mark.skipif(not SHARED.exists(), reason=f"PushT store not found at {SHARED}")
NOTE = Path(dataset_module.__file__).parents[1] / "data" / "PUSHT_LOWDIM.md"


def cfg_of(*overrides: str):
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return compose("train", overrides=list(overrides))


# ----------------------------------------------------------------------------------------------- the file


def test_file_is_the_documented_one_and_regenerates_bit_for_bit(tmp_path):
    size, sha = EMBEDDED_PUSHT.stat().st_size, embedded_sha256()
    assert size < 2_000_000, size  # the point of shipping it: about 1 MB, not the zarr's 32
    assert sha == hashlib.sha256(EMBEDDED_PUSHT.read_bytes()).hexdigest()
    note = NOTE.read_text()
    assert sha in note and f"{size:,}" in note  # the provenance note names this very file
    # a plain np.load reads it (no pickles), entries named after the zarr's arrays
    with np.load(EMBEDDED_PUSHT, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted([*(f"data/{k}" for k in DATA_KEYS), "meta/episode_ends"])
        arrays = {k: npz[f"data/{k}"] for k in DATA_KEYS}
        ends = npz["meta/episode_ends"]
    assert ends.dtype == np.int64 and len(ends) == 206 and int(ends[-1]) == 25650
    assert all(a.dtype == np.float32 and len(a) == 25650 for a in arrays.values())
    # deterministic writer: the same arrays give the same bytes (no timestamps in the archive)
    write_lowdim_npz(arrays, ends, tmp_path / "again.npz")
    assert (tmp_path / "again.npz").read_bytes() == EMBEDDED_PUSHT.read_bytes()


@needs_zarr
def test_embedded_arrays_are_the_zarrs_bit_for_bit():
    zarr_buf = ReplayBuffer.open(SHARED, keys=DATA_KEYS)
    embedded = open_embedded_pusht()
    assert embedded.keys() == list(DATA_KEYS)
    for key in DATA_KEYS:
        a, b = zarr_buf[key], embedded[key]
        assert (a.dtype, a.shape) == (b.dtype, b.shape), key
        assert a.tobytes() == b.tobytes(), key  # bit for bit (a NaN or -0.0 would count too)
    import zarr

    raw_ends = np.asarray(zarr.open_group(str(SHARED), mode="r")["meta/episode_ends"][:])
    assert (
        raw_ends.dtype == embedded.episode_ends.dtype
        and raw_ends.tobytes() == embedded.episode_ends.tobytes()
    )


@needs_zarr
@pytest.mark.parametrize(("obs_type", "mirror"), [("keypoints", False), ("state", True)])
def test_windows_and_normaliser_are_the_same_on_either_source(obs_type, mirror):
    kw = {"obs_type": obs_type, "mirror": mirror, "max_train_episodes": 50}
    from_zarr, embedded = PushTLowdimDataset(SHARED, **kw), PushTLowdimDataset(EMBEDDED, **kw)
    assert (from_zarr.source, embedded.source) == (str(SHARED), EMBEDDED)
    wz, we = from_zarr.all_windows(), embedded.all_windows()
    for key in ("obs", "action"):
        assert torch.equal(wz[key], we[key]), key
    nz, ne = from_zarr.get_normalizer().params, embedded.get_normalizer().params
    for key in nz:
        for stat in nz[key]:
            np.testing.assert_array_equal(nz[key][stat], ne[key][stat])
    np.testing.assert_array_equal(from_zarr.val_mask, embedded.val_mask)


def test_keys_the_embedded_copy_lacks_are_a_one_line_error(tmp_path):
    with pytest.raises(ReplayBufferError, match=r"not \['img'\].*full pusht_cchi_v7_replay.zarr") as err:
        open_embedded_pusht(["state", "img"])
    assert "\n" not in str(err.value)
    with pytest.raises(ReplayBufferError, match=r"missing.npz: the embedded PushT demos are missing"):
        open_embedded_pusht(path=tmp_path / "missing.npz")


# ----------------------------------------------------------------------------------------------- lookup


@pytest.fixture
def places(tmp_path, monkeypatch):
    """An env-var store and a shared store that exist (empty dirs: the lookup only checks existence)."""
    env, shared = tmp_path / "env.zarr", tmp_path / "shared.zarr"
    env.mkdir()
    shared.mkdir()
    monkeypatch.delenv("IMMISCIBLE_PUSHT_ZARR", raising=False)
    monkeypatch.setattr(dataset_module, "shared_pusht_zarr", lambda: str(shared))
    return env, shared


def test_lookup_order(places, monkeypatch, tmp_path):
    env, shared = places
    assert resolve_pusht_source() == str(shared)  # no variable: the shared store
    monkeypatch.setenv("IMMISCIBLE_PUSHT_ZARR", str(env))
    assert resolve_pusht_source() == str(env)  # the variable before the shared store
    assert resolve_pusht_source(tmp_path / "mine.zarr") == str(tmp_path / "mine.zarr")  # explicit first
    assert resolve_pusht_source(EMBEDDED) == EMBEDDED  # an explicit choice of the embedded copy
    monkeypatch.setenv("IMMISCIBLE_PUSHT_ZARR", EMBEDDED)
    assert resolve_pusht_source() == EMBEDDED
    monkeypatch.delenv("IMMISCIBLE_PUSHT_ZARR")
    shared.rmdir()
    assert resolve_pusht_source() == EMBEDDED  # nothing else: the embedded copy
    # the frames exist only in the full store: no silent low-dim stand-in for task=pusht_image
    with pytest.raises(
        ReplayBufferError, match=rf"^task=pusht_image needs the full .*{re.escape(PUSHT_ZIP_URL)}"
    ):
        resolve_pusht_source(frames=True)
    with pytest.raises(ReplayBufferError, match=r"\(task.dataset_path=embedded\)"):
        resolve_pusht_source(EMBEDDED, frames=True)


def test_a_named_path_that_does_not_exist_is_an_error_not_the_embedded_copy(places, monkeypatch, tmp_path):
    _, shared = places
    shared.rmdir()  # the embedded copy is what the lookup would fall back to
    missing = tmp_path / "typo.zarr"
    with pytest.raises(ReplayBufferError, match=rf"^{re.escape(str(missing))}: no such path") as err:
        PushTLowdimDataset(missing)
    assert "\n" not in str(err.value)
    monkeypatch.setenv("IMMISCIBLE_PUSHT_ZARR", str(missing))
    with pytest.raises(
        ReplayBufferError,
        match=rf"^IMMISCIBLE_PUSHT_ZARR={re.escape(str(missing))}: no such path; .*unset it",
    ) as err:
        PushTLowdimDataset()
    assert "\n" not in str(err.value)
    with pytest.raises(
        ReplayBufferError, match=r"^task=pusht_image needs .*IMMISCIBLE_PUSHT_ZARR=.*typo.zarr"
    ):
        PushTImageDataset()


def test_pusht_image_without_the_store_says_where_to_get_it(places):
    from immiscible_policy.policy.tasks import task_env

    _, shared = places
    shared.rmdir()
    task = cfg_of("task=pusht_image").task
    with pytest.raises(ReplayBufferError) as err:
        task_env(task).make_dataset(task)
    message = str(err.value)
    assert "\n" not in message and PUSHT_ZIP_URL in message and str(shared) in message


# ----------------------------------------------------------------------------------------------- training

# the quickstart's trainer on a tiny network: what is under test is where the data comes from
TINY = [
    "model=unet1d_sweep",
    "model.down_dims=[8,16]",
    "model.diffusion_step_embed_dim=16",
    "trainer=quickstart",
    "trainer.batch_size=16",
    "trainer.epochs=1",
    "trainer.max_steps_per_epoch=2",
    "trainer.eval_every_epochs=0",
    "trainer.eval_at_end=false",
    "trainer.checkpoint_every_epochs=0",
    "trainer.progress=false",
    "trainer.device=cpu",
    "task.max_train_episodes=5",
]


@pytest.fixture
def one_thread():
    """One intra-op thread: a 30k-parameter network gains nothing from more, and on a busy 2-core machine
    two spinning threads made each step 100x slower (5 s instead of 0.05 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(run: Path, *overrides: str) -> tuple[dict, dict]:
    """(last metrics record, config.json) of a 2-step run."""
    from immiscible_policy.policy.train import train_policy

    train_policy(cfg_of(*TINY, *overrides, f"run_dir={run}"), run)
    record = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    return record, json.loads((run / "config.json").read_text())


@needs_zarr
def test_training_is_the_same_on_either_source_and_records_it(tmp_path, capsys, one_thread):
    runs = {}
    for name, path in (("zarr", SHARED), ("embedded", EMBEDDED)):
        record, config = _train(tmp_path / name, f"task.dataset_path={path}")
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("[immiscible] task="))
        runs[name] = record, config, line
    (rz, cz, lz), (re_, ce, le) = runs["zarr"], runs["embedded"]
    assert rz["step"] == re_["step"] == 2
    assert rz["train_loss"] == re_["train_loss"]  # exactly: the same windows, normaliser and noise
    assert cz["data_source"] == {"source": "zarr", "path": str(SHARED)}
    assert ce["data_source"] == {
        "source": "embedded",
        "file": EMBEDDED_PUSHT.name,
        "sha256": embedded_sha256(),
    }
    assert lz.endswith(f" data={SHARED}")
    assert le.endswith(f" data=embedded:sha256={embedded_sha256()}")


def test_quickstart_trains_without_the_shared_store(tmp_path, monkeypatch, capsys, one_thread):
    """A fresh machine: no $IMMISCIBLE_PUSHT_ZARR, no ../shared; task.dataset_path stays null."""
    monkeypatch.delenv("IMMISCIBLE_PUSHT_ZARR", raising=False)
    monkeypatch.setattr(dataset_module, "shared_pusht_zarr", lambda: str(tmp_path / "no" / "shared.zarr"))
    record, config = _train(tmp_path / "run")
    assert config["cfg"]["task"]["dataset_path"] is None
    assert config["data_source"]["source"] == EMBEDDED
    assert config["data_source"]["sha256"] == embedded_sha256()
    assert record["step"] == 2 and np.isfinite(record["train_loss"])
    assert f"data=embedded:sha256={embedded_sha256()}" in capsys.readouterr().out
