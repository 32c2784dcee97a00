"""One trainer per run directory: ``run_dir/.lock`` holds the owner's pid while it trains.

Why: two trainers on one run dir (a second ``resume=true`` while the first still runs, two sweep workers on
the same cell) would both append to ``metrics.jsonl`` and overwrite each other's checkpoints. The lock is
created atomically (``O_CREAT | O_EXCL``), holds ``{"pid", "host", "start", "time"}`` as JSON and is
removed when the trainer finishes (normally, by an exception, or at interpreter exit). A lock whose pid is
dead (the trainer was killed with ``kill -9``) is stale and is taken over; ``start`` (the process start
time from ``/proc``) tells a live owner from an unrelated process that reused its pid. A lock written on
another host cannot be checked from here: it is respected, and the message says how to clear it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

LOCK_NAME = ".lock"


class RunLockedError(ValueError):
    """The run directory is locked by a live trainer (one-line message)."""


def _start_time(pid: int) -> str | None:
    """The process start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is parenthesised and may hold spaces: split after its closing paren
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_lock(path: Path) -> dict[str, Any] | None:
    """The lock's content, or None when it vanished; an unparseable lock reads as ``{}``."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        try:  # a bare pid (hand-written, or an older writer)
            return {"pid": int(text.strip())}
        except ValueError:
            return {}
    return info if isinstance(info, dict) else {}


def owner_is_live(info: dict[str, Any]) -> bool:
    """Whether the lock described by ``info`` belongs to a running process (True when unknowable)."""
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False  # a torn or empty lock: its writer died between create and write
    if info.get("host") not in (None, socket.gethostname()):
        return True  # another machine's process: cannot check, so respect it
    if not _alive(pid):
        return False
    start = info.get("start")
    return start is None or _start_time(pid) in (None, start)  # a reused pid has another start time


class RunLock:
    """``with RunLock(run_dir):`` (or :meth:`acquire` / :meth:`release`): this process owns ``run_dir``."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.held = False

    def _content(self) -> str:
        pid = os.getpid()
        return json.dumps(
            {"pid": pid, "host": socket.gethostname(), "start": _start_time(pid), "time": time.time()}
        )

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(self._content())
            f.flush()
            os.fsync(f.fileno())
        return True

    def _take_over(self, stale: dict[str, Any]) -> None:
        """Move a stale lock aside (atomic rename) unless another process replaced it meanwhile."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # someone else took it over first; the next create decides
        moved = read_lock(aside)
        if moved is not None and moved != stale and owner_is_live(moved):
            # we moved a fresh lock that a live process created after we read the stale one: put it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
        aside.unlink(missing_ok=True)

    def acquire(self) -> RunLock:
        """Create the lock (taking over a stale one); :class:`RunLockedError` if a live trainer holds it."""
        if self.held:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if self._create():
                self.held = True
                atexit.register(self.release)
                return self
            info = read_lock(self.path)
            if info is None:
                continue  # released between our create and read: try again
            if info.get("pid") == os.getpid() and info.get("host") in (None, socket.gethostname()):
                raise RunLockedError(
                    f"run_dir={self.run_dir} is already locked by this process (pid {os.getpid()}): "
                    "one trainer per run dir; finish the first run before starting another there."
                )
            if owner_is_live(info):
                where = f" on {info['host']}" if info.get("host") not in (None, socket.gethostname()) else ""
                raise RunLockedError(
                    f"run_dir={self.run_dir} is in use by a running trainer (pid {info.get('pid')}{where}, "
                    f"{self.path}); wait for it to finish or pick another run_dir (delete {self.path} only "
                    "if that process is not a trainer)."
                )
            self._take_over(info)
        raise RunLockedError(
            f"could not lock run_dir={self.run_dir}: {self.path} keeps changing; is another trainer "
            "starting there?"
        )

    def release(self) -> None:
        """Remove the lock if this process holds it (idempotent)."""
        if not self.held:
            return
        self.held = False
        atexit.unregister(self.release)
        info = read_lock(self.path)
        if info is not None and info.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
