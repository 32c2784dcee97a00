"""``task=lerobot`` trains end to end: on LeRobot's own tiny output (``eval_env=none``: validation loss, no
rollout) and on PushT episodes converted by ``immiscible-convert`` (``eval_env=pusht``: PushT rollouts)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

pytest.importorskip("pyarrow", reason="LeRobotDataset support needs pyarrow (pip install -e '.[lerobot]')")

from immiscible_policy.cli._hydra import config_dir  # noqa: E402
from immiscible_policy.policy.dataset import default_pusht_zarr  # noqa: E402

UPSTREAM = Path(__file__).resolve().parents[1] / "fixtures" / "lerobot_v30_tiny"
ZARR = Path(default_pusht_zarr())
needs_pusht = pytest.mark.skipif(
    not ZARR.exists(), reason=f"PushT demos not found at {ZARR} (set IMMISCIBLE_PUSHT_ZARR)"
)
TINY = [
    "task=lerobot",
    "trainer.device=cpu",
    "trainer.batch_size=4",
    "trainer.max_steps_per_epoch=2",
    "trainer.warmup_steps=1",
    "trainer.epochs=1",
    "trainer.eval_every_epochs=0",
    "trainer.num_inference_steps=2",
    "trainer.progress=false",
]


def train(run: Path, overrides: list[str]) -> list[dict]:
    from immiscible_policy.policy.train import train_policy

    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, *overrides, f"run_dir={run}"])
    train_policy(cfg, run)
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_eval_env_none_trains_and_logs_validation_loss(tmp_path):
    log = train(
        tmp_path / "run",
        [
            f"task.root={UPSTREAM}",
            "task.obs_keys=[observation.environment_state,observation.state]",
            "task.horizon=4",
            "task.n_action_steps=2",
            "task.val_ratio=0.34",
        ],
    )
    last = log[-1]
    assert last["step"] == 2 and math.isfinite(last["val_loss"]) and last["val_loss"] > 0
    assert last["val_windows"] > 0 and "mean_score" not in last
    cfg = json.loads((tmp_path / "run" / "checkpoints" / "last" / "config.json").read_text())
    assert cfg["cfg"]["task"]["root"] == str(UPSTREAM) and cfg["cfg"]["task"]["eval_env"] == "none"


def test_bad_lerobot_settings_are_one_line(tmp_path):
    for overrides, message in [
        ([], "task.root is not set: pass task.root=PATH"),
        (
            [f"task.root={UPSTREAM}", "task.eval_env=gym"],
            "task.eval_env='gym' is not supported; use one of pusht | robomimic | none",
        ),
        ([f"task.root={UPSTREAM}", "task.val_ratio=0"], "task.eval_env=none reports the validation loss"),
        ([f"task.root={UPSTREAM}", "task.action_key=actions"], "key 'actions' is not a feature of"),
        (
            [f"task.root={UPSTREAM}", "task.eval_env=pusht"],
            r"task.eval_env=pusht with task.obs_type=keypoints needs 20 observation and 2 action numbers per frame, "
            r"but task.obs_keys=\['observation.state'\] give 2",
        ),
    ]:
        with pytest.raises(ValueError, match=message) as err:
            train(tmp_path / f"run{len(list(tmp_path.iterdir()))}", overrides)
        assert "\n" not in str(err.value)


@needs_pusht
# fast on purpose (~13 s): training from a LeRobotDataset and scoring it by PushT rollouts is this family's main path
def test_converted_pusht_trains_and_rolls_out_in_pusht(tmp_path):
    from immiscible_policy.cli.convert import main

    root = tmp_path / "pusht_lerobot"
    assert main([str(ZARR), str(root), "episodes=6"]) == 0
    log = train(
        tmp_path / "run",
        [
            f"task.root={root}",
            "task.obs_keys=[observation.environment_state,observation.state]",
            "task.eval_env=pusht",
            "task.eval.n_episodes=1",
            "task.eval.max_steps=16",
            "task.val_ratio=0.2",
        ],
    )
    last = log[-1]
    assert last["step"] == 2 and 0 <= last["mean_score"] <= 1 and "val_loss" not in last


@needs_pusht
@pytest.mark.slow  # the real CLI in a fresh interpreter (~30 s here): the same path as the in-process test
def test_cli_trains_from_a_converted_folder(tmp_path):
    root, run = tmp_path / "pusht_lerobot", tmp_path / "run"
    code = "import sys; from immiscible_policy.cli.{} import main; sys.exit(main())"
    subprocess.run(
        [sys.executable, "-c", code.format("convert"), str(ZARR), str(root), "episodes=6"], check=True
    )
    args = [*TINY, f"task.root={root}", "task.obs_keys=[observation.environment_state,observation.state]"]
    proc = subprocess.run(
        [sys.executable, "-c", code.format("train"), *args, f"run_dir={run}"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val_loss" in proc.stdout and "val_loss" in (run / "metrics.jsonl").read_text()
