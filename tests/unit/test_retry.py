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


class VirtualTime:
    """``sleep`` that moves a clock instead of waiting."""

    def __init__(self):
        self.now, self.slept = 0.0, []

    async def sleep(self, s):
        self.slept.append(s)
        self.now += s

    def clock(self):
        return self.now


def test_429s_wait_within_the_patience_without_spending_retries():
    from raygrade.errors import RateLimitedError

    t, calls = VirtualTime(), []

    async def busy_then_ok():
        calls.append(t.now)
        if len(calls) <= 12:  # twelve 429s, four times max_retries, then an answer
            raise RateLimitedError("429", provider_status=429, retry_after_s=20.0 if len(calls) % 2 else None)
        if len(calls) == 13:
            raise ProviderTimeoutError("t")  # other errors still spend max_retries
        return "graded"

    out = asyncio.run(call_with_retries(busy_then_ok, max_retries=3, rate_limit_patience_s=900, sleep=t.sleep,
                                        clock=t.clock, rng=random.Random(0)))
    assert out == "graded" and len(calls) == 14
    assert t.slept[0] == 20.0 and max(t.slept) <= 60.0  # Retry-After honoured (up to its cap)


def test_429s_past_the_patience_fail_and_patience_zero_counts_them_as_retries():
    from raygrade.errors import RateLimitedError

    t, calls = VirtualTime(), []

    async def always_429():
        calls.append(t.now)
        raise RateLimitedError("429", provider_status=429, retry_after_s=45.0)

    with pytest.raises(RateLimitedError):
        asyncio.run(call_with_retries(always_429, max_retries=3, rate_limit_patience_s=300, sleep=t.sleep,
                                      clock=t.clock))
    assert calls[-1] == 300.0 and t.now == 300.0  # the last wait is cut to the patience, then one last try
    assert len(calls) == 8  # 0, 45, …, 270, 300
    calls.clear()
    with pytest.raises(RateLimitedError):
        asyncio.run(call_with_retries(always_429, max_retries=3, rate_limit_patience_s=0, sleep=t.sleep,
                                      clock=t.clock))
    assert len(calls) == 4


def test_a_providers_daily_refusal_is_tried_once_after_its_reset_only_within_the_patience():
    from raygrade.errors import QuotaExhaustedError

    t, calls = VirtualTime(), []
    wall0 = 1_000_000.0

    def refused_until(reset_in: float, from_provider: bool = True):
        async def attempt():
            calls.append(t.now)
            if len(calls) == 1:
                raise QuotaExhaustedError("day spent", reset_at=wall0 + reset_in, from_provider=from_provider)
            return "graded"
        return attempt

    def run(attempt, patience=900):
        return asyncio.run(call_with_retries(attempt, max_retries=0, rate_limit_patience_s=patience, sleep=t.sleep,
                                             clock=t.clock, wall=lambda: wall0 + t.now))

    assert run(refused_until(120)) == "graded" and calls == [0.0, 120.0] and t.slept == [120.0], "after the reset"
    for attempt, patience in ((refused_until(3600), 900), (refused_until(10), 0), (refused_until(10, False), 900)):
        calls.clear()
        with pytest.raises(QuotaExhaustedError):  # beyond the patience, no patience, or the limiter's own refusal
            run(attempt, patience)
        assert len(calls) == 1
