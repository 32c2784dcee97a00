"""``trainer.pair_ahead``: the next batch is paired on a thread while this one trains, bit-identical to the
synchronous path (same noise streams, same permutations, same weights), across a resume too, in both
trainers."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from immiscible_policy.cli._hydra import config_dir
from immiscible_policy.pair_ahead import PairAhead


def cfg_of(*overrides: str):
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def same_weights(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "ema.safetensors"):
        wa, wb = load_file(a / "checkpoints" / "last" / name), load_file(b / "checkpoints" / "last" / name)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), f"{name}:{k}"


def losses(run: Path) -> list[float]:
    return [json.loads(x)["train_loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_items_come_from_the_thread_in_order_and_errors_surface():
    made, threads = [], []

    def make(k):
        def f():
            made.append(k)
            threads.append(threading.current_thread().name)
            if k == 3:
                raise RuntimeError("boom at 3")
            return k * 10

        return f

    ahead = PairAhead(True)
    assert ahead.get(0, make(0), 1, make(1)) == 0  # made now, 1 started on the thread
    assert ahead.get(1, make(99), 2, make(2)) == 10  # from the thread: make(99) never runs
    assert ahead.get(2, make(98), 3, make(3)) == 20
    with pytest.raises(RuntimeError, match="boom at 3"):
        ahead.get(3, make(97))
    ahead.close()
    assert made == [0, 1, 2, 3] and threads[0] == "MainThread" and threads[1].startswith("pair-ahead")
    off = PairAhead(False)
    assert off.get(0, make(5), 1, make(6)) == 50 and made[-1] == 5  # disabled: nothing ahead
    off.close()


POLICY = [
    "model=unet1d_sweep",
    "trainer.batch_size=32",
    "trainer.max_steps_per_epoch=3",
    "trainer.warmup_steps=1",
    "trainer.epochs=2",
    "trainer.eval_every_epochs=0",
    "trainer.eval_at_end=false",
    "trainer.checkpoint_every_epochs=1",
    "trainer.progress=false",
    "task.max_train_episodes=5",
    "assigner=linear",
    "assigner.fraction=0.5",  # the subset draw is part of what runs ahead
]


def test_policy_pair_ahead_is_bit_identical_and_resumes_exactly(tmp_path):
    from immiscible_policy.policy.train import train_policy

    sync, ahead, cut = tmp_path / "sync", tmp_path / "ahead", tmp_path / "cut"
    train_policy(cfg_of(*POLICY, f"run_dir={sync}"), sync)
    train_policy(cfg_of(*POLICY, "trainer.pair_ahead=true", f"run_dir={ahead}"), ahead)
    same_weights(sync, ahead)
    assert losses(sync) == losses(ahead)
    train_policy(cfg_of(*POLICY, "trainer.max_epochs_this_run=1", f"run_dir={cut}"), cut)
    train_policy(cfg_of(*POLICY, "trainer.pair_ahead=true", "resume=true", f"run_dir={cut}"), cut)
    same_weights(sync, cut)
    assert losses(sync) == losses(cut)


def test_image_pair_ahead_is_bit_identical(tmp_path):
    pytest.importorskip("sklearn")
    from immiscible_policy.image.train import train_image

    common = [
        "task=digits",
        "task.image_size=16",
        "task.max_images=128",
        "model=unet2d_tiny",
        "assigner=linear",
        "trainer.batch_size=32",
        "trainer.warmup_steps=1",
        "trainer.max_steps=6",
        "trainer.checkpoint_every_steps=6",
        "trainer.sample_every_steps=0",
        "trainer.log_every_steps=1",
        "trainer.num_inference_steps=2",
        "trainer.n_grid=4",
        "trainer.sample_batch_size=4",
        "trainer.progress=false",
        "trainer.fid.enabled=false",
    ]
    sync, ahead = tmp_path / "sync", tmp_path / "ahead"
    train_image(cfg_of(*common, f"run_dir={sync}"), sync)
    train_image(cfg_of(*common, "trainer.pair_ahead=true", f"run_dir={ahead}"), ahead)
    same_weights(sync, ahead)
    assert losses(sync) == losses(ahead) and len(losses(sync)) == 6


def test_pair_ahead_must_be_a_bool():
    from immiscible_policy.config_check import check_config

    with pytest.raises(ValueError, match=r"^trainer\.pair_ahead=maybe is not true/false") as err:
        check_config(cfg_of("trainer.pair_ahead=maybe"))
    assert "\n" not in str(err.value)
