"""DDP: ``torchrun`` with 2 gloo processes of the image CLI equals one process playing both ranks.

Same rule and negative control as tests/policy/test_train_ddp.py, for the step-based image trainer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from image_helpers import compose_cfg, last_ckpt
from safetensors.torch import load_file

from immiscible_policy.image.train import train_image


def weights(run):
    return {n: load_file(last_ckpt(run) / n) for n in ("model.safetensors", "ema.safetensors")}


def max_diff(a, b) -> float:
    return max((a[n][k] - b[n][k]).abs().max().item() for n in a for k in a[n])


@pytest.mark.slow  # 24 s; the policy trainer's two-process test stays in the fast set (same parallel.py rules)
def test_two_process_vanilla_equals_single_process_on_the_same_global_batch(tmp_path, small_task):
    common = [
        *small_task,
        "assigner=vanilla",
        "trainer.device=cpu",
        "trainer.max_steps=3",
        "trainer.log_every_steps=1",
        "trainer.sample_every_steps=0",
        "trainer.checkpoint_every_steps=0",
    ]
    per_rank = [*common, "trainer.batch_size=16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    ddp = tmp_path / "ddp"
    proc = subprocess.run(
        [*launch, "-m", "immiscible_policy.cli.train", *per_rank, f"run_dir={ddp}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "effective 32" in proc.stdout
    cfg = json.loads((last_ckpt(ddp) / "config.json").read_text())
    assert (cfg["world_size"], cfg["per_rank_batch"], cfg["global_batch"]) == (2, 16, 32)
    log = [json.loads(x) for x in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]  # written once, by the main process

    emulated, control = tmp_path / "emulated", tmp_path / "one_stream"
    train_image(compose_cfg([*per_rank, "trainer.emulate_ranks=2", f"run_dir={emulated}"]), emulated)
    train_image(compose_cfg([*common, "trainer.batch_size=32", f"run_dir={control}"]), control)
    a, b, c = weights(ddp), weights(emulated), weights(control)
    same, other = max_diff(a, b), max_diff(a, c)
    assert same < 1e-5, f"DDP vs emulated ranks differ by {same}"
    assert other > 100 * max(same, 1e-7), f"negative control too close ({other}): test cannot fail"
    emu_log = [json.loads(x) for x in (emulated / "metrics.jsonl").read_text().splitlines()]
    for r, e in zip(log, emu_log):
        assert abs(r["train_loss"] - e["train_loss"]) < 1e-5 * e["train_loss"]
    assert torch.isfinite(torch.tensor([r["train_loss"] for r in log])).all()
