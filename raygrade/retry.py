"""Retries, decided in one place.

Retryable errors are those whose ``retryable`` attribute is true (408, 409,
429, 5xx, timeouts, connection errors, schema-invalid output). ``Retry-After``
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

from raygrade.errors import RaygradeError

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
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> T:
    """Run ``attempt`` and retry it on retryable :class:`RaygradeError` s.

    Args:
        attempt: Makes one try; raises a :class:`RaygradeError` on failure.
        max_retries: Retries after the first try (so at most ``max_retries + 1`` tries).
        retry_after_cap_s: Upper bound on a server-requested ``Retry-After`` wait.
        sleep: Async sleep (injected in tests).
        rng: Random source for jitter.

    Raises:
        RaygradeError: the last error, when it is not retryable or retries ran out.
    """
    tries = 0
    while True:
        try:
            return await attempt()
        except RaygradeError as exc:
            if not getattr(exc, "retryable", False) or tries >= max_retries:
                raise
            delay = getattr(exc, "retry_after_s", None)
            delay = min(delay, retry_after_cap_s) if delay is not None else backoff_delay(tries, rng=rng)
            logger.info("retrying after %s (try %d/%d) in %.2fs", type(exc).__name__, tries + 1,
                        max_retries, delay)
            tries += 1
            await sleep(delay)
