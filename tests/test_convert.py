"""``immiscible-convert``: zarr / robomimic hdf5 -> LeRobotDataset v3.0 -> the same training windows.

Round trips through the CLI: the windows, split and normaliser of ``task=lerobot`` on the converted folder
equal those of the source's own task (PushT zarr task, robomimic task) for the same episodes, bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="LeRobotDataset support needs pyarrow (pip install -e '.[lerobot]')")

from immiscible_policy.cli.convert import main  # noqa: E402
from immiscible_policy.policy.dataset import PushTLowdimDataset, default_pusht_zarr  # noqa: E402
from immiscible_policy.policy.lerobot_dataset import LeRobotLowdimDataset  # noqa: E402

ZARR = Path(default_pusht_zarr())
needs_pusht = pytest.mark.skipif(
    not ZARR.exists(), reason=f"PushT demos not found at {ZARR} (set IMMISCIBLE_PUSHT_ZARR)"
)
N_EPISODES = 12
WINDOWS = {"horizon": 16, "n_obs_steps": 2, "n_action_steps": 8, "val_ratio": 0.2, "seed": 3}
PUSHT_KEYS = ["observation.environment_state", "observation.state"]


@pytest.fixture(scope="module")
def small_zarr(tmp_path_factory) -> Path:
    """The first N_EPISODES PushT episodes as their own zarr store (the zarr task's split depends on it)."""
    from immiscible_policy.data import ReplayBuffer

    keys = ["state", "keypoint", "action", "n_contacts"]
    buf = ReplayBuffer.open(ZARR, keys=keys)
    ends = np.asarray(buf.episode_ends)[:N_EPISODES]
    path = tmp_path_factory.mktemp("zarr") / "pusht_small.zarr"
    ReplayBuffer.create(path, {k: np.asarray(buf[k][: ends[-1]]) for k in keys}, ends)
    return path


def same_windows(a, b) -> None:
    for split_a, split_b in ((a, b), (a.get_validation_dataset(), b.get_validation_dataset())):
        wa, wb = split_a.all_windows(), split_b.all_windows()
        assert len(wa["obs"]) > 0
        for key in ("obs", "action"):
            assert wa[key].dtype == wb[key].dtype and wa[key].shape == wb[key].shape
            assert bool((wa[key] == wb[key]).all()), key
    assert json.dumps(a.get_normalizer().to_dict()) == json.dumps(b.get_normalizer().to_dict())


@needs_pusht
def test_zarr_roundtrip_gives_identical_windows(small_zarr, tmp_path, capsys):
    dest = tmp_path / "lerobot"
    assert main([str(small_zarr), str(dest), "task=Push the T-shaped block onto the target."]) == 0
    out = capsys.readouterr().out
    assert f"{N_EPISODES} episodes" in out and "observation.environment_state (18)" in out
    info = json.loads((dest / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == N_EPISODES and info["fps"] == 10
    keypoints = PushTLowdimDataset(small_zarr, obs_type="keypoints", **WINDOWS)
    same_windows(keypoints, LeRobotLowdimDataset(dest, PUSHT_KEYS, **WINDOWS))
    state = PushTLowdimDataset(small_zarr, obs_type="state", **WINDOWS)
    same_windows(state, LeRobotLowdimDataset(dest, ["observation.pusht_state"], **WINDOWS))


@needs_pusht
def test_episodes_option_and_one_line_errors(small_zarr, tmp_path, capsys):
    dest = tmp_path / "three"
    assert main([str(small_zarr), str(dest), "episodes=3"]) == 0
    assert json.loads((dest / "meta" / "info.json").read_text())["total_episodes"] == 3
    capsys.readouterr()
    for argv, message in [
        ([str(small_zarr), str(dest)], "already exists; pick a new folder or pass overwrite=true"),
        (
            [str(small_zarr), str(tmp_path / "x"), "episodes=99"],
            f"episodes=99: the source has only {N_EPISODES} episodes",
        ),
        ([str(tmp_path / "missing.zarr"), str(tmp_path / "y")], "no such file or directory"),
        ([str(small_zarr), str(tmp_path / "z"), "obs_keys=[a]"], "obs_keys applies to hdf5 sources only"),
        ([str(small_zarr)], "usage: immiscible-convert SRC DEST"),
        ([str(small_zarr), str(tmp_path / "w"), "fps=0"], "fps=0: use a number > 0"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_robomimic_hdf5_roundtrip(tmp_path):
    pytest.importorskip("h5py")
    from immiscible_policy.data.robomimic_hdf5 import write_robomimic
    from immiscible_policy.policy.robomimic_dataset import RobomimicLowdimDataset

    rng = np.random.default_rng(0)
    episodes = [
        {
            "obs": {"object": rng.normal(size=(n, 10)), "robot0_eef_pos": rng.normal(size=(n, 3))},
            "actions": rng.uniform(-1, 1, size=(n, 7)),
            "rewards": np.zeros(n),
            "dones": np.eye(n)[-1],
            "states": rng.normal(size=(n, 5)),
        }
        for n in (20, 25, 18, 30, 22)
    ]
    env_args = {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}}
    src = write_robomimic(tmp_path / "demo.hdf5", episodes, env_args)
    dest = tmp_path / "lerobot"
    assert main([str(src), str(dest), "obs_keys=[object,robot0_eef_pos]"]) == 0
    extra = json.loads((dest / "meta" / "immiscible.json").read_text())
    assert extra["env_args"] == env_args and json.loads((dest / "meta/info.json").read_text())["fps"] == 20
    keys = ["object", "robot0_eef_pos"]
    same_windows(
        RobomimicLowdimDataset(src, keys, **WINDOWS),
        LeRobotLowdimDataset(dest, [f"observation.{k}" for k in keys], **WINDOWS),
    )
