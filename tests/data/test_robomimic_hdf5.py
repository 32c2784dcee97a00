"""robomimic hdf5 reader/writer: a small file written by the collector, layout, masks, errors, windows."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.robomimic
pytest.importorskip("robosuite")
h5py = pytest.importorskip("h5py")

from immiscible_policy.data.robomimic_hdf5 import (  # noqa: E402
    RobomimicDatasetError,
    load_robomimic,
    read_env_args,
    write_robomimic,
)

KEYS = ["object", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"]


@pytest.fixture(scope="module")
def lift_file(tmp_path_factory):
    from immiscible_policy.cli.collect import collect

    path = tmp_path_factory.mktemp("robomimic") / "lift.hdf5"
    report = collect(
        {
            "task": "robomimic_lift",
            "n_episodes": 3,
            "output": str(path),
            "valid_ratio": 0.34,
            "progress": False,
        }
    )
    return path, report


def _fake_episode(n: int, rng) -> dict:
    return {
        "obs": {"a": rng.normal(size=(n, 2)), "b": rng.normal(size=(n, 3))},
        "actions": rng.uniform(-1, 1, size=(n, 7)),
        "rewards": np.zeros(n),
        "dones": np.eye(n)[-1],
        "states": rng.normal(size=(n, 5)),
    }


def test_collector_file_layout_keys_masks_env_args(lift_file):
    path, report = lift_file
    assert report["kept"] == 3 and 0 < report["expert_success_rate"] <= 1
    with h5py.File(path, "r") as f:
        demos = sorted(f["data"], key=lambda k: int(k[5:]))
        assert demos == ["demo_0", "demo_1", "demo_2"]
        total = 0
        for d in demos:
            g = f["data"][d]
            n = int(g.attrs["num_samples"])
            total += n
            assert g["actions"].shape == (n, 7) and np.abs(g["actions"][:]).max() <= 1.0
            assert g["rewards"].shape == (n,) and g["rewards"][-1] == 1.0  # kept episodes end successful
            assert g["dones"][-1] == 1 and g["dones"][:-1].sum() == 0
            assert g["states"].shape == (n, 32)  # Lift: time + 16 qpos + 15 qvel
            for key, width in {
                "object": 10,
                "robot0_eef_pos": 3,
                "robot0_eef_quat": 4,
                "robot0_gripper_qpos": 2,
            }.items():
                assert g["obs"][key].shape == (n, width)
            assert "<mujoco" in g.attrs["model_file"]
        assert int(f["data"].attrs["total"]) == total
        env_args = json.loads(f["data"].attrs["env_args"])
        train = {x.decode() for x in f["mask/train"][:]}
        valid = {x.decode() for x in f["mask/valid"][:]}
    assert env_args["env_name"] == "Lift" and env_args["type"] == 1
    assert env_args["env_kwargs"]["controller_configs"]["type"] == "OSC_POSE"
    assert read_env_args(path) == env_args
    assert len(valid) == 1 and train | valid == set(demos) and not train & valid


def test_reader_concatenates_keys_in_order(lift_file):
    path, _ = lift_file
    data = load_robomimic(path, KEYS)
    buf = data.buffer
    assert data.obs_dims == {
        "object": 10,
        "robot0_eef_pos": 3,
        "robot0_eef_quat": 4,
        "robot0_gripper_qpos": 2,
    }
    assert buf["obs"].shape == (buf.n_steps, 19) and buf["action"].shape == (buf.n_steps, 7)
    assert buf["obs"].dtype == np.float32 and buf.n_episodes == 3
    with h5py.File(path, "r") as f:
        lengths = [int(f["data"][d].attrs["num_samples"]) for d in data.demos]
        assert list(buf.episode_lengths) == lengths
        ep1 = buf.get_episode(1)
        g = f["data/demo_1"]
        np.testing.assert_allclose(ep1["obs"][:, 10:13], g["obs/robot0_eef_pos"][:], rtol=1e-6)
        np.testing.assert_allclose(ep1["obs"][:, :10], g["obs/object"][:], rtol=1e-6)
        np.testing.assert_allclose(ep1["action"], g["actions"][:], rtol=1e-6)
        np.testing.assert_allclose(data.initial_states[1], g["states"][0])
    reordered = load_robomimic(path, ["robot0_gripper_qpos", "robot0_eef_pos"])
    np.testing.assert_array_equal(reordered.buffer["obs"][:, :2], buf["obs"][:, 17:19])
    only_train = load_robomimic(path, KEYS, filter_key="train")
    assert only_train.demos == sorted(data.masks["train"], key=lambda k: int(k[5:]))


def test_demos_are_read_in_numeric_order(tmp_path):
    rng = np.random.default_rng(0)
    episodes = [_fake_episode(3 + i, rng) for i in range(12)]
    path = write_robomimic(tmp_path / "f.hdf5", episodes, {"env_name": "Lift", "type": 1, "env_kwargs": {}})
    data = load_robomimic(path, ["b", "a"])
    assert data.demos[:4] == ["demo_0", "demo_1", "demo_2", "demo_3"] and data.demos[-1] == "demo_11"
    assert list(data.buffer.episode_lengths) == [3 + i for i in range(12)]  # demo_10 after demo_9
    np.testing.assert_allclose(data.buffer.get_episode(10)["obs"][:, 3:], episodes[10]["obs"]["a"], rtol=1e-6)
    with pytest.raises(RobomimicDatasetError, match="already exists"):
        write_robomimic(path, episodes, {"env_name": "Lift"})


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_bad_inputs_give_one_line_errors(lift_file, tmp_path):
    path, _ = lift_file
    with pytest.raises(RobomimicDatasetError) as e:
        load_robomimic(path, ["object", "robot0_eef_posx"])
    text = _one_line(e)
    assert "robot0_eef_posx" in text and "available" in text and "robot0_eef_pos" in text
    with pytest.raises(RobomimicDatasetError) as e:
        load_robomimic(path, KEYS, filter_key="20_percent")
    assert "train" in _one_line(e) and "valid" in str(e.value)
    with pytest.raises(RobomimicDatasetError) as e:
        load_robomimic(tmp_path / "nope.hdf5", KEYS)
    assert "immiscible-collect" in _one_line(e)
    junk = tmp_path / "junk.hdf5"
    junk.write_text("not hdf5")
    with pytest.raises(RobomimicDatasetError) as e:
        load_robomimic(junk, KEYS)
    assert "not a readable hdf5" in _one_line(e)
    bare = tmp_path / "bare.hdf5"
    with h5py.File(bare, "w") as f:
        f.create_group("data/demo_0/obs")
        f["data/demo_0/actions"] = np.zeros((2, 7))
        f["data/demo_0/obs/robot0_eef_pos"] = np.zeros((2, 3))
    with pytest.raises(RobomimicDatasetError) as e:
        load_robomimic(bare, ["robot0_eef_pos"])
    assert "env_args" in _one_line(e)
    with pytest.raises(RobomimicDatasetError):
        load_robomimic(path, [])


def test_dataset_windows_and_normaliser(lift_file):
    from immiscible_policy.policy.robomimic_dataset import RobomimicLowdimDataset

    path, _ = lift_file
    ds = RobomimicLowdimDataset(path, KEYS, horizon=16, n_obs_steps=2, n_action_steps=8, val_ratio=0.34)
    assert ds.obs_dim == 19 and ds.action_dim == 7 and len(ds.episodes) == 2
    lengths = ds.data.buffer.episode_lengths[ds.episodes]
    assert len(ds) == int(sum(n - 16 + 1 + 1 + 7 for n in lengths))  # pad 1 before, 7 after
    first = ds[0]
    assert first["obs"].shape == (16, 19) and first["action"].shape == (16, 7)
    np.testing.assert_array_equal(first["obs"][0], first["obs"][1])  # edge padding before the start
    val = ds.get_validation_dataset()
    assert set(val.episodes).isdisjoint(ds.episodes) and len(val.episodes) == 1
    norm = ds.get_normalizer()
    a = norm.normalize("action", ds.all_windows()["action"])
    assert float(a.min()) >= -1.0 - 1e-5 and float(a.max()) <= 1.0 + 1e-5
