"""Rollout videos: MP4 (default) and GIF written, decoded back, frame count and size checked."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from test_episodes import Score, make, policy  # the toy env and scoring of the rollout-loop tests

from immiscible_policy.cli.eval import parse
from immiscible_policy.policy.episodes import LockstepEnvs, plan_episodes, run_episodes
from immiscible_policy.video import MISSING_FFMPEG, check_format, read_video, write_video


def moving_square(n: int = 12, h: int = 48, w: int = 64) -> np.ndarray:
    """(n, h, w, 3) frames: a red square moving right on grey, so frames differ from each other."""
    frames = np.full((n, h, w, 3), 90, dtype=np.uint8)
    for i in range(n):
        frames[i, 8:24, 2 + 3 * i : 18 + 3 * i] = (230, 30, 30)
    return frames


@pytest.mark.parametrize("fmt", ["mp4", "gif"])
def test_video_round_trip(tmp_path, fmt):
    frames = moving_square(h=47, w=63)  # odd sides: an MP4 pads one row and column, never resizes
    path = write_video(tmp_path / f"v.{fmt}", list(frames), fps=10)
    back = read_video(path)
    size = (48, 64) if fmt == "mp4" else (47, 63)  # yuv420p (plays everywhere) needs even sides
    assert back.shape == (len(frames), *size, 3) and back.dtype == np.uint8  # every frame
    error = np.abs(back[:, :47, :63].astype(int) - frames).mean(axis=(1, 2, 3))
    assert error.max() < (4.0 if fmt == "mp4" else 0.5)  # H.264 is lossy; these two colours survive a GIF
    assert np.abs(back[1:].astype(int) - back[:-1]).mean() > 1  # the square moves: not one frame repeated
    if fmt == "mp4":
        assert (
            back[:, 47:].max() <= 16 and back[:, :, 63:].max() <= 16
        )  # the padding is black (H.264 bleeds a little)


def test_rollout_loop_writes_a_decodable_mp4(tmp_path):
    plan = plan_episodes(3, 0, 2, video_path=tmp_path / "r.mp4", n_video_episodes=2)
    envs = LockstepEnvs([make() for _ in range(plan.n_envs)])
    res = run_episodes(policy([]), envs, plan, Score(3), video_path=tmp_path / "r.mp4", progress=False)
    frames = read_video(res["video_path"])
    # the two filmed episodes of the first wave: each its reset frame + one per env step
    assert len(frames) == res["n_steps"][0] + 1 + res["n_steps"][1] + 1
    assert frames.shape[1:] == (4, 4, 3)  # the toy env renders 4x4


def test_bad_video_formats_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"has suffix 'avi'; use \.mp4 \(the default\) or \.gif"):
        plan_episodes(2, 0, None, video_path=tmp_path / "x.avi", n_video_episodes=1)  # before any episode
    with pytest.raises(ValueError, match="video_format='webm' is not supported; use one of mp4, gif"):
        parse(["checkpoint=x", "video_format=webm"])
    assert parse(["checkpoint=x"])["video_format"] == "mp4"
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if not installed
    with pytest.raises(ValueError, match="^MP4 videos need the imageio-ffmpeg package") as err:
        check_format("mp4", "trainer.eval_video")
    assert str(err.value) == MISSING_FFMPEG and "video_format=gif" in MISSING_FFMPEG
    assert check_format("gif") == "gif"
