"""End-to-end: the real CLI trains a few steps on the PushT demos, evaluates, and resumes exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from immiscible_policy.policy.dataset import default_pusht_zarr

ZARR = Path(default_pusht_zarr())
pytestmark = pytest.mark.skipif(
    not ZARR.exists(), reason=f"PushT demos not found at {ZARR} (set IMMISCIBLE_PUSHT_ZARR)"
)

TINY = [
    "trainer.batch_size=64",
    "trainer.max_steps_per_epoch=3",
    "trainer.warmup_steps=2",
    "trainer.num_inference_steps=4",
    "trainer.eval_every_epochs=0",
    "trainer.checkpoint_every_epochs=1",
    "trainer.progress=false",
    "task.eval.n_episodes=2",
    "task.eval.max_steps=24",
    "task.max_train_episodes=20",
]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "IMMISCIBLE_PUSHT_ZARR": str(ZARR)}
    code = "import sys; from immiscible_policy.cli.{} import main; sys.exit(main())"
    mod, rest = args[0], list(args[1:])
    proc = subprocess.run(
        [sys.executable, "-c", code.format(mod), *rest], capture_output=True, text=True, env=env, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{mod} {rest} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.mark.parametrize(
    "assigner",
    ["knn", pytest.param("linear", marks=pytest.mark.slow)],  # linear: a repeat of the same path (29 s)
)
def test_train_writes_checkpoint_and_eval_runs(tmp_path, assigner):
    run = tmp_path / "run"
    proc = cli(
        "train",
        f"assigner={assigner}",
        "trainer.epochs=1",
        f"run_dir={run}",
        "task.eval.symmetric_rollouts=2",
        *TINY,
    )
    last = run / "checkpoints" / "last"
    files = {p.name for p in last.iterdir()}
    assert {
        "model.safetensors",
        "ema.safetensors",
        "config.json",
        "normalizer.json",
        "training_state.pt",
    } <= files
    cfg = json.loads((last / "config.json").read_text())
    assert cfg["assigner"]["name"] == assigner and cfg["world_size"] == 1 and cfg["per_rank_batch"] == 64
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and "mean_score" in log[-1] and "loss_t9" in log[-1]
    assert (run / "metrics.csv").read_text().startswith("epoch,step")
    assert (run / "curves.png").stat().st_size > 1000
    # rotation modes (docs/modes.md): flat numbers for the loggers, standard and symmetric starts, a plot
    rec = log[-1]
    assert rec["modes_cw"] + rec["modes_ccw"] + rec["modes_none"] == 2  # task.eval.n_episodes
    assert rec["sym_modes_cw"] + rec["sym_modes_ccw"] + rec["sym_modes_none"] == 2  # symmetric_rollouts
    assert 0.0 <= rec["sym_mean_score"] <= 1.0 and "sym_success_rate" in rec and "modes_entropy_bits" in rec
    assert "sym_modes_dominant_share" in (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "turns cw/ccw/none" in proc.stdout and "| symmetric score" in proc.stdout
    assert (run / "modes.png").stat().st_size > 1000

    from immiscible_policy.policy import DiffusionPolicy

    policy = DiffusionPolicy.from_checkpoint(run, device="cpu")
    obs = np.zeros((policy.n_obs_steps, 20), dtype=np.float32) + 256.0
    act = policy.predict_action(obs)
    assert act.shape == (8, 2) and np.isfinite(act).all() and np.abs(act).max() < 1000  # env units
    assert policy.predict_action(np.stack([obs, obs])).shape == (2, 8, 2)

    out = tmp_path / "eval"
    cli("eval", f"checkpoint={run}", "n_episodes=2", f"output_dir={out}", "n_video_episodes=1")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_episodes"] == 2 and len(metrics["scores"]) == 2
    assert 0.0 <= metrics["mean_score"] <= 1.0 and metrics["assigner"]["name"] == assigner
    assert metrics["seeds"] == [100000, 100001]
    assert (out / "rollout.mp4").stat().st_size > 1000  # MP4 by default (video_format=gif on request)


@pytest.mark.slow  # 42 s (3 CLI trainings); resume is checked bit-exact in-process by tests/test_resume_guard.py
def test_resume_equals_uninterrupted(tmp_path):
    common = ["assigner=knn", "trainer.epochs=2", "trainer.eval_at_end=false", *TINY]
    cli("train", f"run_dir={tmp_path / 'full'}", *common)
    cli("train", f"run_dir={tmp_path / 'cut'}", "trainer.max_epochs_this_run=1", *common)
    assert json.loads((tmp_path / "cut" / "checkpoints" / "last" / "config.json").read_text())["epoch"] == 1
    cli("train", f"run_dir={tmp_path / 'cut'}", "resume=true", *common)
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(tmp_path / "full" / "checkpoints" / "last" / name)
        b = load_file(tmp_path / "cut" / "checkpoints" / "last" / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"{name}:{k}")
    steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 6]


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    # One real interpreter: an error raised deep in the trainer (data loading) reaches the shell as one
    # line with exit code 2. The other refusals run in-process (same entry points, no start-up cost).
    p = cli("train", "task.dataset_path=/nonexistent.zarr", f"run_dir={tmp_path / 'r2'}", *TINY, check=False)
    assert p.returncode == 2 and "/nonexistent.zarr" in p.stderr and "Traceback" not in p.stderr
    assert p.stderr.strip().startswith("error:") and len(p.stderr.strip().splitlines()) == 1
    from immiscible_policy.cli.eval import main as eval_main
    from immiscible_policy.cli.train import preflight

    assert eval_main(["checkpoint=/nonexistent/run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "/nonexistent/run" in err and len(err.splitlines()) == 1
    assert eval_main(["checkpont=x"]) == 2
    assert "unknown option(s) checkpont" in capsys.readouterr().err
    with pytest.raises(ValueError, match="Unknown assigner 'knnn'. Did you mean 'knn'?"):
        preflight(["assigner.name=knnn", f"run_dir={tmp_path / 'r'}", *TINY])


@pytest.mark.slow  # 142 s on a 2-core AVX2 CPU; tests/test_analyze_runs.py covers the same commands fast
def test_analyze_commands_on_tiny_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    cli("train", "assigner=linear", "trainer.epochs=1", "trainer.eval_at_end=false", f"run_dir={run}", *TINY)
    out = tmp_path / "an"
    cli(
        "analyze",
        "bijectivity",
        f"checkpoint={run},{run}",
        "labels=a,b",
        "n=4",
        "conditions=2",
        "steps=5",
        "refine=2",
        f"out={out}",
    )
    payload = json.loads((out / "bijectivity_pusht.json").read_text())
    assert (
        payload["kind"] == "policy"
        and set(payload["runs"]) == {"a", "b"}
        and payload["fixed_point_iters"] == 2
    )
    res = payload["runs"]["a"]
    assert res["relative_noise_reconstruction_error"] > 0 and res["relative_resample_error"] >= 0
    assert 1 <= res["distinct_nearest_train_chunks_per_condition"] <= 4
    assert res == payload["runs"]["b"]  # fixed noises: the same checkpoint gives the same numbers
    assert (out / "bijectivity_pusht.png").stat().st_size > 1000
    # in-process from here on: the same entry point without another interpreter start-up
    from immiscible_policy.cli.analyze import main as analyze

    assert analyze(["bijectivity", f"checkpoint={run},{run}", f"out={out}"]) == 2
    assert "labels=a,b" in capsys.readouterr().err
    assert (
        analyze(
            [
                "modes",
                f"checkpoint={run}",
                "n_states=2",
                "n_rollouts=3",
                "max_steps=16",
                "num_inference_steps=4",
                f"out={out}",
            ]
        )
        == 0
    )
    modes = json.loads((out / "modes_pusht.json").read_text())
    starts = modes["runs"]["linear"]["starts"]
    assert modes["seeds"] == [100000, 100001] and [s["seed"] for s in starts] == modes["seeds"]
    for s in starts:
        assert len(s["sides"]) == 3 and sum(s["counts"].values()) == 3
        assert all(step <= 16 for step in s["contact_step"])
    assert (out / "modes_pusht.png").stat().st_size > 1000

    assert analyze(["losses", str(run), str(run), "labels=x,y", "name=bl", f"out={out}"]) == 0
    assert (out / "bl.png").stat().st_size > 1000
    assert set(json.loads((out / "bl.json").read_text())) == {"x", "y"}
    cli("analyze", "mixing", "batch=16", "repeats=1", "assigners=vanilla,linear", f"out={out}")
    mix = json.loads((out / "mixing_pusht.json").read_text())
    assert set(mix["curves"]) == {"vanilla", "linear"} and mix["curves"]["vanilla"][0]["mixing"] < 0.05
    p = cli("analyze", "mixing", "data=mnist", check=False)
    assert p.returncode == 2 and "data='mnist' is not supported" in p.stderr
