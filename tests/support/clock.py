"""A virtual clock for testing time-based asyncio code without waiting.

``clock()`` returns virtual seconds; ``await clock.sleep(d)`` parks the caller
until the test calls ``await clock.advance(...)`` past its wake-up time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools


class VirtualClock:
    """Virtual monotonic time plus a matching async ``sleep``.

    Args:
        start: Initial time in seconds.
    """

    def __init__(self, start: float = 1000.0):
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._seq), fut))
        await fut

    async def settle(self) -> None:
        """Let every runnable task run until all are blocked again."""
        for _ in range(20):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking sleepers in time order on the way."""
        target = self.now + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            t, _, fut = heapq.heappop(self._sleepers)
            self.now = max(self.now, t)
            if not fut.done():
                fut.set_result(None)
            await self.settle()
        self.now = target
        await self.settle()
