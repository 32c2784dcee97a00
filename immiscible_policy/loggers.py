"""Dashboards next to the run log: TensorBoard event files and Weights & Biases runs, both opt-in.

``logger`` (top level of the train config) names them: ``jsonl`` (the default: only ``metrics.jsonl`` /
``metrics.csv``), ``tensorboard``, ``wandb``, or a list (``logger=[tensorboard,wandb]``). The JSONL log is
always written and stays the record (it is what resume reads and truncates, what ``immiscible-analyze``
reads); a dashboard gets a copy of each record :class:`~immiscible_policy.run_log.RunLogger` writes, so
both trainers carry the same scalars (loss, ``loss_t*`` buckets, noise statistics, condition leak, lr,
rollout score, FID/KID, ...) with no dashboard code of their own, plus the media a record comes with (a
rollout video, a sample grid).

Why opt-in: diffusion_policy calls wandb unconditionally, which users dislike (a login prompt in a
smoke test). The packages are extras (``pip install -e '.[tensorboard]'`` / ``'.[wandb]'``); a missing one
is a one-line error when the config is checked, before any data is loaded (:func:`check_logger`).

wandb is configured the way wandb is everywhere: ``WANDB_PROJECT`` (default ``immiscible-policy``),
``WANDB_ENTITY``, ``WANDB_MODE=offline`` (no network; ``wandb sync run_dir/wandb/offline-run-*`` later).
A leaf module: imports neither trainer nor torch; the dashboard packages only when a run opens one.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

LOGGERS = ("jsonl", "tensorboard", "wandb")
DEFAULT_LOGGER = "jsonl"
TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_run_id"  # in run_dir: the wandb run a resumed run continues
WANDB_DEFAULT_PROJECT = "immiscible-policy"
_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb"}  # backend -> the module (and extra) it needs


def missing_package(name: str) -> str:
    """The one-line error for a dashboard whose package is not installed."""
    package = _PACKAGE[name]
    return (
        f"logger={name} needs the {package} package, which is not installed; install the extra with "
        f"pip install -e '.[{name}]' (or pip install {package}), or drop {name} from logger."
    )


def logger_names(value: Any) -> tuple[str, ...]:
    """The ``logger`` setting (a name or a list of names; null = jsonl) as backend names, ``jsonl``
    first (always there: it is the record) and each once; a one-line error for anything else."""
    given = value
    if value is None:
        value = [DEFAULT_LOGGER]
    elif isinstance(value, str):
        value = [value]
    elif hasattr(value, "__iter__") and not isinstance(value, Mapping):
        value = list(value)
    else:
        value = []
    unknown = [v for v in value if not isinstance(v, str) or v not in LOGGERS]
    if not value or unknown:
        bad = unknown[0] if unknown else given
        raise ValueError(
            f"logger={bad!r} is not supported; use {', '.join(LOGGERS)} or a list, "
            "e.g. logger=tensorboard or logger=[tensorboard,wandb] (jsonl is always written)."
        )
    names = [DEFAULT_LOGGER] + [v for v in value if v != DEFAULT_LOGGER]
    return tuple(dict.fromkeys(names))


def check_logger(value: Any) -> tuple[str, ...]:
    """:func:`logger_names` plus: every dashboard's package is installed (found, not imported: cheap)."""
    names = logger_names(value)
    for name in names[1:]:
        if importlib.util.find_spec(_PACKAGE[name]) is None:
            raise ValueError(missing_package(name))
    return names


