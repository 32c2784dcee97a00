"""Pair the next batch while this one trains: the solve off the step's critical path (``trainer.pair_ahead``).

Why: on a GPU the exact assignment (``linear``, ``c2ot``) is a CPU solve plus a device sync, a large share
of a policy step (docs/results.md, "Training-step throughput"). Everything a step's training pair needs is known a step ahead:
the next batch's rows (the epoch's order), its noise stream (a generator seeded by (seed, rank, step)) and
the epoch's paired share. So a background thread can draw the noise, pair it and draw the timesteps for
step s + 1 while step s runs forward and backward. The pair is computed by the same function, from the same
generator, in the same order of draws as without the look-ahead: the results are bit-identical
(tests/test_pair_ahead.py, across a resume too). Only within an epoch: an epoch's first step is prepared in
the loop (its order and share are the new epoch's), one solve per epoch left on the path.

On a 2-core CPU the thread competes with torch's own threads for the same cores, so it is off by default;
turn it on where a solve can overlap a device step (``trainer.pair_ahead=true``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["PairAhead"]


class PairAhead(Generic[T]):
    """One prepared item ahead: :meth:`get` returns the item for ``key`` (made earlier on the thread, or now)
    and starts making ``next_key``'s. Disabled, it simply calls ``make``. Errors on the thread surface in
    the :meth:`get` that collects them; :meth:`close` waits for any work still running."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = bool(enabled)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pair-ahead") if enabled else None
        self._pending: tuple[Hashable, Future[T]] | None = None

    def get(
        self,
        key: Hashable,
        make: Callable[[], T],
        next_key: Hashable | None = None,
        make_next: Callable[[], T] | None = None,
    ) -> T:
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == key:
            item = pending[1].result()
        else:
            if pending is not None:  # prepared for another step (never expected): finish it, discard it
                pending[1].result()
            item = make()
        if self._pool is not None and make_next is not None:
            self._pending = (next_key, self._pool.submit(make_next))
        return item

    def close(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending[1].exception()  # wait; an error of an unused item is not this step's error
        if self._pool is not None:
            self._pool.shutdown(wait=True)
