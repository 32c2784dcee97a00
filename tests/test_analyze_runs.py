"""``immiscible-analyze`` reads a checkpoint the way its trainer did: task family, split, trusted assigner.

Policy checkpoints are copies of the small legacy fixture (tests/fixtures/legacy_policy_ckpt, obs 20 /
action 2) with the recorded task changed; the robomimic case writes a small synthetic hdf5 whose
observations also have 20 numbers, so the same weights fit.
"""

from __future__ import annotations

import inspect
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from immiscible_policy.analysis import runs
from immiscible_policy.checkpoint import ALLOW_IMPORT_ENV, save_checkpoint
from immiscible_policy.cli import analyze as analyze_cli
from immiscible_policy.cli.analyze import main as analyze
from immiscible_policy.policy.dataset import default_pusht_zarr

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_policy_ckpt"
HAVE_PUSHT = Path(default_pusht_zarr()).exists()
needs_pusht = pytest.mark.skipif(not HAVE_PUSHT, reason="PushT demos not found (set IMMISCIBLE_PUSHT_ZARR)")
TINY_BIJ = ["n=2", "conditions=2", "steps=2"]


def _policy_ckpt(root: Path, edit=None) -> Path:
    step = root / "run" / "checkpoints" / "00000010"
    shutil.copytree(FIXTURE, step)
    if edit is not None:
        config = json.loads((step / "config.json").read_text())
        edit(config)
        (step / "config.json").write_text(json.dumps(config))
    return step


def _image_ckpt(root: Path, assigner: str) -> Path:
    """A tiny image checkpoint (8x8, one channel) whose config names ``assigner``."""
    config = {
        "cfg": {"assigner": {"name": assigner, "params": {}}, "model": {}, "trainer": {}},
        "image": {"image_size": 8, "channels": 1, "num_classes": 0},
    }
    return save_checkpoint(
        root / "run", 1, model_state={"w": torch.zeros(1)}, config=config, training_state={"step": 1}
    )


def _one_line_error(argv, capsys) -> str:
    assert analyze(argv) == 2
    err = capsys.readouterr().err.split("\r")[-1].strip()  # after any cleared progress bar
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


# ------------------------------------------------------------------------------------ thin entry point


def test_cli_has_no_plotting_code():
    src = inspect.getsource(analyze_cli)
    assert "matplotlib" not in src and "savefig" not in src and "def plot" not in src
    assert analyze_cli.checkpoint_kind is runs.checkpoint_kind  # still importable from the CLI


def test_plots_redraw_from_saved_payloads(tmp_path):
    from immiscible_policy.analysis.plots import plot_bijectivity, plot_lines, plot_modes

    plot_lines(tmp_path / "l.png", {"a": ([0, 1], [0.1, 0.2])}, "x", "y", "t")
    run = {
        "relative_noise_reconstruction_error": 0.1,
        "relative_noise_reconstruction_error_median": 0.09,
        "relative_resample_error": 0.05,
        "distinct_nearest_train_chunks_per_condition": 3.0,
        "samples_per_condition": 4,
    }
    plot_bijectivity(
        tmp_path / "b.png", {"kind": "policy", "task": "x", "ddim_steps": 2, "runs": {"a": run, "b": run}}
    )
    start = {"left_share": 0.25}
    plot_modes(
        tmp_path / "m.png",
        {
            "seeds": [1, 2],
            "n_rollouts": 4,
            "runs": {"a": {"mean_binary_entropy_bits": 0.5, "starts": [start] * 2}},
        },
    )
    assert all((tmp_path / f"{n}.png").stat().st_size > 1000 for n in "lbm")


# ------------------------------------------------------------------------------------ the run's split


@needs_pusht
def test_policy_dataset_is_the_runs_own_split(tmp_path):
    from omegaconf import OmegaConf

    from immiscible_policy.policy.dataset import PushTLowdimDataset

    def split(c):
        c["cfg"]["task"].update(val_ratio=0.1, split_seed=7, max_train_episodes=20)

    step = _policy_ckpt(tmp_path, split)
    task = OmegaConf.create(json.loads((step / "config.json").read_text())["cfg"]).task
    ds = runs.policy_dataset(task)
    trained_on = PushTLowdimDataset(val_ratio=0.1, seed=7, max_train_episodes=20)
    np.testing.assert_array_equal(ds.episodes, trained_on.episodes)
    np.testing.assert_array_equal(
        ds.get_validation_dataset().episodes, trained_on.get_validation_dataset().episodes
    )
    assert len(ds.episodes) == 20 and len(ds) < len(PushTLowdimDataset())  # not the default split


@needs_pusht
def test_bijectivity_uses_the_recorded_split(tmp_path, monkeypatch):
    """The dataset handed to the analysis is built by the task family from the recorded task config."""
    seen = []
    real = runs.policy_dataset

    def spy(task):
        ds = real(task)
        seen.append((int(task.max_train_episodes), len(ds.episodes)))
        return ds

    monkeypatch.setattr(runs, "policy_dataset", spy)
    step = _policy_ckpt(tmp_path, lambda c: c["cfg"]["task"].update(max_train_episodes=12))
    assert analyze(["bijectivity", f"checkpoint={step}", *TINY_BIJ, f"out={tmp_path / 'an'}"]) == 0
    assert seen == [(12, 12)]
    payload = json.loads((tmp_path / "an" / "bijectivity_pusht.json").read_text())
    assert "condition_split" not in payload["runs"]["vanilla"]  # validation windows, as before