def _import(name: str, module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ValueError(f"{missing_package(name)} ({err})") from err


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The record's finite numbers (not ``step``, the x-axis; not booleans, lists or strings)."""
    out = {}
    for key, value in record.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[str(key)] = float(value)
    return out


class Dashboard(Protocol):
    """One backend: ``write`` gets a record's step, its scalars and its media (name -> file: ``.mp4`` /
    ``.gif`` video, ``.png`` image); ``close(failed)`` ends the run."""

    def write(self, step: int, values: Mapping[str, float], media: Mapping[str, Path]) -> None: ...

    def close(self, failed: bool = False) -> None: ...


class TensorBoard:
    """Event files in ``run_dir/tensorboard`` (``tensorboard --logdir run_dir``), written with
    TensorBoard's own event writer (no torch wrapper, no TensorFlow).

    Resuming from step ``s`` writes a session-start event at ``s + 1``: TensorBoard then hides what the
    interrupted run logged after its checkpoint, as the JSONL log drops it. Videos become animated GIF
    images (what TensorBoard plays), PNGs images.
    """

    def __init__(self, run_dir: Path, *, start_step: int = 0) -> None:
        writer = _import("tensorboard", "tensorboard.summary.writer.event_file_writer")
        self._pb = _import("tensorboard", "tensorboard.compat.proto.event_pb2")
        self._summary = _import("tensorboard", "tensorboard.compat.proto.summary_pb2")
        self.logdir = Path(run_dir) / TENSORBOARD_DIR
        self._writer = writer.EventFileWriter(str(self.logdir))
        session = self._pb.SessionLog(status=self._pb.SessionLog.START)
        self._writer.add_event(
            self._pb.Event(wall_time=time.time(), step=start_step + 1, session_log=session)
        )

    def _image(self, tag: str, path: Path) -> Any:
        from immiscible_policy.video import gif_bytes, read_video

        if path.suffix.lower() == ".png":
            data, frames = path.read_bytes(), None
        elif path.suffix.lower() == ".gif":
            data, frames = path.read_bytes(), read_video(path)[:1]
        else:  # an mp4: TensorBoard shows videos as animated GIFs
            frames = read_video(path)
            data = gif_bytes(frames)
        if frames is None:
            from PIL import Image

            with Image.open(path) as im:
                width, height = im.size
        else:
            height, width = frames.shape[1:3]
        image = self._summary.Summary.Image(
            height=int(height), width=int(width), colorspace=3, encoded_image_string=data
        )
        return self._summary.Summary.Value(tag=tag, image=image)

    def write(self, step: int, values: Mapping[str, float], media: Mapping[str, Path]) -> None:
        summary = self._summary.Summary(
            value=[self._summary.Summary.Value(tag=k, simple_value=v) for k, v in values.items()]
            + [self._image(name, Path(p)) for name, p in media.items()]
        )
        self._writer.add_event(self._pb.Event(wall_time=time.time(), step=int(step), summary=summary))
        self._writer.flush()  # one record per epoch / log interval: cheap, and a crash loses nothing

    def close(self, failed: bool = False) -> None:
        self._writer.close()


class Wandb:
    """A wandb run in ``run_dir/wandb`` named after the run dir, its config the run's ``config.json``
    record; a resumed run continues the same wandb run (its id kept in ``run_dir/wandb_run_id``).

    wandb refuses steps below the last one it has: after resuming from a checkpoint, records the
    interrupted run had already sent past that checkpoint are not replaced there (the JSONL log is).
    """

    def __init__(
        self, run_dir: Path, *, config: Mapping[str, Any], start_step: int = 0, resume: bool = False
    ) -> None:
        wandb = _import("wandb", "wandb")
        self._wandb = wandb
        run_dir = Path(run_dir)
        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if resume and start_step and id_file.exists() else None
        cfg = dict(config.get("cfg") or {})
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or WANDB_DEFAULT_PROJECT,
            name=run_dir.name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config={**cfg, "run": {k: v for k, v in config.items() if k != "cfg"}},
            tags=[
                str(t) for t in (cfg.get("task", {}).get("name"), cfg.get("assigner", {}).get("name")) if t
            ],
        )
        id_file.write_text(self.run.id + "\n")  # run_id None: wandb made one

    def write(self, step: int, values: Mapping[str, float], media: Mapping[str, Path]) -> None:
        row: dict[str, Any] = dict(values)
        for name, path in media.items():
            path = Path(path)
            if path.suffix.lower() == ".png":
                row[name] = self._wandb.Image(str(path))
            else:
                row[name] = self._wandb.Video(str(path), format=path.suffix.lower().lstrip("."))
        self.run.log(row, step=int(step))

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class Dashboards:
    """The fan-out: every record and its media to each open dashboard (none for ``logger=jsonl``)."""

    def __init__(self, backends: Sequence[Dashboard] = ()) -> None:
        self.backends = list(backends)

    def write(self, record: Mapping[str, Any], media: Mapping[str, str | os.PathLike] | None = None) -> None:
        if not self.backends:
            return
        step = record.get("step")
        if not isinstance(step, int | float) or isinstance(step, bool):
            return  # a record without a step has no place on a dashboard's x-axis
        values = scalars(record)
        files = {name: Path(p) for name, p in (media or {}).items() if p is not None}
        for backend in self.backends:
            backend.write(int(step), values, files)

    def close(self, failed: bool = False) -> None:
        backends, self.backends = self.backends, []
        for backend in backends:
            backend.close(failed)


def open_dashboards(
    names: Sequence[str],
    run_dir: str | os.PathLike,
    *,
    config: Mapping[str, Any],
    start_step: int,
    resume: bool,
) -> Dashboards:
    """The dashboards of ``names`` (from :func:`logger_names`; ``jsonl`` is RunLogger's own) for a run
    continuing after ``start_step`` (0 for a new run)."""
    run_dir = Path(run_dir)
    backends: list[Dashboard] = []
    try:
        for name in names:
            if name == "tensorboard":
                backends.append(TensorBoard(run_dir, start_step=start_step))
            elif name == "wandb":
                backends.append(Wandb(run_dir, config=config, start_step=start_step, resume=resume))
    except BaseException:
        Dashboards(backends).close(failed=True)
        raise
    return Dashboards(backends)
