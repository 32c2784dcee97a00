"""Fault injection through the commands (called in-process, as a user would call them): each probe of
issue 25 gives one ``error:`` line (exit 2) or the right behaviour, and no user file is ever deleted.

Library-level probes are in tests/test_faults.py.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fault_helpers import READ_ONLY_REASON, CountingExtractor, cfg_of, read_only_folder
from safetensors.torch import save_file

from immiscible_policy.cli import eval as eval_cli
from immiscible_policy.cli import train as train_cli
from immiscible_policy.outputs import MARKER
from immiscible_policy.policy.dataset import default_pusht_zarr
from immiscible_policy.registry import create_from_config
from immiscible_policy.training import make_optimization, run_record, save_training

PUSHT = Path(default_pusht_zarr())
needs_pusht = pytest.mark.skipif(not PUSHT.exists(), reason=f"PushT demos not found at {PUSHT}")


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    yield from read_only_folder(tmp_path, monkeypatch)


def one_error_line(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err.strip()


# --------------------------------------------------------------------------------------------------- convert


@pytest.fixture
def demos(tmp_path) -> Path:
    """A small robomimic hdf5 source inside ``tmp_path/src``."""
    pytest.importorskip("h5py")
    pytest.importorskip("pyarrow")
    from immiscible_policy.data.robomimic_hdf5 import write_robomimic

    rng = np.random.default_rng(0)
    episodes = [
        {
            "obs": {"object": rng.normal(size=(n, 4))},
            "actions": rng.normal(size=(n, 7)),
            "rewards": np.zeros(n),
            "dones": np.eye(n)[-1],
            "states": rng.normal(size=(n, 3)),
        }
        for n in (6, 8, 5)
    ]
    return write_robomimic(tmp_path / "src" / "demo.hdf5", episodes, {"env_name": "Lift"})


def convert(*args) -> int:
    from immiscible_policy.cli.convert import main

    return main([str(a) for a in args] + ["obs_keys=[object]"])


def test_convert_overwrite_never_deletes_a_users_folder(demos, tmp_path, capsys):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "sentinel.txt").write_text("keep me")
    assert convert(demos, dest, "overwrite=true") == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{dest} holds files immiscible-convert did not write (sentinel.txt; no {MARKER})" in line
    assert (dest / "sentinel.txt").read_text() == "keep me" and sorted(os.listdir(dest)) == ["sentinel.txt"]

    # DEST holding SRC (the parent of the source store): refused, the source untouched
    assert convert(demos, demos.parent, "overwrite=true") == 2
    assert "holds SRC" in one_error_line(capsys.readouterr().err) and demos.is_file()


def test_convert_overwrites_its_own_output_and_an_interrupted_one_keeps_it(
    demos, tmp_path, capsys, monkeypatch
):
    dest = tmp_path / "lerobot"
    assert convert(demos, dest, "episodes=2") == 0
    assert (dest / MARKER).is_file()
    info = json.loads((dest / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 2

    import pyarrow.parquet as pq

    real, calls = pq.write_table, []

    def fills_the_disk(table, where, **kw):  # the second parquet file finds the disk full
        calls.append(where)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))
        return real(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", fills_the_disk)
    assert convert(demos, dest, "overwrite=true") == 2
    line = one_error_line(capsys.readouterr().err)
    assert re.match(r"^error: cannot write .*\.parquet: No space left on device; free some space", line), line
    assert json.loads((dest / "meta" / "info.json").read_text()) == info  # the old output, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lerobot", "src"]  # no partial folder left

    monkeypatch.setattr(pq, "write_table", real)
    capsys.readouterr()
    assert convert(demos, dest, "overwrite=true") == 0  # ours: replaced
    assert json.loads((dest / "meta" / "info.json").read_text())["total_episodes"] == 3


def test_convert_into_a_read_only_folder_is_one_line(demos, read_only, capsys):
    assert convert(demos, read_only / "out") == 2
    line = one_error_line(capsys.readouterr().err)
    assert re.match(rf"^error: cannot write {read_only}: {READ_ONLY_REASON}", line), line


# ------------------------------------------------------------------------------------------------------ eval


def nan_policy_checkpoint(run: Path) -> Path:
    """A run whose newest checkpoint's weights hold NaN (as a diverged run of the old code saved)."""
    cfg = cfg_of("model=unet1d_sweep")
    model = torch.nn.Linear(2, 2)
    rec = run_record(cfg, create_from_config(cfg.assigner), batch=4, steps_per_epoch=1)
    step = save_training(
        run, 1, model=model, opt=make_optimization(model, cfg.trainer, 10), config=rec, epoch=1
    )
    save_file(
        {k: torch.full_like(v, float("nan")) for k, v in model.state_dict().items()}, step / "ema.safetensors"
    )
    return step


