"""``run_dir/train.log``: what a training run prints, also kept beside its results.

Why our own: Hydra's job logging creates ``<job>.log`` for ``logging`` records, but the trainers print
(progress lines, estimates, scores, ``error: ...``), so that file stayed empty in every run. Hydra's job
logging is off (``configs/train.yaml``); :func:`tee_log` copies ``sys.stdout`` and ``sys.stderr`` into
the log instead, line by line. Progress bars (tqdm redraws a line with ``\\r``) keep only the final
state of a line, so the log holds what a reader would see, not thousands of redraws.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

LOG_NAME = "train.log"


class _Tee:
    """A text stream that writes to ``stream`` and, by complete lines, to ``log``."""

    def __init__(self, stream: IO[str], log: IO[str]) -> None:
        self._stream, self._log, self._line = stream, log, ""

    def write(self, text: str) -> int:
        self._stream.write(text)
        self._line += text
        if "\n" in self._line:
            *lines, self._line = self._line.split("\n")
            kept = [line.rsplit("\r", 1)[-1] for line in lines]
            self._log.write("".join(f"{line}\n" for line in kept if line.strip()))
            self._log.flush()
        self._line = self._line.rsplit("\r", 1)[-1]  # a redrawn bar: only its newest state
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno, ...: the terminal's
        return getattr(self._stream, name)


@contextmanager
def tee_log(path: Path) -> Iterator[None]:
    """Copy what the block prints to stdout / stderr into ``path`` (appended: a resumed run continues
    its log). An exception escaping the block (other than ``SystemExit``) is written there as its
    traceback, which the caller's handler then prints as usual."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as log:
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(saved[0], log), _Tee(saved[1], log)
        try:
            yield
        except SystemExit:
            raise
        except BaseException:
            log.write(traceback.format_exc())
            raise
        finally:
            sys.stdout, sys.stderr = saved
