"""RunLogger (JSONL + CSV in step, truncate on resume) and plot_curves."""

import csv
import json

import numpy as np
import pytest
import torch

from immiscible_policy.run_log import RunLogger, plot_curves, read_jsonl


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _check_consistent(logger):
    records = [json.loads(line) for line in logger.jsonl_path.read_text().splitlines()]
    rows = _csv_rows(logger.csv_path)
    assert rows[0] == logger.columns
    assert len(rows) - 1 == len(records)
    for row, record in zip(rows[1:], records):
        assert row == ["" if k not in record else str(record[k]) for k in logger.columns]
    return records


def test_log_converts_and_keeps_csv_in_sync(tmp_path):
    logger = RunLogger(tmp_path)
    out = logger.log({"epoch": 0, "step": 10, "train_loss": torch.tensor(0.5)})
    assert out == {"epoch": 0, "step": 10, "train_loss": 0.5} and isinstance(out["train_loss"], float)
    logger.log({"epoch": 1, "step": 20, "train_loss": np.float32(0.25)})
    _check_consistent(logger)
    # A new key rewrites the CSV with the union of columns in first-seen order.
    logger.log({"epoch": 1, "step": 20, "mean_score": 0.8, "success_rate": torch.tensor(0.5)})
    logger.log({"epoch": 2, "step": 30, "train_loss": 0.125})
    records = _check_consistent(logger)
    assert logger.columns == ["epoch", "step", "train_loss", "mean_score", "success_rate"]
    assert records[2] == {"epoch": 1, "step": 20, "mean_score": 0.8, "success_rate": 0.5}
    assert _csv_rows(logger.csv_path)[1] == ["0", "10", "0.5", "", ""]


def test_non_json_value_writes_nothing(tmp_path):
    logger = RunLogger(tmp_path)
    logger.log({"step": 1})
    with pytest.raises(TypeError):
        logger.log({"step": 2, "bad": object()})
    assert len(_check_consistent(logger)) == 1


def test_new_run_refuses_existing_log(tmp_path):
    RunLogger(tmp_path).log({"step": 1})
    with pytest.raises(FileExistsError, match="pass resume=True"):
        RunLogger(tmp_path)


def test_resume_truncates_after_checkpoint_step(tmp_path):
    logger = RunLogger(tmp_path)
    for step in range(0, 60, 10):
        logger.log({"step": step, "train_loss": 1.0 / (step + 1)})
    logger.log({"note": "no step"})
    logger.log({"step": 50, "extra_key": 3})
    # A writer killed mid-line leaves a torn last line.
    with open(logger.jsonl_path, "a") as f:
        f.write('{"step": 60, "train_lo')

    resumed = RunLogger(tmp_path, resume=True)
    assert len(resumed.records) == 8
    assert resumed.truncate_after(30) == 3
    records = _check_consistent(resumed)
    assert [r.get("step") for r in records] == [0, 10, 20, 30, None]
    assert "extra_key" not in resumed.columns
    resumed.log({"step": 40, "train_loss": 0.1})
    records = _check_consistent(resumed)
    assert records[-1] == {"step": 40, "train_loss": 0.1}
    assert read_jsonl(resumed.jsonl_path) == records


def test_plot_curves_writes_png(tmp_path):
    logger = RunLogger(tmp_path)
    for epoch in range(5):
        logger.log({"epoch": epoch, "train_loss": 1.0 / (epoch + 1)})
        if epoch % 2 == 0:
            logger.log({"epoch": epoch, "mean_score": 0.2 * epoch, "success_rate": 0.1 * epoch})
    png = plot_curves(logger.jsonl_path, tmp_path / "plots" / "curves.png", title="run")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Missing keys are skipped and an empty panel still renders.
    png2 = plot_curves(
        logger.jsonl_path, tmp_path / "b.png", x="epoch", panels=[["train_loss", "nope"], ["fid"]]
    )
    assert png2.stat().st_size > 1000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
