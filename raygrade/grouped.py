"""Concurrent calls grouped into one: group commit for the calls a replica makes per request.

An ingress replica makes two deployment-handle calls per accepted job (record it, nudge the
batcher). Each costs about as much CPU in Ray and Serve as the work it asks for: with 32 clients
sending one-student jobs on 2 cores, the ingress, registry and proxy spent 33 ms of CPU per job,
most of it in call overhead (``benchmarks/job_throughput.py``, small-jobs phase). :class:`GroupedCall`
sends whatever has queued while its previous call was in flight as one call, as databases group
the commits that arrive during a flush: nothing waits on a timer (a lone caller's call goes at once),
and under load a call carries as many items as arrived meanwhile, up to ``max_items``.

Unlike Serve's ``@serve.batch`` (a timer-bounded batch inside a replica), it needs no replica
context, so the code that uses it is unit-tested without Ray.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from raygrade.tracing import detached

T = TypeVar("T")
R = TypeVar("R")


class GroupedCall(Generic[T, R]):
    """``await grouped(item)`` → ``item``'s result from ``call([..., item, ...])``.

    Args:
        call: Makes one call for a list of items; returns a list of the same length whose
            entries are results, or exceptions raised to their item's caller alone. An exception
            raised by ``call`` itself reaches every caller of that group.
        max_items: The most items in one call.
        max_in_flight: Calls in flight at once (1: each call waits for the previous one, so
            items that arrive meanwhile group behind it).

    Use on one event loop. A caller cancelled while it waits does not take its item back: the
    call may carry it still (as a call already sent would); only the caller stops waiting.
    """

    def __init__(self, call: Callable[[list[T]], Awaitable[list[R | BaseException]]], *,
                 max_items: int = 64, max_in_flight: int = 1):
        if max_items < 1 or max_in_flight < 1:
            raise ValueError("max_items and max_in_flight must be at least 1")
        self._call, self.max_items, self.max_in_flight = call, max_items, max_in_flight
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._senders = 0
        self._tasks: set[asyncio.Task] = set()
        self.calls = 0  # calls made (a test's and a benchmark's figure)

    async def __call__(self, item: T) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        if self._senders < self.max_in_flight:
            self._senders += 1
            # Detached: the group's call is not part of the trace of the caller that happened to start it.
            task = asyncio.get_running_loop().create_task(self._send(), context=detached())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await fut

    async def _send(self) -> None:
        try:
            while self._queue:
                group, self._queue = self._queue[:self.max_items], self._queue[self.max_items:]
                self.calls += 1
                try:
                    results = await self._call([item for item, _ in group])
                    if len(results) != len(group):
                        raise RuntimeError(f"grouped call returned {len(results)} results for {len(group)} items")
                except asyncio.CancelledError:
                    for _, fut in group:
                        fut.cancel()
                    raise
                except Exception as exc:
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), result in zip(group, results):
                    if fut.done():  # its caller was cancelled
                        continue
                    if isinstance(result, BaseException):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)
        finally:
            self._senders -= 1
