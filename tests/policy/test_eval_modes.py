"""``immiscible-eval modes=standard|symmetric``: metrics.json gains the rotation modes, and with
``modes=symmetric`` a ``symmetric`` block from the symmetric starts; bad values are one-line errors.

Runs the small legacy fixture checkpoint (tests/fixtures/legacy_policy_ckpt) in-process with 2 sampling
steps and 16 env steps per episode: no demos needed, a few seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from immiscible_policy.cli.eval import main as eval_main

FIXTURE = Path(__file__).parents[1] / "fixtures" / "legacy_policy_ckpt"


def _checkpoint(root: Path, **task) -> Path:
    step = root / "run" / "checkpoints" / "00000010"
    shutil.copytree(FIXTURE, step)
    config = json.loads((step / "config.json").read_text())
    config["cfg"]["task"]["eval"]["max_steps"] = 16
    config["cfg"]["task"].update(task)
    (step / "config.json").write_text(json.dumps(config))
    return step


def _one_line_error(argv: list[str], capsys) -> str:
    assert eval_main(argv) == 2
    err = capsys.readouterr().err.split("\r")[-1].strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_symmetric_modes_write_both_blocks(tmp_path, capsys):
    step = _checkpoint(tmp_path)
    out = tmp_path / "eval"
    argv = [f"checkpoint={step}", "n_episodes=2", "num_inference_steps=2", "device=cpu", f"output_dir={out}"]
    assert eval_main([*argv, "modes=symmetric", "symmetric_rollouts=5", "n_video_episodes=1"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "turns cw/ccw/none" in line and "| symmetric starts: mean_score" in line and "episodes 5" in line
    m = json.loads((out / "metrics.json").read_text())
    # the standard block stays where it was (top level), with the modes added
    assert m["starts"] == "standard" and m["seeds"] == [100000, 100001] and m["n_episodes"] == 2
    assert len(m["rotation"]) == len(m["rotation_mode"]) == len(m["approach_side"]) == 2
    assert sum(m["modes"]["rotation"].values()) == 2 and m["modes"]["threshold_deg"] == 45.0
    sym = m["symmetric"]
    assert (
        sym["starts"] == "symmetric"
        and sym["n_episodes"] == 5
        and sym["seeds"] == list(range(100000, 100005))
    )
    assert sum(sym["modes"]["rotation"].values()) == 5 and len(sym["scores"]) == 5
    assert 0.0 <= sym["mean_score"] <= 1.0 and 0.0 <= sym["success_rate"] <= 1.0
    assert (out / "rollout.mp4").exists() and sym["video_path"] == str(out / "rollout_symmetric.mp4")
    # modes=standard (the default): the same standard block, no symmetric one; the same rollouts, scores equal
    # up to float rounding (filming an episode changes how the policy's inference is batched, and on CPUs with
    # AMX a matmul's last bit depends on the batch: 0.45777193343909106 against ...911 seen)
    out2 = tmp_path / "eval2"
    assert eval_main([*argv[:-1], f"output_dir={out2}", "n_video_episodes=0"]) == 0
    m2 = json.loads((out2 / "metrics.json").read_text())
    assert "symmetric" not in m2 and m2["modes"] == m["modes"]
    assert m2["scores"] == pytest.approx(m["scores"], rel=1e-6, abs=1e-9)


def test_bad_modes_are_one_line_errors(tmp_path, capsys):
    step = _checkpoint(tmp_path)
    err = _one_line_error([f"checkpoint={step}", "modes=mirror"], capsys)
    assert "modes='mirror' is not supported; use standard" in err and "symmetric" in err
    err = _one_line_error([f"checkpoint={step}", "symmetric_rollouts=5"], capsys)
    assert "symmetric_rollouts is read only with modes=symmetric" in err
    err = _one_line_error([f"checkpoint={step}", "modes=symmetric", "symmetric_rollouts=0"], capsys)
    assert "symmetric_rollouts=0: use an integer >= 1" in err


def test_symmetric_modes_need_a_pusht_checkpoint(tmp_path, capsys):
    """A LeRobot run evaluated in robomimic has no T to turn: refused after loading, before any rollout."""
    step = _checkpoint(tmp_path, env="lerobot", eval_env="robomimic", name="lerobot")
    err = _one_line_error([f"checkpoint={step}", "modes=symmetric", "device=cpu"], capsys)
    assert "is a lerobot checkpoint; modes=symmetric needs a PushT policy checkpoint" in err