def test_eval_refuses_nan_weights_before_any_rollout(tmp_path, capsys):
    nan_policy_checkpoint(tmp_path / "run")
    assert eval_cli.main([f"checkpoint={tmp_path / 'run'}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert re.match(
        r"^error: checkpoint .*00000001 holds non-finite numbers \(ema.safetensors: .* holds nan\)", line
    )
    assert not (tmp_path / "run" / "checkpoints" / "00000001" / "eval").exists()


def test_eval_into_a_read_only_folder_is_refused_before_loading(tmp_path, read_only, capsys):
    nan_policy_checkpoint(tmp_path / "run")  # loading it would fail: the output check comes first
    assert eval_cli.main([f"checkpoint={tmp_path / 'run'}", f"output_dir={read_only / 'eval'}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert re.match(rf"^error: cannot write {read_only / 'eval'}: {READ_ONLY_REASON}", line), line


# ----------------------------------------------------------------------------------------------------- train

TINY = [
    "model=unet1d_sweep",
    "trainer.batch_size=32",
    "trainer.max_steps_per_epoch=2",
    "trainer.warmup_steps=1",
    "trainer.eval_every_epochs=0",
    "trainer.eval_at_end=false",
    "trainer.checkpoint_every_epochs=1",
    "trainer.progress=false",
    "task.max_train_episodes=5",
]


def train(monkeypatch, *args: str) -> int:
    """``immiscible-train ARGS`` in this process; its exit status."""
    monkeypatch.setattr(sys, "argv", ["immiscible-train", *args])
    train_cli._PREFLIGHT.clear()
    try:
        train_cli.main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@needs_pusht
def test_a_diverged_run_stops_keeps_the_last_good_checkpoint_and_logs_it(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    args = [*TINY, f"task.dataset_path={PUSHT}", "trainer.epochs=4", "trainer.keep_last=1"]
    assert train(monkeypatch, *args, "trainer.lr=1e30", f"run_dir={run}") == 2
    out, err = capsys.readouterr()
    line = one_error_line(err)
    last_good = run / "checkpoints" / "00000002"
    # step 1 trains at lr 0 (warm-up), step 2 at 1e30 (weights ~1e30, still finite: saved), step 3 overflows
    assert re.fullmatch(
        rf"error: training diverged at step 3: the loss is (nan|inf); the last finite checkpoint, "
        rf"{re.escape(str(last_good))}, is kept \(nothing later was saved\); lower trainer.lr \(now 1e\+30\) "
        r"or set trainer.grad_clip and resume from it \(resume=true\), or start a new run_dir.",
        line,
    ), line
    assert sorted(os.listdir(run / "checkpoints")) == ["00000002", "last"]  # keep_last=1 kept the good one
    from immiscible_policy.checkpoint import load_checkpoint

    assert load_checkpoint(run).step == 2  # and it loads: finite
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2] and np.isfinite(records[0]["train_loss"])
    log = (run / "train.log").read_text()  # the run's log: what it printed, the error included
    assert "epoch 1: loss" in log and line in log and "epoch 1: loss" in out


@needs_pusht
def test_a_full_disk_while_checkpointing_is_one_line(tmp_path, monkeypatch, capsys):
    import immiscible_policy.checkpoint as checkpoint

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint, "_write_bytes", full)
    run = tmp_path / "run"
    args = [*TINY, f"task.dataset_path={PUSHT}", "trainer.epochs=1", "trainer.max_steps_per_epoch=1"]
    assert train(monkeypatch, *args, f"run_dir={run}") == 2
    line = one_error_line(capsys.readouterr().err)
    assert re.match(
        rf"^error: cannot write {run}/checkpoints/\.tmp-00000001-\w+/model\.safetensors: No space left on "
        "device; free some space or write elsewhere$",
        line,
    ), line
    assert not run.exists()  # it saved nothing: no stub either


def test_a_refused_run_leaves_no_stub_and_a_rerun_in_a_stub_says_so(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    missing = [*TINY, f"task.dataset_path={tmp_path / 'missing.zarr'}", f"run_dir={run}"]
    assert train(monkeypatch, *missing) == 2
    assert "missing.zarr: no such path" in one_error_line(capsys.readouterr().err)
    assert not run.exists()  # Hydra had created it; nothing was saved, so it is gone

    (run / ".hydra").mkdir(parents=True)  # a stub left by an older version (or a kill)
    (run / "train.log").write_text("")
    assert train(monkeypatch, *missing) == 2
    out, err = capsys.readouterr()
    assert (
        f"[immiscible] run_dir={run} holds an earlier run that stopped before saving anything (.hydra, train.log)"
        in out
    )
    assert run.is_dir()  # it existed before this run: left as it was


def test_a_read_only_run_dir_is_refused_before_hydra_writes(tmp_path, read_only, monkeypatch, capsys):
    run = read_only / "run"
    assert train(monkeypatch, *TINY, f"run_dir={run}") == 2
    line = one_error_line(capsys.readouterr().err)
    assert re.match(rf"^error: cannot write {run}: {READ_ONLY_REASON}", line), line
    assert not run.exists()


def test_a_task_name_with_a_path_never_writes_outside_runs(tmp_path, monkeypatch, capsys):
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    assert train(monkeypatch, *TINY, "task.name=../../../outside") == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(
        "error: task.name=../../../outside is used in run directory names; use a plain name"
    )
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "c"]


def test_resume_past_the_budget_says_there_is_nothing_to_do(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    cfg = cfg_of(*TINY, f"run_dir={run}")
    model = torch.nn.Linear(2, 2)
    rec = run_record(cfg, create_from_config(cfg.assigner), batch=32, steps_per_epoch=2)
    save_training(run, 56, model=model, opt=make_optimization(model, cfg.trainer, 10), config=rec, epoch=28)
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 28, "step": 56}) + "\n")
    assert train(monkeypatch, *TINY, f"run_dir={run}", "resume=true", "trainer.epochs=12") == 0
    out, err = capsys.readouterr()
    assert out.strip() == (
        f"[immiscible] nothing to do: run_dir={run} is already at epoch 28 and trainer.epochs=12; "
        "raise trainer.epochs to train on."
    )
    assert not err and not (run / ".hydra").exists()  # stopped before Hydra wrote anything


