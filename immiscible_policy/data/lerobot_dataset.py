"""Read the low-dimensional frames of a local LeRobotDataset folder (format v3.0; v2.0/v2.1 too).

Why pyarrow and our own few lines instead of the upstream ``lerobot-dataset`` package (0.4.4, the
standalone copy of LeRobot's dataset code): it cannot live in this environment.

- it pins ``huggingface-hub<0.36`` while diffusers 0.42 (our dependency) needs ``huggingface-hub>=1.32``;
- its ``opencv-python-headless>=4.12`` needs ``numpy>=2``, the ``robomimic`` extra pins ``numpy<2``;
- it imports ``torchvision`` at module level without declaring it, and a torchvision wheel brings its own
  torch build.

The format itself is plain parquet + JSON (``meta/info.json`` is the contract), so reading it needs only
pyarrow (the ``lerobot`` extra). What is read::

    meta/info.json                      codebase_version, fps, total_frames, features {key: dtype, shape}
    data/chunk-XXX/file-YYY.parquet     v3.0: many episodes per file, one row per frame
    data/chunk-XXX/episode_NNNNNN.parquet   v2.x: one file per episode
      <feature key> columns, episode_index, frame_index, index (global frame number)

Frames are ordered by ``index``; an episode is a run of equal ``episode_index`` whose ``frame_index`` counts
0, 1, 2, ...; anything else (an interleaved or gappy episode, a key missing from a file, a per-frame size
that disagrees with ``info.json``) is refused. Every failure is one :class:`LeRobotDatasetError` line naming
the folder, key or version and what would be right. Images and videos are not read (low-dim only).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SUPPORTED_VERSIONS",
    "LeRobotDatasetError",
    "LeRobotFrames",
    "import_pyarrow",
    "read_lerobot",
    "read_meta_extra",
]

#: codebase_version values whose data parquet layout this reader understands
SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
#: per-frame bookkeeping columns every LeRobotDataset has (never observations or actions)
INDEX_COLUMNS = ("episode_index", "frame_index", "index")
NON_NUMERIC = ("image", "video", "string")
INFO_PATH = "meta/info.json"
#: what ``immiscible-convert`` records beside LeRobot's own files (LeRobot ignores it): source, env_args
EXTRA_PATH = "meta/immiscible.json"


class LeRobotDatasetError(ValueError):
    """Bad or unreadable LeRobotDataset folder (one-line, actionable message)."""


def import_pyarrow():
    """``(pyarrow, pyarrow.parquet)``, or a one-line error naming the extra that installs it."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise LeRobotDatasetError(
            "LeRobotDataset support needs pyarrow: pip install -e '.[lerobot]' (or pip install pyarrow)"
        ) from None
    return pa, pq


@dataclass
class LeRobotFrames:
    """The chosen features of every frame, in ``index`` order, and where each episode ends."""

    root: str
    version: str
    fps: float
    info: dict[str, Any]
    #: key -> (n_frames, prod(shape)) float32
    arrays: dict[str, np.ndarray]
    #: (n_episodes,) exclusive end row of each episode (diffusion_policy's ``episode_ends``)
    episode_ends: np.ndarray
    #: (n_episodes,) the dataset's own ``episode_index`` of each episode, in order
    episode_ids: np.ndarray


