"""The wandb dashboard, offline (``WANDB_MODE=offline``, no network), read back from the run's ``.wandb`` file.

Why a reader of our own: wandb 0.31 writes runs from its Go core and no longer ships the Python
``wandb.sdk.internal.datastore`` reader, and an offline run keeps no ``wandb-summary.json`` /
``wandb-history.jsonl``; the ``.wandb`` file (a LevelDB-style log of ``wandb.proto`` ``Record`` messages, what
``wandb sync`` uploads) is the one place an offline run's history lives. :func:`wandb_records` reads it with
wandb's own protobuf classes, so a change of format fails here rather than passing silently.

The fast test drives :class:`RunLogger` with the records both trainers write (one wandb start-up, a few
seconds); the slow one trains a tiny policy on the LeRobot fixture with ``logger=wandb`` and resumes it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_loggers import record  # what the policy trainer logs per epoch

from immiscible_policy.loggers import WANDB_ID_FILE, open_dashboards
from immiscible_policy.run_log import RunLogger
from immiscible_policy.video import write_video

pytest.importorskip("wandb", reason="the wandb extra is not installed: pip install -e '.[wandb]'")
from wandb.proto import wandb_internal_pb2  # noqa: E402

BLOCK = 32768  # the log's block size: a record header never straddles two blocks
HEADER = struct.Struct("<IHB")  # crc32c, payload length, chunk kind (1 full, 2 first, 3 middle, 4 last)
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lerobot_v30_tiny"


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """wandb with no network and nothing written outside tmp_path (no ~/.config/wandb, no ~/.cache)."""
    for name, sub in (("WANDB_DIR", "dir"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(name, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "immiscible-test")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def wandb_records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """The ``Record`` messages of a ``.wandb`` file, in order."""
    data = path.read_bytes()
    assert data[:7] == b":W&B\xe1\xbe\x00", f"{path} is not a wandb log (version 0)"
    pos, chunks = 7, b""
    while pos + HEADER.size <= len(data):
        if BLOCK - pos % BLOCK < HEADER.size:  # the block's tail is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = HEADER.unpack_from(data, pos)
        payload = data[pos + HEADER.size : pos + HEADER.size + length]
        pos += HEADER.size + length
        if kind == 0:
            continue  # zero padding
        chunks = payload if kind in (1, 2) else chunks + payload
        if kind in (1, 4):
            message = wandb_internal_pb2.Record()
            message.ParseFromString(chunks)
            yield message


def offline_runs(run_dir: Path) -> list[Path]:
    """The offline runs' ``.wandb`` files under ``run_dir/wandb``, oldest first."""
    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def history(path: Path) -> tuple[str, list[dict]]:
    """(the run id, one dict per logged step: ``_step`` and the logged keys, values JSON-decoded)."""
    run_id, rows = None, []
    for rec in wandb_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run_id = rec.run.run_id
        elif kind == "history":
            row: dict = {}
            for item in rec.history.item:  # a media item arrives as one item per field: (name, field)
                *outer, key = list(item.nested_key) or [item.key]
                node = row
                for part in outer:
                    node = node.setdefault(part, {})
                node[key] = json.loads(item.value_json)
            rows.append(row)
    assert run_id, f"{path} has no run record"
    return run_id, rows


def assert_same_scalars(rows: list[dict], logged: list[dict]) -> None:
    """Every number of every JSONL record is in wandb's history at the record's step, with its value."""
    by_step = {row["_step"]: row for row in rows}
    assert sorted(by_step) == [r["step"] for r in logged]
    for rec in logged:
        row = by_step[rec["step"]]
        want = {k: v for k, v in rec.items() if k != "step" and isinstance(v, int | float)}
        assert want, rec
        missing = set(want) - set(row)
        assert not missing, f"step {rec['step']}: {sorted(missing)} not sent to wandb"
        for key, value in want.items():
            assert row[key] == pytest.approx(value, rel=1e-6), (rec["step"], key)


