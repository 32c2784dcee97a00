"""Write low-dimensional episodes as a LeRobotDataset v3.0 folder, file for file what LeRobot writes.

Why our own writer: the upstream package cannot be installed next to this project (reasons in
:mod:`immiscible_policy.data.lerobot_dataset`). This one reproduces what ``LeRobotDataset.create`` /
``add_frame`` / ``save_episode`` / ``finalize`` of ``lerobot-dataset`` 0.4.4 write for numeric features
(same paths, parquet schemas, ``huggingface`` schema metadata, ``info.json`` keys);
``tests/data/test_lerobot_writer.py`` compares it with the upstream output committed in
``tests/fixtures/lerobot_v30_tiny``. Layout::

    meta/info.json                               codebase_version v3.0, fps, totals, features
    meta/stats.json                              per feature min/max/mean/std/count/q01..q99, all frames
    meta/tasks.parquet                           task text (pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet     one row per episode: length, data file, frame range, stats
    data/chunk-000/file-000.parquet              one row per frame: features, timestamp, frame_index,
                                                 episode_index, index, task_index

Differences, by design: quantiles are exact (``np.quantile``) where LeRobot approximates them with
histograms; data files roll over at ~100 MB of raw numbers (LeRobot measures the parquet file).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

from immiscible_policy.data.lerobot_dataset import EXTRA_PATH, INFO_PATH, LeRobotDatasetError, import_pyarrow

__all__ = ["write_lerobot"]

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk directory (LeRobot's default)
DATA_FILE_MB = 100
VIDEO_FILE_MB = 200
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
#: LeRobot's DEFAULT_FEATURES, appended after the user's features
INDEX_FEATURES = {
    "timestamp": "float32",
    "frame_index": "int64",
    "episode_index": "int64",
    "index": "int64",
    "task_index": "int64",
}


def _stats(values: np.ndarray) -> dict[str, list]:
    """LeRobot's per-feature statistics of (n, dim) values; min/max keep ints as ints."""
    as_float = values.astype(np.float64)
    out: dict[str, list] = {
        "min": values.min(axis=0).tolist(),
        "max": values.max(axis=0).tolist(),
        "mean": as_float.mean(axis=0).tolist(),
        "std": as_float.std(axis=0).tolist(),
        "count": [len(values)],
    }
    for q, value in zip(QUANTILES, np.quantile(as_float, QUANTILES, axis=0), strict=True):
        out[f"q{round(q * 100):02d}"] = value.tolist()
    return out


def _hf_feature(dtype: str, dim: int) -> dict:
    """The ``datasets`` feature JSON LeRobot stores in each data file (shape (1,) is a scalar column)."""
    value = {"dtype": dtype, "_type": "Value"}
    return value if dim == 1 else {"feature": value, "length": dim, "_type": "List"}


def _column(pa, values: np.ndarray):
    """(n, dim) -> a scalar column (dim 1) or a fixed_size_list<dim> column, as LeRobot writes them."""
    if values.shape[1] == 1:
        return pa.array(values[:, 0])
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _tasks_table(pa, tasks: list[str]):
    """meta/tasks.parquet as pandas writes a DataFrame indexed by the task text (what LeRobot reads)."""
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "str",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": None,
                "field_name": "__index_level_0__",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    table = pa.table(
        {
            "task_index": pa.array(range(len(tasks)), pa.int64()),
            "__index_level_0__": pa.array(tasks, pa.large_string()),
        }
    )
    return table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})


def write_lerobot(
    root: str | Path,
    arrays: Mapping[str, np.ndarray],
    episode_ends: np.ndarray,
    *,
    fps: float,
    task: str = "",
    robot_type: str | None = None,
    overwrite: bool = False,
    extra: Mapping | None = None,
    made_by: str | None = None,
) -> Path:
    """Write ``arrays`` (key -> (n_frames, dim) numbers, episodes concatenated) as LeRobotDataset v3.0.

    ``episode_ends`` are exclusive end rows (diffusion_policy's convention); every episode gets the one
    ``task`` text (LeRobot requires one per frame). Float features are stored as float32, integer
    features as int64. ``extra`` (JSON), when given, goes to ``meta/immiscible.json``. Returns ``root``.

    The folder is written beside ``root`` and swapped in at the end (:func:`immiscible_policy.outputs.staged_dir`),
    so an interrupted write leaves an existing ``root`` as it was. ``overwrite=True`` replaces only an empty
    folder or one a command marked as its own: ``made_by`` (e.g. ``immiscible-convert``) leaves that marker
    (``.immiscible-output``) in the folder; without it the folder holds exactly LeRobot's files.
    """
    from immiscible_policy.outputs import check_replaceable, staged_dir

    pa, pq = import_pyarrow()
    root = Path(root)
    command = made_by or "write_lerobot"
    check_replaceable(root, overwrite=overwrite, command=command, error=LeRobotDatasetError)
    table = _frames(arrays, episode_ends, fps)
    with staged_dir(root, command, overwrite=overwrite, keep_marker=made_by is not None) as staging:
        _write_files(pa, pq, staging, table, fps=fps, task=task, robot_type=robot_type, extra=extra)
    return root


class _Frames(NamedTuple):
    """The checked per-frame columns (user features + LeRobot's index columns) and episode bounds."""

    data: dict[str, np.ndarray]
    features: dict[str, dict]
    ends: np.ndarray
    starts: np.ndarray
    frame: np.ndarray


