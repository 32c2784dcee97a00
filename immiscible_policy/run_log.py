"""Run logs that need no service: ``metrics.jsonl`` (the record) and ``metrics.csv`` (for spreadsheets).

Why both: JSONL is append-only and survives ``kill -9`` (at worst a torn last line, dropped on resume);
CSV is what people open. The CSV's columns are the union of keys in first-seen order, so when a record
brings a new key the CSV is rewritten (atomically) from the JSONL records; otherwise a row is appended.
On resume, :meth:`RunLogger.truncate_after` drops records from after the checkpoint so that the resumed run
does not log the same steps twice. Dashboards (TensorBoard, wandb: :mod:`immiscible_policy.loggers`) get a
copy of each record after it is on disk here, so the JSONL log stays the record.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from immiscible_policy.metrics.pusht_modes import MODE_PREFIXES

JSONL_NAME = "metrics.jsonl"
CSV_NAME = "metrics.csv"


def _plain(value: Any) -> Any:
    """0-d tensors and numpy scalars -> Python numbers; other tensors/arrays -> lists."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (``os.umask`` can only be read
    by setting it, which races with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def normal_mode(directory: bool = False) -> int:
    """The mode ``open()`` / ``mkdir()`` would give a new file (0o666) or directory (0o777) under the
    umask; ``tempfile.mkstemp`` / ``mkdtemp`` create 0o600 / 0o700, which an atomic write must undo."""
    return (0o777 if directory else 0o666) & ~current_umask()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), normal_mode())  # not mkstemp's 0o600: the group may read results
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a JSONL log; a torn (unparseable) last line from a killed writer is dropped."""
    lines = Path(path).read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1} is not valid JSON: {err}") from err
    return records


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


class RunLogger:
    """Append metric records to ``run_dir/metrics.jsonl`` and keep ``run_dir/metrics.csv`` in sync.

    ``resume=False`` refuses a run dir that already has a log (so a new run never mixes into an old one);
    ``resume=True`` reads the existing log and continues it (call :meth:`truncate_after` with the
    checkpoint's step). ``dashboards`` (a :class:`~immiscible_policy.loggers.Dashboards`) receive every
    logged record and its media; :meth:`close` ends them.
    """

    def __init__(self, run_dir: str | os.PathLike, resume: bool = False, dashboards: Any = None):
        self.dashboards = dashboards
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.run_dir / JSONL_NAME
        self.csv_path = self.run_dir / CSV_NAME
        self.records: list[dict[str, Any]] = []
        if self.jsonl_path.exists() and not resume:
            raise FileExistsError(
                f"{self.jsonl_path} already exists; pass resume=True to continue it or use a new run dir"
            )
        if resume and self.jsonl_path.exists():
            self.records = read_jsonl(self.jsonl_path)
        self.columns: list[str] = []
        self._add_columns(self.records)
        self._rewrite()

    def _add_columns(self, records: Iterable[Mapping[str, Any]]) -> bool:
        added = False
        for record in records:
            for key in record:
                if key not in self.columns:
                    self.columns.append(key)
                    added = True
        return added

    def _csv_text(self, records: Sequence[Mapping[str, Any]], header: bool) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        if header:
            writer.writeheader()
        for record in records:
            writer.writerow({k: _csv_cell(record.get(k)) for k in self.columns})
        return buf.getvalue()

    def _rewrite(self) -> None:
        """Rewrite both files from ``self.records`` (atomically each)."""
        jsonl = "".join(json.dumps(r) + "\n" for r in self.records)
        _atomic_write(self.jsonl_path, jsonl.encode())
        _atomic_write(self.csv_path, self._csv_text(self.records, header=True).encode())

    def log(
        self, record: Mapping[str, Any], media: Mapping[str, str | os.PathLike] | None = None
    ) -> dict[str, Any]:
        """Append one record (flushed to both files before returning), then hand it with its ``media``
        (name -> video/image file, for dashboards only) to the dashboards; returns the plain record."""
        plain = {str(k): _plain(v) for k, v in record.items()}
        line = json.dumps(plain)  # fails here, before anything is written, on a non-JSON value
        self.records.append(plain)
        with open(self.jsonl_path, "a") as f:
            f.write(line + "\n")
            f.flush()
        if self._add_columns([plain]):
            _atomic_write(self.csv_path, self._csv_text(self.records, header=True).encode())
        else:
            with open(self.csv_path, "a", newline="") as f:
                f.write(self._csv_text([plain], header=False))
                f.flush()
        if self.dashboards is not None:
            self.dashboards.write(plain, media)
        return plain

    def close(self, failed: bool = False) -> None:
        """End the dashboards (``failed``: the run ended with an error); the files need no closing."""
        if self.dashboards is not None:
            self.dashboards.close(failed)

    def truncate_after(self, step: int) -> int:
        """Drop records whose ``step`` is greater than ``step`` (records without a step are kept);
        returns how many were dropped."""
        kept = [r for r in self.records if not (isinstance(r.get("step"), int | float) and r["step"] > step)]
        dropped = len(self.records) - len(kept)
        if dropped:
            self.records = kept
            self.columns = []
            self._add_columns(kept)
            self._rewrite()
        return dropped


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def plot_curves(
    jsonl_path: str | os.PathLike,
    png_path: str | os.PathLike,
    x: str = "epoch",
    panels: Sequence[Sequence[str]] = (("train_loss",), ("mean_score", "success_rate")),
    title: str | None = None,
) -> Path:
    """One subplot per panel of keys against ``x``; keys absent from the log are skipped, records without
    ``x`` or with a non-finite value are skipped. Uses the Agg canvas directly (no pyplot global state) and
    writes the PNG atomically. Returns ``png_path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_jsonl(jsonl_path)
    png_path = Path(png_path)
    fig = Figure(figsize=(6.5, 2.6 * max(1, len(panels))), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, len(panels)), 1, squeeze=False, sharex=True)[:, 0]
    for ax, keys in zip(axes, panels):
        plotted = False
        for key in keys:
            points = [
                (r[x], r[key]) for r in records if _finite_number(r.get(x)) and _finite_number(r.get(key))
            ]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="." if len(points) < 50 else None, label=key)
                plotted = True
        if plotted:
            ax.legend(loc="best", fontsize="small")
            ax.grid(alpha=0.3)
        else:
            ax.text(
                0.5,
                0.5,
                f"no data yet for {', '.join(keys)}",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
        ax.set_ylabel(" / ".join(keys) if len(keys) < 3 else "value", fontsize="small")
    axes[-1].set_xlabel(x)
    if title:
        fig.suptitle(title)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _atomic_write(png_path, buf.getvalue())
    return png_path


def plot_mode_history(
    path: str | os.PathLike, records: list[dict], x: str = "epoch", title: str | None = None
) -> bool:
    """Rotation-mode shares against ``x`` from a run's records: one panel for the standard starts
    (``modes_cw`` / ``modes_ccw`` / ``modes_none``) and one for the symmetric starts (``sym_modes_*``), each
    share = count / rollouts. Returns False (and writes nothing) when no record has mode counts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = []
    for prefix, name in MODE_PREFIXES.items():
        rows = [r for r in records if isinstance(r.get(x), int | float) and f"{prefix}cw" in r]
        if rows:
            panels.append((prefix, name, rows))
    if not panels:
        return False
    fig = Figure(figsize=(6.5, 2.6 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
    for ax, (prefix, name, rows) in zip(axes, panels):
        xs = [r[x] for r in rows]
        totals = [max(1, sum(int(r[f"{prefix}{m}"]) for m in ("cw", "ccw", "none"))) for r in rows]
        for mode, color in (("cw", "C0"), ("ccw", "C1"), ("none", "0.6")):
            ys = [int(r[f"{prefix}{mode}"]) / n for r, n in zip(rows, totals)]
            ax.plot(xs, ys, marker="." if len(xs) < 50 else None, color=color, label=mode)
        ax.set_ylim(-0.03, 1.03)
        ax.axhline(0.5, color="k", lw=0.6, ls=":")
        ax.set_ylabel(f"share of rollouts\n({name}, n={totals[-1]})", fontsize="small")
        ax.legend(loc="best", fontsize="small", ncol=3)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel(x)
    fig.suptitle(title or "PushT rotation modes (cw / ccw as the video shows them)", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _atomic_write(path, buf.getvalue())
    return True
