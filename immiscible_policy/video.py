"""Rollout videos: MP4 (the default; H.264 through imageio-ffmpeg's bundled ffmpeg) or GIF (on request).

Why MP4 by default: a 300-step PushT episode is ~0.1 MB as H.264 and several MB as a GIF, and it is
what dashboards (wandb) and browsers play. Why the ``FFMPEG`` plugin named explicitly: imageio picks
PyAV for ``.mp4`` when it happens to be installed, and the two take different options; naming one keeps
the output the same on every machine. The format comes from the path's suffix, checked before a rollout
starts (:func:`check_video_path`), so a typo costs no evaluation time.

A leaf module (numpy + imageio only): the rollout loop, the eval CLI and the dashboards
(:mod:`immiscible_policy.loggers`) all write and read videos here.
"""

from __future__ import annotations

import importlib.util
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

VIDEO_FORMATS = ("mp4", "gif")
DEFAULT_FORMAT = "mp4"
MISSING_FFMPEG = (
    "MP4 videos need the imageio-ffmpeg package (a dependency of immiscible-policy); install it with "
    "pip install imageio-ffmpeg, or ask for GIF videos (video_format=gif)."
)


def video_format(path: str | os.PathLike) -> str:
    """``mp4`` or ``gif`` from the suffix of ``path``; a one-line error for any other suffix."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in VIDEO_FORMATS:
        raise ValueError(
            f"video path {str(path)!r} has suffix {suffix or '(none)'!r}; use .mp4 (the default) or .gif."
        )
    return suffix


def check_format(fmt: str, key: str = "video_format") -> str:
    """``fmt`` checked against :data:`VIDEO_FORMATS` (and, for mp4, imageio-ffmpeg being installed)."""
    if fmt not in VIDEO_FORMATS:
        raise ValueError(f"{key}={fmt!r} is not supported; use one of {', '.join(VIDEO_FORMATS)}.")
    if fmt == "mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        raise ValueError(MISSING_FFMPEG)
    return fmt


def check_video_path(path: str | os.PathLike) -> str:
    """The format of ``path`` (see :func:`video_format`), with its writer checked to be installed."""
    return check_format(video_format(path), key="video format")


def _stacked(frames: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    video = np.stack([np.asarray(f) for f in frames]) if not isinstance(frames, np.ndarray) else frames
    if video.ndim != 4 or video.shape[-1] not in (3, 4) or len(video) == 0:
        raise ValueError(f"video frames must be (T, H, W, 3) rgb (T >= 1), got shape {video.shape}")
    return np.ascontiguousarray(video[..., :3]).astype(np.uint8, copy=False)


def write_video(path: str | os.PathLike, frames: Sequence[np.ndarray] | np.ndarray, fps: int = 10) -> Path:
    """``frames`` ((T, H, W, 3) uint8 rgb) to ``path`` as MP4 or GIF by its suffix; returns the path.

    MP4: H.264 in yuv420p (plays everywhere), which needs an even width and height: an odd one is
    padded by one black row/column (never resized). GIF: ``1000 / fps`` ms per frame, looping.
    """
    import imageio.v3 as iio

    fmt = check_video_path(path)
    video = _stacked(frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "gif":
        iio.imwrite(path, video, extension=".gif", duration=1000 / fps, loop=0)
        return path
    pad_h, pad_w = video.shape[1] % 2, video.shape[2] % 2
    if pad_h or pad_w:
        video = np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    # macro_block_size=1: keep the frame size (imageio's default 16 resizes, with a warning)
    iio.imwrite(path, video, plugin="FFMPEG", fps=fps, codec="libx264", macro_block_size=1)
    return path


def read_video(path: str | os.PathLike) -> np.ndarray:
    """All frames of an MP4 or GIF as (T, H, W, 3) uint8 rgb."""
    import imageio.v3 as iio

    fmt = check_video_path(path)
    if fmt == "gif":
        return np.asarray(iio.imread(path, index=None, mode="RGB"))
    return np.stack(list(iio.imiter(path, plugin="FFMPEG")))


def gif_bytes(frames: np.ndarray, fps: int = 10) -> bytes:
    """``frames`` as an in-memory looping GIF (what TensorBoard shows as an animated image)."""
    import imageio.v3 as iio

    buf = io.BytesIO()
    iio.imwrite(buf, _stacked(frames), extension=".gif", duration=1000 / fps, loop=0)
    return buf.getvalue()