# ------------------------------------------------------------------------------------------------------- fid


def test_fid_cli_cautions_on_few_images_and_names_its_own_size_option(tmp_path, monkeypatch, capsys):
    from PIL import Image

    import immiscible_policy.metrics.fid as fid
    from immiscible_policy.cli.fid import main

    monkeypatch.setattr(fid, "get_extractor", lambda *a, **k: CountingExtractor())
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        np.savez(tmp_path / f"{name}.npz", images=rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8))
    assert main([str(tmp_path / "a.npz"), str(tmp_path / "b.npz")]) == 0
    out, err = capsys.readouterr()
    assert err == (
        "warning: FID from 20 generated and 20 reference images is biased upward and depends on the number "
        "of images (below 300 it is not comparable with other FIDs); compare KID, which is unbiased, or use "
        "more images.\n"
    )
    assert out.startswith("FID ") and "(n=20 vs 20" in out

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("RGB", (8, 8)).save(mixed / "a.png")
    Image.new("RGB", (9, 9)).save(mixed / "b.png")
    assert main([str(mixed), str(tmp_path / "b.npz")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert (
        "have mixed sizes" in line
        and "set --image-size N to resize" in line
        and "task.image_size" not in line
    )


# --------------------------------------------------------------------------------------------------- analyze


def test_analyze_checks_its_output_and_file_names_first(tmp_path, read_only, capsys):
    from immiscible_policy.cli.analyze import main

    assert main(["losses", str(tmp_path), f"out={read_only / 'analysis'}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert re.match(rf"^error: cannot write {read_only / 'analysis'}: {READ_ONLY_REASON}", line), line
    assert main(["losses", str(tmp_path), f"out={tmp_path}", "name=../../elsewhere"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: name=../../elsewhere is used in the file names {tmp_path}/<name>.png")


def test_kill_9_during_an_overwrite_keeps_the_old_output(tmp_path):
    """A real SIGKILL after the first data file of an overwriting write: the old output is intact, and the
    next run removes the killed run's partial folder (it carries the marker)."""
    pytest.importorskip("pyarrow")
    import subprocess

    from immiscible_policy.data.lerobot_writer import write_lerobot

    dest = tmp_path / "lerobot"
    write_lerobot(dest, {"action": np.zeros((4, 2))}, np.array([4]), fps=10, made_by="immiscible-convert")
    before = (dest / "meta" / "info.json").read_text()
    code = (
        "import os, signal, numpy as np\n"
        "import immiscible_policy.data.lerobot_writer as w\n"
        "real = w._write_data_file\n"
        "def killed(*a, **k):\n"
        "    real(*a, **k)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "w._write_data_file = killed\n"
        f"w.write_lerobot({str(dest)!r}, {{'action': np.ones((10, 2))}}, np.array([5, 10]), fps=10,\n"
        "               overwrite=True, made_by='immiscible-convert')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert (dest / "meta" / "info.json").read_text() == before
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".lerobot.partial-")]
    assert len(partial) == 1 and (partial[0] / MARKER).is_file()
    write_lerobot(dest, {"action": np.ones((10, 2))}, np.array([5, 10]), fps=10, overwrite=True, made_by="x")
    assert json.loads((dest / "meta" / "info.json").read_text())["total_episodes"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lerobot"]


# ----------------------------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("command", "argv", "key"),
    [
        ("sample", ["checkpoint=runs/x", "npz=true"], "npz"),
        ("sample", ["checkpoint=runs/x", "output=[a,b]"], "output"),
        ("eval", ["checkpoint=runs/x", "output_dir=false"], "output_dir"),
        ("eval", ["checkpoint=true"], "checkpoint"),
    ],
)
def test_a_path_option_given_a_flag_or_list_is_one_line(command, argv, key, capsys):
    import importlib

    main = importlib.import_module(f"immiscible_policy.cli.{command}").main
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {key}=") and line.endswith("give a file or folder path."), line
