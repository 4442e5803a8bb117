import asyncio
import random

import pytest

from raygrade.errors import InvalidRequestError, ProviderTimeoutError
from raygrade.retry import backoff_delay, call_with_retries, parse_retry_after


def test_parse_retry_after_variants():
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after(None) is None


def test_backoff_is_bounded_full_jitter():
    rng = random.Random(0)
    for attempt in range(10):
        assert 0 <= backoff_delay(attempt, base_s=0.5, cap_s=8, rng=rng) <= min(8, 0.5 * 2 ** attempt)


def test_retries_stop_after_max_and_skip_non_retryable():
    calls = []

    async def flaky():
        calls.append(1)
        raise ProviderTimeoutError("t")

    async def nosleep(s):
        pass

    with pytest.raises(ProviderTimeoutError):
        asyncio.run(call_with_retries(flaky, max_retries=2, sleep=nosleep))
    assert len(calls) == 3

    calls.clear()

    async def bad():
        calls.append(1)
        raise InvalidRequestError("no")

    with pytest.raises(InvalidRequestError):
        asyncio.run(call_with_retries(bad, max_retries=5, sleep=nosleep))
    assert len(calls) == 1
