"""How long a trainer invocation will take, from measured step and evaluation times.

Why its own module: the estimate is a pure function of a clock and the run's cadence; it knows nothing
of checkpoints or configs, and the trainers only tick it and print its lines.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch


def duration(seconds: float, approx: str = "~") -> str:
    """``~12 s``, ``~23 min``, ``~1.4 h``."""
    if seconds < 90:
        return f"{approx}{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{approx}{seconds / 60:.0f} min"
    return f"{approx}{seconds / 3600:.1f} h"


class RunEstimate:
    """How long this invocation will take, from measurements only (printed once, updated once).

    Steps: after ``warmup`` steps (allocation, first-call costs) the next ``n`` (at most 10) are timed,
    with one device sync at each end on CUDA, for the first line; from then on every step keeps counting
    (no more syncs: over many steps the queue's back-pressure makes the mean right), so the line after
    the first evaluation and the progress bar's ``remaining`` use the mean over all steps so far: a
    machine that was busy during the first steps (other jobs on a shared CPU) is not extrapolated for
    the whole run. Only the step loop counts (:meth:`skip` restarts the clock after evaluations,
    checkpoints and logging). Evaluations: their count is known from the cadence; their time is
    reported only once the first one has been measured (:meth:`evaluated`). :meth:`tick` costs one
    ``perf_counter`` per step.
    """

    def __init__(
        self,
        *,
        steps: int,
        device: torch.device,
        evaluations: Mapping[str, int],
        steps_per_epoch: int | None = None,
        epochs: int | None = None,
    ) -> None:
        self.steps, self.device = int(steps), device
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        self.warmup = 2 if self.steps >= 12 else 1
        self.target = min(10, self.steps - self.warmup)
        self.done, self.n, self.seconds, self.last = 0, 0, 0.0, None
        self.s_step: float | None = None
        self.planned = {k: int(v) for k, v in evaluations.items()}
        self.measured: dict[str, list[float]] = {k: [] for k in self.planned}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def skip(self) -> None:
        """Time between steps that is not a step (evaluation, checkpoint): not counted."""
        if self.last is not None:
            self.last = time.perf_counter()

    def tick(self) -> str | None:
        """After each training step; returns the estimate line once the step time is measured."""
        self.done += 1
        if self.target < 1 or self.done < self.warmup:
            return None
        if self.done == self.warmup:
            self._sync()
            self.last = time.perf_counter()
            return None
        first = self.s_step is None
        if first and self.n + 1 >= self.target:
            self._sync()
        now = time.perf_counter()
        self.seconds += now - self.last
        self.n += 1
        self.last = now
        if first and self.n < self.target:
            return None
        self.s_step = self.seconds / self.n
        return self.line() if first else None

    def evaluated(self, kind: str, seconds: float) -> str | None:
        """After each evaluation of ``kind``; returns the updated line after the first one."""
        first = not self.measured[kind]
        self.measured[kind].append(float(seconds))
        return self.line() if first and self.s_step is not None else None

    def line(self) -> str:
        train = self.steps * float(self.s_step or 0.0)
        if self.steps_per_epoch and self.epochs:
            what = f"{self.steps_per_epoch} steps/epoch x {self.epochs} epochs"
        else:
            what = f"{self.steps} steps"
        text = f"[immiscible] estimate: {what} at {self.s_step:.3g} s/step -> {duration(train)} training"
        total, unknown = train, False
        for kind, count in self.planned.items():
            if not count:
                continue
            name = kind if count == 1 else f"{kind}s"
            seen = self.measured[kind]
            if seen:
                each = sum(seen) / len(seen)
                total += count * each
                text += f" + {count} {name} ({duration(each)} each, measured after the first)"
            else:
                unknown = True
                text += f" + {count} {name} (time measured after the first)"
        return text + f" ~= {duration(total, '')}" + (" + evaluations" if unknown else "")

    def remaining(self) -> str | None:
        """Short time-left for a progress bar (None until the step time is measured)."""
        if self.s_step is None:
            return None
        left = max(self.steps - self.done, 0) * self.s_step
        unknown = False
        for kind, count in self.planned.items():
            todo = max(count - len(self.measured[kind]), 0)
            if todo and self.measured[kind]:
                left += todo * sum(self.measured[kind]) / len(self.measured[kind])
            elif todo:
                unknown = True
        return duration(left, "") + ("+eval" if unknown else "")