def load_info(root: str | Path) -> dict[str, Any]:
    """``meta/info.json`` of ``root``, its version checked."""
    root = Path(root)
    if not root.is_dir():
        raise LeRobotDatasetError(f"LeRobotDataset folder {root} does not exist")
    path = root / INFO_PATH
    if not path.is_file():
        raise LeRobotDatasetError(f"{root} has no {INFO_PATH}: not a LeRobotDataset folder")
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LeRobotDatasetError(f"{path} is not readable JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(info, dict) or not isinstance(info.get("features"), dict):
        raise LeRobotDatasetError(f"{path} has no 'features' mapping")
    version = info.get("codebase_version")
    if version not in SUPPORTED_VERSIONS:
        raise LeRobotDatasetError(
            f"{path}: codebase_version {version!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_VERSIONS)} (convert older datasets with LeRobot's converters)"
        )
    return info


def read_meta_extra(root: str | Path) -> dict[str, Any]:
    """``meta/immiscible.json`` of ``root`` ({} when absent: a dataset LeRobot or anyone else wrote)."""
    path = Path(root) / EXTRA_PATH
    if not path.is_file():
        return {}
    try:
        extra = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LeRobotDatasetError(f"{path} is not readable JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(extra, dict):
        raise LeRobotDatasetError(f"{path} must hold a JSON object")
    return extra


def feature_dim(info: dict[str, Any], key: str, root: str | Path) -> int:
    """Numbers per frame of ``key`` (product of its shape); refuses unknown and non-numeric keys."""
    features = info["features"]
    if key not in features:
        numeric = [k for k, f in features.items() if f.get("dtype") not in NON_NUMERIC]
        raise LeRobotDatasetError(
            f"key {key!r} is not a feature of {root} (meta/info.json); numeric features: "
            f"{', '.join(k for k in numeric if k not in INDEX_COLUMNS + ('timestamp', 'task_index'))}"
        )
    ft = features[key]
    if ft.get("dtype") in NON_NUMERIC:
        raise LeRobotDatasetError(
            f"key {key!r} of {root} is a {ft.get('dtype')} feature; only numeric low-dim features are supported"
        )
    shape = ft.get("shape")
    if not isinstance(shape, list | tuple) or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise LeRobotDatasetError(f"key {key!r} of {root} has shape {shape!r} in meta/info.json")
    return int(np.prod(shape))


def data_files(root: str | Path) -> list[Path]:
    """Every data parquet file, in path order (chunk, then file / episode number)."""
    files = sorted(Path(root).glob("data/*/*.parquet"))
    if not files:
        raise LeRobotDatasetError(f"{root} has no data/chunk-*/*.parquet files")
    return files


def _column_numbers(column: Any, key: str, dim: int, where: Path) -> np.ndarray:
    """A parquet column (scalars, fixed-size or nested lists) -> (n_rows, dim) float32."""
    pa, _ = import_pyarrow()
    arr = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    n = len(arr)
    if arr.null_count:
        raise LeRobotDatasetError(f"key {key!r} has {arr.null_count} missing values in {where}")
    while (
        pa.types.is_list(arr.type)
        or pa.types.is_large_list(arr.type)
        or pa.types.is_fixed_size_list(arr.type)
    ):
        arr = arr.flatten()
    if not (pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type) or pa.types.is_boolean(arr.type)):
        raise LeRobotDatasetError(f"key {key!r} in {where} holds {arr.type}, not numbers")
    values = arr.to_numpy(zero_copy_only=False)
    if len(values) != n * dim:
        raise LeRobotDatasetError(
            f"key {key!r} in {where} has {len(values) / max(n, 1):g} numbers per frame, "
            f"meta/info.json says {dim} (its shape)"
        )
    return values.astype(np.float32, copy=False).reshape(n, dim)


def read_lerobot(root: str | Path, keys: Sequence[str]) -> LeRobotFrames:
    """Frames of ``keys`` from the LeRobotDataset at ``root`` (checked; see the module docstring)."""
    _, pq = import_pyarrow()
    root = Path(root)
    info = load_info(root)
    keys = list(dict.fromkeys(keys))
    if not keys:
        raise LeRobotDatasetError("no feature keys to read (e.g. observation.state, action)")
    dims = {k: feature_dim(info, k, root) for k in keys}
    parts: dict[str, list[np.ndarray]] = {k: [] for k in [*keys, *INDEX_COLUMNS]}
    for path in data_files(root):
        try:
            schema = pq.read_schema(path)
            missing = [c for c in parts if c not in schema.names]
            if missing:
                raise LeRobotDatasetError(
                    f"key {missing[0]!r} is missing from {path} (columns: {schema.names})"
                )
            table = pq.read_table(path, columns=list(parts))
        except LeRobotDatasetError:
            raise
        except Exception as exc:  # pyarrow's own errors: one line, never a traceback
            raise LeRobotDatasetError(
                f"{path} is not a readable parquet file ({type(exc).__name__}: {exc})"
            ) from None
        for k in keys:
            parts[k].append(_column_numbers(table.column(k), k, dims[k], path))
        for k in INDEX_COLUMNS:
            parts[k].append(table.column(k).to_numpy().astype(np.int64))
    index, ep, frame = (np.concatenate(parts[k]) for k in ("index", "episode_index", "frame_index"))
    order = np.argsort(index, kind="stable")
    index, ep, frame = index[order], ep[order], frame[order]
    arrays = {k: np.concatenate(parts[k])[order] for k in keys}
    n = len(index)
    total = info.get("total_frames")
    if isinstance(total, int) and total != n:
        raise LeRobotDatasetError(
            f"{root} has {n} frames in data/ but meta/info.json says total_frames={total}"
        )
    if n == 0:
        raise LeRobotDatasetError(f"{root} has no frames")
    starts = np.concatenate([[0], np.nonzero(np.diff(ep))[0] + 1])
    ends = np.concatenate([starts[1:], [n]])
    ids = ep[starts]
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][0]
        raise LeRobotDatasetError(
            f"{root}: the frames of episode_index {int(dup)} are not contiguous in index order"
        )
    expected = np.arange(n) - np.repeat(starts, ends - starts)
    if not np.array_equal(frame, expected):
        bad = int(np.nonzero(frame != expected)[0][0])
        raise LeRobotDatasetError(
            f"{root}: episode_index {int(ep[bad])} has frame_index {int(frame[bad])} where "
            f"{int(expected[bad])} was expected (frames missing or out of order)"
        )
    return LeRobotFrames(
        root=str(root),
        version=str(info["codebase_version"]),
        fps=float(info.get("fps") or 0),
        info=info,
        arrays=arrays,
        episode_ends=ends.astype(np.int64),
        episode_ids=ids.astype(np.int64),
    )