@needs_pusht
def test_run_without_validation_episodes_conditions_on_train_windows(tmp_path):
    step = _policy_ckpt(tmp_path, lambda c: c["cfg"]["task"].update(val_ratio=0.0))
    assert analyze(["bijectivity", f"checkpoint={step}", *TINY_BIJ, f"out={tmp_path}"]) == 0
    res = json.loads((tmp_path / "bijectivity_pusht.json").read_text())["runs"]["vanilla"]
    assert res["condition_split"] == "train" and res["conditions"] == 2


# ------------------------------------------------------------------------------------ robomimic family


@pytest.fixture
def robomimic_ckpt(tmp_path):
    pytest.importorskip("h5py")
    from immiscible_policy.data.robomimic_hdf5 import write_robomimic

    rng = np.random.default_rng(0)
    episodes = []
    for i in range(6):
        n = 30 + i
        episodes.append(
            {
                "obs": {"a": rng.normal(size=(n, 18)), "b": rng.normal(size=(n, 2))},
                "actions": rng.uniform(-1, 1, size=(n, 2)),
                "rewards": np.zeros(n),
                "dones": np.eye(n)[-1],
                "states": rng.normal(size=(n, 5)),
            }
        )
    env_args = {"env_name": "Lift", "type": 1, "env_kwargs": {}}
    hdf5 = write_robomimic(tmp_path / "fake.hdf5", episodes, env_args)

    def to_robomimic(c):
        c["cfg"]["task"] = {
            **c["cfg"]["task"],
            "name": "robomimic_fake",
            "env": "robomimic",
            "env_name": "Lift",
            "dataset_path": str(hdf5),
            "obs_keys": ["a", "b"],
            "filter_key": None,
            "env_args": json.dumps(env_args),
            "val_ratio": 0.2,
        }
        del c["cfg"]["task"]["obs_type"]

    return _policy_ckpt(tmp_path, to_robomimic)


def test_bijectivity_on_a_robomimic_checkpoint(robomimic_ckpt, tmp_path):
    assert runs.checkpoint_kind(str(robomimic_ckpt)) == ("policy", "robomimic_fake")
    out = tmp_path / "an"
    assert analyze(["bijectivity", f"checkpoint={robomimic_ckpt}", *TINY_BIJ, f"out={out}"]) == 0
    payload = json.loads((out / "bijectivity_robomimic_fake.json").read_text())
    res = payload["runs"]["vanilla"]
    assert payload["kind"] == "policy" and res["conditions"] == 2 and "condition_split" not in res
    assert 1 <= res["distinct_nearest_train_chunks_per_condition"] <= 2
    assert (out / "bijectivity_robomimic_fake.png").stat().st_size > 1000


def test_modes_refuses_a_robomimic_checkpoint(robomimic_ckpt, tmp_path, capsys):
    err = _one_line_error(["modes", f"checkpoint={robomimic_ckpt}", f"out={tmp_path}"], capsys)
    assert "is a robomimic_fake policy checkpoint; modes needs a PushT policy checkpoint" in err


def test_modes_goes_by_task_family_not_task_name(tmp_path, capsys):
    """A robomimic run that happens to be named "pusht" is still not a PushT policy."""

    def rename(c):
        c["cfg"]["task"]["env"] = "robomimic"

    step = _policy_ckpt(tmp_path, rename)
    err = _one_line_error(["modes", f"checkpoint={step}", f"out={tmp_path}"], capsys)
    assert "modes needs a PushT policy checkpoint" in err


# ------------------------------------------------------------------------------------ allow_import


def _import_assigner(path: str):
    def edit(c):
        c["cfg"]["assigner"] = {"name": path, "params": {}}

    return edit


@pytest.mark.parametrize("command", ["bijectivity", "modes", "noise_share", "leak"])
def test_untrusted_policy_checkpoint_is_refused(command, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(ALLOW_IMPORT_ENV, raising=False)
    sys.modules.pop("this", None)
    step = _policy_ckpt(tmp_path, _import_assigner("this:Anything"))
    err = _one_line_error([command, f"checkpoint={step}", f"out={tmp_path}"], capsys)
    assert "assigner 'this:Anything' is not a registered strategy" in err and "allow_import=true" in err
    assert "this" not in sys.modules  # refused before anything was imported


@needs_pusht
def test_import_path_assigner_analysed_when_opted_in(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(ALLOW_IMPORT_ENV, raising=False)
    step = _policy_ckpt(tmp_path, _import_assigner("immiscible_policy.assigners.knn:KNNAssigner"))
    argv = ["bijectivity", f"checkpoint={step}", "labels=k", *TINY_BIJ, f"out={tmp_path}"]
    assert "allow_import=true" in _one_line_error(argv, capsys)
    assert analyze([*argv, "allow_import=true"]) == 0
    assert json.loads((tmp_path / "bijectivity_pusht.json").read_text())["runs"]["k"]["conditions"] == 2
    # an explicit allow_import=false wins over the environment
    monkeypatch.setenv(ALLOW_IMPORT_ENV, "1")
    assert "not a registered strategy" in _one_line_error([*argv, "allow_import=false"], capsys)
    modes = ["modes", f"checkpoint={step}", "n_states=1", "n_rollouts=1", "max_steps=4"]
    assert analyze([*modes, "num_inference_steps=2", f"out={tmp_path}"]) == 0


def test_untrusted_image_checkpoint_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(ALLOW_IMPORT_ENV, raising=False)
    sys.modules.pop("this", None)
    step = _image_ckpt(tmp_path, "this:Anything")
    err = _one_line_error(["bijectivity", f"checkpoint={step}", f"out={tmp_path}"], capsys)
    assert "assigner 'this:Anything' is not a registered strategy" in err and "allow_import=true" in err
    assert "this" not in sys.modules


def test_allow_import_must_be_a_flag(capsys):
    err = _one_line_error(["bijectivity", "checkpoint=/x", "allow_import=maybe"], capsys)
    assert err == "error: allow_import='maybe': use true or false."
