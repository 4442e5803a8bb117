"""Token-bucket arithmetic for requests/min (RPM) and tokens/min (TPM).

Plain classes with an injected clock, so they are unit-tested without Ray or
real time. :class:`raygrade.ratelimit.actor.TokenBucketActor` wraps
:class:`RateLimiter` in one named Ray actor that every caller shares.

Model: two buckets refilled continuously, ``rpm/60`` requests and ``tpm/60``
tokens per second, each holding at most one minute's worth. A call reserves
one request and its *estimated* tokens (prompt + ``max_tokens``, as hosted
providers charge up front) before it is sent, then settles with the provider's
reported ``usage``: unused tokens are refunded, overruns are charged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class _Bucket:
    """One continuously refilled bucket. ``rate`` units/s, ``capacity`` units."""

    def __init__(self, capacity: float, now: float):
        self.capacity = capacity
        self.rate = capacity / 60.0
        self.level = capacity
        self.t = now

    def refill(self, now: float) -> None:
        if now > self.t:
            self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
            self.t = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 if it is now).

        An amount larger than the capacity is admitted once the bucket is full
        (the level then goes negative, delaying later calls), so it cannot wait forever.
        """
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate


class TokenBucket:
    """RPM + TPM limits of one (provider, model).

    Args:
        rpm: Requests per minute, or ``None`` for unlimited.
        tpm: Tokens per minute, or ``None`` for unlimited.
        clock: Monotonic clock in seconds (injected for tests).
    """

    def __init__(self, rpm: int | None, tpm: int | None, clock: Clock = time.monotonic):
        self._clock = clock
        now = clock()
        self.rpm, self.tpm = rpm, tpm
        self._req = _Bucket(rpm, now) if rpm else None
        self._tok = _Bucket(tpm, now) if tpm else None

    def try_reserve(self, tokens: int) -> float:
        """Reserve one request and ``tokens`` tokens if both are available now.

        Returns:
            0.0 when reserved; otherwise the seconds to wait before trying again
            (nothing is reserved then).

        Raises:
            ValueError: ``tokens`` is negative.
        """
        if tokens < 0:
            raise ValueError("tokens must be >= 0")
        now = self._clock()
        wait = 0.0
        for b, amount in ((self._req, 1), (self._tok, tokens)):
            if b is not None:
                b.refill(now)
                wait = max(wait, b.wait_for(amount))
        if wait > 0:
            return wait
        if self._req is not None:
            self._req.level -= 1
        if self._tok is not None:
            self._tok.level -= tokens
        return 0.0

    def settle(self, reserved_tokens: int, actual_tokens: int) -> None:
        """Replace a reservation's estimate by the tokens actually used.

        Refunds ``reserved - actual`` (never above capacity) or charges the overrun.
        """
        if self._tok is None:
            return
        self._tok.refill(self._clock())
        self._tok.level = min(self._tok.capacity, self._tok.level + reserved_tokens - actual_tokens)

    def available(self) -> tuple[float | None, float | None]:
        """(requests, tokens) available now; ``None`` for an unlimited dimension."""
        now = self._clock()
        out = []
        for b in (self._req, self._tok):
            if b is None:
                out.append(None)
            else:
                b.refill(now)
                out.append(b.level)
        return out[0], out[1]


@dataclasses.dataclass(frozen=True)
class Reservation:
    """What :meth:`RateLimiter.acquire` granted. ``waited_s`` is time spent queued."""

    id: int
    key: str
    tokens: int
    waited_s: float


class RateLimiter:
    """Many :class:`TokenBucket` s keyed by (provider, model), with FIFO waiting.

    Callers of one key are admitted in arrival order (``asyncio.Lock`` is FIFO),
    so a large request is not starved by a stream of small ones.

    Args:
        clock: Monotonic clock in seconds.
        sleep: Async sleep (``asyncio.sleep``; a fake in tests).
    """

    def __init__(self, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep):
        self._clock, self._sleep = clock, sleep
        self._buckets: dict[str, TokenBucket] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._ids = itertools.count(1)
        self._open: dict[int, Reservation] = {}
        self.admitted_requests = 0
        self.admitted_tokens = 0

    def configure(self, key: str, rpm: int | None, tpm: int | None) -> None:
        """Create or replace the limits of ``key``. Same limits again is a no-op."""
        b = self._buckets.get(key)
        if b is None or (b.rpm, b.tpm) != (rpm, tpm):
            self._buckets[key] = TokenBucket(rpm, tpm, self._clock)
            self._locks.setdefault(key, asyncio.Lock())

    async def acquire(self, key: str, tokens: int) -> Reservation:
        """Wait until ``key`` admits one request of ``tokens`` tokens, and reserve it.

        Raises:
            KeyError: ``key`` was never configured.
        """
        bucket = self._buckets[key]
        start = self._clock()
        async with self._locks[key]:
            while (wait := bucket.try_reserve(tokens)) > 0:
                await self._sleep(wait)
        r = Reservation(next(self._ids), key, tokens, self._clock() - start)
        self._open[r.id] = r
        self.admitted_requests += 1
        self.admitted_tokens += tokens
        return r

    async def settle(self, reservation_id: int, actual_tokens: int | None) -> None:
        """Settle a reservation with the reported usage (``None``: keep the estimate).

        Unknown or already-settled ids are ignored, so settling twice is harmless.
        """
        r = self._open.pop(reservation_id, None)
        if r is None or actual_tokens is None:
            return
        self.admitted_tokens += actual_tokens - r.tokens
        self._buckets[r.key].settle(r.tokens, actual_tokens)

    def snapshot(self) -> dict[str, dict[str, float | int | None]]:
        """Limits and current availability per key, for status pages and tests."""
        out = {}
        for key, b in self._buckets.items():
            req, tok = b.available()
            out[key] = {"rpm": b.rpm, "tpm": b.tpm, "requests_available": req, "tokens_available": tok}
        return out
