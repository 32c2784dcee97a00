"""The logger setting and the TensorBoard dashboard, through RunLogger with a trainer-shaped record stream.

The wandb dashboard (offline, read back from its ``.wandb`` log) is tested in tests/test_loggers_wandb.py.
"""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from immiscible_policy.cli._hydra import config_dir
from immiscible_policy.config_check import check_config
from immiscible_policy.loggers import check_logger, logger_names, open_dashboards
from immiscible_policy.run_log import RunLogger
from immiscible_policy.video import write_video

pytest.importorskip(
    "tensorboard", reason="the tensorboard extra is not installed: pip install -e '.[tensorboard]'"
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def record(epoch: int, scale: float = 1.0) -> dict:
    """What the policy trainer logs per epoch (StepStats' keys, timing, rollout score)."""
    rec = {"epoch": epoch, "step": 3 * epoch, "lr": 1e-4 * scale / epoch, "train_loss": 0.9 * scale / epoch}
    rec.update(noise_norm_ratio=1.01, noise_proj_x0=0.02 * epoch, pair_l2=20.5 - epoch, assign_ms=0.3)
    rec.update({f"loss_t{j}": scale * (j + 1) / (10 * epoch) for j in range(10)})
    rec.update(condition_leak=0.001 * epoch, train_min=0.1 * epoch, wall_min=0.12 * epoch)
    if epoch % 2 == 0:
        rec.update(mean_score=0.25 * epoch, success_rate=0.5, eval_seconds=4.0)
    return rec


def events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_logger_setting():
    assert logger_names(None) == logger_names("jsonl") == ("jsonl",)
    assert logger_names(["wandb", "tensorboard", "wandb"]) == ("jsonl", "wandb", "tensorboard")
    for bad, shown in (
        ("tensorbord", "'tensorbord'"),
        (["jsonl", 3], "3"),
        ([], "[]"),
        ({"a": 1}, "{'a': 1}"),
    ):
        message = rf"^logger={re.escape(shown)} is not supported; use jsonl, tensorboard, wandb or a list"
        with pytest.raises(ValueError, match=message):
            logger_names(bad)


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_missing_package_is_one_line_at_config_check(monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # as if the extra were not installed
    message = rf"^logger={name} needs the {name} package, which is not installed; install the extra with "
    message += rf"pip install -e '\.\[{name}\]'"
    with pytest.raises(ValueError, match=message):
        check_logger(["jsonl", name])
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"logger=[jsonl,{name}]"])
    with pytest.raises(ValueError, match=message):  # validation, before any data is loaded
        check_config(cfg)


def test_missing_module_at_open_is_the_same_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard.summary.writer.event_file_writer", None)
    with pytest.raises(ValueError, match=r"^logger=tensorboard needs the tensorboard package"):
        open_dashboards(["jsonl", "tensorboard"], tmp_path, config={}, start_step=0, resume=False)


def test_tensorboard_gets_every_scalar_and_the_video_and_forgets_what_resume_drops(tmp_path):
    def open_log(resume: bool, step: int) -> RunLogger:
        log = RunLogger(tmp_path, resume=resume)
        log.truncate_after(step)
        log.dashboards = open_dashboards(
            ["jsonl", "tensorboard"], tmp_path, config={}, start_step=step, resume=resume
        )
        return log

    frames = np.zeros((6, 32, 48, 3), dtype=np.uint8)
    frames[:, :, :16] = 200
    video = write_video(tmp_path / "videos" / "epoch_0002.mp4", frames)
    log = open_log(False, 0)
    for epoch in (1, 2, 3):
        log.log(record(epoch), media={"rollout": video} if epoch == 2 else None)
    log.close()
    # resumed from the checkpoint at step 6 (epoch 2): epoch 3 is logged again, with other values
    log = open_log(True, 6)
    log.log(record(3, scale=2.0))
    log.close()

    acc = events(tmp_path)
    logged = log.records
    assert [r["step"] for r in logged] == [3, 6, 9] and logged[-1] == record(3, scale=2.0)
    tags = set(acc.Tags()["scalars"])
    assert tags == {k for r in logged for k in r if k != "step"}  # the same scalars as the JSONL record
    for key in tags:
        got = [(e.step, e.value) for e in acc.Scalars(key)]
        want = [(r["step"], r[key]) for r in logged if key in r]
        assert [s for s, _ in got] == [s for s, _ in want], key  # step 9 once: the resumed run's
        np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6, err_msg=key)
    (image,) = acc.Images("rollout")  # the mp4 as an animated GIF, at its step
    assert image.step == 6 and (image.width, image.height) == (48, 32)
    assert image.encoded_image_string.startswith(b"GIF89a")
