"""One name for the training objective: ``objective``; the former ``prediction_type`` still loads and trains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file

from immiscible_policy import create
from immiscible_policy.cli._hydra import config_dir
from immiscible_policy.config_check import check_config
from immiscible_policy.noising import (
    NoisingCore,
    RectifiedFlow,
    build_scheduler,
    rename_legacy_objective,
    trainer_objective,
)

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_policy_ckpt"


def cfg_of(*overrides: str):
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def legacy(*overrides: str):
    """A config with the objective under its former name only (as policy configs before it was renamed)."""
    return cfg_of("~trainer.objective", *overrides)


def test_core_says_objective_and_keeps_a_deprecated_alias():
    for objective in ("epsilon", "v_prediction", "sample", "flow"):
        sched = build_scheduler(objective, num_train_timesteps=10, beta_schedule="squaredcos_cap_v2")
        core = NoisingCore(sched, create("vanilla"))
        assert core.objective == objective
        with pytest.warns(DeprecationWarning, match="use NoisingCore.objective"):
            assert core.prediction_type == objective
    assert RectifiedFlow.objective == RectifiedFlow.prediction_type == "flow"


def test_legacy_key_is_renamed_once_and_read_the_same():
    cfg = legacy("+trainer.prediction_type=v_prediction")
    assert "objective" not in cfg.trainer and trainer_objective(cfg.trainer) == "v_prediction"
    assert check_config(cfg, "policy")["objective"] == "v_prediction"
    rename_legacy_objective(cfg)
    assert cfg.trainer.objective == "v_prediction" and "prediction_type" not in cfg.trainer
    as_dict = {"trainer": {"prediction_type": "sample", "lr": 1.0}}
    assert rename_legacy_objective(as_dict) == {"trainer": {"lr": 1.0, "objective": "sample"}}
    unchanged = cfg_of("trainer.objective=flow")
    assert rename_legacy_objective(unchanged).trainer.objective == "flow"


def test_contradicting_old_and_new_keys_are_one_line():
    with pytest.raises(
        ValueError, match=r"^trainer.prediction_type=sample \(the former name of trainer.objective\) "
    ):
        check_config(cfg_of("+trainer.prediction_type=sample"), "policy")
    check_config(cfg_of("+trainer.prediction_type=epsilon"), "policy")  # the same value: fine


def test_legacy_checkpoint_loads_with_objective():
    from immiscible_policy.policy import DiffusionPolicy
    from immiscible_policy.policy.load import load_policy

    _, policy, cfg, ck = load_policy(FIXTURE, device="cpu")
    assert "objective" not in ck.config["cfg"]["trainer"]  # the fixture is as written then
    assert cfg.trainer.objective == "epsilon" and "prediction_type" not in cfg.trainer
    assert policy.core.objective == "epsilon" and policy.sampler == "ddpm"
    expected = json.loads((FIXTURE / "expected_actions.json").read_text())
    got = DiffusionPolicy.from_checkpoint(FIXTURE, device="cpu", seed=0).predict_action(
        np.asarray(expected["obs"], dtype=np.float32)
    )
    np.testing.assert_allclose(got, np.asarray(expected["actions"]), rtol=1e-4, atol=1e-3)


def test_policy_config_with_the_old_key_trains_as_with_objective(tmp_path):
    from immiscible_policy.policy.dataset import default_pusht_zarr
    from immiscible_policy.policy.train import train_policy

    zarr = Path(default_pusht_zarr())
    if not zarr.exists():
        pytest.skip(f"PushT demos not found at {zarr} (set IMMISCIBLE_PUSHT_ZARR)")
    tiny = [
        "model=unet1d_sweep",
        "trainer.batch_size=32",
        "trainer.max_steps_per_epoch=2",
        "trainer.warmup_steps=1",
        "trainer.epochs=1",
        "trainer.eval_every_epochs=0",
        "trainer.eval_at_end=false",
        "trainer.progress=false",
        "task.max_train_episodes=5",
        f"task.dataset_path={zarr}",
    ]
    old, new = tmp_path / "old", tmp_path / "new"
    train_policy(legacy(*tiny, "+trainer.prediction_type=v_prediction", f"run_dir={old}"), old)
    train_policy(cfg_of(*tiny, "trainer.objective=v_prediction", f"run_dir={new}"), new)
    recorded = json.loads((old / "checkpoints" / "last" / "config.json").read_text())["cfg"]["trainer"]
    assert recorded["objective"] == "v_prediction" and "prediction_type" not in recorded
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = (load_file(r / "checkpoints" / "last" / name) for r in (old, new))
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    rows = [
        [json.loads(x)["train_loss"] for x in (r / "metrics.jsonl").read_text().splitlines()]
        for r in (old, new)
    ]
    assert rows[0] == rows[1]
    assert OmegaConf.to_container(legacy("+trainer.prediction_type=v_prediction").trainer)["prediction_type"]
