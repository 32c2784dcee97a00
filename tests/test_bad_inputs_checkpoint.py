"""Bad checkpoints and CLI options give one actionable line; run files get normal permissions.

Policy checkpoints are copies of the small legacy fixture (tests/fixtures/legacy_policy_ckpt) with one
thing broken; image checkpoints are written with save_checkpoint directly (no training).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
import torch

from immiscible_policy.checkpoint import (
    ALLOW_IMPORT_ENV,
    CheckpointError,
    load_weights,
    save_checkpoint,
)
from immiscible_policy.cli import eval as eval_cli
from immiscible_policy.cli import sample as sample_cli
from immiscible_policy.policy import DiffusionPolicy
from immiscible_policy.policy.load import load_policy
from immiscible_policy.run_log import RunLogger, plot_curves

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_policy_ckpt"


@pytest.fixture
def policy_ckpt(tmp_path) -> Path:
    """A writable copy of the legacy policy checkpoint as a step dir."""
    step = tmp_path / "run" / "checkpoints" / "00000010"
    shutil.copytree(FIXTURE, step)
    return step


def _edit_config(step: Path, edit) -> None:
    config = json.loads((step / "config.json").read_text())
    config = edit(config)
    (step / "config.json").write_text(json.dumps(config))


def _cli_error(main, argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


# ------------------------------------------------------------------------------------ config.json


def test_empty_config_json_is_one_line(policy_ckpt, capsys):
    (policy_ckpt / "config.json").write_text("{}")
    with pytest.raises(CheckpointError) as info:
        load_policy(policy_ckpt, device="cpu")
    assert str(info.value) == (
        f"checkpoint {policy_ckpt.resolve()}: config.json lacks cfg, policy; it was not written by the "
        "policy trainer (or the file is damaged)"
    )
    assert "config.json lacks cfg, policy" in _cli_error(eval_cli.main, [f"checkpoint={policy_ckpt}"], capsys)


def test_config_json_not_an_object(policy_ckpt):
    (policy_ckpt / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"config.json must hold a JSON object, got list"):
        load_policy(policy_ckpt, device="cpu")


def test_config_json_missing_nested_key(policy_ckpt):
    _edit_config(policy_ckpt, lambda c: {**c, "cfg": {k: v for k, v in c["cfg"].items() if k != "model"}})
    with pytest.raises(CheckpointError, match=r"config.json lacks cfg.model; it was not written"):
        load_policy(policy_ckpt, device="cpu")


# ------------------------------------------------------------------------------------ weights


def test_weights_not_fitting_the_recorded_model(policy_ckpt, capsys):
    def wider(c):
        c["cfg"]["model"]["down_dims"] = [8, 32]
        return c

    _edit_config(policy_ckpt, wider)
    with pytest.raises(CheckpointError) as info:
        load_policy(policy_ckpt, device="cpu")
    msg = str(info.value)
    assert "\n" not in msg and info.value.__cause__ is None
    assert msg.startswith(f"checkpoint {policy_ckpt.resolve()} (ema.safetensors): the weights do not fit")
    assert "size mismatch for " in msg and "(checkpoint [" in msg and "more;" in msg
    assert msg.endswith("was it written by a different model config (or code version)?")
    err = _cli_error(eval_cli.main, [f"checkpoint={policy_ckpt}", "use_ema=false"], capsys)
    assert "(model.safetensors): the weights do not fit" in err


def test_load_weights_missing_and_unexpected_keys():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(CheckpointError, match=r"^somewhere: the weights do not fit .*Missing key"):
        load_weights(model, {"weight": torch.zeros(2, 3)}, "somewhere")
    with pytest.raises(
        CheckpointError, match=r"size mismatch for weight \(checkpoint \[4, 3\], model \[2, 3\]\)"
    ):
        load_weights(model, {"weight": torch.zeros(4, 3), "bias": torch.zeros(2)}, "x")


# ------------------------------------------------------------------------------------ assigner import


def _set_assigner(step: Path, name: str) -> None:
    def edit(c):
        c["cfg"]["assigner"] = {"name": name, "params": {}}
        return c

    _edit_config(step, edit)


def test_checkpoint_cannot_import_arbitrary_module(policy_ckpt, capsys, monkeypatch):
    monkeypatch.delenv(ALLOW_IMPORT_ENV, raising=False)
    sys.modules.pop("this", None)
    _set_assigner(policy_ckpt, "this:Anything")
    err = _cli_error(eval_cli.main, [f"checkpoint={policy_ckpt}"], capsys)
    assert "assigner 'this:Anything' is not a registered strategy" in err
    assert "import module 'this'" in err and "allow_import=true" in err and f"{ALLOW_IMPORT_ENV}=1" in err
    assert "this" not in sys.modules  # refused before anything was imported
    with pytest.raises(CheckpointError, match="not a registered strategy"):
        load_policy(policy_ckpt, device="cpu")


def test_checkpoint_cannot_import_arbitrary_module_as_its_objective(policy_ckpt, capsys, monkeypatch):
    monkeypatch.delenv(ALLOW_IMPORT_ENV, raising=False)
    sys.modules.pop("this", None)
    config_path = policy_ckpt / "config.json"
    config = json.loads(config_path.read_text())
    config["cfg"]["trainer"]["objective"] = "this:Anything"
    config_path.write_text(json.dumps(config))
    err = _cli_error(eval_cli.main, [f"checkpoint={policy_ckpt}"], capsys)
    assert "objective (trainer.objective) 'this:Anything' is not a registered strategy" in err
    assert "import module 'this'" in err and "allow_import=true" in err
    assert "this" not in sys.modules  # refused before anything was imported


def test_import_path_assigner_loads_when_opted_in(policy_ckpt, monkeypatch):
    monkeypatch.delenv(ALLOW_IMPORT_ENV, raising=False)
    path = "immiscible_policy.assigners.knn:KNNAssigner"
    _set_assigner(policy_ckpt, path)
    with pytest.raises(CheckpointError, match="allow_import=true"):
        load_policy(policy_ckpt, device="cpu")
    policy = DiffusionPolicy.from_checkpoint(policy_ckpt, device="cpu", allow_import=True)
    assert type(policy.core.assigner).__name__ == "KNNAssigner"
    monkeypatch.setenv(ALLOW_IMPORT_ENV, "1")
    policy = DiffusionPolicy.from_checkpoint(policy_ckpt, device="cpu")
    assert type(policy.core.assigner).__name__ == "KNNAssigner"
    # an explicit allow_import=false wins over the environment
    with pytest.raises(CheckpointError, match="not a registered strategy"):
        load_policy(policy_ckpt, device="cpu", allow_import=False)


def test_registered_assigner_needs_no_opt_in(policy_ckpt, monkeypatch):
    monkeypatch.delenv(ALLOW_IMPORT_ENV, raising=False)
    _set_assigner(policy_ckpt, "knn")
    _, policy, _, _ = load_policy(policy_ckpt, device="cpu")
    assert policy.core.assigner.name == "knn"


# ------------------------------------------------------------------------------------ CLI numbers


@pytest.mark.parametrize("value", ["0", "-3", "abc"])
def test_eval_num_inference_steps_must_be_positive(value, capsys):
    err = _cli_error(eval_cli.main, ["checkpoint=/nonexistent/run", f"num_inference_steps={value}"], capsys)
    shown = value if value != "abc" else "'abc'"
    assert err == f"error: num_inference_steps={shown}: use an integer >= 1."


def test_eval_bad_flag_value(capsys):
    err = _cli_error(eval_cli.main, ["checkpoint=/x", "allow_import=maybe"], capsys)
    assert err == "error: allow_import='maybe': use true or false."


@pytest.mark.parametrize("value", ["0", "-1", "abc", "2.5"])
def test_sample_steps_must_be_positive(value, capsys):
    err = _cli_error(sample_cli.main, ["checkpoint=/nonexistent/run", f"steps={value}"], capsys)
    shown = {"abc": "'abc'"}.get(value, value)
    assert err == f"error: steps={shown}: use an integer >= 1."


def test_sample_n_and_batch_size_checked(capsys):
    assert _cli_error(sample_cli.main, ["checkpoint=/x", "n=0"], capsys) == "error: n=0: use an integer >= 1."
    err = _cli_error(sample_cli.main, ["checkpoint=/x", "batch_size=x"], capsys)
    assert err == "error: batch_size='x': use an integer >= 1."


# ------------------------------------------------------------------------------------ image checkpoints

UNET_TINY = {
    "name": "unet2d_tiny",
    "block_out_channels": [16, 32],
    "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
    "dropout": 0.0,
}
IMAGE_META = {"image_size": 8, "channels": 1, "num_classes": 0}


def _image_ckpt(run: Path, model_state, *, assigner="vanilla", model=None) -> Path:
    config = {
        "cfg": {
            "assigner": {"name": assigner, "params": {}},
            "model": model or UNET_TINY,
            "trainer": {"num_inference_steps": 2},
        },
        "image": IMAGE_META,
    }
    return save_checkpoint(run, 1, model_state=model_state, config=config, training_state={"step": 1})


def test_sample_refuses_import_assigner_and_empty_config(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(ALLOW_IMPORT_ENV, raising=False)
    sys.modules.pop("this", None)
    step = _image_ckpt(tmp_path / "run", {"w": torch.zeros(1)}, assigner="this:Anything")
    err = _cli_error(sample_cli.main, [f"checkpoint={step}", "n=1"], capsys)
    assert "assigner 'this:Anything' is not a registered strategy" in err and "allow_import=true" in err
    assert "this" not in sys.modules
    (step / "config.json").write_text("{}")
    err = _cli_error(sample_cli.main, [f"checkpoint={step}", "n=1"], capsys)
    assert "config.json lacks cfg, image; it was not written by the image trainer" in err


def test_sample_weights_not_fitting_the_recorded_model(tmp_path, capsys):
    from omegaconf import OmegaConf

    from immiscible_policy.image.model import build_unet

    small = build_unet(OmegaConf.create(UNET_TINY), **IMAGE_META)
    wider = {**UNET_TINY, "block_out_channels": [16, 64]}
    step = _image_ckpt(tmp_path / "run", small.state_dict(), model=wider)
    err = _cli_error(sample_cli.main, [f"checkpoint={step}", "n=1", "device=cpu"], capsys)
    assert f"checkpoint {step} (" in err
    assert "the weights do not fit the model its config.json describes: size mismatch" in err
    assert "different model config" in err


# ------------------------------------------------------------------------------------ file modes


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_run_files_get_normal_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        logger = RunLogger(tmp_path / "run")
        logger.log({"epoch": 1, "step": 1, "train_loss": 0.5})
        logger.log({"epoch": 2, "step": 2, "train_loss": 0.4, "mean_score": 0.1})  # new column: rewrite
        png = plot_curves(logger.jsonl_path, tmp_path / "run" / "curves.png")
        step = save_checkpoint(
            tmp_path / "run",
            2,
            model_state={"w": torch.zeros(2)},
            config={"a": 1},
            normalizer={"x": [1.0]},
            training_state={"step": 2},
        )
    finally:
        os.umask(old)
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    for path in (logger.jsonl_path, logger.csv_path, png):
        assert _mode(path) == file_mode, f"{path.name}: {oct(_mode(path))}"
    assert _mode(step) == dir_mode, oct(_mode(step))
    for path in step.iterdir():
        assert _mode(path) == file_mode, f"{path.name}: {oct(_mode(path))}"
