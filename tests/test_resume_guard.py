"""resume=true refuses what it cannot continue; one trainer per run dir; a checkpoint precedes every
evaluation (a failing one loses no training, and resuming replays it exactly); the run-time estimate."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from immiscible_policy.cli._hydra import config_dir
from immiscible_policy.registry import create_from_config
from immiscible_policy.run_lock import LOCK_NAME, RunLock, RunLockedError
from immiscible_policy.training import RunEstimate, make_optimization, plan_resume, run_record, save_training


def cfg_of(*overrides: str):
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def fake_run(run: Path, *overrides: str) -> Path:
    """A run dir with one checkpoint whose config records ``overrides`` (a tiny stand-in model)."""
    cfg = cfg_of(*overrides)
    model = torch.nn.Linear(2, 2)
    opt = make_optimization(model, cfg.trainer, 10)
    rec = run_record(cfg, create_from_config(cfg.assigner), batch=4, steps_per_epoch=1)
    save_training(run, 1, model=model, opt=opt, config=rec, epoch=1)
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "step": 1}) + "\n")
    return run


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------------------------------------ resume


def test_resume_true_refuses_a_missing_or_empty_run_dir(tmp_path):
    missing = tmp_path / "mistyped"
    with pytest.raises(
        ValueError,
        match=r"^resume=true but run_dir=.*mistyped does not exist; check the path, or use resume=auto",
    ):
        plan_resume(cfg_of("resume=true"), missing)
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        ValueError, match=r"^resume=true but run_dir=.*empty has no checkpoint to resume from; .*resume=auto"
    ):
        plan_resume(cfg_of("resume=true"), empty)
    assert plan_resume(cfg_of("resume=auto"), missing) is False  # auto: start a new run there
    assert plan_resume(cfg_of("resume=auto"), empty) is False


def test_resume_false_refuses_an_existing_run_and_auto_continues_it(tmp_path):
    run = fake_run(tmp_path / "run", "assigner=knn")
    with pytest.raises(
        FileExistsError,
        match=r"^run_dir=.*run already holds a run \(metrics.jsonl, checkpoints\); pass resume=true",
    ):
        plan_resume(cfg_of("assigner=knn"), run)
    assert plan_resume(cfg_of("assigner=knn", "resume=true"), run) is True
    assert plan_resume(cfg_of("assigner=knn", "resume=auto"), run) is True


@pytest.mark.parametrize(
    "change, message",
    [
        (
            ["assigner=vanilla"],
            r"was trained with assigner\.name=knn, the new config has assigner\.name=vanilla",
        ),
        (
            ["assigner.params.k=8"],
            r"was trained with assigner\.params\.k=4, the new config has assigner\.params\.k=8",
        ),
        (
            ["model=unet1d_sweep"],
            r"was trained with model\.name=unet1d_cpu, the new config has model\.name=unet1d_sweep \(\+2 more: model\.down_dims",
        ),
        (
            ["task.obs_type=state"],
            r"was trained with task\.obs_type=keypoints, the new config has task\.obs_type=state",
        ),
        (
            ["trainer.objective=flow"],
            r"trainer\.objective=epsilon, the new config has trainer\.objective=flow",
        ),
    ],
)
def test_resume_refuses_another_assigner_model_or_task_unless_forced(tmp_path, capsys, change, message):
    run = fake_run(tmp_path / "run", "assigner=knn")
    with pytest.raises(
        ValueError, match=rf"^resume: run_dir=.*{message}.*; pass the run's settings, or resume_force=true"
    ):
        plan_resume(cfg_of("assigner=knn", "resume=true", *change), run)
    assert plan_resume(cfg_of("assigner=knn", "resume=true", "resume_force=true", *change), run) is True
    assert "warning: resume_force=true" in capsys.readouterr().out
    # evaluation settings are not part of the run's identity
    assert plan_resume(cfg_of("assigner=knn", "resume=true", "task.eval.n_episodes=3"), run) is True


def test_cli_resume_true_on_a_mistyped_run_dir_exits_2_without_creating_it(tmp_path, monkeypatch, capsys):
    from immiscible_policy.cli.train import main

    missing = tmp_path / "runs" / "pusht-knn-2026"
    monkeypatch.setattr(sys, "argv", ["immiscible-train", "resume=true", f"run_dir={missing}"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.strip()
    assert (
        exit_.value.code == 2
        and err.startswith("error: resume=true but run_dir=")
        and "does not exist" in err
    )
    assert len(err.splitlines()) == 1 and not missing.exists()


# ------------------------------------------------------------------------------------------------ lock


def test_lock_is_atomic_exclusive_and_removed(tmp_path):
    lock = RunLock(tmp_path / "run").acquire()
    info = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
    assert info["pid"] == __import__("os").getpid()
    with pytest.raises(RunLockedError, match="already locked by this process"):
        RunLock(tmp_path / "run").acquire()
    lock.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with RunLock(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_NAME).exists()
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_live_lock_refused_stale_lock_taken_over(tmp_path):
    import os

    run = tmp_path / "run"
    run.mkdir()
    live = os.getppid()  # the process that started pytest: alive for as long as this test runs
    (run / LOCK_NAME).write_text(json.dumps({"pid": live}))
    with pytest.raises(
        RunLockedError, match=rf"^run_dir=.*run is in use by a running trainer \(pid {live}, "
    ):
        RunLock(run).acquire()
    for stale in ({"pid": dead_pid()}, {"pid": live, "start": "not-its-start-time"}, {}):
        (run / LOCK_NAME).write_text(json.dumps(stale))  # dead pid, reused pid, torn write
        with RunLock(run):
            assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert not (run / LOCK_NAME).exists()


def test_trainer_refuses_a_locked_run_dir_before_loading_data(tmp_path, monkeypatch, capsys):
    import os

    from immiscible_policy.cli.train import main
    from immiscible_policy.policy.train import train_policy

    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": os.getppid()}))
    with pytest.raises(RunLockedError, match=r"is in use by a running trainer"):
        train_policy(cfg_of("task.dataset_path=/nonexistent.zarr", f"run_dir={run}"), run)
    monkeypatch.setattr(sys, "argv", ["immiscible-train", "resume=auto", f"run_dir={run}"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.strip()
    assert (
        exit_.value.code == 2
        and err.startswith("error: run_dir=")
        and "is in use by a running trainer" in err
    )
    assert not (run / ".hydra").exists()  # refused before Hydra wrote into the running trainer's dir


# ------------------------------------------------------------------------------------------------ estimate


def test_estimate_is_measured_and_updated_after_the_first_evaluation(monkeypatch):
    clock = iter(float(t) for t in range(0, 1000, 2))  # every perf_counter call: 2 s later
    monkeypatch.setattr("immiscible_policy.training.estimate.time.perf_counter", lambda: next(clock))
    est = RunEstimate(
        steps=30 * 10,
        device=torch.device("cpu"),
        evaluations={"evaluation": 3},
        steps_per_epoch=10,
        epochs=30,
    )
    lines = [est.tick() for _ in range(12)]
    assert lines[:11] == [None] * 11 and est.remaining() is not None
    assert lines[11] == (
        "[immiscible] estimate: 10 steps/epoch x 30 epochs at 2 s/step -> ~10 min training "
        "+ 3 evaluations (time measured after the first) ~= 10 min + evaluations"
    )
    assert est.evaluated("evaluation", 90.0) == (
        "[immiscible] estimate: 10 steps/epoch x 30 epochs at 2 s/step -> ~10 min training "
        "+ 3 evaluations (~2 min each, measured after the first) ~= 14 min"
    )
    assert est.evaluated("evaluation", 90.0) is None  # printed once, after the first
    assert RunEstimate(steps=1, device=torch.device("cpu"), evaluations={}).tick() is None  # too short


def test_estimate_after_the_first_evaluation_uses_every_step_so_far(monkeypatch):
    """A machine busy during the first steps (4 s each) then free (1 s each) is not extrapolated at 4 s."""
    times = [0.0]
    for i in range(200):
        times.append(times[-1] + (4.0 if i < 12 else 1.0))
    clock = iter(times)
    monkeypatch.setattr("immiscible_policy.training.estimate.time.perf_counter", lambda: next(clock))
    est = RunEstimate(steps=300, device=torch.device("cpu"), evaluations={"evaluation": 1})
    lines = [est.tick() for _ in range(100)]
    assert "at 4 s/step" in next(line for line in lines if line)  # the first line: what was measured then
    later = est.evaluated("evaluation", 10.0)
    # steps 3..100 timed (2 warm-up): 12 x 4 s + 86 x 1 s over 98 steps = 1.37 s/step
    assert later is not None and "at 1.37 s/step" in later
    assert est.remaining() == "5 min"  # 200 steps left x 1.37 s (the evaluation is done)


# ------------------------------------------------------------------------------------- checkpoint, then eval


def pusht_or_skip() -> str:
    from immiscible_policy.policy.dataset import default_pusht_zarr

    zarr = Path(default_pusht_zarr())
    if not zarr.exists():
        pytest.skip(f"PushT demos not found at {zarr} (set IMMISCIBLE_PUSHT_ZARR)")
    return str(zarr)


POLICY_TINY = [
    "model=unet1d_sweep",
    "trainer.batch_size=32",
    "trainer.max_steps_per_epoch=2",
    "trainer.warmup_steps=1",
    "trainer.epochs=2",
    "trainer.eval_every_epochs=1",
    "trainer.checkpoint_every_epochs=1",
    "trainer.progress=false",
    "task.max_train_episodes=5",
]


def weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {n: load_file(run / "checkpoints" / "last" / n) for n in ("model.safetensors", "ema.safetensors")}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    for name in wa:
        for k in wa[name]:
            torch.testing.assert_close(wa[name][k], wb[name][k], rtol=0, atol=0, msg=f"{name}:{k}")


def records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_policy_checkpoints_before_evaluating_and_resume_replays_the_failed_evaluation(
    tmp_path, monkeypatch, capsys
):
    from immiscible_policy.policy import train as policy_train

    zarr = pusht_or_skip()
    calls = {"n": 0, "fail": False}

    def fake_rollout(policy, task, seed, **kw):  # a score that is a function of the EMA weights
        calls["n"] += 1
        if calls["fail"]:
            raise RuntimeError("simulated rendering crash")
        score = float(sum(p.double().sum() for p in policy.net.parameters()))
        return {"mean_score": score, "success_rate": 0.0, "seconds": 0.0}

    monkeypatch.setattr(policy_train, "rollout", fake_rollout)
    common = [*POLICY_TINY, f"task.dataset_path={zarr}"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    policy_train.train_policy(cfg_of(*common, f"run_dir={full}"), full)
    out = capsys.readouterr().out
    assert re.search(
        r"\[immiscible\] estimate: 2 steps/epoch x 2 epochs at [0-9.e+-]+ s/step -> ~\d+ s training "
        r"\+ 2 evaluations \(~\d+ s each, measured after the first\) ~= \d+ s",
        out,
    ), out

    calls["fail"] = True
    with pytest.raises(RuntimeError, match="simulated rendering crash"):
        policy_train.train_policy(cfg_of(*common, f"run_dir={cut}"), cut)
    ck = json.loads((cut / "checkpoints" / "last" / "config.json").read_text())
    assert ck["epoch"] == 1 and ck["pending"]["evaluate"] is True  # saved before the evaluation
    assert not (cut / "metrics.jsonl").read_text().strip() and not (cut / LOCK_NAME).exists()

    calls["fail"] = False
    policy_train.train_policy(cfg_of(*common, f"run_dir={cut}", "resume=true"), cut)
    assert "evaluating epoch 1 (its checkpoint was saved, its evaluation was not)" in capsys.readouterr().out
    assert_same_weights(full, cut)
    a, b = records(full), records(cut)
    assert [r["step"] for r in b] == [2, 4]
    assert [r["mean_score"] for r in a] == [r["mean_score"] for r in b]  # the same EMA weights were scored
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]


def test_image_checkpoints_before_its_snapshot_and_resume_replays_it(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    from immiscible_policy.image import train as image_train

    real_save_grid = image_train.save_grid
    fail = {"on": False}

    def flaky_save_grid(images, path):
        if fail["on"]:
            raise OSError("simulated disk full")
        return real_save_grid(images, path)

    monkeypatch.setattr(image_train, "save_grid", flaky_save_grid)
    common = [
        "task=digits",
        "task.image_size=16",
        "task.max_images=128",
        "model=unet2d_tiny",
        "trainer.batch_size=32",
        "trainer.warmup_steps=1",
        "trainer.max_steps=4",
        "trainer.checkpoint_every_steps=2",
        "trainer.sample_every_steps=2",
        "trainer.log_every_steps=1",
        "trainer.num_inference_steps=2",
        "trainer.n_grid=4",
        "trainer.sample_batch_size=4",
        "trainer.progress=false",
        "trainer.fid.enabled=false",
    ]
    full, cut = tmp_path / "full", tmp_path / "cut"
    image_train.train_image(cfg_of(*common, f"run_dir={full}"), full)
    fail["on"] = True
    with pytest.raises(OSError, match="simulated disk full"):
        image_train.train_image(cfg_of(*common, f"run_dir={cut}"), cut)
    ck = json.loads((cut / "checkpoints" / "last" / "config.json").read_text())
    assert ck["step"] == 2 and ck["pending"]["grid"] is True and [r["step"] for r in records(cut)] == [1]
    fail["on"] = False
    image_train.train_image(cfg_of(*common, f"run_dir={cut}", "resume=true"), cut)
    assert_same_weights(full, cut)
    assert [r["step"] for r in records(cut)] == [1, 2, 3, 4]
    assert [r["train_loss"] for r in records(full)] == [r["train_loss"] for r in records(cut)]
    assert (cut / "samples" / "step_00000002.png").is_file()