def test_wandb_offline_run_gets_every_scalar_and_the_media(tmp_path):
    """Loss, per-bucket loss, noise statistics, condition leak, rollout score (policy records), FID/KID (an
    image record) and a rollout video and sample grid, each at its record's step, through RunLogger."""
    run_dir = tmp_path / "run"
    frames = np.zeros((6, 32, 48, 3), dtype=np.uint8)
    frames[:, :, :16] = 200
    video = write_video(run_dir / "videos" / "epoch_0002.mp4", frames)
    grid = run_dir / "samples.png"
    from PIL import Image

    Image.fromarray(frames[0]).save(grid)
    log = RunLogger(run_dir)
    log.dashboards = open_dashboards(
        ["jsonl", "wandb"], run_dir, config={"cfg": {"task": {"name": "lerobot"}}}, start_step=0, resume=False
    )
    for epoch in (1, 2, 3):
        rec = record(epoch)
        media = None
        if epoch == 2:
            media = {"rollout": video}
        if epoch == 3:
            rec.update(fid=41.5, kid=0.0125)  # what the image trainer adds at an evaluation
            media = {"samples": grid}
        log.log(rec, media=media)
    log.close()

    (path,) = offline_runs(run_dir)
    run_id, rows = history(path)
    assert (run_dir / WANDB_ID_FILE).read_text().strip() == run_id  # kept for a resumed run
    logged = log.records
    assert {"train_loss", "loss_t9", "noise_norm_ratio", "condition_leak", "mean_score", "fid"} <= {
        k for r in logged for k in r
    }
    assert_same_scalars(rows, logged)
    by_step = {row["_step"]: row for row in rows}
    clip = by_step[6]["rollout"]
    assert clip["_type"] == "video-file" and clip["path"].endswith(".mp4")
    assert (path.parent / "files" / clip["path"]).stat().st_size > 0  # the mp4 is in the run, to sync
    image = by_step[9]["samples"]
    assert image["_type"] == "image-file" and (image["width"], image["height"]) == (48, 32)
    assert "rollout" not in by_step[3] and "samples" not in by_step[6]


@pytest.mark.slow  # two wandb start-ups and two tiny trainings (~20 s on a loaded 2-core CPU)
def test_policy_training_logs_to_wandb_and_a_resumed_run_continues_its_wandb_run(tmp_path):
    """``immiscible-train logger=wandb`` for real (the LeRobot fixture, 2 steps, no rollouts), then
    ``resume=true`` for one more epoch: the same wandb run id, and the resumed run's records sent to it."""
    pytest.importorskip(
        "pyarrow", reason="LeRobotDataset support needs pyarrow (pip install -e '.[lerobot]')"
    )
    from hydra import compose, initialize_config_dir

    from immiscible_policy.cli._hydra import config_dir
    from immiscible_policy.policy.train import train_policy

    run_dir = tmp_path / "run"
    overrides = [
        "task=lerobot",
        f"task.root={FIXTURE}",
        "task.obs_keys=[observation.environment_state,observation.state]",
        "task.horizon=4",
        "task.n_action_steps=2",
        "task.val_ratio=0.34",
        "trainer.device=cpu",
        "trainer.batch_size=4",
        "trainer.max_steps_per_epoch=2",
        "trainer.warmup_steps=1",
        "trainer.eval_every_epochs=0",
        "trainer.num_inference_steps=2",
        "trainer.progress=false",
        "logger=wandb",
        f"run_dir={run_dir}",
    ]
    for extra in (["trainer.epochs=1"], ["trainer.epochs=2", "resume=true"]):
        with initialize_config_dir(config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=[*overrides, *extra])
        train_policy(cfg, run_dir)

    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [2, 4]
    first, resumed = offline_runs(run_dir)
    (id_first, rows_first), (id_resumed, rows_resumed) = history(first), history(resumed)
    assert id_first == id_resumed == (run_dir / WANDB_ID_FILE).read_text().strip()
    assert_same_scalars(rows_first, logged[:1])
    assert_same_scalars(rows_resumed, logged[1:])  # only what the resumed run logged, at its step
    assert {"train_loss", "loss_t0", "noise_norm_ratio", "val_loss"} <= set(rows_resumed[0])
