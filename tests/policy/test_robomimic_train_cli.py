"""End-to-end on robomimic Lift: immiscible-collect -> immiscible-train -> immiscible-eval (real CLIs)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.robomimic
pytest.importorskip("robosuite")
pytest.importorskip("h5py")

TINY = [
    "task=robomimic_lift",
    "trainer.epochs=1",
    "trainer.batch_size=32",
    "trainer.max_steps_per_epoch=3",
    "trainer.warmup_steps=2",
    "trainer.num_inference_steps=4",
    "trainer.eval_every_epochs=0",
    "trainer.progress=false",
    "task.eval.n_episodes=2",
    "task.eval.max_steps=16",
    "task.val_ratio=0",
]


def cli(mod: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    code = f"import sys; from immiscible_policy.cli.{mod} import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{mod} {args} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    path = tmp_path_factory.mktemp("robomimic") / "lift.hdf5"
    proc = cli("collect", "task=robomimic_lift", "n_episodes=2", f"output={path}", "progress=false")
    assert "Lift expert success rate" in proc.stdout and "(2/" in proc.stdout
    return path


def test_collect_errors_are_one_line(demos, tmp_path):
    again = cli("collect", "task=robomimic_lift", "n_episodes=1", f"output={demos}", check=False)
    assert again.returncode == 2 and "already exists" in again.stderr and again.stderr.count("\n") == 1
    wrong = cli("collect", "task=pusht", "n_episodes=1", f"output={tmp_path / 'x.hdf5'}", check=False)
    assert wrong.returncode == 2 and "robomimic_lift" in wrong.stderr and "Traceback" not in wrong.stderr
    typo = cli("collect", "task=robomimic_lfit", check=False)
    assert typo.returncode == 2 and "unknown task" in typo.stderr


def test_train_then_eval_on_collected_lift(demos, tmp_path):
    run = tmp_path / "run"
    cli("train", *TINY, f"task.dataset_path={demos}", f"run_dir={run}")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["policy"] == {"obs_dim": 19, "action_dim": 7}
    assert json.loads(cfg["cfg"]["task"]["env_args"])["env_name"] == "Lift"  # env rebuilt without the data
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == cfg["steps_per_epoch"] > 0 and 0.0 <= log[-1]["success_rate"] <= 1.0

    from immiscible_policy.policy import DiffusionPolicy

    policy = DiffusionPolicy.from_checkpoint(run, device="cpu")
    act = policy.predict_action(np.zeros((2, 19), dtype=np.float32))
    assert act.shape == (8, 7) and np.isfinite(act).all()

    out = tmp_path / "eval"
    demos.rename(demos.with_suffix(".moved"))  # evaluation needs only the checkpoint
    try:
        proc = cli("eval", f"checkpoint={run}", "n_episodes=2", f"output_dir={out}", "n_video_episodes=0")
    finally:
        demos.with_suffix(".moved").rename(demos)
    assert "success_rate" in proc.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_episodes"] == 2 and m["seeds"] == [100000, 100001] and len(m["success"]) == 2
    assert all(1 <= n <= 16 for n in m["n_steps"]) and m["mean_score"] == m["success_rate"]


@pytest.mark.slow  # 36 s; test_train_then_eval_on_collected_lift keeps robomimic training in the fast set
def test_train_rejects_mismatched_task_and_unknown_obs_key(demos, tmp_path):
    wrong_env = cli(
        "train",
        *TINY,
        f"task.dataset_path={demos}",
        "task.env_name=PickPlaceCan",
        f"run_dir={tmp_path / 'a'}",
        check=False,
    )
    assert wrong_env.returncode == 2 and "recorded in 'Lift'" in wrong_env.stderr
    bad_key = cli(
        "train",
        *TINY,
        f"task.dataset_path={demos}",
        "task.obs_keys=[object,robot0_eef_posx]",
        f"run_dir={tmp_path / 'b'}",
        check=False,
    )
    assert (
        bad_key.returncode == 2 and "robot0_eef_posx" in bad_key.stderr and "Traceback" not in bad_key.stderr
    )
    missing = cli(
        "train",
        *TINY,
        f"task.dataset_path={tmp_path / 'none.hdf5'}",
        f"run_dir={tmp_path / 'c'}",
        check=False,
    )
    assert missing.returncode == 2 and "immiscible-collect" in missing.stderr
