"""Retries, decided in one place.

Retryable errors are those whose ``retryable`` attribute is true (408, 409,
429, 5xx, timeouts, connection errors, schema-invalid output); a 429 waits within a
patience rather than spending retries, and so does a provider's refusal for a spent daily quota
whose reset comes within that patience (it is tried again after the reset, never before). ``Retry-After``
is honoured up to a cap; otherwise exponential backoff with full jitter
(AWS Architecture Blog, "Exponential Backoff And Jitter", 2015).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from raygrade.errors import QuotaExhaustedError, RateLimitedError, RaygradeError

logger = logging.getLogger(__name__)
T = TypeVar("T")


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or HTTP date).

    Returns ``None`` when absent or unparsable.
    """
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    if (ms := lower.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(attempt: int, *, base_s: float = 0.5, cap_s: float = 8.0,
                  rng: random.Random | None = None) -> float:
    """Full-jitter delay for retry number ``attempt`` (0-based): uniform(0, min(cap, base·2^attempt))."""
    r = rng or random
    return r.uniform(0, min(cap_s, base_s * (2 ** attempt)))


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    max_retries: int,
    retry_after_cap_s: float = 60.0,
    rate_limit_patience_s: float = 0.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    wall: Callable[[], float] = time.time,
) -> T:
    """Run ``attempt`` and retry it on retryable :class:`RaygradeError` s.

    A provider's 429 (:class:`RateLimitedError`) is not a failure of the request but a wait: it
    is retried without counting against ``max_retries`` for as long as ``rate_limit_patience_s``
    has not passed since the first 429 (the shared limiter meanwhile slows every caller of the
    key); only then does it fail like any other error.

    Args:
        attempt: Makes one try; raises a :class:`RaygradeError` on failure.
        max_retries: Retries of other retryable errors after the first try.
        retry_after_cap_s: Upper bound on a server-requested ``Retry-After`` wait.
        rate_limit_patience_s: Seconds 429s are retried for (0: they count as other errors).
        sleep: Async sleep (injected in tests).
        clock: Monotonic seconds (injected in tests, with ``sleep``).
        rng: Random source for jitter.
        wall: Seconds since the epoch (a daily quota's ``reset_at`` is a wall-clock time).

    Raises:
        RaygradeError: the last error, when it is not retryable or retries (or patience) ran out.
    """
    tries = rate_limited = 0
    first_429: float | None = None
    while True:
        try:
            return await attempt()
        except RaygradeError as exc:
            if isinstance(exc, QuotaExhaustedError) and exc.from_provider and exc.reset_at is not None:
                first_429 = clock() if first_429 is None else first_429
                wait = max(0.0, exc.reset_at - wall())
                if rate_limit_patience_s <= 0 or clock() + wait > first_429 + rate_limit_patience_s:
                    raise
                logger.info("the provider's daily quota is spent: trying again after its reset in %.0fs", wait)
                await sleep(wait)
                continue
            if not getattr(exc, "retryable", False):
                raise
            waiting = isinstance(exc, RateLimitedError) and rate_limit_patience_s > 0
            give_up_at = float("inf")
            if waiting:
                first_429 = clock() if first_429 is None else first_429
                give_up_at = first_429 + rate_limit_patience_s
                if clock() >= give_up_at:
                    raise
                n = rate_limited
                rate_limited += 1
            else:
                if tries >= max_retries:
                    raise
                n = tries
                tries += 1
            delay = getattr(exc, "retry_after_s", None)
            delay = min(delay, retry_after_cap_s) if delay is not None else backoff_delay(n, rng=rng)
            if waiting:  # never past the patience
                delay = max(0.0, min(delay, give_up_at - clock()))
            logger.info("retrying after %s (%s) in %.2fs", type(exc).__name__,
                        f"429 number {rate_limited}" if waiting else f"try {tries}/{max_retries}", delay)
            await sleep(delay)
