"""LeRobotDataset reading and writing against LeRobot's own output (tests/fixtures/lerobot_v30_tiny).

The fixture was written by ``LeRobotDataset.create / add_frame / save_episode / finalize`` of the upstream
``lerobot-dataset`` 0.4.4 (tests/fixtures/make_lerobot_v30_tiny.py), from values that are a closed formula
of the frame number, so the reader is checked against upstream bytes and the writer against upstream
files: same paths, parquet schemas, info.json, episode rows and statistics.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip(
    "pyarrow", reason="LeRobotDataset support needs pyarrow (pip install -e '.[lerobot]')"
)
import pyarrow.parquet as pq  # noqa: E402

from immiscible_policy.data.lerobot_dataset import LeRobotDatasetError, read_lerobot  # noqa: E402
from immiscible_policy.data.lerobot_writer import write_lerobot  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
UPSTREAM = FIXTURES / "lerobot_v30_tiny"
sys.path.insert(0, str(FIXTURES))
from make_lerobot_v30_tiny import FPS, LENGTHS, TASK, tiny_arrays  # noqa: E402

KEYS = list(tiny_arrays())
PARQUETS = (
    "data/chunk-000/file-000.parquet",
    "meta/episodes/chunk-000/file-000.parquet",
    "meta/tasks.parquet",
)


def ours(tmp_path: Path) -> Path:
    return write_lerobot(
        tmp_path / "ours", tiny_arrays(), np.cumsum(LENGTHS), fps=FPS, task=TASK, robot_type="pusht"
    )


def copy_fixture(tmp_path: Path) -> Path:
    return Path(shutil.copytree(UPSTREAM, tmp_path / "ds"))


def edit_info(root: Path, edit) -> None:
    path = root / "meta" / "info.json"
    info = json.loads(path.read_text())
    edit(info)
    path.write_text(json.dumps(info))


def test_reads_what_upstream_wrote():
    frames = read_lerobot(UPSTREAM, KEYS)
    assert frames.version == "v3.0" and frames.fps == FPS
    assert frames.episode_ends.tolist() == np.cumsum(LENGTHS).tolist()
    assert frames.episode_ids.tolist() == [0, 1, 2]
    for key, value in tiny_arrays().items():
        np.testing.assert_array_equal(frames.arrays[key], value)


def test_writer_writes_what_upstream_writes(tmp_path):
    root = ours(tmp_path)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == sorted(
        p.relative_to(UPSTREAM).as_posix() for p in UPSTREAM.rglob("*") if p.is_file()
    )
    assert json.loads((root / "meta/info.json").read_text()) == json.loads(
        (UPSTREAM / "meta/info.json").read_text()
    )
    for name in PARQUETS:
        mine, theirs = pq.read_table(root / name), pq.read_table(UPSTREAM / name)
        assert mine.schema.remove_metadata() == theirs.schema.remove_metadata(), name
        if name.startswith("data/"):  # what `datasets` reads the features from (minus its fingerprint)
            meta = [json.loads(t.schema.metadata[b"huggingface"])["info"] for t in (mine, theirs)]
            assert meta[0] == meta[1]
        exact = [
            c
            for c in theirs.column_names
            if not c.startswith("stats/") or c.split("/")[-1] in ("min", "max", "count")
        ]
        assert mine.select(exact).to_pylist() == theirs.select(exact).to_pylist(), name
        for c in theirs.column_names:  # means/stds: float rounding; quantiles: LeRobot approximates them
            if c.endswith(("/mean", "/std")):
                np.testing.assert_allclose(mine[c].to_pylist(), theirs[c].to_pylist(), rtol=1e-6, atol=1e-6)
    stats, up = (json.loads((r / "meta/stats.json").read_text()) for r in (root, UPSTREAM))
    assert set(stats) == set(up) and all(set(stats[k]) == set(up[k]) for k in up)
    for key in up:
        for stat in ("min", "max", "count"):
            assert stats[key][stat] == up[key][stat], (key, stat)
        np.testing.assert_allclose(stats[key]["mean"], up[key]["mean"], rtol=1e-6)
    frames = read_lerobot(root, KEYS)
    for key, value in tiny_arrays().items():
        np.testing.assert_array_equal(frames.arrays[key], value)


def test_reads_v21_one_file_per_episode(tmp_path):
    """v2.x: data/chunk-000/episode_NNNNNN.parquet, one per episode, written in scrambled order."""
    root = tmp_path / "v21"
    (root / "meta").mkdir(parents=True)
    (root / "data" / "chunk-000").mkdir(parents=True)
    edit = json.loads((UPSTREAM / "meta/info.json").read_text())
    edit.update(
        codebase_version="v2.1",
        data_path="data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
    )
    (root / "meta/info.json").write_text(json.dumps(edit))
    table = pq.read_table(UPSTREAM / PARQUETS[0])
    for e in (2, 0, 1):
        part = table.filter(pa.compute.equal(table["episode_index"], e))
        pq.write_table(part, root / f"data/chunk-000/episode_{e:06d}.parquet")
    frames = read_lerobot(root, KEYS)
    assert frames.version == "v2.1" and frames.episode_ends.tolist() == np.cumsum(LENGTHS).tolist()
    for key, value in tiny_arrays().items():
        np.testing.assert_array_equal(frames.arrays[key], value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda i: i.update(codebase_version="v1.6"),
            "codebase_version 'v1.6' is not supported; supported: v2.0, v2.1, v3.0",
        ),
        (
            lambda i: i["features"]["action"].update(shape=[3]),
            "key 'action' in .* has 2 numbers per frame, meta/info.json says 3",
        ),
        (
            lambda i: i["features"]["action"].update(dtype="video"),
            "key 'action' of .* is a video feature; only numeric",
        ),
        (
            lambda i: i.update(total_frames=17),
            "has 16 frames in data/ but meta/info.json says total_frames=17",
        ),
    ],
)
def test_bad_info_is_one_line(tmp_path, edit, message):
    root = copy_fixture(tmp_path)
    edit_info(root, edit)
    with pytest.raises(LeRobotDatasetError, match=message) as err:
        read_lerobot(root, KEYS)
    assert "\n" not in str(err.value)


def test_missing_key_names_it_and_the_alternatives():
    with pytest.raises(
        LeRobotDatasetError,
        match=r"key 'observation\.images\.top' is not a feature of .*numeric features: observation\.environment_state, observation\.state, action$",
    ):
        read_lerobot(UPSTREAM, ["observation.images.top", "action"])


def test_not_a_dataset_and_missing_column(tmp_path):
    with pytest.raises(LeRobotDatasetError, match="does not exist"):
        read_lerobot(tmp_path / "nope", KEYS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LeRobotDatasetError, match="has no meta/info.json: not a LeRobotDataset folder"):
        read_lerobot(tmp_path / "empty", KEYS)
    root = copy_fixture(tmp_path)
    path = root / PARQUETS[0]
    pq.write_table(pq.read_table(path).drop_columns(["action"]), path)
    with pytest.raises(LeRobotDatasetError, match="key 'action' is missing from .*file-000.parquet"):
        read_lerobot(root, KEYS)


def test_gappy_episode_is_refused(tmp_path):
    root = copy_fixture(tmp_path)
    path = root / PARQUETS[0]
    table = pq.read_table(path)
    frame = np.asarray(table["frame_index"]).copy()
    frame[3] = 7
    pq.write_table(
        table.set_column(table.schema.get_field_index("frame_index"), "frame_index", pa.array(frame)), path
    )
    with pytest.raises(LeRobotDatasetError, match="episode_index 0 has frame_index 7 where 3 was expected"):
        read_lerobot(root, KEYS)


def test_writer_refuses_an_existing_folder(tmp_path):
    ours(tmp_path)
    with pytest.raises(LeRobotDatasetError, match="already exists; pick a new folder or pass overwrite=true"):
        ours(tmp_path)