def _frames(arrays: Mapping[str, np.ndarray], episode_ends: np.ndarray, fps: float) -> _Frames:
    """Check ``arrays`` / ``episode_ends`` (one-line errors) and add LeRobot's index columns."""
    ends = np.asarray(episode_ends, dtype=np.int64)
    n = int(ends[-1]) if len(ends) else 0
    if len(ends) == 0 or (np.diff(np.concatenate([[0], ends])) <= 0).any():
        raise LeRobotDatasetError(
            f"episode_ends must be increasing and non-empty, got {ends[:5].tolist()}..."
        )
    data: dict[str, np.ndarray] = {}
    features: dict[str, dict] = {}
    for key, value in arrays.items():
        value = np.asarray(value)
        if key in INDEX_FEATURES:
            raise LeRobotDatasetError(f"key {key!r} is one of LeRobot's own columns; rename it")
        if value.ndim != 2 or len(value) != n:
            raise LeRobotDatasetError(f"key {key!r} has shape {value.shape}; expected ({n}, dim)")
        dtype = "int64" if np.issubdtype(value.dtype, np.integer) else "float32"
        data[key] = value.astype(dtype)
        features[key] = {"dtype": dtype, "shape": [value.shape[1]], "names": None}
    starts = np.concatenate([[0], ends[:-1]])
    frame = np.arange(n) - np.repeat(starts, ends - starts)
    data["timestamp"] = (frame / float(fps)).astype(np.float32)[:, None]
    data["frame_index"] = frame[:, None]
    data["episode_index"] = np.repeat(np.arange(len(ends)), ends - starts)[:, None]
    data["index"] = np.arange(n, dtype=np.int64)[:, None]
    data["task_index"] = np.zeros((n, 1), dtype=np.int64)
    for key, dtype in INDEX_FEATURES.items():
        features[key] = {"dtype": dtype, "shape": [1], "names": None}
    return _Frames(data, features, ends, starts, frame)


def _write_files(
    pa,
    pq,
    root: Path,
    table: _Frames,
    *,
    fps: float,
    task: str,
    robot_type: str | None,
    extra: Mapping | None,
) -> None:
    """The dataset's files under ``root`` (the staging folder)."""
    data, features, ends, starts, frame = table
    n = int(ends[-1])
    hf_meta = {"info": {"features": {k: _hf_feature(f["dtype"], f["shape"][0]) for k, f in features.items()}}}

    # data files: whole episodes per file, a new file after ~DATA_FILE_MB of numbers
    bytes_per_frame = sum(v.itemsize * v.shape[1] for v in data.values())
    per_file = max(1, int(DATA_FILE_MB * 2**20 // bytes_per_frame))
    file_of_episode = np.zeros(len(ends), dtype=np.int64)
    first, file_no = 0, 0
    for e in range(len(ends)):
        if ends[e] - starts[first] > per_file and e > first:
            _write_data_file(pa, pq, root, file_no, data, int(starts[first]), int(starts[e]), hf_meta)
            first, file_no = e, file_no + 1
        file_of_episode[e] = file_no
    _write_data_file(pa, pq, root, file_no, data, int(starts[first]), n, hf_meta)

    # meta/episodes: one row per episode (all in one file: a row is small)
    rows: dict[str, list] = {
        "episode_index": list(range(len(ends))),
        "tasks": [[task] for _ in ends],
        "length": (ends - starts).tolist(),
        "data/chunk_index": (file_of_episode // CHUNKS_SIZE).tolist(),
        "data/file_index": (file_of_episode % CHUNKS_SIZE).tolist(),
        "dataset_from_index": starts.tolist(),
        "dataset_to_index": ends.tolist(),
    }
    # statistics of what was recorded: LeRobot takes the timestamps before they are stored as float32
    measured = {**data, "timestamp": (frame / float(fps))[:, None]}
    per_episode = [
        {k: _stats(v[s:t]) for k, v in measured.items()} for s, t in zip(starts, ends, strict=True)
    ]
    for key in data:
        for stat in per_episode[0][key]:
            rows[f"stats/{key}/{stat}"] = [ep[key][stat] for ep in per_episode]
    rows["meta/episodes/chunk_index"] = [0] * len(ends)
    rows["meta/episodes/file_index"] = [0] * len(ends)
    path = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(rows), path, compression="snappy")

    tasks_path = root / "meta" / "tasks.parquet"
    pq.write_table(_tasks_table(pa, [task]), tasks_path, compression="snappy")
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": len(ends),
        "total_frames": n,
        "total_tasks": 1,
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": DATA_FILE_MB,
        "video_files_size_in_mb": VIDEO_FILE_MB,
        "fps": int(fps) if float(fps).is_integer() else float(fps),
        "splits": {"train": f"0:{len(ends)}"},
        "data_path": DATA_PATH,
        "video_path": None,
        "features": features,
    }
    (root / INFO_PATH).write_text(json.dumps(info, indent=4, ensure_ascii=False))
    stats = {k: _stats(v) for k, v in measured.items()}
    (root / "meta" / "stats.json").write_text(json.dumps(stats, indent=4))
    if extra is not None:
        (root / EXTRA_PATH).write_text(json.dumps(dict(extra), indent=2))


def _write_data_file(pa, pq, root: Path, file_no: int, data: dict, lo: int, hi: int, hf_meta: dict) -> None:
    columns = {k: _column(pa, v[lo:hi]) for k, v in data.items()}
    table = pa.table(columns).replace_schema_metadata({"huggingface": json.dumps(hf_meta)})
    path = root / DATA_PATH.format(chunk_index=file_no // CHUNKS_SIZE, file_index=file_no % CHUNKS_SIZE)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="snappy")
