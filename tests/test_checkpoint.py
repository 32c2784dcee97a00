"""Checkpoints: round-trip, atomicity under a simulated crash, ``last``, pruning, errors, RNG, weights_only."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup

from immiscible_policy.checkpoint import (
    CheckpointError,
    find_latest,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from immiscible_policy.ema import make_ema


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(4, 6, generator=g)
    return {
        "w": base,
        "w_t": base.t(),  # a non-contiguous view sharing storage with "w"
        "b": torch.arange(5, dtype=torch.int64),
        "h": torch.randn(3, generator=g).to(torch.float16),
    }


def _save(run_dir, step, **overrides):
    kwargs = {
        "model_state": _state(step),
        "ema_state": None,
        "config": {"step": step, "model": {"down_dims": [64, 128]}, "lr": 1e-4},
        "normalizer": None,
        "training_state": {"step": step, "epoch": step // 10},
    }
    kwargs.update(overrides)
    return save_checkpoint(run_dir, step, **kwargs)


def test_round_trip(tmp_path):
    model, ema = _state(1), _state(2)
    config = {"task": "pusht", "assigner": {"name": "knn", "params": {"k": 4}}, "lr": 1e-4, "flag": True}
    normalizer = {"action": {"min": torch.tensor([0.5, -1.25]), "max": np.array([511.0, 3.0])}}
    training_state = {"step": 7, "opt": {"state": {0: {"exp_avg": torch.ones(3)}}}, "name": "x"}
    path = save_checkpoint(
        tmp_path,
        7,
        model_state=model,
        ema_state=ema,
        config=config,
        normalizer=normalizer,
        training_state=training_state,
    )
    assert path == tmp_path / "checkpoints" / "00000007"
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "ema.safetensors",
        "model.safetensors",
        "normalizer.json",
        "training_state.pt",
    ]
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.path == path.resolve() and ckpt.step == 7
    for saved, loaded in ((model, ckpt.model_state), (ema, ckpt.ema_state)):
        assert saved.keys() == loaded.keys()
        for key in saved:
            assert loaded[key].dtype == saved[key].dtype
            assert torch.equal(loaded[key], saved[key])
    assert ckpt.config == config
    assert ckpt.normalizer == {"action": {"min": [0.5, -1.25], "max": [511.0, 3.0]}}
    assert ckpt.training_state["step"] == 7 and ckpt.training_state["name"] == "x"
    assert torch.equal(ckpt.training_state["opt"]["state"][0]["exp_avg"], torch.ones(3))


def test_optional_files_absent(tmp_path):
    ckpt = load_checkpoint(_save(tmp_path, 3))
    assert ckpt.ema_state is None and ckpt.normalizer is None


@pytest.mark.parametrize("form", ["run", "checkpoints", "last", "step"])
def test_every_path_form_resolves(tmp_path, form):
    _save(tmp_path, 10)
    _save(tmp_path, 20)
    path = {
        "run": tmp_path,
        "checkpoints": tmp_path / "checkpoints",
        "last": tmp_path / "checkpoints" / "last",
        "step": tmp_path / "checkpoints" / "00000020",
    }[form]
    assert load_checkpoint(path).training_state["step"] == 20


def test_last_points_at_newest(tmp_path):
    for step in (5, 100, 50):
        _save(tmp_path, step)
        last = tmp_path / "checkpoints" / "last"
        assert last.is_symlink() and os.readlink(last) == f"{step:08d}"
        assert find_latest(tmp_path) == (tmp_path / "checkpoints" / f"{step:08d}").resolve()
    # The newest *written* wins, even with a higher (abandoned) step on disk, e.g. after resuming from 50.
    assert load_checkpoint(tmp_path).step == 50


def test_crash_leftovers_are_ignored_and_cleaned(tmp_path):
    _save(tmp_path, 10)
    _save(tmp_path, 20)
    ckpt_dir = tmp_path / "checkpoints"
    # A writer killed mid-save leaves a temp dir; a foreign half-copied step dir may exist too.
    stale = ckpt_dir / ".tmp-00000030-abcd"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\x00" * 10)
    partial = ckpt_dir / "00000040"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"garbage")
    assert load_checkpoint(tmp_path).step == 20
    # Without `last`, the highest *complete* step dir is chosen and the incomplete one is skipped with a warning.
    (ckpt_dir / "last").unlink()
    with pytest.warns(UserWarning, match="incomplete checkpoint"):
        assert load_checkpoint(tmp_path).step == 20
    # A dangling `last` (e.g. killed while re-saving a step) also falls back.
    os.symlink("00000099", ckpt_dir / "last")
    with pytest.warns(UserWarning):
        assert find_latest(tmp_path).name == "00000020"
    _save(tmp_path, 30)
    assert not stale.exists()
    assert not [p for p in ckpt_dir.iterdir() if p.name.startswith(".tmp")]
    assert load_checkpoint(tmp_path).step == 30


def test_failed_save_leaves_nothing_visible(tmp_path):
    _save(tmp_path, 10)
    with pytest.raises(CheckpointError, match="config is not JSON-serialisable"):
        _save(tmp_path, 20, config={"fn": object()})
    with pytest.raises(CheckpointError, match="training_state cannot be loaded with weights_only=True"):
        _save(tmp_path, 20, training_state={"obj": Path("x")})
    ckpt_dir = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["00000010", "last"]
    assert load_checkpoint(tmp_path).step == 10


def test_resave_same_step_replaces(tmp_path):
    _save(tmp_path, 10)
    _save(tmp_path, 10, training_state={"step": 10, "again": 1})
    assert load_checkpoint(tmp_path).training_state["again"] == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["00000010", "last"]


def test_keep_last_prunes_oldest(tmp_path):
    for step in range(0, 60, 10):
        _save(tmp_path, step, keep_last=3)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["00000030", "00000040", "00000050", "last"]
    _save(tmp_path, 35, keep_last=1)  # the checkpoint just written is always kept
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["00000035", "last"]


def test_error_texts(tmp_path):
    with pytest.raises(CheckpointError, match=r"^checkpoint path does not exist: .*nope$"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")  # a run dir's own config is not a checkpoint
    with pytest.raises(CheckpointError, match=r"^no checkpoint in .*empty: expected checkpoints/<step>/"):
        load_checkpoint(tmp_path / "empty")
    _save(tmp_path / "empty", 2)  # ... and does not hide the checkpoints next to it
    assert load_checkpoint(tmp_path / "empty").step == 2
    step_dir = _save(tmp_path / "run", 5)
    (step_dir / "training_state.pt").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete: missing training_state.pt$"):
        load_checkpoint(step_dir)
    step_dir = _save(tmp_path / "run2", 5)
    (step_dir / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=r"^cannot read model weights .*model.safetensors: "):
        load_checkpoint(step_dir)
    with pytest.raises(CheckpointError, match="step must be a non-negative int"):
        _save(tmp_path, -1)
    with pytest.raises(CheckpointError, match="model_state must map str -> Tensor; key 'a' has list"):
        _save(tmp_path, 1, model_state={"a": [1.0]})
    assert find_latest(tmp_path / "nope") is None


def _draw():
    return (
        torch.rand(5).tolist(),
        torch.randn(3).tolist(),
        np.random.rand(4).tolist(),
        np.random.randn(3).tolist(),  # leaves a cached Gaussian in numpy's state
        [random.random() for _ in range(3)],
        random.gauss(0, 1),  # leaves python's gauss_next set
    )


def test_rng_round_trip_through_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    _draw()
    _save(tmp_path, 1, training_state={"rng": rng_state()})
    expected = _draw()
    _draw()  # move every stream on
    set_rng_state(load_checkpoint(tmp_path).training_state["rng"])
    assert _draw() == expected


def test_generator_state_round_trip(tmp_path):
    gen = torch.Generator().manual_seed(5)
    torch.randn(3, generator=gen)
    _save(tmp_path, 1, training_state={"noise_generator": gen.get_state()})
    expected = torch.randn(4, generator=gen)
    gen.set_state(load_checkpoint(tmp_path).training_state["noise_generator"])
    assert torch.equal(torch.randn(4, generator=gen), expected)


def test_optimizer_scheduler_ema_states_load_weights_only(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.GELU(), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.95, 0.999), weight_decay=1e-6)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=10)
    ema = make_ema(model)
    for _ in range(3):
        model(torch.randn(5, 3)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        ema.step(model.parameters())
    training_state = {
        "optimizer": opt.state_dict(),
        "lr_scheduler": sched.state_dict(),
        "ema": ema.state_dict(),
    }
    _save(tmp_path, 3, training_state=training_state)
    loaded = load_checkpoint(tmp_path).training_state
    # Order matters on resume: build the scheduler *before* loading the optimizer state, because building
    # a LambdaLR writes lr_lambda(0) into the param groups (0.0 during warm-up) and its load_state_dict
    # does not restore the optimizer's lr.
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched2 = get_cosine_schedule_with_warmup(opt2, num_warmup_steps=2, num_training_steps=10)
    opt2.load_state_dict(loaded["optimizer"])
    sched2.load_state_dict(loaded["lr_scheduler"])
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    ema2 = make_ema(model)
    ema2.load_state_dict(loaded["ema"])
    assert ema2.optimization_step == 3
    assert all(torch.equal(a, b) for a, b in zip(ema2.shadow_params, ema.shadow_params))


_WRITER = """
import sys, torch
from immiscible_policy.checkpoint import save_checkpoint
step = 0
while True:
    step += 1
    big = torch.full((256, 1024), float(step))
    save_checkpoint(sys.argv[1], step, model_state={"w": big}, ema_state={"w": big}, config={"step": step},
                    training_state={"step": step, "opt": torch.full((256, 1024), float(step))}, keep_last=2)
    print(step, flush=True)
"""


def test_kill_9_during_saves_leaves_a_consistent_checkpoint(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):  # let a few saves finish, then kill at an arbitrary point of the next ones
            assert proc.stdout.readline(), "writer died"
        time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ckpt = load_checkpoint(tmp_path)
    step = ckpt.training_state["step"]
    assert step >= 3 and ckpt.config["step"] == step == ckpt.step
    assert torch.equal(ckpt.model_state["w"], torch.full((256, 1024), float(step)))
    assert torch.equal(ckpt.training_state["opt"], ckpt.ema_state["w"])
