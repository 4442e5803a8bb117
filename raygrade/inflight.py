"""A bound on the grader calls a batcher has in flight across all its jobs.

Each job has its own bound (``batcher.max_concurrent_batches``), but twenty jobs at once would
put twenty times that in flight, far more than the ``Grader`` replicas take at once
(``max_ongoing_requests`` each): the rest wait in Serve's router, which retries them with
back-off and in no fixed order. Measured with 20 jobs of 50 batches at once on 2 cores
(``benchmarks/job_throughput.py``'s concurrent phase): some jobs' last batches waited up to 6 s
there while the others finished. :class:`GraderSlots` keeps the excess here instead, first come,
first served, and its capacity follows the replicas that are running.
"""

from __future__ import annotations

import asyncio
from collections import deque


class GraderSlots:
    """At most ``capacity`` holders at once; waiters enter strictly in the order they came (a
    newcomer never passes a waiter). ``capacity`` ``None``: no bound. Use as ``async with
    slots:`` on one event loop (no lock: nothing here awaits between checking and taking)."""

    def __init__(self, capacity: int | None = None):
        self.capacity = capacity
        self.busy = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot."""
        return len(self._waiters)

    def _free(self) -> bool:
        return self.capacity is None or self.busy < self.capacity

    def _wake(self) -> None:
        while self._waiters and self._free():
            fut = self._waiters.popleft()
            if not fut.done():  # cancelled, its task not yet resumed: skipped
                self.busy += 1
                fut.set_result(None)

    def resize(self, capacity: int | None) -> None:
        """Set the bound (at least 1, or ``None``); the waiters that now fit enter. Holders over
        a lowered bound keep their slots until they leave."""
        self.capacity = None if capacity is None else max(1, capacity)
        self._wake()

    async def __aenter__(self) -> GraderSlots:
        if self._free() and not self._waiters:
            self.busy += 1
            return self
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # granted by _wake, which counted this holder
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # granted as it was cancelled: the slot goes on
                self.busy -= 1
                self._wake()
            elif fut in self._waiters:
                self._waiters.remove(fut)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.busy -= 1
        self._wake()
