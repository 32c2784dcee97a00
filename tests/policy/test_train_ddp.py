"""DDP: ``torchrun`` with 2 gloo processes of the real CLI equals one process playing both ranks.

The rule under test (immiscible_policy.parallel): rank r trains on slice r of every global batch with
noise stream (seed, r, step); ``trainer.emulate_ranks=2`` makes one process do exactly that, so the
parameters agree up to float reduction order. A plain one-process run with the same global batch but
one noise stream is the negative control: it must differ, or the equality would prove nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from immiscible_policy.cli._hydra import config_dir
from immiscible_policy.policy.dataset import default_pusht_zarr

ZARR = Path(default_pusht_zarr())
pytestmark = pytest.mark.skipif(
    not ZARR.exists(), reason=f"PushT demos not found at {ZARR} (set IMMISCIBLE_PUSHT_ZARR)"
)

TINY = [
    "trainer.device=cpu",
    "trainer.max_steps_per_epoch=3",
    "trainer.warmup_steps=1",
    "trainer.epochs=1",
    "trainer.eval_every_epochs=0",
    "trainer.eval_at_end=false",
    "trainer.progress=false",
    "task.max_train_episodes=20",
    f"task.dataset_path={ZARR}",
]


def train_in_process(run: Path, overrides: list[str]) -> None:
    from immiscible_policy.policy.train import train_policy

    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"run_dir={run}"])
    train_policy(cfg, run)


def weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {n: load_file(run / "checkpoints" / "last" / n) for n in ("model.safetensors", "ema.safetensors")}


def max_diff(a, b) -> float:
    return max((a[n][k] - b[n][k]).abs().max().item() for n in a for k in a[n])


def test_two_process_vanilla_equals_single_process_on_the_same_global_batch(tmp_path):
    common = ["assigner=vanilla", "trainer.batch_size=32", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "IMMISCIBLE_PUSHT_ZARR": str(ZARR)}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    # ${now:...} with microseconds: every rank would resolve its own name; the main one's must win
    run_glob = "ddp-${now:%H%M%S%f}"
    proc = subprocess.run(
        [*launch, "-m", "immiscible_policy.cli.train", *common, f"run_dir={tmp_path / run_glob}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    runs = sorted(tmp_path.glob("ddp-*"))
    assert len(runs) == 1, f"one run directory for all ranks, got {runs}"
    ddp = runs[0]
    assert (ddp / ".hydra").is_dir() and "effective 64" in proc.stdout
    cfg = json.loads((ddp / "checkpoints" / "last" / "config.json").read_text())
    assert (cfg["world_size"], cfg["per_rank_batch"], cfg["global_batch"]) == (2, 32, 64)
    assert cfg["assigner_scope"] == "sample" and cfg["assigner_distributed"] is None
    log = [json.loads(x) for x in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3]  # logged once, by the main process

    train_in_process(tmp_path / "emulated", [*common, "trainer.emulate_ranks=2"])
    train_in_process(tmp_path / "one_stream", ["assigner=vanilla", "trainer.batch_size=64", *TINY])
    a, b, c = weights(ddp), weights(tmp_path / "emulated"), weights(tmp_path / "one_stream")
    same, control = max_diff(a, b), max_diff(a, c)
    assert same < 1e-5, f"DDP vs emulated ranks differ by {same}"
    assert control > 100 * max(same, 1e-7), f"negative control too close ({control}): test cannot fail"
    emu = json.loads((tmp_path / "emulated" / "config.json").read_text())
    assert (emu["world_size"], emu["emulated_ranks"], emu["global_batch"]) == (1, 2, 64)
    assert log[0]["train_loss"] == pytest.approx(
        json.loads((tmp_path / "emulated" / "metrics.jsonl").read_text())["train_loss"], rel=1e-5
    )
